def kv_heads_of(n_head, n_kv_head, p, r):
    "The key/value heads (start, stop) that rank r of p reads, its query heads cut as np.array_split cuts them."
    base, extra = divmod(n_head, p)                  # query heads: the first n_head mod p ranks get one more
    first = r * base + min(r, extra)
    last = first + base + (1 if r < extra else 0) - 1
    group = n_head // n_kv_head                      # query heads per key/value head
    return first // group, last // group + 1         # the groups of its first and its last query head
