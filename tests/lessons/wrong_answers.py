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


def columns_even_only(n, p, r):
    "Right only when p divides n."
    size = n // p
    return r * size, (r + 1) * size if r < p - 1 else n


def columns_extra_at_the_end(n, p, r):
    "The longer blocks last, not first."
    base, extra = divmod(n, p)
    short = p - extra
    start = r * base + max(0, r - short)
    return start, start + base + (1 if r >= short else 0)


def buckets_close_when_full(shapes, bucket_bytes):
    "Closes a bucket only once it has gone over the limit."
    out, used = [[]], 0
    for name, shape in shapes:
        out[-1].append(name)
        used += 4 * int(np.prod(shape))
        if used >= bucket_bytes:
            out.append([])
            used = 0
    return [b for b in out if b]


def buckets_first_layer_first(shapes, bucket_bytes):
    "The right rule, in forward's order instead of backward's."
    out, used = [], 0
    for name, shape in reversed(shapes):
        nbytes = 4 * int(np.prod(shape))
        if not out or used + nbytes > bucket_bytes:
            out.append([])
            used = 0
        out[-1].append(name)
        used += nbytes
    return out


WRONG = {
    "02_columns": [(columns_even_only, "n = 8, p = 3: rank 0 got columns (0, 2), want (0, 3)"),
                   (columns_extra_at_the_end, "want (0, 3)")],
    "04_buckets": [(buckets_close_when_full, "bucket(s)"), (buckets_first_layer_first, "want")],
    "00_rotate": [(rotate_the_wrong_way, "p = 3, k = 1: rank 0 returned rank 1's array, not rank 2's"),
                  (rotate_by_one_always, "k = 2")],
    "03_argmax": [(combine_highest_index_on_ties, "on a tie the lowest index"),
                  (combine_first_shard, "want")],
    "07_schedule": [(schedule_gpipe, "rule 3 broken -- rank 0 holds 4 micro-batches"),
                    (schedule_forgotten_step, "rule 1 broken"),
                    (schedule_one_at_a_time, "rule 2 broken")],
}
