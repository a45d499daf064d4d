"""The addition task: tokenizer, the reversed-answer format worked by hand, held-out pairs
kept out of training, data order independent of the process layout, the loss mask,
exact-match scoring and evaluate()."""
import numpy as np
import pytest

from mpipar.tasks.addition import VOCAB, AdditionTask, batch_slice, decode, encode

TASK = AdditionTask(digits=3, seed=0, heldout=1000)


# --- tokenizer ------------------------------------------------------------------------------

def test_encode_decode_round_trip():
    text = "0123456789+=$347+589=6390$"
    ids = encode(text)
    assert ids.dtype == np.int64 and decode(ids) == text
    assert encode("").shape == (0,) and decode([]) == ""
    assert list(encode("09+=$")) == [0, 9, 10, 11, 12] and len(VOCAB) == TASK.vocab_size == 13


@pytest.mark.parametrize("text", ["3-4", "12 ", "a"])
def test_encode_rejects_unknown_characters(text):
    with pytest.raises(ValueError, match="not in the vocabulary"):
        encode(text)


@pytest.mark.parametrize("ids", [[13], [-1], [0, 1, 99]])
def test_decode_rejects_unknown_ids(ids):
    with pytest.raises(ValueError, match="token id"):
        decode(ids)


# --- format ---------------------------------------------------------------------------------

def test_lengths():
    assert (TASK.prompt_len, TASK.answer_len, TASK.seq_len) == (8, 4, 13)
    one = AdditionTask(digits=1, heldout=10)
    assert (one.prompt_len, one.answer_len, one.seq_len) == (4, 2, 7)


@pytest.mark.parametrize("a, b, text", [
    (347, 589, "347+589=6390$"),  # 936 -> "0936" -> reversed "6390"
    (999, 1, "999+001=0001$"),    # 1000 -> "1000" -> reversed "0001": carries all the way
    (0, 0, "000+000=0000$"),
    (5, 70, "005+070=5700$"),     # 75 -> "0075" -> "5700"
])
def test_reversed_answer_format(a, b, text):
    assert TASK.example_text(a, b) == text
    assert decode(TASK.tokens([[a, b]])[0]) == text
    assert decode(TASK.prompts([[a, b]])[0]) == text[:8]
    assert TASK.format_example(a, b) == f"{a}+{b}={a + b}"


def test_format_example_is_human_readable():
    assert TASK.format_example(347, 589) == "347+589=936"


@pytest.mark.parametrize("kwargs", [dict(digits=0), dict(digits=18), dict(digits=2.0),
                                    dict(seed=-1), dict(digits=1, heldout=51),
                                    dict(heldout=-1)])
def test_bad_configuration(kwargs):
    with pytest.raises(ValueError):
        AdditionTask(**kwargs)


# --- data -----------------------------------------------------------------------------------

def test_heldout_pairs_are_distinct_in_range_and_deterministic():
    pairs = TASK.heldout_pairs()
    assert pairs.shape == (1000, 2) and pairs.dtype == np.int64
    assert pairs.min() >= 0 and pairs.max() < 1000
    assert len({tuple(p) for p in pairs.tolist()}) == 1000
    assert np.array_equal(pairs, AdditionTask(digits=3, seed=0).heldout_pairs())
    assert not np.array_equal(pairs, AdditionTask(digits=3, seed=1).heldout_pairs())
    pairs[0] = -5  # a copy: the task is not changed
    assert TASK.heldout_pairs()[0, 0] >= 0


def pairs_of(tokens, digits):
    """Operands read back from the prompt text."""
    out = set()
    for row in tokens:
        a, b = decode(row[:2 * digits + 1]).split("+")
        out.add((int(a), int(b)))
    return out


def test_training_never_sees_a_heldout_pair():
    heldout = {tuple(p) for p in TASK.heldout_pairs().tolist()}
    seen = set()
    for step in range(200):
        seen |= pairs_of(TASK.batch(step, 64), 3)
    assert len(seen) > 10000 and not seen & heldout
    # A tiny space makes rejection certain to be exercised: 1-digit, half of the 100 held out.
    small = AdditionTask(digits=1, seed=3, heldout=50)
    held = {tuple(p) for p in small.heldout_pairs().tolist()}
    seen = set()
    for step in range(20):
        seen |= pairs_of(small.batch(step, 64), 1)
    assert not seen & held and len(seen) == 50  # every allowed pair, no held-out one


def test_batch_is_well_formed():
    tokens = TASK.batch(7, 33)
    assert tokens.shape == (33, 13) and tokens.dtype == np.int64
    for row in tokens:
        a, b = decode(row[:7]).split("+")
        assert decode(row) == TASK.example_text(int(a), int(b))


