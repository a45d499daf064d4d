"""One table from several ``bench forward --json`` files: the scaling of a model's forward and decoding.

    python tools/forward_table.py fwd-gpt2-p*.json

Per file (sorted by rank count): the forward, its BLAS floor and their ratio, the speedup over
the file with the fewest ranks of the same preset, with --vs-serial the speedup over rank 0
alone measured in the same run, the products' own (serial floor / p-rank floor) and the
ceiling (serial / p-rank floor), communication's share, with --profile on 2 or more ranks the
largest share of its time a rank waited for the slowest one, and with --decode the time per
token, its GEMV floor, their ratio, the bandwidth and the speedup per token; with
--compare-torch the PyTorch time, mpipar / PyTorch and the largest logit difference.
"""
import json
import sys

from mpipar.bench.table import Column, format_table
from mpipar.measure.units import format_seconds


def rows(results):
    """The table's rows, one per result, the speedups against the smallest rank count's."""
    base = {}
    for r in sorted(results, key=lambda r: (r["preset"], r["world_size"])):
        first = base.setdefault(r["preset"], r)
        d, fd, th = r.get("decode"), first.get("decode"), r.get("torch")
        yield [r["preset"], r["world_size"], r["seconds"], r["blas_floor_seconds"],
               f"{r['ratio_to_floor']:.2f}", f"{first['seconds'] / r['seconds']:.2f}",
               f"{r['speedup']:.2f} / {r['floor_speedup']:.2f}" if "speedup" in r else None,
               f"{r['speedup_ceiling']:.2f}" if "speedup_ceiling" in r else None,
               f"{100 * r['comm_seconds'] / r['seconds']:.0f} %",
               f"{100 * max(r['balance']['wait_share_per_rank']):.0f} %"
               if r["world_size"] > 1 and "balance" in r else None,
               d and d["seconds_per_token"], d and d["gemv_floor_seconds_per_token"],
               d and f"{d['ratio_to_floor']:.2f}",
               d and f"{d['gemv_bandwidth_bytes_per_s'] / 1e9:.1f}",
               d and fd and f"{fd['seconds_per_token'] / d['seconds_per_token']:.2f}",
               th and th["torch_seconds"], th and f"{r['ratio_to_torch']:.2f}",
               th and f"{th['max_abs_logit_diff']:.1e}"]


def main(paths):
    results = [json.load(open(path)) for path in paths]
    s = Column("", format_seconds)
    columns = [Column("preset", align="<"), Column("p", str), Column("forward", s.format),
               Column("floor", s.format), Column("fwd/floor"), Column("speedup"),
               Column("same run / floors'"), Column("ceiling"), Column("comm"), Column("wait"),
               Column("token", s.format), Column("GEMV floor", s.format), Column("tok/floor"),
               Column("GB/s"), Column("tok speedup"), Column("torch", s.format),
               Column("/torch"), Column("max |dlogit|")]
    print(format_table(columns, list(rows(results)), rule="-"))


if __name__ == "__main__":
    main(sys.argv[1:])
