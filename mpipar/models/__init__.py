"""Language models written once for any tensor-parallel split: configuration, the
parameter table, layers with their backward passes, GPT-2, loss, optimizer, checkpoints."""
from .config import PRESETS, GPTConfig
from .gpt2 import GPT
from .params import init_params, load_state_dict

__all__ = ["GPT", "GPTConfig", "PRESETS", "init_params", "load_state_dict"]
