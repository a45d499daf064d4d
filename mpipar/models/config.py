"""The shape of a model: ``GPTConfig`` (GPT-2), ``LlamaConfig`` (the Llama family) and the
named shapes ``PRESETS``.

Both answer what the shared code asks of any architecture with the same names:
``vocab_size``, ``n_ctx``, ``n_embd``, ``n_head``, ``n_layer``, ``dtype``, ``head_dim``,
``n_kv_head`` (key/value heads; fewer than ``n_head`` under grouped-query attention)
and ``n_inner`` (MLP hidden units).
"""
from dataclasses import asdict, dataclass
import json

import numpy as np


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT-2 model."""

    vocab_size: int = 50257  #: number of token ids
    n_ctx: int = 1024  #: longest sequence (rows of the position embedding)
    n_embd: int = 768  #: model width d
    n_head: int = 12  #: attention heads (d must be divisible by it)
    n_layer: int = 12  #: transformer blocks
    layer_norm_epsilon: float = 1e-5  #: added to the variance in LayerNorm
    dtype: str = "float32"  #: dtype of parameters and activations

    @property
    def head_dim(self):
        """Columns per attention head: n_embd / n_head."""
        return self.n_embd // self.n_head

    @property
    def n_kv_head(self):
        """Key/value heads: in GPT-2 one per query head."""
        return self.n_head

    @property
    def n_inner(self):
        """Hidden units of the MLP: 4 n_embd in GPT-2 (d_ff = 4 d_model, Vaswani et al. 2017)."""
        return 4 * self.n_embd

    def to_dict(self):
        return asdict(self)

    def problems(self):
        """What makes this configuration unusable, or None."""
        sizes = dict(vocab_size=self.vocab_size, n_ctx=self.n_ctx, n_embd=self.n_embd,
                     n_head=self.n_head, n_layer=self.n_layer)
        for key, n in sizes.items():
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                return f"{key} must be a whole number >= 1, not {n!r}"
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            return f"layer_norm_epsilon must be >= 0, not {self.layer_norm_epsilon}"
        if self.n_embd % self.n_head:
            return f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}"
        if self.dtype not in ("float32", "float64"):
            return f"dtype {self.dtype!r}: use float32 or float64"
        return None

    @classmethod
    def from_hf_json(cls, path, **overrides):
        """Read the Hugging Face ``config.json`` saved beside ``model.safetensors``."""
        try:
            with open(path) as f:
                hf = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON ({e})") from None
        if not isinstance(hf, dict):
            raise ValueError(f"{path}: not a GPT-2 config.json (a JSON object is expected)")
        missing = [k for k in ("vocab_size", "n_embd", "n_head", "n_layer") if k not in hf]
        if "n_positions" not in hf and "n_ctx" not in hf:
            missing.append("n_positions")
        if missing:
            raise ValueError(f"{path}: not a GPT-2 config.json, it lacks {', '.join(missing)}")
        fields = dict(vocab_size=hf["vocab_size"], n_ctx=hf.get("n_positions", hf.get("n_ctx")),
                      n_embd=hf["n_embd"], n_head=hf["n_head"], n_layer=hf["n_layer"],
                      layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))
        config = cls(**dict(fields, **overrides))
        problem = config.problems()
        if problem:
            raise ValueError(f"{path}: {problem}")
        return config


@dataclass(frozen=True)
class LlamaConfig:
    """The shape of a Llama-family model (Touvron et al. 2023): RMSNorm, rotary positions,
    grouped-query attention, a SwiGLU MLP. The defaults are SmolLM2-135M's."""

    vocab_size: int = 49152  #: number of token ids
    n_ctx: int = 8192  #: longest sequence the rotary embedding was trained for
    n_embd: int = 576  #: model width d
    n_head: int = 9  #: query heads
    n_kv_head: int = 3  #: key/value heads, each shared by n_head / n_kv_head query heads
    n_layer: int = 30  #: transformer blocks
    n_inner: int = 1536  #: hidden units of the SwiGLU MLP
    rms_norm_eps: float = 1e-5  #: added to the mean square in RMSNorm
    rope_theta: float = 10000.0  #: base of the rotary embedding's frequencies
    tie_embeddings: bool = True  #: the LM head is the token embedding
    dtype: str = "float32"  #: dtype of parameters and activations

    @property
    def head_dim(self):
        """Columns per attention head: n_embd / n_head."""
        return self.n_embd // self.n_head

    def to_dict(self):
        return asdict(self)

    def problems(self):
        """What makes this configuration unusable, or None."""
        sizes = (self.vocab_size, self.n_ctx, self.n_embd, self.n_head, self.n_kv_head,
                 self.n_layer, self.n_inner)
        if not all(isinstance(n, (int, np.integer)) and n >= 1 for n in sizes):
            return ("vocab_size, n_ctx, n_embd, n_head, n_kv_head, n_layer and n_inner must be "
                    "whole numbers >= 1")
        if self.n_embd % self.n_head or self.head_dim % 2:
            return f"n_embd {self.n_embd} must split into {self.n_head} heads of an even width"
        if self.n_head % self.n_kv_head:
            return f"n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}"
        if not (self.rms_norm_eps >= 0 and self.rope_theta > 0):
            return "rms_norm_eps must be >= 0 and rope_theta > 0"
        if self.dtype not in ("float32", "float64"):
            return f"dtype {self.dtype!r}: use float32 or float64"
        return None


PRESETS = {
    "tiny": GPTConfig(vocab_size=96, n_ctx=64, n_embd=48, n_head=4, n_layer=2),
    "small": GPTConfig(vocab_size=1000, n_ctx=128, n_embd=192, n_head=6, n_layer=4),
    "gpt2-small": GPTConfig(),  # the 124M-parameter GPT-2
}
