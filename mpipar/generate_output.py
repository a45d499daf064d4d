"""What ``python -m mpipar.generate`` prints: the header, the completion as it is generated
(``Stream``, rank 0 only), each sequence's answer, and the figures after the text."""
import sys
import time

from .cli import print0
from .parallel import pipeline_inference_report


def header(comm, args, config, ids, split):
    c, name = config, args.model_name
    print0(comm, f"mpipar generate: {name} ({c.n_layer} layers, d={c.n_embd}, "
                 f"{c.n_head} query / {c.n_kv_head} key-value heads, vocab {c.vocab_size}) over {split}; "
                 f"prompt of {len(ids)} tokens", file=sys.stderr)


def answers(out, prompt_length, stop_id):
    """Each sequence's generated ids, up to and including its first ``stop_id``."""
    result = []
    for row in out[:, prompt_length:].tolist():
        if stop_id in row:
            row = row[:row.index(stop_id) + 1]
        result.append(row)
    return result


class Stream:
    """Rank 0 prints the completion as it is generated; every rank stops at ``stop_id``."""

    def __init__(self, comm, tokenizer, stop_id=None):
        self.rank0, self.tokenizer, self.stop_id = comm.Get_rank() == 0, tokenizer, stop_id
        self.ids, self.text = [], ""
        self.t0, self.first_token_seconds = None, 0.0  #: prefill: the prompt, then its first token

    def token(self, new):
        """Called with the (B,) new token ids of each step; True stops generation."""
        token = int(new[0])
        if not self.first_token_seconds:
            self.first_token_seconds = time.perf_counter() - self.t0
        if token == self.stop_id:
            return True
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if self.rank0 and not text.endswith("\ufffd"):  # wait for a whole UTF-8 character
            print(text[len(self.text):], end="", flush=True)
            self.text = text
        return False

    def close(self):
        self.text = self.tokenizer.decode(self.ids)
        if self.rank0:
            print(flush=True)


def print_summary(r):
    """The figures after the text, on stderr (stdout holds the completion only)."""
    n = r.get("tokens_generated", len(r["generated_ids"]))
    lines = [f"{n} tokens in {r['seconds']:.2f} s ({r['tokens_per_second'] or 0:.1f} tokens/s; prefill "
             f"{r['prefill_seconds'] * 1e3:.0f} ms) = compute {r['compute_seconds']:.2f} s + "
             f"communication {r['communication_seconds']:.2f} s; peak memory of the largest rank "
             f"{r['peak_rss_bytes'] / 2**20:.0f} MiB; ranks agree: {'yes' if r['ranks_agree'] else 'NO'}"]
    s = r.get("serial")
    if s:
        lines.append(f"serial: tokens identical {'yes' if s['tokens_identical'] else 'NO'}, logits bitwise "
                     f"equal {'yes' if s['bitwise_equal'] else 'no'}, max ULP {s['max_ulp']:.0f}, "
                     f"max |difference| {s['max_abs_difference']:.3g}")
    if "pipeline" in r:
        lines.append(pipeline_inference_report.summary(r["pipeline"]))
    print("\n".join(lines), file=sys.stderr, flush=True)
