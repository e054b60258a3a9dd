"""Tokenizing a prompt one turn at a time, each turn's tokens remembered.

A Claude Code request renders to 20-90k characters, and fitting counts a request two or three times
(as sent, tools compacted, schemas stripped) before it is tokenized for the engine: 0.10 s a count on
the 2-core VM, 0.12-0.19 s of every turn's time to first token. But from one turn to the next only the
last messages change. llama.cpp splits a text at special tokens and tokenizes the pieces between them
on their own, so the tokens of a rendered prompt are the tokens of its pieces between turn markers,
joined: each piece is tokenized once and remembered, and a new turn tokenizes only its new messages.

The split is checked against tokenizing the whole text once per model (:func:`splits_cleanly`); a
vocabulary where it would differ (a marker that strips the whitespace around it) keeps whole texts.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

MEMO_CHARS = 8_000_000  # the pieces remembered, in characters (a few long conversations' worth)
# A conversation in ChatML with whitespace next to every marker: what a split must not change.
PROBE = ("<|im_start|>system\n You are a helpful assistant.\n\n<|im_end|>\n<|im_start|>user\n  Hello there "
         "<|im_end|> \n<|im_start|>assistant\nHi!<|im_end|>\n\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n")


class FragmentTokens:
    """Tokens of texts, split at ``markers`` (special-token texts and their ids) and remembered by piece."""

    def __init__(self, tokenize: Callable[[str], list[int]], markers: Mapping[str, int]) -> None:
        self._tokenize = tokenize  # the whole-text tokenizer (special tokens parsed, no BOS)
        self._markers = dict(markers)
        self._pattern = (re.compile("(" + "|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)) + ")")
                         if markers else None)
        self._memo: OrderedDict[str, list[int]] = OrderedDict()
        self._chars = 0

    def tokenize(self, text: str) -> list[int]:
        if self._pattern is None:  # no markers: whole texts, remembered (fitting counts, then tokenizes)
            return self._piece(text)
        tokens: list[int] = []
        for piece in self._pattern.split(text):
            if not piece:
                continue
            marker = self._markers.get(piece)
            if marker is not None:
                tokens.append(marker)
            else:
                tokens.extend(self._piece(piece))
        return tokens

    def _piece(self, piece: str) -> list[int]:
        memo = self._memo
        tokens = memo.get(piece)
        if tokens is not None:
            memo.move_to_end(piece)
            return tokens
        tokens = memo[piece] = self._tokenize(piece)
        self._chars += len(piece)
        while self._chars > MEMO_CHARS and len(memo) > 1:
            old, _ = memo.popitem(last=False)
            self._chars -= len(old)
        return tokens


def splits_cleanly(tokenize: Callable[[str], list[int]], markers: Mapping[str, int],
                   samples: Iterable[str] = (PROBE,)) -> bool:
    """Whether tokenizing piece by piece gives exactly the whole text's tokens on ``samples``."""
    split = FragmentTokens(tokenize, markers)
    return all(split.tokenize(text) == tokenize(text) for text in samples)
