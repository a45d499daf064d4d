def combine(candidates):
    "The global argmax from each shard's (best value, global index), in rank order."
    best_value, best_index = candidates[0]
    for value, index in candidates[1:]:
        # a larger value wins; on a tie the lower index, as np.argmax keeps the first maximum
        if value > best_value or (value == best_value and index < best_index):
            best_value, best_index = value, index
    return best_index
