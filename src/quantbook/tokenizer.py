"""The GPT's tokenizer: one token per character, learned from the training text."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class CharTokenizer:
    """One token per character; id 0 is the unknown token for characters unseen in training.

    Example: ``CharTokenizer.from_text("abba").encode("abc") == [1, 2, 0]``.
    """

    UNK = "\ufffd"  # decoded form of the unknown token (the Unicode replacement character)

    def __init__(self, chars: Sequence[str]):
        if not chars or chars[0] != self.UNK or len(set(chars)) != len(chars):
            raise ValueError("chars must start with CharTokenizer.UNK and hold no duplicates: "
                             "build it with CharTokenizer.from_text(text)")
        self.chars = list(chars)
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary: the unknown token, then the sorted distinct characters of text."""
        return cls([cls.UNK, *sorted(set(text) - {cls.UNK})])

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, 0) for c in text]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join(self.chars[i] for i in ids)
