def rotate(comm, x, k):
    "Every rank returns the array of the rank k places to its left (x: a NumPy array)."
    rank, p = comm.Get_rank(), comm.Get_size()
    right, left = (rank + k) % p, (rank - k) % p
    out = np.empty_like(x)
    comm.Sendrecv(x, dest=right, recvbuf=out, source=left)  # everyone sends and receives at once
    return out
