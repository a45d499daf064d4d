"""What ``python -m mpipar.demo`` prints: the report (the same dict ``--json`` writes) as text."""
import textwrap

from .measure.units import format_bytes

YES = {True: "yes", False: "NO"}


def _span(first_stop):
    """[3, 6] -> '3-5': the first and last index of a range."""
    return f"{first_stop[0]}-{first_stop[1] - 1}"


def sharding_table(r):
    """Who holds what: heads (and key/value heads where they differ), MLP columns, vocab rows."""
    gqa = r["config"].get("n_kv_head", r["config"]["n_head"]) != r["config"]["n_head"]
    cols = [("rank", 4), ("heads", 9)] + ([("key/value heads", 15)] if gqa else []) + [
        ("MLP columns", 13), ("vocab rows", 13), ("parameters", 11)]
    lines = ["  " + "  ".join(f"{name:>{w}}" for name, w in cols)]
    for s in r["sharding"]:
        cells = [str(s["rank"]), _span(s["heads"])] + ([_span(s["kv_heads"])] if gqa else []) + [
            _span(s["mlp_columns"]), _span(s["vocab_rows"]), format_bytes(s["param_bytes"])]
        lines.append("  " + "  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)))
    if gqa:
        n_kv, p = r["config"]["n_kv_head"], r["world_size"]
        held = sum(s["kv_heads"][1] - s["kv_heads"][0] for s in r["sharding"])
        if held > n_kv:
            lines.append(f"  the {n_kv} key/value heads are held {held} times in all: a rank keeps "
                         f"every key/value head its query heads read (p = {p} > {n_kv})")
    return lines


def print_report(r, led):
    """Print the demo's report ``r`` and the ledger ``led`` of rank 0."""
    print("\nsharding (each rank reads and keeps only its slices):")
    print("\n".join(sharding_table(r)))
    print(f"  serial model: {format_bytes(r['serial_param_bytes'])} of parameters; peak memory of the "
          f"largest rank {format_bytes(r['peak_rss_bytes'])}")
    if r.get("chat"):
        c = r["chat"]
        print(f"\nuser: {c['message']}")
        for who in ("parallel", "serial"):
            answer = textwrap.fill(c[f"answer_{who}"].strip(), 96, subsequent_indent=" " * 12)
            print(f"  {who + ':':<9} {answer}")
    else:
        n_new = len(r["tokens_parallel"]) - r["prompt_length"]
        print(f"\ntoken ids of the first sequence: a prompt of {r['prompt_length']}, "
              f"then {n_new} generated greedily")
        print(f"  parallel: {r['tokens_parallel']}")
        print(f"  serial:   {r['tokens_serial']}")
    if r.get("task"):
        t = r["task"]
        print("\nheld-out sums (never seen in training): parallel and serial answers")
        for text, par, ser, want in t["examples"]:
            print(f"  {text:>9} = {par:<6} {ser:<6} {'ok' if par == ser == want else f'want {want}'}")
        print(f"  exact match on all {t['n']} held-out sums: parallel {100 * t['accuracy_parallel']:.1f}%,"
              f" serial {100 * t['accuracy_serial']:.1f}%")
    print_comparison(r)
    print_costs(r)
    print("\ncommunication ledger of rank 0:")
    print(led.summary())


def print_comparison(r):
    """Parallel against serial: tokens, bits, ULPs, the normalised error, per layer."""
    print(f"\nparallel vs {r['reference']} (logits of the {r['prompt_length']}-token prompt):")
    print(f"  tokens identical      {YES[r['tokens_identical']]}")
    print(f"  logits bitwise equal  {YES[r['bitwise_equal']]}")
    print(f"  max ULP distance      {r['max_ulp']:.0f}"
          + ("  (large where a logit is near 0: its ULP is tiny)" if r["max_ulp"] > 0 else ""))
    print(f"  max error             {r['max_normalized_error']:.3f} u * sum|h_k w_k| of the last matmul "
          f"(one {r['world_size']}-term sum in any order: <= {r['world_size'] - 1};\n"
          f"                        here the differences of {r['config']['n_layer']} layers add up)")
    print(f"  ranks agree           {YES[r['ranks_agree']]} (every rank holds identical logits)")
    print("  per layer, residual stream after each block (max ULP; max error in u * largest |x|):")
    layers = r["layers"]
    if len(layers) <= 12:
        print("    " + ", ".join(f"{x['layer']}: {x['max_ulp']:.0f} ULP, {x['max_error_vs_largest']:.2f}"
                               for x in layers))
    elif layers:
        same = sum(x["bitwise_equal"] for x in layers)
        lo, hi = (min(layers, key=lambda x: x["max_error_vs_largest"]),
                  max(layers, key=lambda x: x["max_error_vs_largest"]))
        print(f"    {same} of {len(layers)} layers bitwise equal; the max error ranges from "
              f"{lo['max_error_vs_largest']:.2f} (layer {lo['layer']}) to {hi['max_error_vs_largest']:.2f} "
              f"(layer {hi['layer']}); every layer is in --json")
    wire = r.get("comm_dtype", "float32")
    if wire != "float32" and r["world_size"] > 1:
        ratio = 2.0 ** (24 - {"float16": 11, "bfloat16": 8}[wire])
        print(f"  Every reduction and logit gather travelled as {wire} ({r['rounding']} rounding): "
              f"in units of {wire}'s u\n  the max error is {r['max_normalized_error'] / ratio:.3f} "
              f"(u_float32 / u_{wire} = 1/{ratio:.0f}).")
    elif not r["deterministic"] and r["world_size"] > 1:
        print("  Row-parallel layers add the ranks' partial sums in another order than one matmul, "
              "so the last bits differ;\n  --deterministic fixes the order and makes them equal.")


def print_costs(r):
    """Bytes of a greedy pick, deterministic mode's price, compute against communication."""
    a = r["argmax_bytes"]
    print(f"\npicking a greedy token: the distributed argmax sends {format_bytes(a['distributed'])}, "
          f"gathering the logits {format_bytes(a['gather'])} (all ranks together)")
    if a["distributed"] > a["gather"]:
        print("  (each shard sends 2 float64 per sequence, gathering sends vocab/p float32: with a "
              "vocabulary this small, gathering is cheaper)")
    if r["deterministic_cost"]:
        d, base = r["deterministic_cost"]["deterministic"], r["deterministic_cost"]["default"]
        print(f"deterministic mode: one forward {d['seconds'] * 1e3:.2f} ms and "
              f"{format_bytes(d['bytes_sent_all_ranks'])} vs default {base['seconds'] * 1e3:.2f} ms "
              f"and {format_bytes(base['bytes_sent_all_ranks'])}")
    s = r["seconds"]
    print(f"\ntime (forward + generation, slowest rank): {s['total'] * 1e3:.1f} ms = compute "
          f"{s['compute'] * 1e3:.1f} ms + communication {s['comm'] * 1e3:.1f} ms "
          f"({100 * s['comm'] / max(s['total'], 1e-12):.0f}%); serial {r['serial_seconds'] * 1e3:.1f} ms")
