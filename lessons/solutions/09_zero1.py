def zero1_step(grads, params, m, v, t, lr, betas=(0.9, 0.98), eps=1e-8):
    "ZeRO-1 on p emulated ranks: reduce-scatter the gradients, update each block, gather the blocks."
    import numpy as np
    from mpipar.collectives.blocks import split_offsets
    from mpipar.models.optim import adamw_update
    p, n = len(grads), len(params)
    offsets = split_offsets(n, p)
    blocks = []
    for r in range(p):                                   # what rank r does
        mine = slice(offsets[r], offsets[r + 1])
        g = grads[0][mine].copy()
        for other in grads[1:]:                          # reduce-scatter: block r, summed in rank order
            g += other[mine]
        block = params[mine].copy()                      # stage 1: every rank has every parameter
        adamw_update(block, g, m[r], v[r], lr, betas, eps, 0.0, 1 - betas[0] ** t, 1 - betas[1] ** t)
        blocks.append(block)
    return np.concatenate(blocks)                         # the allgather
