"""Tokenizers with the small interface the readers need: ``encode``, ``vocab_size``, ``eos_id``.

``ByteTokenizer`` maps UTF-8 bytes to ids 0..255 and puts its specials after them; it needs no
files and no downloads, so the demo and the tests can train a language model anywhere.
"""

from __future__ import annotations


class ByteTokenizer:
    """UTF-8 bytes -> ids 0..255; specials ``pad`` 256, ``bos`` 257, ``eos`` 258."""

    pad_id = 256
    bos_id = 257
    eos_id = 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        """Inverse of :meth:`encode`; special ids are dropped, invalid UTF-8 is replaced."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=259)"


# Names a tokenizer.json commonly gives its end-of-text token, tried in order.
EOS_NAMES = ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>")
SPECIALS = ("<pad>", "<bos>", "<eos>")  # what `train_bpe` adds, ids 0, 1, 2


class FileTokenizer:
    """A Hugging Face ``tokenizer.json`` (the ``tokenizers`` library) behind the same interface."""

    def __init__(self, path: str, eos_token: str | None = None):
        from pathlib import Path

        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise ValueError(f"tokenizer file not found: {path}")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as err:  # the library raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a tokenizer.json: {err}") from None
        self.path = str(path)
        names = (eos_token,) if eos_token else EOS_NAMES
        found = [self._tok.token_to_id(n) for n in names if self._tok.token_to_id(n) is not None]
        if not found:
            raise ValueError(f"{path}: no end-of-text token among {list(names)}; name it with eos_token")
        self.eos_id = found[0]
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def __repr__(self) -> str:
        return f"FileTokenizer({self.path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(spec: str, eos_token: str | None = None):
    """``"byte"`` -> :class:`ByteTokenizer`; a path to a tokenizer.json -> :class:`FileTokenizer`."""
    return ByteTokenizer() if spec == "byte" else FileTokenizer(spec, eos_token)


def train_bpe(texts, vocab_size: int, out: str, min_frequency: int = 2, progress: bool = False) -> FileTokenizer:
    """Byte-level BPE on an iterable of strings; writes ``out`` (tokenizer.json) and returns it loaded.

    Byte-level means every input is encodable (the 256 bytes are in the base alphabet); the
    specials ``<pad> <bos> <eos>`` get ids 0, 1, 2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIALS)} (bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=progress)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(out)
    return FileTokenizer(out)
