"""Weights read by rank 0 alone and sent as slices: every rank's model holds exactly the bits
it would have read itself, and a rank other than 0 receives only its own shards' bytes."""
from mpi4py import MPI
import numpy as np
import pytest

from mpipar.models import GPT, GPTConfig, init_params
from mpipar.models.checkpoint import load_model, save_params
from mpipar.models.rank0_source import FromRank0

WORLD = MPI.COMM_WORLD
CFG = GPTConfig(vocab_size=37, n_ctx=16, n_embd=24, n_head=6, n_layer=2)


@pytest.fixture
def folder(tmp_path_factory):
    path = None
    if WORLD.Get_rank() == 0:
        path = str(tmp_path_factory.mktemp("ck") / "ck")
        save_params(CFG, init_params(CFG, 5), path)
    return WORLD.bcast(path, root=0)


@pytest.mark.mpi
def test_slices_from_rank0_equal_reading_them_here(folder):
    weights = f"{folder}/model.safetensors"

    def open_on_rank0():
        assert WORLD.Get_rank() == 0, "only rank 0 opens the file"
        return load_model(weights=weights, sliced=True)

    remote = FromRank0(WORLD, open_on_rank0)
    assert remote.config == CFG
    model = remote.build(lambda params: GPT(CFG, params, WORLD))
    local = GPT(CFG, load_model(weights=weights, sliced=True)[1], WORLD)  # a shared disk, here
    for mine, theirs in zip(model.shards, local.shards):
        for name, value in theirs.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(mine[name], value), name
    if WORLD.Get_rank() != 0:
        own = sum(v.nbytes for s in local.shards for k, v in s.items() if isinstance(v, np.ndarray))
        assert remote.bytes_received == own  # its shards only, each once


@pytest.mark.mpi
def test_a_problem_on_rank0_is_one_error_everywhere(tmp_path_factory):
    with pytest.raises(ValueError, match="no such file"):
        FromRank0(WORLD, lambda: load_model(weights="/nonexistent/model.safetensors", sliced=True))
