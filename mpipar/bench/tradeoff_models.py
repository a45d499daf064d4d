"""The models ``bench tradeoff`` measures, behind one interface, and the perplexity it reports.

A ``Subject`` is what the benchmark needs of a model, whichever family it belongs to:

* ``build(comm, **options)`` makes the model split over ``comm`` with one setting's options
  (the constructor's ``algorithm``, ``deterministic``, ``ways``, ``comm_dtype``, ``rounding``),
  so the parallel rows and rank 0's serial reference come from the same factory;
* ``head(serial)``: the full LM-head weight (vocab, d) of a model built on one process with
  ``ways`` 1, which the scale sum_k |h_k w_k| of the normalised error reads;
* ``tokens``: the (B, T) evaluation batch; ``task`` and ``text`` say what the tokens are.

Two builders, each validating everything before any message (``ValueError`` with the problem):

* ``gpt2_subject``: mpipar's GPT-2 -- the shipped addition model, a checkpoint (--weights) or
  random weights (--preset) on random tokens;
* ``llama_subject``: a Llama-family GGUF file, by default the installed SmolLM2-135M-Instruct,
  evaluated on the first T tokens of the English text shipped in ``mpipar/data/text``. The file
  is opened once per rank; each rank dequantizes its own slices once (``CachedReader``) and every
  setting's model is built from them by ``load_gguf``; rank 0's serial reference reads the file
  directly, so that the whole model is not kept after it.
"""
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Callable, Optional

from mpi4py import MPI
import numpy as np

from ..models import GPT
from ..models.checkpoint import load_model
from ..models.llama import load_gguf
from ..models.loss import vocab_parallel_cross_entropy
from ..parallel.tensor_parallel import TPGroup

#: the English text the Llama models are evaluated on (mpipar's own overview)
TEXT = Path(__file__).resolve().parents[1] / "data" / "text" / "mpipar_overview.txt"
#: tokens of the text evaluated by default: a few hundred positions
DEFAULT_SEQ = 256


@dataclass
class Subject:
    """One model under measurement: its factory, its LM head, its evaluation tokens."""
    name: str  #: what the report calls it
    config: object  #: GPTConfig or LlamaConfig
    build: Callable  #: build(comm, **options) -> a model split over comm
    head: Callable  #: head(serial model) -> the full (vocab, d) LM-head weight
    tokens: np.ndarray  #: (B, T) int64: every setting runs one forward of these
    task: Optional[object] = None  #: the addition task whose held-out set the tokens are
    text: Optional[str] = None  #: the file name of the text the tokens are, if any
    source: dict = field(default_factory=dict)  #: where the weights came from, for the JSON


def perplexity(logits, tokens):
    """exp of the mean next-token cross-entropy in float64: logits[:, t] predicts
    tokens[:, t + 1], over the B * (T - 1) positions that have a next token.

    The cross-entropy is ``loss.vocab_parallel_cross_entropy``'s on one shard holding the
    whole vocabulary, weighted 1 / (B (T - 1)) per position, so its total is the mean."""
    z, targets = np.asarray(logits, np.float64)[:, :-1], np.asarray(tokens, np.int64)[:, 1:]
    if targets.size == 0:
        raise ValueError("perplexity needs sequences of at least 2 tokens")
    weights = np.full(targets.shape, 1.0 / targets.size)
    mean, _, _ = vocab_parallel_cross_entropy(TPGroup(MPI.COMM_SELF), [z], [slice(0, z.shape[-1])],
                                              targets, weights)
    return float(np.exp(mean))


def _index_key(index):
    """A hashable form of a reader's row or column selection (None, a slice or indices)."""
    if index is None:
        return None
    if isinstance(index, slice):
        return ("slice", index.start, index.stop, index.step)
    index = np.asarray(index)
    return ("indices", index.dtype.str, index.tobytes())


class CachedReader:
    """A GGUF reader that dequantizes each slice once: ``read`` remembers what it returned
    (read-only), and everything else is the wrapped reader's. Every setting of the benchmark
    builds its model through ``load_gguf`` from the same slices, so a rank reads its own
    slices once instead of once per setting."""

    def __init__(self, reader):
        self.reader, self.cache = reader, {}

    def __getattr__(self, name):  # called only for names not set in __init__
        return getattr(self.reader, name)

    def read(self, name, rows=None, cols=None):
        """The wrapped reader's ``read``, from the cache after the first time."""
        key = (name, _index_key(rows), _index_key(cols))
        if key not in self.cache:
            value = self.reader.read(name, rows=rows, cols=cols)
            value.flags.writeable = False  # shared by every model built from it
            self.cache[key] = value
        return self.cache[key]


