"""Language models written once for any tensor-parallel split: configuration (config), the
parameter table (params), layers with their backward passes (layers, linear), the KV cache,
GPT-2 (gpt2), loss, optimizer and checkpoints."""
from .checkpoint import load_state_dict
from .config import PRESETS, GPTConfig
from .gpt2 import GPT
from .params import init_params

__all__ = ["GPT", "GPTConfig", "PRESETS", "init_params", "load_state_dict"]
