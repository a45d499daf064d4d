"""python -m mpipar.train --overlap: the three ways of summing gradients train alike, and a
contradictory or impossible choice is one clear error."""
from jobs import assert_one_clear_error
import pytest

from mpipar import launch
from mpipar.collectives.progress import thread_level_problem

TINY = ["--preset", "tiny", "--steps", "3", "--quiet"]


@pytest.mark.skipif(thread_level_problem() is not None, reason="no MPI_THREAD_MULTIPLE here")
def test_thread_and_the_default_poll_give_the_same_losses():
    thread = launch.run("mpipar.train", n=2, args=TINY + ["--overlap", "thread"]).data
    poll = launch.run("mpipar.train", n=2, args=TINY).data
    assert (thread["settings"]["overlap"], poll["settings"]["overlap"]) == ("thread", "poll")
    # the same ring on the same buckets in the same order: the same bits, step after step
    assert thread["loss"] == poll["loss"] and len(thread["loss"]) == 3
    assert all(b["start"] <= b["end"] for b in thread["timeline"][1])


@pytest.mark.parametrize("args, message", [
    (["--overlap", "thread", "--no-overlap"], "--no-overlap contradicts --overlap thread"),
    (["--overlap", "thread", "--pp", "2"], "--overlap thread: pipelines (--pp) reduce"),
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
    (["--in-flight", "2"], "--in-flight is for --overlap thread, not poll"),
    (["--dp-micro-batches", "100000"], "--dp-micro-batches: micro_batches=100000 exceeds"),
])
def test_dp_micro_batch_options_that_cannot_run_are_one_clear_error(args, message):
    assert_one_clear_error("mpipar.train", 2, TINY + args, message)
