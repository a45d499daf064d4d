"""The tables ``bench tradeoff`` prints from its result: every wire setting, then reduction order alone."""
from ..measure.units import format_bytes, format_seconds
from .table import Column, format_table


def percent(digits):
    return lambda fraction: f"{100 * fraction:.{digits}f}%"


def yes_no(flag, no="no"):
    return "yes" if flag else no


SETTING_COLUMNS = [Column("wire", align="<"), Column("rounding", align="<"),
                   Column("algorithm", align="<"), Column("det", yes_no, align="<"),
                   Column("bytes", format_bytes), Column("÷f32", "{:.2f}".format),
                   Column("forward", format_seconds), Column("err/u32", "{:.3g}".format),
                   Column("err/uwire", "{:.3g}".format), Column("max ULP", "{:.3g}".format),
                   Column("top-1", percent(2))]
TASK_COLUMNS = [Column("task", percent(1))]
TEXT_COLUMNS = [Column("ppl", "{:.4f}".format), Column("Δppl", "{:+.2e}".format)]

ORDER_COLUMNS = [Column("algorithm", align="<"), Column("bitwise", percent(2)),
                 Column("max ULP", "{:.0f}".format),
                 Column("ULPs: 0 / 1 / 2 / 3-4 / 5-8 / >8", align="<"),
                 Column("err/(u Σ|x|)", "{:.3f}".format), Column("bound"),
                 Column("agree", lambda ok: yes_no(ok, "NO"))]


def settings_table(r):
    """One row per wire setting: bytes, time and the accuracy columns; then the task's
    exact-match accuracy, or the perplexity on the text and its difference from float32's."""
    base = next(row["bytes"] for row in r["rows"] if row["comm_dtype"] == "float32")
    text = r["evaluation"].get("text") is not None
    rows = [[row["comm_dtype"], row["rounding"], row["algorithm"], row["deterministic"],
             row["bytes"], row["bytes"] / base if base else 1.0, row["seconds"],
             row["max_normalized_error"], row["max_normalized_error_wire"], row["max_ulp"],
             row["top1_agreement"]]
            + ([row["perplexity"], row["perplexity_difference"]] if text else
               ["-" if row["task_accuracy"] is None else row["task_accuracy"]])
            for row in r["rows"]]
    return format_table(SETTING_COLUMNS + (TEXT_COLUMNS if text else TASK_COLUMNS), rows, rule="-")


def describe(r):
    """The first line: the model, its shape, the ranks, what one forward reads."""
    c, ev = r["model"]["config"], r["evaluation"]
    heads = (f"{c['n_head']} query / {c['n_kv_head']} key-value heads" if "n_kv_head" in c
             else f"{c['n_head']} heads")
    what = f" of {ev['text']}" if ev.get("text") else ""
    return (f"tradeoff: {r['model']['name']} ({c['n_layer']} layers, d={c['n_embd']}, {heads}, "
            f"vocab {c['vocab_size']}) on {r['world_size']} rank(s); one forward of {ev['batch']} x "
            f"{ev['seq']} tokens{what}; reference: float32 on one process")


def order_table(r):
    """One row per allreduce algorithm: how far its sum is from the serial one."""
    rows = [[row["algorithm"], row["bitwise_fraction"], row["max_ulp"],
             " / ".join(str(v) for v in row["ulp_histogram"].values()),
             row["max_normalized_error"], row["bound"], row["ranks_agree"]] for row in r["order"]]
    return format_table(ORDER_COLUMNS, rows, rule="-")


def print_tables(r):
    """The two tables, each with what its columns mean."""
    ev, p = r["evaluation"], r["world_size"]
    print(describe(r))
    print(settings_table(r))
    acc = r["model"]["task_accuracy_serial"]
    print(f"err: max |parallel - serial| of the logits in units of u * sum_k |h_k w_k| (last matmul); "
          f"top-1: argmax agreement over {ev['positions']} positions")
    if acc is not None:
        worst = min(row["top1_agreement_answers"] for row in r["rows"])
        print(f"task: exact match on {r['model']['task']['heldout']} held-out sums (serial: "
              f"{100 * acc:.1f}%); top-1 at the answer positions alone: at least {100 * worst:.2f}%")
    ppl = r["model"].get("perplexity_serial")
    if ppl is not None:
        print(f"ppl: exp(mean cross-entropy of the next token) over {ev['perplexity_positions']} "
              f"positions of {ev['text']}, in float64 from the gathered logits (serial float32: "
              f"{ppl:.4f}); Δppl: ppl minus the serial's")
    det = [row for row in r["rows"] if row["deterministic"]]
    if det:
        print(f"deterministic mode equals the emulated {p}-way split bit for bit: "
              f"{yes_no(det[0]['bitwise_equal_emulated'], 'NO')}")
    n = r["order"][0]["n"] if r["order"] else 0
    print(f"\nreduction order alone: float32 allreduce of {n} random normals per rank vs the serial "
          f"sum x_0 + x_1 + ... in rank order")
    print(order_table(r))
    print(f"the serial sum itself: {r['order_serial_max_normalized_error']:.3f} u Σ|x| from the "
          "exact sum; every order's bound is p-1", flush=True)
