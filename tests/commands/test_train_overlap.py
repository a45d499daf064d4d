"""python -m mpipar.train --overlap: the three ways of summing gradients train alike, so does the
asynchronous linear of --tp with thread, so do the three ways of moving a pipeline's messages
(--pp), and a contradictory or impossible choice is one clear error."""
import re

from jobs import assert_one_clear_error
import pytest

from mpipar import launch, train_options
from mpipar.collectives.progress import thread_level_problem
from mpipar.train import build_parser, settings_from

TINY = ["--preset", "tiny", "--steps", "3", "--quiet"]


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
def test_thread_and_the_default_poll_give_the_same_losses():
    thread = launch.run("mpipar.train", n=2, args=TINY + ["--overlap", "thread"]).data
    poll = launch.run("mpipar.train", n=2, args=TINY).data
    assert (thread["settings"]["overlap"], poll["settings"]["overlap"]) == ("thread", "poll")
    # the same ring on the same buckets in the same order: the same bits, step after step
    assert thread["loss"] == poll["loss"] and len(thread["loss"]) == 3
    assert all(b["start"] <= b["end"] for b in thread["timeline"][1])


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
def test_pipeline_messages_on_the_thread_give_the_same_losses():
    """With --pp the thread carries the activations and gradients between stages: the same
    messages, so the same bits as the default poll and as none."""
    pp = TINY + ["--pp", "2", "--micro-batches", "4"]
    runs = {mode: launch.run("mpipar.train", n=2, args=pp + ["--overlap", mode]).data
            for mode in ("thread", "poll", "none")}
    assert {mode: d["settings"]["overlap"] for mode, d in runs.items()} == {m: m for m in runs}
    assert runs["thread"]["loss"] == runs["poll"]["loss"] == runs["none"]["loss"]
    assert runs["thread"]["pipeline"]["p2p_bytes"] == runs["poll"]["pipeline"]["p2p_bytes"] > 0


def settings(*extra):
    return train_options.settings_from(build_parser().parse_args(TINY + list(extra)), 2)


def test_thread_with_pp_is_accepted_where_dp_alone_refuses():
    """Every rank decides from its arguments alone, before any message."""
    if thread_level_problem() is None:
        assert settings("--pp", "2", "--overlap", "thread")["overlap"] == "thread"
        assert settings("--pp", "2", "--overlap", "thread", "--deterministic")["deterministic"]
        with pytest.raises(ValueError, match="--deterministic adds the data-parallel gradients"):
            settings("--overlap", "thread", "--deterministic")
    else:
        with pytest.raises(ValueError, match="MPI_THREAD_MULTIPLE"):
            settings("--pp", "2", "--overlap", "thread")
    assert settings("--pp", "2", "--no-overlap")["overlap"] == "none"
    assert settings("--pp", "2")["overlap"] == "poll"
    assert "With --pp" in build_parser().format_help()


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
def test_the_async_linear_gives_the_same_losses():
    thread = launch.run("mpipar.train", n=2, args=TINY + ["--tp", "2", "--overlap", "thread"]).data
    none = launch.run("mpipar.train", n=2, args=TINY + ["--tp", "2", "--overlap", "none"]).data
    assert (thread["settings"]["tp_async"], none["settings"]["tp_async"]) == (True, False)
    assert thread["loss"] == none["loss"] and len(thread["loss"]) == 3  # the same reductions


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
@pytest.mark.parametrize("args, world, tp_async", [
    (["--tp", "2", "--overlap", "thread"], 2, True),
    (["--tp", "2", "--overlap", "thread", "--sp"], 4, True),  # and dp = 2: two threads
    (["--tp", "2", "--overlap", "thread", "--deterministic"], 2, True),  # dp = 1: TP's alone
    (["--tp", "2", "--overlap", "poll"], 2, False),
    (["--overlap", "thread"], 2, False),  # data parallelism's thread alone
    (["--tp", "2", "--pp", "2", "--overlap", "thread"], 4, False),  # the pipeline's messages
])
def test_which_settings_run_the_async_linear(args, world, tp_async):
    assert settings_from(build_parser().parse_args(TINY + args), world)["tp_async"] is tp_async


@pytest.mark.parametrize("args, world, message", [
    (["--tp", "2", "--overlap", "thread", "--deterministic"], 4, "--deterministic adds the data-"),
])
def test_what_the_async_linear_cannot_combine_with(args, world, message):
    with pytest.raises(ValueError, match="^" + re.escape("--overlap thread: " + message)):
        settings_from(build_parser().parse_args(TINY + args), world)


@pytest.mark.parametrize("args, message", [
    (["--overlap", "thread", "--no-overlap"], "--no-overlap contradicts --overlap thread"),
    (["--overlap", "thread", "--pp", "2", "--no-overlap"], "--no-overlap contradicts --overlap thread"),
    (["--overlap", "thread", "--zero", "1"], "--overlap thread: ZeRO polls its reduce-scatters"),
    (["--overlap", "thread", "--deterministic"], "--overlap thread: --deterministic adds the"),
])
def test_contradictions_are_one_clear_error(args, message):
    assert_one_clear_error("mpipar.train", 2, TINY + args, message)


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
def test_dp_micro_batches_train_alike_polled_and_on_the_thread():
    micro = TINY + ["--dp-micro-batches", "2"]
    thread = launch.run("mpipar.train", n=2, args=micro + ["--overlap", "thread",
                                                           "--in-flight", "2"]).data
    poll = launch.run("mpipar.train", n=2, args=micro).data
    assert (thread["settings"]["dp_micro_batches"], thread["settings"]["in_flight"]) == (2, 2)
    assert thread["loss"] == poll["loss"] and len(poll["loss"]) == 3
    last = launch.run("mpipar.train", n=2, args=micro + ["--dp-sync", "last"]).data
    assert last["settings"]["dp_sync"] == "last" and len(last["loss"]) == 3


@pytest.mark.parametrize("args, message", [
    (["--dp-micro-batches", "2", "--pp", "2"], "--dp-micro-batches / --dp-sync: the pipeline"),
    (["--dp-sync", "last"], "--dp-sync needs --dp-micro-batches"),
    (["--in-flight", "2"], "with --overlap thread, not poll"),
    (["--dp-micro-batches", "100000"], "--dp-micro-batches: micro_batches=100000 exceeds"),
])
def test_dp_micro_batch_options_that_cannot_run_are_one_clear_error(args, message):
    assert_one_clear_error("mpipar.train", 2, TINY + args, message)


def test_deterministic_reaches_the_tensor_parallel_reductions():
    """--deterministic fixes the order of every sum: the replicas' gradients and, with --tp, the
    row-parallel partial sums too (TPGroup(deterministic=True): gathered, added in rank order)."""
    from mpi4py import MPI

    from mpipar.models import GPTConfig
    from mpipar.parallel.mesh import Mesh
    from mpipar.train import build_trainer

    config = GPTConfig(vocab_size=16, n_ctx=8, n_embd=16, n_head=2, n_layer=1)
    for flag in (True, False):
        s = settings(*(["--deterministic"] if flag else []))
        with Mesh(MPI.COMM_SELF, 1, 1) as mesh:
            trainer, model = build_trainer(s, config, mesh)
            assert model().tp.deterministic is flag and trainer.deterministic is flag
