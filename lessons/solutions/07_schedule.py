def my_schedule():
    "One string per rank, p = 3 ranks, m = 4 micro-batches."
    return ["F0 F1 F2 B0 F3 B1 B2 B3",    # rank 0: p - 1 = 2 warm-up forwards, then 1F1B
            "F0 F1 B0 F2 B1 F3 B2 B3",    # rank 1: 1 warm-up forward
            "F0 B0 F1 B1 F2 B2 F3 B3"]    # rank 2: the last stage, no warm-up
