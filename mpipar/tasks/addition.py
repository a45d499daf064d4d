"""The training task: multi-digit addition written as text, with a tokenizer of its own.

Every example has the same shape. With ``digits=3``, 347 + 589 = 936 is the 13 tokens

    347+589=6390$
    ^^^^^^^^        prompt: both operands zero-padded to ``digits`` characters, then "+" and "="
            ^^^^    answer: a + b zero-padded to digits+1 characters, then REVERSED
                ^   end token

and 999 + 1 is ``999+001=0001$`` (1000 zero-padded to "1000", reversed to "0001").
Writing the answer least-significant digit first lets a left-to-right model produce
each digit after the digits it depends on: the carry into a column comes from the
columns written before it. In the usual order the first digit written needs every
carry, which a small transformer learns slowly and poorly (Lee et al. 2023,
"Teaching Arithmetic to Small Transformers": reversed outputs).

Accuracy is exact match on ``heldout`` (a, b) pairs drawn once from the seed and never
produced by ``batch``: the model cannot have memorised them. No MPI here -- it is
pure data; the data-parallel trainer takes its rank's ``batch_slice`` of each global batch.
"""
import numpy as np

#: Token i is VOCAB[i]: "0"-"9" are ids 0-9, "+" is 10, "=" is 11, "$" (12) ends the
#: answer. Every example has the same length, so there is no padding token.
VOCAB = "0123456789+=$"
END = "$"
_IDS = {ch: i for i, ch in enumerate(VOCAB)}

#: Training recipes (``python -m mpipar.train --preset NAME``): the task's digits, the model's
#: shape, the schedule. "default" reaches >= 99% exact match on 3-digit sums; "tiny"
#: trains in seconds (tests, lessons).
RECIPES = {
    "tiny": dict(digits=2, n_embd=32, n_layer=1, n_head=2, steps=40, global_batch=32, lr=3e-3,
                 heldout=200),
    "default": dict(digits=3, n_embd=64, n_layer=2, n_head=4, steps=1500, global_batch=64,
                    lr=3e-3, heldout=1000),
}


def encode(text):
    """Token ids (int64) of ``text``; ValueError on a character outside VOCAB."""
    try:
        return np.array([_IDS[ch] for ch in text], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"character {e.args[0]!r} is not in the vocabulary {VOCAB!r}") from None


def decode(ids):
    """The text of token ``ids``; ValueError on an id outside 0..len(VOCAB)-1."""
    ids = np.asarray(ids).ravel()
    bad = ids[(ids < 0) | (ids >= len(VOCAB))]
    if bad.size:
        raise ValueError(f"token id {bad[0]} is not in 0..{len(VOCAB) - 1} (vocabulary {VOCAB!r})")
    return "".join(VOCAB[i] for i in ids)


