"""Peak resident memory: it counts what was really allocated and touched."""
from mpi4py import MPI
import numpy as np

from mpipar.measure.memory import peak_rss_bytes, peak_rss_per_rank


def test_peak_counts_a_block_larger_than_everything_so_far():
    before = peak_rss_bytes()
    block = np.ones(before + (64 << 20), np.uint8)  # every page written: resident, all of it
    touched = peak_rss_bytes()
    del block
    assert touched >= before + (64 << 20)
    assert peak_rss_bytes() == touched  # a peak never falls


def test_per_rank_on_one_process():
    rss = peak_rss_per_rank(MPI.COMM_SELF)
    assert rss == [rss[0]] and 10 << 20 <= rss[0] <= peak_rss_bytes()
