"""What ``bench forward`` prints (rank 0): the forward beside its floor, the profile table, decoding,
the comparison with PyTorch, memory."""
from ..measure.op_profile import KIND_NAMES, KINDS
from ..measure.units import format_bytes, format_seconds
from .table import Column, format_table


def profile_table(table, title):
    """One rank's profile (seconds per kind, "total", "calls") as a table with shares."""
    total = table["total"]
    rows = [[KIND_NAMES[k], table[k], 100 * table[k] / total if total else 0.0,
             table["calls"].get(k)] for k in KINDS]
    rows.append(["total", total, 100.0, None])
    return format_table([Column("kind", align="<"), Column("seconds", format_seconds),
                         Column("share", lambda v: f"{v:5.1f} %"), Column("calls", str)],
                        rows, title=title, rule="-")


def balance(profiles, work):
    """Across the ranks, from their profile tables: each one's seconds in its matrix products and
    waiting in the agreement for the slowest rank, and the rate of its products (``work`` per
    rank -- flops, or bytes read -- over those seconds). Equal rates with unequal seconds are an
    uneven split (12 heads on 8 ranks); unequal rates with the same work are the machine: cores
    that run the same products at different speeds, so that every collective waits for the
    slowest one."""
    products = [t["matmul"] for t in profiles]
    waits = [t["agreement"] for t in profiles]
    rates = [w / s if s > 0 else 0.0 for w, s in zip(work, products)]
    return {"products_seconds_per_rank": products, "wait_seconds_per_rank": waits,
            "wait_share_per_rank": [w / t["total"] if t["total"] else 0.0 for w, t in zip(waits, profiles)],
            "products_rate_per_rank": rates, "work_per_rank": list(work),
            "slowest_rank": max(range(len(products)), key=products.__getitem__),
            "products_max_over_min": max(products) / min(products) if min(products) > 0 else None}


def balance_line(b, what, unit, scale):
    """One line: the products' seconds and rates across ranks, and the waiting."""
    p = b["products_seconds_per_rank"]
    rates, shares = b["products_rate_per_rank"], b["wait_share_per_rank"]
    spread = f" ({b['products_max_over_min']:.2f}x the fastest)" if b["products_max_over_min"] else ""
    return (f"{what} across the {len(p)} ranks: matrix products {format_seconds(min(p))} to "
            f"{format_seconds(max(p))}, the slowest rank {b['slowest_rank']}{spread}, at "
            f"{min(rates) / scale:.1f} to {max(rates) / scale:.1f} {unit} per rank; waiting for the "
            f"slowest rank {format_seconds(min(b['wait_seconds_per_rank']))} to "
            f"{format_seconds(max(b['wait_seconds_per_rank']))} ({100 * min(shares):.0f} to "
            f"{100 * max(shares):.0f} % of the time)")


def show(args, result):
    t, floor, c = result["seconds"], result["blas_floor_seconds"], result["comm_seconds"]
    print(f"{args.preset} forward, B={args.batch} T={args.seq}, logits {args.logits}, "
          f"{result['world_size']} rank(s), "
          f"{args.algorithm}{' deterministic' if args.deterministic else ''}"
          f"{' sequence-parallel' if args.sp else ''}: "
          f"{format_seconds(t)} (median of {args.trials}) = compute {format_seconds(t - c)} "
          f"+ communication {format_seconds(c)}; "
          f"{format_bytes(result['payload_bytes_per_rank'])} reduced or gathered per rank, "
          f"rank 0 sent {format_bytes(result['bytes_sent_per_rank'][0])}", flush=True)
    by_op = result["comm_seconds_by_op_per_rank"][0]
    if by_op:
        print("communication of rank 0's last forward: " + ", ".join(
            f"{op} {format_seconds(sec)}" for op, sec in sorted(by_op.items())), flush=True)
    print(f"BLAS floor (its {result['floor_products_per_rank']} matrix products alone, the slowest "
          f"rank): {format_seconds(floor)}, {result['floor_flops_per_rank'] / floor / 1e9:.1f} GFLOP/s "
          f"per rank; forward / floor = {result['ratio_to_floor']:.2f}", flush=True)
    if "speedup" in result:
        print(f"the whole model on rank 0 alone, in the same rounds: "
              f"{format_seconds(result['serial_seconds'])}, its floor "
              f"{format_seconds(result['serial_floor_seconds'])}; speedup "
              f"{result['speedup']:.2f}x; the products alone {result['floor_speedup']:.2f}x (serial floor / "
              f"{result['world_size']}-rank floor); at most {result['speedup_ceiling']:.2f}x if all but "
              f"the slowest rank's products took no time (serial / the {result['world_size']}-rank floor)",
              flush=True)
    if "profile_per_rank" in result:
        print(profile_table(result["profile_per_rank"][0], "forward profile, rank 0"), flush=True)
        if result["world_size"] > 1:
            print(balance_line(result["balance"], "forward", "GFLOP/s", 1e9), flush=True)
    if "decode" in result:
        show_decode(args, result["decode"])
    if "torch" in result:
        th = result["torch"]
        print(f"PyTorch (Hugging Face, {th['torch_threads']} thread(s), torch {th['torch_version']}): "
              f"{format_seconds(th['torch_seconds'])}; mpipar / PyTorch = "
              f"{result['ratio_to_torch']:.2f}; max |logit difference| "
              f"{th['max_abs_logit_diff']:.2e}, same argmax at {100 * th['argmax_agreement']:.1f} % "
              f"of positions", flush=True)
    worst = max(range(len(result["peak_rss_per_rank"])), key=result["peak_rss_per_rank"].__getitem__)
    st = result["peak_rss_stages_per_rank"][worst]
    print(f"peak memory of the largest rank ({worst}): {format_bytes(st['forward'])} = start "
          f"{format_bytes(st['start'])} + model built {format_bytes(st['model_built'] - st['start'])}"
          f" (its parameters {format_bytes(result['param_bytes_all_ranks'][worst])}) + forward "
          f"{format_bytes(st['forward'] - st['model_built'])}", flush=True)


def show_decode(args, d):
    print(f"decoding {d['steps']} tokens after a {args.seq}-token prompt, with the KV cache: "
          f"{format_seconds(d['seconds_per_token'])} per token (median of {args.trials}), of which "
          f"communication {format_seconds(d['comm_seconds_per_token'])}", flush=True)
    print(f"GEMV floor (its {d['gemv_products_per_token']} matrix-vector products per token alone): "
          f"{format_seconds(d['gemv_floor_seconds_per_token'])} per token, reading "
          f"{format_bytes(d['gemv_bytes_per_token_per_rank'])} per rank at "
          f"{d['gemv_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s (all ranks); decode / floor = "
          f"{d['ratio_to_floor']:.2f}", flush=True)
    if "speedup" in d:
        print(f"rank 0's whole model alone, next in the same run: "
              f"{format_seconds(d['serial_seconds_per_token'])} per token; speedup {d['speedup']:.2f}x, "
              f"at most {d['speedup_ceiling']:.2f}x (serial / the slowest rank's GEMV floor)", flush=True)
    if "profile_per_rank" in d:
        print(profile_table(d["profile_per_rank"][0], "decode profile per token, rank 0"), flush=True)
        if len(d["profile_per_rank"]) > 1:
            print(balance_line(d["balance"], "decoding, per token,", "GB/s", 1e9), flush=True)
