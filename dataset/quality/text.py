"""Text normalisation and tokens shared by the quality gates.

One tokenizer for every gate, so that "near-duplicate" and "overlaps a benchmark"
mean the same thing everywhere: NFKC, case-folded, then runs of letters and digits
(``[^\\W_]+``); punctuation, underscores and whitespace separate tokens and are
otherwise ignored. On ASCII text this is exactly the tokenizer of Google's
``rouge-score`` package (``rouge_scorer``, no stemming), which Self-Instruct used for
its ROUGE-L filter; unlike it, letters outside ASCII are kept instead of dropped, and
CJK characters, which have no spaces between words, are one token each.

Token ids come from a ``Vocab`` that grows as texts arrive; a gate keeps one vocab
for its lifetime, so ids are only compared within one process.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["Vocab", "normalise", "tokens"]

# CJK ideographs, kana, hangul syllables: one token per character. Everything else:
# maximal runs of letters and digits.
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]|[^\W_]+")


def tokens(text: str) -> list[str]:
    """The word tokens of ``text`` (NFKC, case-folded; punctuation dropped)."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    """``text`` reduced to its tokens joined by single spaces (for exact matching)."""
    return " ".join(tokens(text))


# Frequent English words and the verbs instructions open with. Prefix filtering
# (dataset/quality/rouge.py) indexes the rarest tokens of each text first; these go
# last. The order is a fixed choice (any fixed order is correct; this one is fast),
# from most to least frequent.
_COMMON = """
    the a of to and in is for that you it with on this be are as i your what how an
    or by can from at write not have me about if do my which will would their all
    they we give explain describe list provide create make use some more one should
    there also other following any its has was but each please tell why these them
    who when where so into than like could been most help between new text sentence
    word words example examples short paragraph story question answer find generate
    given name way ways best good
"""
COMMON_WORDS: tuple[str, ...] = tuple(_COMMON.split())


class Vocab:
    """Token string -> small int id, plus each id's rank in the prefix-filter order."""

    __slots__ = ("_common", "ids", "rank")

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.rank: list[int] = []
        # Most frequent word -> largest rank, so it sorts last.
        self._common = {w: len(COMMON_WORDS) - i for i, w in enumerate(COMMON_WORDS)}

    def __len__(self) -> int:
        return len(self.ids)

    def encode(self, words: list[str]) -> tuple[int, ...]:
        """Ids of ``words``, adding unseen ones."""
        ids = self.ids
        out = []
        for w in words:
            i = ids.get(w)
            if i is None:
                i = ids[w] = len(self.rank)
                self.rank.append(self._common.get(w, 0))
            out.append(i)
        return tuple(out)

    def lookup(self, words: list[str]) -> tuple[int, ...]:
        """Ids of ``words`` without adding any: an unseen word becomes -1."""
        get = self.ids.get
        return tuple(get(w, -1) for w in words)
