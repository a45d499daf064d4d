"""How ``python -m mpipar.generate`` gets its model: the GGUF file opened (by every rank, or with
--weights-from-rank0 by rank 0 alone), the batch's memory checked against the machine, and
each rank's model built from its own reads or from the slices rank 0 sends."""
from .cli import fail_together
from .measure.memory import too_big
from .models.gguf import GGUFFile, smollm2_path
from .models.llama_gguf import GGUFSource
from .models.rank0_source import FromRank0
from .models.tokenizer import Tokenizer

__all__ = ["open_model", "build", "memory_problem"]


def open_model(args, comm):
    """(the GGUF file, its tokenizer, its Llama configuration) on every rank; with
    --weights-from-rank0 only rank 0 opens the file (the others get None and rank 0's
    tokenizer and configuration), and a problem opening it is one error on every rank."""
    if not args.weights_from_rank0:
        gguf = GGUFFile(args.gguf or smollm2_path())
        return gguf, Tokenizer.from_gguf(gguf), gguf.llama_config()
    found = None
    if comm.Get_rank() == 0:  # the other ranks may not even have the package installed
        try:
            gguf = GGUFFile(args.gguf or smollm2_path())
            found = (gguf, Tokenizer.from_gguf(gguf), gguf.llama_config())
        except ValueError as e:
            found = str(e)
    shared = comm.bcast(found[1:] if isinstance(found, tuple) else found, root=0)
    if isinstance(shared, str):
        raise ValueError(shared)
    return (found[0] if comm.Get_rank() == 0 else None, *shared)


def build(args, comm, gguf, config, make):
    """``make(params)`` -> this rank's model: from its own reads of the file, or with
    --weights-from-rank0 from the slices rank 0 sends (models.rank0_source)."""
    if not args.weights_from_rank0:
        return fail_together(comm, lambda: make(GGUFSource(gguf, config)))
    return FromRank0(comm, lambda: (config, GGUFSource(gguf, config), None)).build(make)


def memory_problem(config, args, prompt_length, p):
    """Why the batch cannot fit this machine, or None: every sequence keeps its keys and values
    (2 n_layer n_kv_head head_dim float32 per position, divided over the ranks at best) and the
    prefill's logits (prompt_length x vocab float32)."""
    c, positions = config, prompt_length + args.max_new_tokens
    if positions > c.n_ctx:
        return None  # check_tokens names the context length
    per_sequence = 4 * (2 * c.n_layer * c.n_kv_head * c.head_dim * positions / p
                        + prompt_length * c.vocab_size)
    return too_big(f"--copies {args.copies} of a {prompt_length}-token prompt with --max-new-tokens "
                   f"{args.max_new_tokens}", int(args.copies * per_sequence), p)
