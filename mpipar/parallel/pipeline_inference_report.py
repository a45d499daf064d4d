"""What a pipelined generation measured, gathered from every rank: the stages, their layers, the
micro-batches, each rank's time blocked on pipeline messages (the bubble) in the prefill and in
generation, beside the ideal bubble of equal stages (GPipe's forward, Huang et al. 2019;
Narayanan et al. 2021, sec. 2.2), tokens per second, and the bytes sent point to point.

    report = gather(world, mesh, pipe)   # every rank calls it; small control data only
    print(summary(report))
"""
from .pipeline_inference import predicted_bubble
from .pipeline_inference_stage import layers_per_stage

__all__ = ["gather", "summary"]


def gather(world, mesh, pipe):
    """The ``pipeline`` entry of a generation's JSON, the same on every rank (``pipe`` has run
    ``generate``); rows of ``per_rank`` are in world rank order."""
    f = pipe.figures
    mine = dict(rank=world.Get_rank(), stage=mesh.pp_rank, tp_rank=mesh.tp_rank,
                prefill=f["prefill"], decode=f["decode"], seconds=f["seconds"],
                p2p_messages_sent=f["messages_sent"], p2p_bytes_sent=f["bytes_sent"],
                weights_per_token=pipe.stage.weights_per_token())
    rows = world.allgather(mine)
    work = [sum(r["weights_per_token"] for r in rows if r["stage"] == k) for k in range(mesh.pp)]
    sequences = sum(f["micro_batch_sizes"])
    decode_seconds = max(r["decode"]["seconds"] for r in rows)
    prefill_seconds = max(r["prefill"]["seconds"] for r in rows)
    decode_tokens = sequences * max(f["steps"] - 1, 0)  # step 0's tokens come from the prefill
    return dict(stages=mesh.pp, tp=mesh.tp, layers_per_stage=layers_per_stage(pipe.stage.config.n_layer,
                                                                              mesh.pp),
                micro_batches=f["micro_batches"], micro_batch_sizes=f["micro_batch_sizes"],
                sequences=sequences, steps=f["steps"], prefill_seconds=prefill_seconds,
                decode_seconds=decode_seconds,
                decode_tokens_per_second=decode_tokens / decode_seconds if decode_seconds else None,
                predicted_bubble=predicted_bubble(mesh.pp, f["micro_batches"], work),
                weights_per_token_per_stage=work,
                p2p_bytes_sent=sum(r["p2p_bytes_sent"] for r in rows), per_rank=rows)


def summary(report):
    """Lines for people: the split, then each rank's bubble in both phases."""
    r = report
    layers = "+".join(str(n) for n in r["layers_per_stage"])
    rate = r["decode_tokens_per_second"]
    lines = [f"pipeline: {r['stages']} stages x tp {r['tp']} (layers {layers}), {r['sequences']} "
             f"sequence(s) in {r['micro_batches']} micro-batch(es); prefill {r['prefill_seconds'] * 1e3:.0f} "
             f"ms, generation {rate or 0:.1f} tokens/s; {r['p2p_bytes_sent'] / 1e3:.1f} kB point to point",
             f"bubble (time blocked on the pipeline's messages), ideal for equal stages: prefill "
             f"{r['predicted_bubble']['prefill']:.0%}, generation {r['predicted_bubble']['decode']:.0%}",
             "  generation's prediction weighs each stage by its matrix products per token (the last "
             "also runs the LM head)"]
    for row in r["per_rank"]:
        predicted = r["predicted_bubble"]["decode_per_stage"][row["stage"]]
        lines.append(f"  rank {row['rank']} (stage {row['stage']}, tp {row['tp_rank']}): prefill "
                     f"{row['prefill']['bubble']:.0%} of {row['prefill']['seconds'] * 1e3:.0f} ms, "
                     f"generation {row['decode']['bubble']:.0%} of {row['decode']['seconds']:.2f} s "
                     f"(predicted {predicted:.0%})")
    return "\n".join(lines)
