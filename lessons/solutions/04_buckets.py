def buckets(shapes, bucket_bytes):
    "Names of float32 gradients (in backward's order) grouped into buckets of at most bucket_bytes."
    out, used = [], 0
    for name, shape in shapes:
        nbytes = 4 * int(np.prod(shape))
        if not out or used + nbytes > bucket_bytes:   # close the bucket: the next one would overflow
            out.append([])
            used = 0
        out[-1].append(name)
        used += nbytes
    return out
