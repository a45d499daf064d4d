def memory_budget(config, dp, tp, pp, tp_rank, pp_rank):
    "Bytes of parameters, gradients and AdamW's m and v (float32) on one rank of a dp x tp x pp mesh."
    from mpipar.models.params import owned, param_shapes
    from mpipar.parallel.pipeline_stage import stage_names
    d, head_dim = config.n_embd, config.n_embd // config.n_head
    heads, hidden, vocab = (owned(config, unit, tp, tp_rank) for unit in ("heads", "hidden", "vocab"))
    mine = {"heads": (heads.stop - heads.start) * head_dim, "hidden": hidden.stop - hidden.start,
            "vocab": vocab.stop - vocab.start}
    cut = {"attn.c_attn.weight": (d, 3 * mine["heads"]), "attn.c_attn.bias": (3 * mine["heads"],),
           "attn.c_proj.weight": (mine["heads"], d), "mlp.c_fc.weight": (d, mine["hidden"]),
           "mlp.c_fc.bias": (mine["hidden"],), "mlp.c_proj.weight": (mine["hidden"], d),
           "wte.weight": (mine["vocab"], d)}          # what tensor parallelism cuts; the rest is replicated
    shapes = param_shapes(config)
    params = 0
    for name in stage_names(config, pp_rank, pp):    # this stage's blocks; wte on the first and the last
        shape = cut.get(name.split(".", 2)[-1] if name.startswith("h.") else name, shapes[name])
        params += int(np.prod(shape))
    return 16 * params                               # 4 bytes each: the weight, its gradient, m and v
