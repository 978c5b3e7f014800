"""A word-level tokenizer for the prompts of a world: text -> fixed-length token ids + attention mask.

The paper conditions on a CLIP text encoder (Sec. 3.2). Our worlds speak a tiny, templated language ("a red circle
on a yellow background, striped"), so a vocabulary of whole words fitted on the world's prompts is enough: each
word is one token, unknown words become ``<unk>``, and every prompt is framed as ``<bos> w_1 ... w_n <eos>`` then
truncated or padded to ``max_length``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
# A word is a run of letters/digits (apostrophes kept inside, as in "don't"); every other visible character
# (comma, hyphen, ...) is a token of its own.
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    """Lower-case ``text`` and split it into words and single punctuation marks."""
    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a str, got {type(text).__name__}; pass e.g. 'a red circle'.")
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer with ``<pad>``=0, ``<unk>``=1, ``<bos>``=2, ``<eos>``=3 and a fixed ``max_length``.

    >>> tok = WordTokenizer.fit(["a red circle", "a blue square"], max_length=8)
    >>> batch = tok(["a red square!"])
    >>> batch["input_ids"].shape, batch["attention_mask"].shape
    (torch.Size([1, 8]), torch.Size([1, 8]))
    """

    def __init__(self, vocab: Sequence[str], max_length: int = 32):
        vocab = list(vocab)
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with the special tokens {SPECIAL_TOKENS}, got "
                             f"{vocab[:len(SPECIAL_TOKENS)]}; build one with WordTokenizer.fit(texts).")
        if len(set(vocab)) != len(vocab):
            duplicates = sorted(w for w, n in Counter(vocab).items() if n > 1)
            raise ValueError(f"the vocabulary lists {duplicates} more than once; each word must appear once.")
        if max_length < 3:
            raise ValueError(f"max_length={max_length} leaves no room for a word between <bos> and <eos>; "
                             "use max_length >= 3.")
        self.vocab = vocab
        self.max_length = int(max_length)
        self.token_to_id = {word: i for i, word in enumerate(vocab)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (self.token_to_id[t] for t in SPECIAL_TOKENS)

    @classmethod
    def fit(cls, texts: Iterable[str], max_length: int = 32, min_count: int = 1) -> "WordTokenizer":
        """Build the vocabulary from ``texts``: special tokens first, then words seen >= ``min_count`` times.

        Words are sorted by decreasing count, ties alphabetically, so the same texts always give the same ids.
        """
        counts = Counter(word for text in texts for word in split_words(text))
        if not counts:
            raise ValueError("fit() got no words; pass the world's prompts, e.g. [world.styled_image(s)[1] for s "
                             "in range(1000)].")
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS),
                       key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + words, max_length=max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """``<bos> w_1 ... w_n <eos>`` as ids, words cut so the whole fits in ``max_length`` (no padding)."""
        words = split_words(text)[: self.max_length - 2]
        return [self.bos_id, *(self.token_to_id.get(w, self.unk_id) for w in words), self.eos_id]

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize a prompt or a list of prompts into ``input_ids`` (B, L) long and ``attention_mask`` (B, L) bool.

        ``attention_mask`` is True on real tokens (``<bos>``, words, ``<eos>``) and False on padding.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            encoded = self.encode(text)
            ids[row, : len(encoded)] = torch.tensor(encoded)
        return {"input_ids": ids, "attention_mask": ids != self.pad_id}

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Join the words of ``ids``, dropping ``<pad>``, ``<bos>`` and ``<eos>`` (``<unk>`` stays visible)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        skip = {self.pad_id, self.bos_id, self.eos_id}
        return " ".join(self.vocab[i] for i in ids if i not in skip)

    def save(self, path: str | Path) -> Path:
        """Write the vocabulary and ``max_length`` as JSON (e.g. ``data/checkpoints/shapes/tokenizer.json``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"max_length": self.max_length, "vocab": self.vocab}, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WordTokenizer":
        """Read a tokenizer written by :meth:`save`; a folder means ``folder/tokenizer.json``."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}; train one with `python -m ctxdiff_from_scratch "
                                    "encoders --world shapes` or pass the path of a tokenizer.json.")
        payload = json.loads(path.read_text())
        return cls(payload["vocab"], max_length=payload["max_length"])
