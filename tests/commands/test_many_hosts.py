"""A job as it runs over several machines: each rank in its own working directory and TMPDIR,
the checkpoint on rank 0's only. With --weights-from-rank0 rank 0 reads it and sends each rank
its slices; without, the rank that cannot find the file is named in one clear error. Only
rank 0 writes the JSON, in its own folder."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mpipar import launch
from mpipar.models.checkpoint import SHIPPED

ENV = dict(os.environ, **launch.ONE_THREAD)


def mpmd(tmp_path, args, n=2):
    """mpiexec -n 1 -wdir host0 ... : -n 1 -wdir host1 ... (MPICH's hydra syntax)."""
    cmd = launch.mpiexec()
    for r in range(n):
        host = tmp_path / f"host{r}"
        (host / "tmp").mkdir(parents=True, exist_ok=True)
        cmd += (["-n", "1", "-wdir", str(host), "-env", "TMPDIR", str(host / "tmp"), sys.executable,
                 "-m", "mpi4py", "-m", "mpipar.demo"] + args + ([":"] if r < n - 1 else []))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)


@pytest.fixture
def hosts(tmp_path):
    if "hydra" not in subprocess.run(launch.mpiexec() + ["--version"], capture_output=True,
                                     text=True).stdout.lower():
        pytest.skip("the -wdir/-env syntax here is MPICH's (hydra)")
    shutil.copytree(SHIPPED.parent, tmp_path / "host0" / "ck")  # the checkpoint: rank 0's machine only
    return tmp_path


def test_weights_from_rank0_run_where_only_rank0_has_them(hosts):
    proc = mpmd(hosts, ["--weights", "ck/model.safetensors", "--weights-from-rank0", "--json", "out.json"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((hosts / "host0" / "out.json").read_text())
    assert data["world_size"] == 2 and data["tokens_identical"] and data["ranks_agree"]
    assert data["task"]["accuracy_parallel"] >= 0.99
    assert sorted(os.listdir(hosts / "host1")) == ["tmp"] and not os.listdir(hosts / "host1" / "tmp")


def test_without_it_the_rank_missing_the_file_is_named(hosts):
    proc = mpmd(hosts, ["--weights", "ck/model.safetensors"])
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert text.count("ck/model.safetensors': no such file (on rank 1)") == 1, text
    assert "Traceback" not in text


def test_generate_with_the_gguf_on_rank0_only(tmp_path):
    """SmolLM2 over a 2-stage pipeline whose second rank has no file (and no package needed):
    rank 0 sends the tokenizer, the configuration and the second stage's layers."""
    from mpipar.models.gguf import smollm2_path
    if "hydra" not in subprocess.run(launch.mpiexec() + ["--version"], capture_output=True,
                                     text=True).stdout.lower():
        pytest.skip("the -wdir syntax here is MPICH's (hydra)")
    (tmp_path / "host0").mkdir()
    (tmp_path / "host1").mkdir()
    os.symlink(smollm2_path(), tmp_path / "host0" / "model.gguf")
    args = ["--gguf", "model.gguf", "--weights-from-rank0", "--pp", "2", "--max-new-tokens", "6",
            "--compare-serial", "--json", "out.json"]
    cmd = launch.mpiexec()
    for r in range(2):
        cmd += (["-n", "1", "-wdir", str(tmp_path / f"host{r}"), sys.executable, "-m", "mpi4py", "-m",
                 "mpipar.generate"] + args + ([":"] if r == 0 else []))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((tmp_path / "host0" / "out.json").read_text())
    assert data["serial"]["tokens_identical"] and data["serial"]["bitwise_equal"]  # tp = 1 per stage
    assert data["pipeline"]["stages"] == 2 and not os.listdir(tmp_path / "host1")