def batch_slice(batch, rank, size):
    """Rank ``rank``'s contiguous slice of the global batch, sized as ``np.array_split``
    (the first ``len % size`` ranks get one row more).

    The slices concatenate, in rank order, back to the batch, so data parallelism with a
    fixed global batch is the same mathematics as one process on the whole batch --
    provided each rank SUMS its per-token losses and divides by the GLOBAL number of
    masked tokens before the gradients are summed over ranks (averaging per-rank means
    would weight the rows of a short shard more).
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in 0..{size - 1}")
    return np.array_split(batch, size)[rank]


class AdditionTask:
    """Addition of two ``digits``-digit numbers; everything is a function of ``seed``."""

    _HELDOUT, _TRAIN = 0, 1  # first seed word: keeps the two random streams apart

    def __init__(self, digits=3, seed=0, heldout=1000):
        if not (isinstance(digits, (int, np.integer)) and 1 <= digits <= 17):
            raise ValueError(f"digits must be an integer in 1..17 (int64 answers), got {digits!r}")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        pairs = 10 ** (2 * digits)
        if not (isinstance(heldout, (int, np.integer)) and 0 <= heldout <= pairs // 2):
            raise ValueError(f"heldout must be in 0..{pairs // 2} (half of the {pairs} pairs "
                             f"of {digits}-digit numbers), got {heldout!r}")
        self.digits, self.seed = int(digits), int(seed)
        self.prompt_len = 2 * digits + 2  #: "aaa+bbb="
        self.answer_len = digits + 1  #: reversed, zero-padded sum
        self.seq_len = self.prompt_len + self.answer_len + 1  #: plus the end token
        self.vocab_size = len(VOCAB)
        self._limit = 10 ** digits
        # Distinct pairs in the order drawn: deterministic from the seed alone.
        rng = np.random.default_rng([self._HELDOUT, self.seed])
        chosen = {}
        while len(chosen) < heldout:
            for a, b in rng.integers(0, self._limit, (heldout - len(chosen), 2)).tolist():
                chosen.setdefault((a, b), None)
        self._heldout = np.array(list(chosen), dtype=np.int64).reshape(-1, 2)
        self._heldout_set = set(chosen)

    # --- text ---------------------------------------------------------------------------------

    def example_text(self, a, b):
        """The model's text of a + b: ``"347+589=6390$"`` for 347 + 589 with digits=3."""
        d = self.digits
        return f"{a:0{d}d}+{b:0{d}d}=" + f"{a + b:0{d + 1}d}"[::-1] + END

    def format_example(self, a, b):
        """The human text of a + b: ``"347+589=936"``."""
        return f"{a}+{b}={a + b}"

    def _tokens(self, pairs, length):
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= self._limit):
            raise ValueError(f"operands must be in 0..{self._limit - 1}")
        out = np.empty((len(pairs), length), dtype=np.int64)
        for row, (a, b) in zip(out, pairs.tolist()):
            row[:] = encode(self.example_text(a, b)[:length])
        return out

    def tokens(self, pairs):
        """(n, seq_len) tokens of whole examples for (n, 2) operand ``pairs``."""
        return self._tokens(pairs, self.seq_len)

    def prompts(self, pairs):
        """(n, prompt_len) tokens ``"aaa+bbb="`` for (n, 2) operand ``pairs``."""
        return self._tokens(pairs, self.prompt_len)

    # --- data ---------------------------------------------------------------------------------

    def heldout_pairs(self):
        """(heldout, 2) int64 operand pairs kept out of training (a copy)."""
        return self._heldout.copy()

    def batch(self, step, global_batch):
        """(global_batch, seq_len) int64 tokens: the global batch of training step ``step``.

        A pure function of (seed, step) -- not of the number of ranks -- so a run sees the
        same data in the same order at any process layout. Pairs are uniform in
        [0, 10^digits)^2; a held-out pair is redrawn (rows in order, from the same
        generator) until none is left, so training never sees one.
        """
        if step < 0 or global_batch < 1:
            raise ValueError(f"need step >= 0 and global_batch >= 1, got {step}, {global_batch}")
        rng = np.random.default_rng([self._TRAIN, self.seed, int(step)])
        pairs = rng.integers(0, self._limit, (global_batch, 2))
        while True:
            bad = [i for i, (a, b) in enumerate(pairs.tolist()) if (a, b) in self._heldout_set]
            if not bad:
                return self.tokens(pairs)
            pairs[bad] = rng.integers(0, self._limit, (len(bad), 2))

    def loss_mask(self):
        """(seq_len - 1,) float mask aligned with the targets ``tokens[:, 1:]``.

        With ``inputs = tokens[:, :-1]`` and ``targets = tokens[:, 1:]``, entry t is 1 when
        targets[:, t] = tokens[:, t + 1] is an answer or end token, i.e. for
        t = prompt_len - 1 .. seq_len - 2 (the input at t is "=" or an answer digit), and 0
        elsewhere: the prompt is given, not predicted. For digits=3 (``347+589=6390$``):
        ``[0 0 0 0 0 0 0 1 1 1 1 1]`` -- predict "6" after "=", ..., "$" after the last "0".
        """
        mask = np.zeros(self.seq_len - 1)
        mask[self.prompt_len - 1:] = 1.0
        return mask

    # --- scoring ------------------------------------------------------------------------------

    def answers_from_generated(self, generated, pairs=None):
        """The sums a model wrote: int64 (n,), -1 where an answer token is not a digit.

        ``generated`` is (n, >= prompt_len + answer_len) tokens, prompt first; the
        answer_len tokens after the prompt are read and un-reversed. With ``pairs`` the
        prompts are checked to be those of ``pairs`` (ValueError otherwise).
        """
        generated = np.asarray(generated)
        need = self.prompt_len + self.answer_len
        if generated.ndim != 2 or generated.shape[1] < need:
            raise ValueError(f"generated must be (n, >= {need}) tokens, got {generated.shape}")
        if pairs is not None and not np.array_equal(generated[:, :self.prompt_len],
                                                    self.prompts(pairs)):
            raise ValueError("generated rows do not start with the prompts of these pairs")
        answers = generated[:, self.prompt_len:need]
        ok = ((answers >= 0) & (answers <= 9)).all(axis=1)
        place = 10 ** np.arange(self.answer_len, dtype=np.int64)  # reversed: units first
        return np.where(ok, (np.where(ok[:, None], answers, 0) * place).sum(axis=1), -1)

    def exact_match(self, generated, pairs):
        """Fraction of rows whose answer equals a + b exactly (digits in full; the end token
        is not required)."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        predicted = self.answers_from_generated(generated, pairs)
        return float(np.mean(predicted == pairs.sum(axis=1))) if len(pairs) else float("nan")

    def evaluate(self, generate_fn, n=None, batch=256, show=5):
        """Exact-match accuracy on the first ``n`` held-out pairs (all by default).

        ``generate_fn(prompts, max_new_tokens)`` is the model's greedy generation:
        (B, prompt_len) tokens -> (B, prompt_len + max_new_tokens); it is called with
        answer_len new tokens on ``batch`` prompts at a time. Returns ``{"n", "accuracy",
        "examples"}``, examples being ``show`` (question, predicted, correct) strings such
        as ``("347+589", "935", "936")`` (predicted is "?" if an answer token is not a digit).
        """
        pairs = self._heldout if n is None else self._heldout[:n]
        if len(pairs) == 0 or (n is not None and n > len(self._heldout)):
            raise ValueError(f"n must be in 1..{len(self._heldout)} held-out pairs, got {n}")
        predicted = np.concatenate([
            self.answers_from_generated(generate_fn(self.prompts(part), self.answer_len), part)
            for part in np.array_split(pairs, -(-len(pairs) // batch))])
        correct = pairs.sum(axis=1)
        examples = []
        for (a, b), p in zip(pairs[:show].tolist(), predicted[:show].tolist()):
            examples.append((f"{a}+{b}", str(p) if p >= 0 else "?", str(a + b)))
        return {"n": len(pairs), "accuracy": float(np.mean(predicted == correct)),
                "examples": examples}


def task_accuracy(model, task):
    """Exact match of ``model``'s greedy answers on every held-out sum of ``task``, in one batch."""
    return task.evaluate(model.generate, batch=len(task.heldout_pairs()))["accuracy"]