def test_batch_depends_only_on_seed_and_step():
    assert np.array_equal(TASK.batch(5, 64), AdditionTask(digits=3, seed=0).batch(5, 64))
    assert not np.array_equal(TASK.batch(5, 64), TASK.batch(6, 64))
    assert not np.array_equal(TASK.batch(5, 64), AdditionTask(digits=3, seed=1).batch(5, 64))
    # the held-out draw and the training draw are different streams
    assert not np.array_equal(TASK.batch(0, 1000), TASK.tokens(TASK.heldout_pairs()))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5])
def test_shards_concatenate_to_the_batch(size):
    batch = TASK.batch(3, 13)  # 13 rows: uneven at every size but 1
    parts = [batch_slice(batch, r, size) for r in range(size)]
    assert np.array_equal(np.concatenate(parts), batch)
    assert [len(p) for p in parts] == [len(x) for x in np.array_split(np.arange(13), size)]


def test_shard_rejects_a_bad_rank():
    with pytest.raises(ValueError):
        batch_slice(TASK.batch(0, 4), 2, 2)


def test_loss_mask_selects_the_answer_and_end_targets():
    mask = TASK.loss_mask()
    assert list(mask) == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    tokens = TASK.tokens([[347, 589]])
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    assert mask.shape == targets.shape[1:]
    assert decode(targets[0][mask == 1]) == "6390$"  # what is trained on
    assert decode(inputs[0][mask == 1]) == "=6390"   # what it is predicted from


# --- scoring --------------------------------------------------------------------------------

def generated_for(pairs, answers):
    """Prompts of ``pairs`` followed by the model-format texts of ``answers``."""
    rows = [decode(TASK.prompts([p])[0]) + f"{s:04d}"[::-1] + "$" for p, s in zip(pairs, answers)]
    return np.stack([encode(r) for r in rows])


def test_exact_match():
    pairs = np.array([[347, 589], [999, 1], [0, 0], [55, 45]])
    truth = pairs.sum(axis=1)
    assert TASK.exact_match(generated_for(pairs, truth), pairs) == 1.0
    assert list(TASK.answers_from_generated(generated_for(pairs, truth))) == [936, 1000, 0, 100]
    # 999+1 with the carry out of the top column dropped (0), and 55+45 one ten short (90)
    wrong = generated_for(pairs, [936, 0, 0, 90])
    assert TASK.exact_match(wrong, pairs) == 0.5
    assert TASK.exact_match(generated_for(pairs, truth)[:, :12], pairs) == 1.0  # no end token


def test_non_digit_answers_are_wrong_and_prompts_are_checked():
    pairs = np.array([[347, 589]])
    gen = generated_for(pairs, [936])
    gen[0, 9] = encode("+")[0]
    assert TASK.answers_from_generated(gen)[0] == -1 and TASK.exact_match(gen, pairs) == 0.0
    gen[0, 9] = 50  # an id beyond the task's vocabulary (a model with a larger one)
    assert TASK.exact_match(gen, pairs) == 0.0
    with pytest.raises(ValueError, match="prompts"):
        TASK.exact_match(generated_for(pairs, [936]), [[347, 588]])
    with pytest.raises(ValueError, match="generated must be"):
        TASK.exact_match(generated_for(pairs, [936])[:, :11], pairs)


def oracle(offset=0):
    """A fake greedy generation that writes a + b + offset in the model's format."""
    def generate(prompts, max_new_tokens):
        assert prompts.shape[1] == TASK.prompt_len and max_new_tokens == TASK.answer_len
        sums = [sum(int(x) for x in decode(row[:-1]).split("+")) + offset for row in prompts]
        new = np.stack([encode(f"{s % 10000:04d}"[::-1]) for s in sums])
        return np.concatenate([prompts, new], axis=1)
    return generate


def test_evaluate():
    right = TASK.evaluate(oracle(), batch=300)  # 1000 prompts in 4 uneven batches
    assert right["n"] == 1000 and right["accuracy"] == 1.0
    (a, b), = TASK.heldout_pairs()[:1].tolist()
    assert right["examples"][0] == (f"{a}+{b}", str(a + b), str(a + b))
    wrong = TASK.evaluate(oracle(1), n=100)
    assert wrong["n"] == 100 and wrong["accuracy"] == 0.0 and len(wrong["examples"]) == 5
    with pytest.raises(ValueError):
        TASK.evaluate(oracle(), n=1001)
