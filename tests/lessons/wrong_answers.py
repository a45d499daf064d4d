"""Planted wrong answers, one or more per exercise: each must fail its check."""
import numpy as np


def rotate_the_wrong_way(comm, x, k):
    "Sends left and receives from the right: the same as right at p = 2, wrong at p = 3."
    rank, p = comm.Get_rank(), comm.Get_size()
    out = np.empty_like(x)
    comm.Sendrecv(x, dest=(rank - k) % p, recvbuf=out, source=(rank + k) % p)
    return out


def rotate_by_one_always(comm, x, k):
    "Ignores k."
    rank, p = comm.Get_rank(), comm.Get_size()
    out = np.empty_like(x)
    comm.Sendrecv(x, dest=(rank + 1) % p, recvbuf=out, source=(rank - 1) % p)
    return out


def combine_highest_index_on_ties(candidates):
    "max() of (value, index) tuples: on a tie the higher index wins."
    return max(candidates)[1]


def combine_first_shard(candidates):
    "Forgets the other shards."
    return candidates[0][1]


def schedule_gpipe():
    "GPipe: completes in time, but rank 0 holds all four micro-batches."
    return ["F0 F1 F2 F3 B0 B1 B2 B3"] * 3


def schedule_forgotten_step():
    return ["F0 F1 F2 B0 F3 B1 B2 B3", "F0 F1 B0 F2 B1 F3 B2", "F0 B0 F1 B1 F2 B2 F3 B3"]


def schedule_one_at_a_time():
    "Valid, but a pipeline with nothing in it: too slow."
    return ["F0 B0 F1 B1 F2 B2 F3 B3"] * 3


WRONG = {
    "00_rotate": [(rotate_the_wrong_way, "p = 3, k = 1: rank 0 returned rank 1's array, not rank 2's"),
                  (rotate_by_one_always, "k = 2")],
    "03_argmax": [(combine_highest_index_on_ties, "on a tie the lowest index"),
                  (combine_first_shard, "want")],
    "07_schedule": [(schedule_gpipe, "rule 3 broken -- rank 0 holds 4 micro-batches"),
                    (schedule_forgotten_step, "rule 1 broken"),
                    (schedule_one_at_a_time, "rule 2 broken")],
}
