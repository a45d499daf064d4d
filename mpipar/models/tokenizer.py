"""Text to token ids and back, built from a GGUF file's own vocabulary.

The file describes its tokenizer under ``tokenizer.*`` (the GGUF specification, ggml's
``docs/gguf.md``): ``ggml.model`` "gpt2" is byte-level BPE (Radford et al. 2019; Sennrich et
al. 2016): every UTF-8 byte is one of 256 printable characters, and ``ggml.merges`` ("a b",
highest priority first) join them into the ``ggml.tokens``. ``ggml.pre`` names the
pre-tokenizer that cuts text into words before BPE; "smollm" splits digits one by one, then
applies GPT-2's regular expression. ``ggml.token_type`` 3 marks control tokens such as
``<|im_start|>``, matched whole in text; ``chat_template`` is a Jinja template that renders a
conversation as text.

``Tokenizer`` assembles the ``tokenizers`` package's pieces (a BPE model, Digits and ByteLevel
pre-tokenizers, the ByteLevel decoder) from those lists, and renders the template with
``jinja2`` (imported at the first template). A vocabulary of 49152 tokens and as many merges is
some 10 MiB of Python strings: ``from_gguf`` hands the merges over one at a time, straight from
the file, and every merge pair holds the vocabulary's own two strings -- no list of the merges,
no second copy of the tokens.
"""
import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from .gguf import GGUFFile

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types (gguf.TokenType)


def _byte_level(digits_one_by_one):
    """The pre-tokenizers of a ``tokenizer.ggml.pre`` type: optionally digits one by one, then
    GPT-2's regular expression over the bytes as printable characters (no prefix space)."""
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits_one_by_one else []
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    return pre_tokenizers.Sequence(steps)


#: the ``tokenizer.ggml.pre`` types this module builds
PRE_TOKENIZERS = {"smollm": lambda: _byte_level(True), "gpt2": lambda: _byte_level(False)}


def _raise_exception(message):
    """What a chat template calls to reject a conversation."""
    raise ValueError(f"chat template: {message}")


class Tokenizer:
    """Byte-level BPE over a fixed vocabulary: ``encode``, ``decode`` and
    ``apply_chat_template``; ``bos_id``, ``eos_id``, ``vocab_size``, ``special_ids``.

    ``tokens[i]`` is token i's text in the byte-level alphabet, ``merges`` the "a b" pairs in
    priority order (any iterable: it is read once), ``token_types`` llama.cpp's types (3 =
    control: matched whole in text, a special token)."""

    def __init__(self, tokens, merges, token_types=None, pre="smollm", bos_id=None, eos_id=None,
                 chat_template=None, add_bos=False, source="tokenizer"):
        self.source = source
        tokens = list(tokens)
        types = list(token_types) if token_types is not None else [1] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens) or len(types) != len(tokens):
            raise ValueError(f"{source}: the token list repeats a token or its types do not match it")
        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"{source}: pre-tokenizer {pre!r}; mpipar builds {', '.join(PRE_TOKENIZERS)}")
        pairs = []
        for merge in merges:  # each pair holds the vocabulary's own two strings
            p = merge.split(" ")
            if len(p) != 2 or p[0] not in vocab or p[1] not in vocab or p[0] + p[1] not in vocab:
                raise ValueError(f"{source}: a merge is not two tokens joining into a token")
            pairs.append((tokens[vocab[p[0]]], tokens[vocab[p[1]]]))
        for name, i in (("bos", bos_id), ("eos", eos_id)):
            if i is not None and not 0 <= i < len(tokens):
                raise ValueError(f"{source}: {name} id {i} is outside the vocabulary")
        self.vocab_size = len(tokens)
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, bool(add_bos)
        self.bos_token = tokens[bos_id] if bos_id is not None else None
        self.eos_token = tokens[eos_id] if eos_id is not None else None
        self.special_ids = tuple(i for i, t in enumerate(types) if t == CONTROL)
        self.chat_template = chat_template
        self._template = None

        bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
        self._tok = tokenizers.Tokenizer(bpe)
        self._tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
        self._tok.decoder = decoders.ByteLevel()
        # already in the vocabulary: added tokens keep their ids, and are matched before BPE
        self._tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                      for i in self.special_ids])
        self._tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types)
                              if k == USER_DEFINED])

    @classmethod
    def from_gguf(cls, source):
        """The tokenizer a GGUF file describes; ``source`` is a path or a ``GGUFFile``."""
        f = source if isinstance(source, GGUFFile) else GGUFFile(source)
        meta = f.metadata
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"{f.path}: tokenizer model {model!r}; mpipar builds byte-level BPE "
                             f"('gpt2') only")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in meta:
                raise ValueError(f"{f.path}: metadata lacks {key}")
            if meta.length(key) is None:
                raise ValueError(f"{f.path}: {key} is not an array")
        return cls(meta["tokenizer.ggml.tokens"], meta.iterate("tokenizer.ggml.merges"),
                   meta.get("tokenizer.ggml.token_type"), pre=meta.get("tokenizer.ggml.pre", "gpt2"),
                   bos_id=meta.get("tokenizer.ggml.bos_token_id"),
                   eos_id=meta.get("tokenizer.ggml.eos_token_id"),
                   chat_template=meta.get("tokenizer.chat_template"),
                   add_bos=meta.get("tokenizer.ggml.add_bos_token", False), source=f.path)

    def encode(self, text):
        """The token ids of ``text``; control tokens written in it are one id each. BOS is
        prepended only when the file asks for it (``tokenizer.ggml.add_bos_token``)."""
        if not isinstance(text, str):
            raise ValueError(f"{self.source}: encode takes a str, not {type(text).__name__}")
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if self.add_bos and self.bos_id is not None else ids

    def decode(self, ids):
        """The text of token ids, control tokens included: decode(encode(t)) == t."""
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"{self.source}: token ids must lie in [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=False)

    def token(self, i):
        """Token i's text in the byte-level alphabet ("Ġ" is a space)."""
        return self._tok.id_to_token(int(i))

    def apply_chat_template(self, messages, add_generation_prompt=True):
        """A conversation as the text the model was tuned on: the file's Jinja template rendered
        with ``messages`` (a list of {"role", "content"}), ``add_generation_prompt`` (end with
        the assistant's header), ``bos_token``, ``eos_token`` and ``raise_exception``."""
        if not self.chat_template:
            raise ValueError(f"{self.source}: no chat template (tokenizer.chat_template)")
        if not isinstance(messages, (list, tuple)) or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in messages):
            raise ValueError("messages must be a list of {'role': str, 'content': str}")
        if self._template is None:
            from jinja2.exceptions import TemplateError
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
            env.globals["raise_exception"] = _raise_exception
            try:
                self._template = env.from_string(self.chat_template)
            except TemplateError as e:
                raise ValueError(f"{self.source}: the chat template does not parse: {e}") from None
        return self._template.render(messages=[dict(m) for m in messages],
                                     add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def __repr__(self):
        return f"Tokenizer({self.source!r}, vocab_size={self.vocab_size})"


__all__ = ["PRE_TOKENIZERS", "Tokenizer"]
