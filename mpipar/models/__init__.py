"""Language models written once for any tensor-parallel split: configuration (config), the
parameter table (params), layers with their backward passes (layers, linear, rotary), the KV
cache, GPT-2 (gpt2), the Llama family (llama; from a GGUF file: llama_gguf), loss, optimizer
and checkpoints (checkpoint; read slice by slice: safetensors_source), and the random model
generated slice by slice (random_init)."""
from .checkpoint import load_state_dict
from .config import PRESETS, GPTConfig, LlamaConfig
from .gpt2 import GPT
from .llama import Llama, load_gguf
from .params import init_params
from .random_init import RandomSource
from .safetensors_source import SafetensorsSource

__all__ = ["GPT", "GPTConfig", "Llama", "LlamaConfig", "PRESETS", "RandomSource", "SafetensorsSource",
           "init_params", "load_gguf", "load_state_dict"]
