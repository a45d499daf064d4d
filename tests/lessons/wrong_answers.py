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



def reduce_scatter_even_blocks(comm, x):
    "Cuts n // p elements per block and leaves the remainder to the last: right only when p divides n."
    p, r = comm.Get_size(), comm.Get_rank()
    size = len(x) // p
    bounds = [i * size for i in range(p)] + [len(x)]
    blocks = [x[bounds[i]:bounds[i + 1]].copy() for i in range(p)]
    for s in range(p - 1):
        send, mine = blocks[(r - s - 1) % p], blocks[(r - s - 2) % p]
        part = np.empty_like(mine)
        comm.Sendrecv(send, dest=(r + 1) % p, recvbuf=part, source=(r - 1) % p)
        mine += part
    return blocks[r]


def reduce_scatter_off_by_one(comm, x):
    "The numbering of lesson 01's allreduce (rank r starts with block r): rank r ends with block r + 1."
    p, r = comm.Get_size(), comm.Get_rank()
    blocks = [b.copy() for b in np.array_split(x, p)]
    incoming = np.empty_like(blocks[0])
    for s in range(p - 1):
        send, mine = blocks[(r - s) % p], blocks[(r - s - 1) % p]
        part = incoming[:mine.size]
        comm.Sendrecv(send, dest=(r + 1) % p, recvbuf=part, source=(r - 1) % p)
        mine += part
    return blocks[(r + 1) % p]


def reduce_scatter_whole_vectors(comm, x):
    "Right answer, wrong traffic: passes whole vectors round the ring, p - 1 times n elements."
    p, r = comm.Get_size(), comm.Get_rank()
    total, travelling = x.copy(), x.copy()
    for _ in range(p - 1):
        arriving = np.empty_like(x)
        comm.Sendrecv(travelling, dest=(r + 1) % p, recvbuf=arriving, source=(r - 1) % p)
        total += arriving
        travelling = arriving
    return np.array_split(total, p)[r]


def reduce_scatter_with_allreduce(comm, x):
    "The library's collective instead of point-to-point calls."
    total = np.empty_like(x)
    comm.Allreduce(x, total)
    return np.array_split(total, comm.Get_size())[comm.Get_rank()]


def ring_sum_rounding_once_always(parts, rounding):
    "Ignores rounding: the float32 sum, rounded once."
    import ml_dtypes
    total = parts[0].astype(np.float32)
    for part in parts[1:]:
        total = total + part
    return total.astype(ml_dtypes.bfloat16).astype(np.float32)


def ring_sum_rounding_the_parts(parts, rounding):
    "Rounds every rank's own part to bfloat16 too, not only what travels."
    import ml_dtypes
    def bf16(a):
        return a.astype(ml_dtypes.bfloat16).astype(np.float32)
    total = bf16(parts[0])
    for part in parts[1:]:
        total = (bf16(total) if rounding == "per_hop" else total) + bf16(part)
    return bf16(total)


def ring_sum_no_final_rounding(parts, rounding):
    "Forgets that the finished block is sent in 16 bits by the allgather."
    import ml_dtypes
    total = parts[0].astype(np.float32)
    for part in parts[1:]:
        if rounding == "per_hop":
            total = total.astype(ml_dtypes.bfloat16).astype(np.float32)
        total = total + part
    return total


def kv_heads_split_on_their_own(n_head, n_kv_head, p, r):
    "Cuts the key/value heads like the query heads, as if they were independent."
    blocks = np.array_split(np.arange(n_kv_head), p)
    return (int(blocks[r][0]), int(blocks[r][-1]) + 1) if len(blocks[r]) else (0, 0)


def kv_heads_whole_groups_only(n_head, n_kv_head, p, r):
    "Forgets a group only partly covered by the rank's last query heads."
    sizes = [len(b) for b in np.array_split(np.arange(n_head), p)]
    first, stop = sum(sizes[:r]), sum(sizes[:r + 1])
    group = n_head // n_kv_head
    return first // group, max(stop // group, first // group + 1)


def memory_budget_divided_by_dp(config, dp, tp, pp, tp_rank, pp_rank):
    "Right per replica, then divided over the data-parallel ranks (ZeRO would; plain DP does not)."
    from mpipar.models.params import param_shapes, shard_index, spec
    from mpipar.parallel.pipeline_stage import stage_names
    total = 0
    for name in stage_names(config, pp_rank, pp):
        shape, split = list(param_shapes(config)[name]), spec(name).split
        if split is not None:
            shape[split.axis] = len(shard_index(config, split, tp, tp_rank))
        total += int(np.prod(shape))
    return 16 * total // dp


