def reduce_scatter(comm, x):
    "Block r (np.array_split's) of the sum of every rank's x, on rank r: a ring of p - 1 Sendrecv."
    p, r = comm.Get_size(), comm.Get_rank()
    right, left = (r + 1) % p, (r - 1) % p
    blocks = [b.copy() for b in np.array_split(x, p)]   # this rank's partial sums, block by block
    incoming = np.empty_like(blocks[0])                 # blocks[0] is a largest block
    for s in range(p - 1):
        # block b starts at rank b + 1 and travels right, so it ends, complete, at rank b:
        # in step s rank r passes on block r - s - 1 and receives block r - s - 2
        send, mine = blocks[(r - s - 1) % p], blocks[(r - s - 2) % p]
        part = incoming[:mine.size]
        comm.Sendrecv(send, dest=right, recvbuf=part, source=left)
        mine += part
    return blocks[r]