def read_text():
    """The shipped English text, whole."""
    return TEXT.read_text(encoding="utf-8")


def gpt2_subject(args, p):
    """mpipar's GPT-2 as ``--weights``, ``--preset`` or the shipped addition model choose."""
    if args.gguf is not None:
        raise ValueError("--gguf is for --model smollm2")
    config, params, task = load_model(preset=args.preset, weights=args.weights, seed=args.seed)
    if p > config.n_head:
        raise ValueError(f"the model has {config.n_head} attention heads: run on at most "
                         f"{config.n_head} ranks")
    if task is not None:
        if args.seq is not None:
            raise ValueError(f"--seq is for random tokens; this model is evaluated on whole "
                             f"{task.seq_len}-token examples of its task")
        if args.batch is not None and args.batch > len(task.heldout_pairs()):
            raise ValueError(f"--batch {args.batch}: the task has {len(task.heldout_pairs())} "
                             f"held-out examples")
        tokens = task.tokens(task.heldout_pairs()[:args.batch])
    else:
        if args.seq is not None and not 1 <= args.seq <= config.n_ctx:
            raise ValueError(f"--seq must be in 1..{config.n_ctx} (the model's context)")
        rng = np.random.default_rng(args.seed)
        tokens = rng.integers(0, config.vocab_size, (args.batch or 4, args.seq or min(32, config.n_ctx)))
    name = (f"random weights, preset {args.preset}" if args.preset else f"weights {args.weights}"
            if args.weights else "the shipped addition model")
    return Subject(name, config, build=lambda comm, **options: GPT(config, params, comm, **options),
                   head=lambda serial: serial.shards[0]["wte.weight"], tokens=np.asarray(tokens),
                   task=task, source=dict(weights=args.weights, preset=args.preset))


def llama_subject(args, p):
    """A Llama GGUF file (``--gguf``, default the installed SmolLM2-135M-Instruct) on the first
    ``--seq`` tokens of the shipped text, one sequence."""
    for flag, value in (("--weights", args.weights), ("--preset", args.preset),
                        ("--batch", args.batch)):
        if value is not None:
            raise ValueError(f"{flag} is for --model gpt2; --model smollm2 reads its GGUF file and "
                             f"is evaluated on one sequence of {TEXT.name}")
    if args.seq is not None and args.seq < 2:
        raise ValueError("--seq must be at least 2: perplexity predicts each token from the ones "
                         "before it")
    from ..models.gguf import GGUFFile, smollm2_path  # the gguf and tokenizers packages, only here
    from ..models.tokenizer import Tokenizer
    reader = GGUFFile(args.gguf or smollm2_path())  # the metadata only, no tensor yet
    config = reader.llama_config()
    problem = config.problems()
    if problem:
        raise ValueError(f"{reader.path}: {problem}")
    if p > config.n_head:
        raise ValueError(f"the model has {config.n_head} query heads: run on at most "
                         f"{config.n_head} ranks")
    seq = DEFAULT_SEQ if args.seq is None else args.seq
    if seq > config.n_ctx:
        raise ValueError(f"--seq {seq} exceeds the model's context of {config.n_ctx} tokens")
    ids = Tokenizer.from_gguf(reader).encode(read_text())
    if seq > len(ids):
        raise ValueError(f"--seq {seq}: {TEXT.name} is only {len(ids)} tokens long")
    cached = CachedReader(reader)

    def build(comm, **options):
        """The Llama over ``comm``: the settings' models share this rank's cached slices; rank
        0's serial reference (on MPI.COMM_SELF) reads the file afresh and keeps nothing after."""
        return load_gguf(reader if comm == MPI.COMM_SELF else cached, comm, **options)

    return Subject(os.path.basename(reader.path), config, build=build,
                   head=lambda serial: serial.shards[0][serial.head],
                   tokens=np.array([ids[:seq]], np.int64), text=TEXT.name,
                   source=dict(gguf=reader.path))