def memory_budget_everything_divided(config, dp, tp, pp, tp_rank, pp_rank):
    "All parameters divided by tp * pp: forgets the replicated ones and the tied embedding's copy."
    from mpipar.models.params import param_shapes
    n = sum(int(np.prod(s)) for s in param_shapes(config).values())
    return 16 * n // (tp * pp)

def zero1_averaged(grads, params, m, v, t, lr, betas=(0.9, 0.98), eps=1e-8):
    "Averages the ranks' gradients instead of summing them (each rank's loss is already a share)."
    from mpipar.collectives.blocks import split_offsets
    from mpipar.models.optim import adamw_update
    p, offsets = len(grads), split_offsets(len(params), len(grads))
    out = []
    for r in range(p):
        mine = slice(offsets[r], offsets[r + 1])
        g = sum(x[mine] for x in grads) / np.float32(p)
        block = params[mine].copy()
        adamw_update(block, g.astype(np.float32), m[r], v[r], lr, betas, eps, 0.0,
                     1 - betas[0] ** t, 1 - betas[1] ** t)
        out.append(block)
    return np.concatenate(out)


def zero1_whole_moments(grads, params, m, v, t, lr, betas=(0.9, 0.98), eps=1e-8):
    "Keeps AdamW's moments for every parameter on rank 0: plain data parallelism's optimizer."
    from mpipar.models.optim import adamw_update
    g = grads[0].copy()
    for other in grads[1:]:
        g += other
    if m[0].shape != params.shape:
        m[0], v[0] = np.zeros_like(params), np.zeros_like(params)
    out = params.copy()
    adamw_update(out, g, m[0], v[0], lr, betas, eps, 0.0, 1 - betas[0] ** t, 1 - betas[1] ** t)
    return out


WRONG = {
    "02_columns": [(columns_even_only, "n = 8, p = 3: rank 0 got columns (0, 2), want (0, 3)"),
                   (columns_extra_at_the_end, "want (0, 3)")],
    "04_buckets": [(buckets_close_when_full, "bucket(s)"), (buckets_first_layer_first, "want")],
    "00_rotate": [(rotate_the_wrong_way, "p = 3, k = 1: rank 0 returned rank 1's array, not rank 2's"),
                  (rotate_by_one_always, "k = 2")],
    "03_argmax": [(combine_highest_index_on_ties, "on a tie the lowest index"),
                  (combine_first_shard, "want")],
    "01_reduce_scatter": [(reduce_scatter_even_blocks, "p = 2, n = 1001: rank 0 returned 500 element(s), want 501"),
                          (reduce_scatter_off_by_one, "p = 2, n = 12: rank 0 returned the sum of block 1, not of block 0"),
                          (reduce_scatter_whole_vectors, "p = 2, n = 12: rank 0 sent 96 bytes in 1 message(s); "
                                                         "mpipar's ring sends 48 bytes"),
                          (reduce_scatter_with_allreduce, "comm.Allreduce: this exercise builds the collective")],
    "05_ring_sum": [(ring_sum_rounding_once_always, "rounding 'per_hop', p = 2"),
                    (ring_sum_rounding_the_parts, "differ from allreduce_lowp"),
                    (ring_sum_no_final_rounding, "the finished block is rounded to bfloat16")],
    "06_kv_heads": [(kv_heads_split_on_their_own, "n_head = 9, n_kv_head = 3, p = 2: rank 1 got kv heads (2, 3), want (1, 3)"),
                    (kv_heads_whole_groups_only, "want (0, 2)")],
    "08_memory_budget": [(memory_budget_divided_by_dp, "dp replicates, it does not divide"),
                         (memory_budget_everything_divided, "want")],
    "09_zero1": [(zero1_averaged, "AdamW on the gradients summed in rank order"),
                 (zero1_whole_moments, "each rank keeps only its own block")],
    "07_schedule": [(schedule_gpipe, "rule 3 broken -- rank 0 holds 4 micro-batches"),
                    (schedule_forgotten_step, "rule 1 broken"),
                    (schedule_one_at_a_time, "rule 2 broken")],
}
