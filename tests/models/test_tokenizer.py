"""Tokenizer: built from a GGUF file's vocabulary, merges and pre-tokenizer type -- the same ids
as Hugging Face's tokenizer of SmolLM2-135M-Instruct (tests/data/smollm2_reference.json),
control tokens as single ids, digits one by one, lossless round trips, and the chat template
rendered with jinja2; a tiny byte-level vocabulary checks the construction by hand."""
import numpy as np
import pytest
from smollm2_ref import smollm2_reference
from tiny_gguf import SPECIALS, tiny_tokens, write_tiny_gguf

from mpipar.models.gguf import GGUFFile, smollm2_path
from mpipar.models.tokenizer import Tokenizer

TEXTS = ["Hello, world!", "", " ", "  two leading spaces", "trailing\n\n", "a\tb\r\nc",
         "def f(x):\n    return {'k': [x ** 2, -1.5e-3]}  # comment\n", "!@#$%^&*()_+-=[]{};':\",./<>?`~",
         "12345 0.25 1,000,000 3.14159 2024-12-01", "café naïve façade über Straße é", "中文文本 日本語",
         "emoji 🙂🎉👍🏽 family 👨‍👩‍👧", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
         "text<|endoftext|>more<repo_name>x", "\u00a0non-breaking\u2028separator", "x" * 300]

USER = [{"role": "user", "content": "What is 2+2?"}]
SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
          "<|im_end|>\n")


@pytest.fixture(scope="module")
def smollm2():
    return Tokenizer.from_gguf(smollm2_path())  # a missing file fails here, saying how to install it


def test_smollm2_ids_equal_hugging_faces(smollm2):
    cases = smollm2_reference()["tokenizer"]
    assert len(cases) >= 10
    for case in cases:
        # transformers' GGUF loader builds a plain GPT-2 pre-tokenizer; llama.cpp's "smollm" (and
        # SmolLM2's own tokenizer.json) split digits first: where that matters the reference
        # records the ids of the "smollm" pre-tokenizer too, and those are ours
        want = case.get("ids_llama_cpp_smollm_pretokenizer", case["ids"])
        assert smollm2.encode(case["text"]) == want, case["text"]
        assert smollm2.decode(want) == case["text"] == case["decoded"]


def test_smollm2_chat_equals_hugging_faces(smollm2):
    chat = smollm2_reference()["chat"]
    assert smollm2.chat_template == chat["template"]
    for case in (chat, chat["system_user"]):
        rendered = smollm2.apply_chat_template(case["messages"], add_generation_prompt=True)
        assert rendered == case["rendered"]
        assert smollm2.encode(rendered) == case["ids"]


