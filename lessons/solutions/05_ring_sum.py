def ring_sum(parts, rounding):
    "One block of a bfloat16 ring allreduce from the ranks' float32 parts, in the order the ring visits them."
    import ml_dtypes                                    # NumPy has no bfloat16 of its own
    def bf16(a):                                        # round to the wire and back (exact widening)
        return a.astype(ml_dtypes.bfloat16).astype(np.float32)
    total = parts[0].astype(np.float32)
    for part in parts[1:]:                              # one hop: the partial arrives, the rank adds its own
        arriving = bf16(total) if rounding == "per_hop" else total
        total = arriving + part                         # float32 addition
    return bf16(total)                                  # the finished block goes out in 16 bits
