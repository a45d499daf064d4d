"""A checkpoint is one unit: saved whole into a folder beside the target and swapped in, so a
save killed at any moment leaves the previous checkpoint loadable; weights and config.json from
different saves never load together (config.json records the weights' sha256); files get
ordinary permissions and no temporary is left after a normal save."""
import json
import os
import signal

import numpy as np
import pytest

from mpipar.models import GPTConfig, checkpoint, init_params
from mpipar.models.checkpoint import load_model, save_params

CFG = GPTConfig(vocab_size=50, n_ctx=32, n_embd=24, n_head=3, n_layer=1)


def loads_as(folder, params):
    _, loaded, _ = load_model(weights=os.path.join(folder, "model.safetensors"))
    return all(np.array_equal(loaded[k], params[k]) for k in params)


def test_a_normal_save_leaves_the_checkpoint_alone_with_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        save_params(CFG, init_params(CFG, 1), tmp_path / "ck", metadata={"steps": 3})
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # nothing hidden beside it
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "model.safetensors"]
    for name in ("config.json", "model.safetensors"):
        assert os.stat(tmp_path / "ck" / name).st_mode & 0o777 == 0o644
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())["mpipar"]
    assert meta["steps"] == 3 and len(meta["weights_sha256"]) == 64
    assert loads_as(tmp_path / "ck", init_params(CFG, 1))


def test_a_save_replaces_the_previous_checkpoint_whole(tmp_path):
    save_params(CFG, init_params(CFG, 1), tmp_path / "ck")
    save_params(CFG, init_params(CFG, 2), tmp_path / "ck")
    assert loads_as(tmp_path / "ck", init_params(CFG, 2)) and os.listdir(tmp_path) == ["ck"]


@pytest.mark.parametrize("when", ["weights", "config"])
def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path, when, monkeypatch):
    """A child process saves over a good checkpoint and is SIGKILLed half-way through writing the
    weights, or after the weights while writing config.json."""
    import safetensors.numpy
    save_params(CFG, init_params(CFG, 1), tmp_path / "ck")
    pid = os.fork()
    if pid == 0:  # the child: a save that dies
        real_save = safetensors.numpy.save_file
        real_dump = json.dump

        def half_then_die(tensors, path, metadata=None):
            with open(path, "wb") as f:
                f.write(b"\0" * 100)
            os.kill(os.getpid(), signal.SIGKILL)

        def dump_then_die(obj, f, **kw):
            f.write("{\"model_type\": ")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        if when == "weights":
            safetensors.numpy.save_file = half_then_die
        else:
            safetensors.numpy.save_file = real_save
            json.dump = dump_then_die
        try:
            save_params(CFG, init_params(CFG, 2), tmp_path / "ck")
        finally:
            json.dump = real_dump
            os._exit(0)  # never reached when killed
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert loads_as(tmp_path / "ck", init_params(CFG, 1))  # the previous model, whole
    # what remains of the new one is hidden beside it and shadows nothing
    assert [n for n in os.listdir(tmp_path) if n != "ck"] == [f".ck.saving-{pid}"]


def test_weights_and_config_of_different_saves_do_not_load(tmp_path):
    save_params(CFG, init_params(CFG, 1), tmp_path / "a")
    save_params(CFG, init_params(CFG, 2), tmp_path / "b")
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="is not the file its config.json was saved with"):
        load_model(weights=tmp_path / "a" / "model.safetensors")


def test_a_folder_with_other_files_is_refused_and_kept(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert "holds other files than a checkpoint" in checkpoint.folder_problem(tmp_path / "mine")
    with pytest.raises(ValueError, match="notes.txt"):
        save_params(CFG, init_params(CFG, 1), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert checkpoint.folder_problem(tmp_path / "new" / "deeper") is None


def test_a_config_edited_after_saving_is_refused(tmp_path):
    """n_head changes no tensor's shape: without the shape saved inside the weights, a config.json
    that says 4 heads instead of 3 would load and compute garbage."""
    save_params(CFG, init_params(CFG, 1), tmp_path / "ck")
    path = tmp_path / "ck" / "config.json"
    hf = json.loads(path.read_text())
    path.write_text(json.dumps(dict(hf, n_head=4)))
    with pytest.raises(ValueError, match="says n_head = 4, but .* was saved with n_head = 3"):
        load_model(weights=tmp_path / "ck" / "model.safetensors")