def test_smollm2_special_tokens_are_single_ids(smollm2):
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.vocab_size) == (1, 2, 49152)
    assert (smollm2.bos_token, smollm2.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert smollm2.special_ids == tuple(range(17))  # token_type 3: <|endoftext|> ... <empty_output>
    assert smollm2.encode("<|im_start|>") == [1] and smollm2.encode("<|im_end|>") == [2]
    assert smollm2.encode("<|endoftext|>") == [0]
    for i in smollm2.special_ids:
        assert smollm2.encode(smollm2.token(i)) == [i]
    ids = smollm2.encode("a<|im_start|>b<|im_end|>")
    assert ids[1] == 1 and ids[3] == 2 and len(ids) == 4
    assert smollm2.encode("<|im_start") != [1]  # only the whole token is special


def test_smollm2_digits_are_split_one_by_one(smollm2):
    ids = smollm2.encode("12345")
    assert len(ids) == 5 and [smollm2.decode([i]) for i in ids] == list("12345")
    assert [smollm2.decode([i]) for i in smollm2.encode("x 2024")][-4:] == list("2024")


@pytest.mark.parametrize("text", TEXTS)
def test_smollm2_round_trips(smollm2, text):
    ids = smollm2.encode(text)
    assert all(isinstance(i, int) and 0 <= i < smollm2.vocab_size for i in ids)
    assert smollm2.decode(ids) == text
    assert smollm2.decode(np.array(ids, np.int64)) == text  # any sequence of ints


def test_smollm2_chat_template(smollm2):
    assert smollm2.apply_chat_template(USER) == (
        SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert smollm2.apply_chat_template(USER, add_generation_prompt=False) == (
        SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    talk = [{"role": "system", "content": "Be brief."}, *USER, {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"}]
    assert smollm2.apply_chat_template(talk) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n")
    ids = smollm2.encode(smollm2.apply_chat_template(USER))
    assert ids[0] == 1 and ids.count(1) == 3 and ids.count(2) == 2  # three headers, two ends
    assert ids[-4] == 1 and smollm2.decode(ids[-3:]) == "assistant\n"


def test_bad_input_is_a_value_error(smollm2):
    for call, message in [(lambda: smollm2.encode(b"bytes"), "takes a str"),
                          (lambda: smollm2.decode([49152]), r"\[0, 49152\)"),
                          (lambda: smollm2.decode([-1]), r"\[0, 49152\)"),
                          (lambda: smollm2.apply_chat_template([{"role": "user"}]), "messages"),
                          (lambda: smollm2.apply_chat_template("hi"), "messages")]:
        with pytest.raises(ValueError, match=message):
            call()


# --- a tiny byte-level vocabulary, by hand -----------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    return GGUFFile(write_tiny_gguf(tmp_path / "tok.gguf"))


def test_tiny_vocabulary_by_hand(tiny):
    tok = Tokenizer.from_gguf(tiny)  # an open GGUFFile, or a path
    tokens = tiny_tokens()
    ids = {t: i for i, t in enumerate(tokens)}
    assert tok.vocab_size == len(tokens) == 3 + 256 + 6 and tok.special_ids == (0, 1, 2)
    # h e -> he, l l -> ll, he ll -> hell, hell o -> hello; Ġ w -> Ġw, Ġw o -> Ġwo
    assert tok.encode("hello world") == [ids["hello"], ids["Ġwo"], ids["r"], ids["l"], ids["d"]]
    assert tok.encode("hello 42") == [ids["hello"], ids["Ġ"], ids["4"], ids["2"]]  # digits alone
    assert tok.encode("<|im_end|>hello") == [2, ids["hello"]]
    assert tok.encode("é") == [ids["Ã"], ids["©"]]  # UTF-8 c3 a9 as byte-level characters
    for text in ["hello world", "é中🙂", "a  b\n", SPECIALS[1] + "x" + SPECIALS[2]]:
        assert tok.decode(tok.encode(text)) == text
    assert Tokenizer.from_gguf(tiny.path).encode("hello") == [ids["hello"]]


def test_tiny_template_gets_bos_eos_and_raise_exception(tiny):
    tok = Tokenizer.from_gguf(tiny)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>user: hi<|im_end|><|im_start|>assistant: ")
    with pytest.raises(ValueError, match="no bad roles"):
        tok.apply_chat_template([{"role": "bad", "content": "x"}])


def test_add_bos_token_is_honoured(tmp_path):
    tok = Tokenizer.from_gguf(write_tiny_gguf(tmp_path / "bos.gguf",
                                              metadata={"tokenizer.ggml.add_bos_token": True}))
    assert tok.encode("hello")[0] == tok.bos_id == 1


@pytest.mark.parametrize("metadata, message", [
    ({"tokenizer.ggml.model": "llama"}, "tokenizer model 'llama'"),
    ({"tokenizer.ggml.pre": "qwen2"}, "pre-tokenizer 'qwen2'"),
    ({"tokenizer.ggml.merges": ["h e", "x y"]}, "merge"),
    ({"tokenizer.ggml.merges": None}, "lacks tokenizer.ggml.merges"),
    ({"tokenizer.ggml.tokens": "hello"}, "tokenizer.ggml.tokens is not an array"),
    ({"tokenizer.chat_template": None}, "no chat template"),
])
def test_a_tokenizer_the_module_cannot_build_is_a_value_error(tmp_path, metadata, message):
    path = write_tiny_gguf(tmp_path / "bad.gguf", metadata=metadata)
    with pytest.raises(ValueError, match=message):
        Tokenizer.from_gguf(path).apply_chat_template([{"role": "user", "content": "hi"}])


def test_merges_may_be_any_iterable_and_pairs_share_the_vocabularys_strings(tiny):
    tokens, merges = tiny.metadata["tokenizer.ggml.tokens"], tiny.metadata["tokenizer.ggml.merges"]
    ids = {t: i for i, t in enumerate(tokens)}
    for given in (merges, iter(merges), (m for m in merges), tiny.metadata.iterate("tokenizer.ggml.merges")):
        tok = Tokenizer(tokens, given, tiny.metadata["tokenizer.ggml.token_type"])
        assert tok.encode("hello world") == [ids["hello"], ids["Ġwo"], ids["r"], ids["l"], ids["d"]]


@pytest.mark.parametrize("merges", [["h ello"], ["hel lo", "h e l"], ["hello"], ["h e"]])
def test_a_merge_of_anything_but_two_tokens_is_a_value_error(merges):
    tokens = tiny_tokens()[:3 + 256] + ["hel", "lo", "hello"]  # "ello" is not a token, nor "he"
    assert Tokenizer(tokens, ["hel lo"]).vocab_size == len(tokens)  # two tokens joining into one
    with pytest.raises(ValueError, match="a merge is not two tokens joining into a token"):
        Tokenizer(tokens, merges)
