"""Ways to split work over ranks: the rank mesh, tensor parallelism, gradient buckets, data parallelism."""
