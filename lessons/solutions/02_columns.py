def columns_of(n, p, r):
    "Rank r's block (start, stop) of n columns over p ranks, cut as np.array_split cuts them."
    base, extra = divmod(n, p)           # every block gets base columns; the first extra one more
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)
