"""The real SmolLM2-135M-Instruct split over the ranks of MPI.COMM_WORLD: each rank reads and
dequantizes its own slices of the GGUF file and nothing more, and the split model's logits and
greedy tokens are those of Hugging Face transformers (tests/data/smollm2_reference.json; see
tests/models/test_llama_reference.py for the bound)."""
import functools
import json
import pathlib

from helpers import all_ranks_ok
from mpi4py import MPI
import numpy as np
import pytest
import reference_llama as ref

from mpipar.measure import numerics
from mpipar.models import Llama
from mpipar.models.gguf import GGUFFile, smollm2_path
from mpipar.models.llama_gguf import GGUFSource

COMM = MPI.COMM_WORLD
P = COMM.Get_size()
REFERENCE = json.loads((pathlib.Path(__file__).parents[1] / "data" / "smollm2_reference.json").read_text())
CHAT = {prompt["name"]: prompt for prompt in REFERENCE["model"]["prompts"]}["chat"]
pytestmark = pytest.mark.mpi  # every test here runs under mpirun


@functools.cache
def split_smollm2():
    """The model over COMM_WORLD, and the source that recorded what this rank read."""
    reader = GGUFFile(smollm2_path())
    source = GGUFSource(reader, reader.llama_config())
    return Llama(source.reader.llama_config(), source, COMM), source


def test_each_rank_reads_only_the_slices_it_keeps():
    model, source = split_smollm2()
    shard, problems = model.shards[0], []
    read = sum(int(np.prod(shape)) for *_, shape in source.reads)
    kept = sum(v.size for v in shard.values() if isinstance(v, np.ndarray))
    if read != kept:
        problems.append(f"read {read} numbers, keeps {kept}")
    # bytes: its vocabulary rows of the embedding, the 61 replicated gains, and per block its
    # query heads' columns of q and rows of o, its key/value heads' columns of k and v (shared
    # with other ranks where P > 3), its hidden units of gate, up and down
    n = {unit: s.stop - s.start for unit, s in shard.items() if isinstance(s, slice)}
    d, hd = 576, 64
    per_block = 2 * hd * (n["heads"] + n["kv_heads"]) + 3 * n["hidden"]
    expected = 4 * (n["vocab"] * d + 61 * d + 30 * d * per_block)
    if model.param_bytes() != expected:
        problems.append(f"holds {model.param_bytes()} bytes, not {expected}")
    if P > 1 and model.param_bytes() > 4 * 134_515_008 * (1 / P + 0.1):  # the model is 538 MB
        problems.append(f"holds {model.param_bytes()} bytes: more than its share")
    all_ranks_ok(problems)


def test_the_split_model_gives_hugging_faces_logits_and_tokens():
    model, _ = split_smollm2()
    ids = np.array([CHAT["ids"]])
    logits = model.forward(ids)
    assert numerics.ranks_agree(COMM, logits)
    logits = logits[0].astype(np.float64)
    diff = np.abs(np.take_along_axis(logits, np.array(CHAT["top_ids"]), -1) - CHAT["top_logits"]).max()
    assert diff <= 2 * ref.error_bound(model.config) * np.abs(logits).max(), diff
    out = model.generate(ids, len(CHAT["greedy"]["ids"]))
    assert numerics.ranks_agree(COMM, out)
    assert out[0, ids.shape[1]:].tolist() == CHAT["greedy"]["ids"]
    if COMM.Get_rank() == 0:
        print(f"p={P} SmolLM2: max |mpipar - transformers| over the top-20 logits {diff:.2g}")
