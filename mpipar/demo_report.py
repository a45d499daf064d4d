"""What python -m mpipar.demo prints: the report dict rendered for a person."""
from .measure.units import format_bytes


def print_report(r, led):
    """Print the demo's report ``r`` (the same dict --json writes) and the ledger ``led``."""
    yes = {True: "yes", False: "NO"}
    print("\nsharding (each rank keeps only its slices):")
    print(f"  {'rank':>4}  {'heads':>9}  {'MLP columns':>13}  {'vocab rows':>13}  {'parameters':>11}")
    for s in r["sharding"]:
        print(f"  {s['rank']:>4}  {'%d-%d' % (s['heads'][0], s['heads'][1] - 1):>9}  "
              f"{'%d-%d' % (s['mlp_columns'][0], s['mlp_columns'][1] - 1):>13}  "
              f"{'%d-%d' % (s['vocab_rows'][0], s['vocab_rows'][1] - 1):>13}  "
              f"{format_bytes(s['param_bytes']):>11}")
    print(f"  serial model: {format_bytes(r['serial_param_bytes'])} of parameters")
    n_new = len(r["tokens_parallel"]) - r["prompt_length"]
    print(f"\ntoken ids of the first sequence: a prompt of {r['prompt_length']}, then {n_new} generated greedily")
    print(f"  parallel: {r['tokens_parallel']}")
    print(f"  serial:   {r['tokens_serial']}")
    if r.get("task"):
        t = r["task"]
        print("\nheld-out sums (never seen in training): parallel and serial answers")
        for text, par, ser, want in t["examples"]:
            print(f"  {text:>9} = {par:<6} {ser:<6} {'ok' if par == ser == want else 'want %d' % want}")
        print(f"  exact match on all {t['n']} held-out sums: parallel {100 * t['accuracy_parallel']:.1f}%,"
              f" serial {100 * t['accuracy_serial']:.1f}%")
    print(f"\nparallel vs {r['reference']}:")
    print(f"  tokens identical      {yes[r['tokens_identical']]}")
    print(f"  logits bitwise equal  {yes[r['bitwise_equal']]}")
    print(f"  max ULP distance      {r['max_ulp']:.0f}"
          + ("  (large where a logit is near 0: its ULP is tiny)" if r["max_ulp"] > 0 else ""))
    print(f"  max error             {r['max_normalized_error']:.3f} u * sum|h_k w_k| of the last matmul "
          f"(one {r['world_size']}-term sum in any order: <= {r['world_size'] - 1};\n"
          f"                        here the differences of {r['config']['n_layer']} layers add up)")
    print(f"  ranks agree           {yes[r['ranks_agree']]} (every rank holds identical logits)")
    print("  per layer, residual stream after each block (max ULP; max error in u * largest |x|):")
    print("    " + ", ".join(f"{l['layer']}: {l['max_ulp']:.0f} ULP, {l['max_error_vs_largest']:.2f}"
                           for l in r["layers"]))
    wire = r.get("comm_dtype", "float32")
    if wire != "float32" and r["world_size"] > 1:
        ratio = 2.0 ** (24 - {"float16": 11, "bfloat16": 8}[wire])
        print(f"  Every reduction and logit gather travelled as {wire} ({r['rounding']} rounding): "
              f"in units of {wire}'s u\n  the max error is {r['max_normalized_error'] / ratio:.3f} "
              f"(u_float32 / u_{wire} = 1/{ratio:.0f}).")
    elif not r["deterministic"] and r["world_size"] > 1:
        print("  Row-parallel layers add the ranks' partial sums in another order than one matmul, "
              "so the last bits differ;\n  --deterministic fixes the order and makes them equal.")
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
    print("\ncommunication ledger of rank 0:")
    print(led.summary())
