"""The Hugging Face transformers reference for SmolLM2-135M-Instruct, read from
``tests/data/smollm2_reference.json`` (written by ``tools/smollm2_reference.py``). A missing
file fails the test that asks for it, naming the file: it is part of the repository."""
import json
import os

import pytest

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                         "smollm2_reference.json")


def smollm2_reference():
    """The reference as a dict (keys "tokenizer", "chat", "config", ...)."""
    if not os.path.isfile(REFERENCE):
        pytest.fail(f"{REFERENCE} is missing: it is written by tools/smollm2_reference.py "
                    f"(Hugging Face transformers on the same GGUF file) and belongs in the repository")
    with open(REFERENCE, encoding="utf-8") as f:
        return json.load(f)
