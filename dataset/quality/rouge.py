"""ROUGE-L between token sequences, and an index that finds a text's closest kept text.

ROUGE-L F1 of two token sequences ``a`` and ``b`` is ``2 * LCS(a, b) / (|a| + |b|)``
(precision ``LCS/|b|`` and recall ``LCS/|a|`` combined with beta = 1), 0 when either is
empty: the ``rougeL`` F-measure of Google's ``rouge-score``, which Self-Instruct used to
drop instructions scoring above 0.7 against any kept one.

LCS is computed bit-parallel (Hyyrö's formulation of Allison-Dix): one machine-word
style operation per token of ``b`` over a bitmask as long as ``a``, instead of the
``|a| x |b|`` table.

``RougeIndex`` answers "which indexed text has the highest ROUGE-L with this one, if
any is above the threshold" without comparing against every text, and without
missing any (it is exact, not approximate):

- exact copies are a dictionary lookup;
- prefix filtering (the AllPairs / PPJoin set-similarity join): a score above ``t``
  needs ``LCS >= t*n/(2-t)`` for a text of ``n`` tokens, and the LCS is at most the
  multiset overlap of the two texts. Two multisets overlapping in ``o`` elements share
  an element among their first ``n - o + 1`` elements in any fixed global order, so
  each text is indexed under its first ``n - ceil(t*n/(2-t)) + 1`` elements only, and a
  query looks up its own prefix. Any fixed order is correct; rare tokens first keeps
  the posting lists short, so the order is by document frequency in the index (common
  English words, ``text.COMMON_WORDS``, last while the index is small), fixed when
  the index is built and re-fixed, with every text re-indexed, each time it doubles
  (amortised O(1) per text);
- PPJoin's positional filter: postings hold each element's position in its text's
  order, so when a query meets a candidate at positions ``i`` and ``j``, the overlap
  is at most what was met so far plus ``min(n - i - 1, m - j - 1)``; a candidate that
  cannot reach ``t * (n + m) / 2`` common tokens is dropped before any LCS. The bound
  only tightens from one meeting to the next, so it is checked once per candidate, at
  its last meeting, for all candidates at once (numpy over the posting arrays);
- a length-ratio check (``2*min/(n+m)`` must exceed ``t``) before the LCS is computed.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from dataset.quality.text import Vocab

__all__ = ["Match", "RougeIndex", "lcs_length", "min_overlap", "rouge_l"]

_LANE_BITS = 62
"""Queries up to this many tokens are verified in uint64 lanes (sums stay below 2**63)."""
_BATCH_FROM = 48
"""Fewest candidates worth the batch path; fewer are verified one by one."""

_POS_BITS = 20
_POS_MAX = (1 << _POS_BITS) - 1
"""A posting is ``text position << 20 | element position``; a position past 2**20 - 1 is
stored as that, which only loosens the positional bound (it stays correct)."""


@dataclass(frozen=True)
class Match:
    """The closest indexed text: its position in the index and its ROUGE-L F1."""

    index: int
    score: float


def _masks(a: Sequence[Hashable]) -> dict[Hashable, int]:
    masks: dict[Hashable, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs(masks: dict[Hashable, int], n: int, b: Sequence[Hashable]) -> int:
    """LCS length of the sequence behind ``masks`` (length ``n``) and ``b``."""
    full = (1 << n) - 1
    v = full
    get = masks.get
    for tok in b:
        m = get(tok)
        if m is not None:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return n - v.bit_count()


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b``."""
    if not a or not b:
        return 0
    return _lcs(_masks(a), len(a), b)


def rouge_l(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """ROUGE-L F1 (beta = 1) of two token sequences; 0.0 when either is empty."""
    if not a or not b:
        return 0.0
    return 2 * lcs_length(a, b) / (len(a) + len(b))


def min_overlap(n: int, threshold: float) -> int:
    """Fewest common tokens a text of ``n`` tokens needs with any text to reach ``threshold``."""
    return max(1, math.ceil(threshold * n / (2 - threshold) - 1e-9))


class RougeIndex:
    """Texts (as token ids of one ``Vocab``) and their prefix-filter postings.

    ``best(ids)`` returns the indexed text with the highest ROUGE-L F1 strictly above
    ``threshold`` (the earliest added on a tie), or None. ``add(ids)`` indexes a text and
    returns its position. ``verified`` counts the LCS computations made (for benchmarks).
    """

    def __init__(self, threshold: float, vocab: Vocab, *, reorder_from: int = 1024) -> None:
        """``reorder_from``: index size at which the token order is first re-fixed."""
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"ROUGE-L threshold must be in [0, 1), not {threshold}")
        self.threshold = threshold
        self.vocab = vocab
        self.docs: list[tuple[int, ...]] = []
        self._lengths = array("q")
        self._starts = array("q")  # where each text begins in _flat
        self._flat = array("q")  # every text's token ids, end to end (for batch LCS)
        self._postings: dict[int, array[int]] = {}
        self._exact: dict[tuple[int, ...], int] = {}
        self._df: list[int] = []  # token id -> indexed texts holding it
        self._order_df: list[int] = []  # token id -> its df when the order was fixed
        self._reorder_at = max(1, reorder_from)
        self.verified = 0
        self.reorders = 0

    def __len__(self) -> int:
        return len(self.docs)

    def _ordered(self, ids: tuple[int, ...]) -> list[int]:
        """The multiset elements of ``ids`` (token, occurrence) in the global order, as ints."""
        static = self.vocab.rank
        fixed = self._order_df
        known = len(fixed)
        seen: dict[int, int] = {}
        keyed = []
        for tok in ids:
            k = seen.get(tok, 0)
            seen[tok] = k + 1
            keyed.append((fixed[tok] if tok < known else 0, static[tok], -tok, k))
        keyed.sort()
        return [(-neg) | (k << 32) for _, _, neg, k in keyed]

    def _prefix(self, ids: tuple[int, ...]) -> list[int]:
        n = len(ids)
        return self._ordered(ids)[: n - min_overlap(n, self.threshold) + 1]

    def _post(self, position: int, ids: tuple[int, ...]) -> None:
        postings = self._postings
        base = position << _POS_BITS
        for j, element in enumerate(self._prefix(ids)):
            entry = base | min(j, _POS_MAX)
            bucket = postings.get(element)
            if bucket is None:
                postings[element] = array("q", (entry,))
            else:
                bucket.append(entry)

    def _reorder(self) -> None:
        """Fix the order anew from the current document frequencies and re-index."""
        self._order_df = list(self._df)
        self._postings = {}
        for position, ids in enumerate(self.docs):
            if ids:
                self._post(position, ids)
        self.reorders += 1

    def add(self, ids: tuple[int, ...]) -> int:
        position = len(self.docs)
        self.docs.append(ids)
        self._lengths.append(len(ids))
        self._starts.append(len(self._flat))
        self._flat.extend(ids)
        if not ids:
            return position
        self._exact.setdefault(ids, position)
        df = self._df
        top = max(ids)
        if top >= len(df):
            df.extend([0] * (top + 1 - len(df)))
        for tok in set(ids):
            df[tok] += 1
        if len(self.docs) >= self._reorder_at:
            self._reorder_at *= 2
            self._reorder()
        else:
            self._post(position, ids)
        return position

    def best(self, ids: tuple[int, ...]) -> Match | None:
        if not ids:
            return None
        exact = self._exact.get(ids)
        if exact is not None:
            return Match(exact, 1.0)
        n = len(ids)
        t = self.threshold
        # Unknown tokens (-1, from Vocab.lookup) are in no indexed text: the prefix is taken
        # over the known tokens, with the overlap bound of the full length n (unknown
        # tokens can only lower the overlap).
        known = tuple(i for i in ids if i >= 0)
        nk = len(known)
        cut = nk - min_overlap(n, t) + 1
        if cut <= 0:
            return None
        postings = self._postings
        chunks = []
        steps = []
        for i, element in enumerate(self._ordered(known)[:cut]):
            bucket = postings.get(element)
            if bucket is not None:
                chunks.append(np.frombuffer(bucket, dtype=np.int64))
                steps.append(i)
        if not chunks:
            return None
        # Every meeting of a candidate: its prefix step i in the query, its element
        # position j in the candidate. Group by candidate; the last meeting gives the
        # tightest bound: overlap <= meetings + min(tokens left in each).
        entries = np.concatenate(chunks)
        step = np.repeat(np.asarray(steps, dtype=np.int64), [len(c) for c in chunks])
        del chunks  # release the views on the posting arrays before they can grow again
        cand = entries >> _POS_BITS
        order = np.argsort(cand, kind="stable")
        cand = cand[order]
        last = np.empty(len(cand), dtype=bool)
        last[:-1] = cand[1:] != cand[:-1]
        last[-1] = True
        ends = np.flatnonzero(last)
        met = np.diff(ends, prepend=-1)
        at = order[ends]
        cand = cand[ends]
        m = np.frombuffer(self._lengths, dtype=np.int64)[cand]
        most = met + np.minimum(nk - step[at] - 1, m - (entries[at] & _POS_MAX) - 1)
        most = np.minimum(most, np.minimum(m, n))
        ok = (most >= t * (n + m) / 2 - 1e-9) & (2 * np.minimum(m, n) > t * (n + m))
        if not ok.any():
            return None
        cand = cand[ok]
        bound = 2 * most[ok] / (n + m[ok])
        if n <= _LANE_BITS and len(cand) >= _BATCH_FROM:
            return self._verify_batch(ids, cand, m[ok])
        # Verify the most promising first; stop once no bound can beat the best score.
        ranked = np.lexsort((cand, -bound))
        masks = _masks(ids)
        docs = self.docs
        best_score = 0.0
        best_pos = -1
        verified = 0
        for pos, most_score in zip(cand[ranked].tolist(), bound[ranked].tolist(), strict=True):
            if most_score < best_score:
                break
            doc = docs[pos]
            verified += 1
            score = 2 * _lcs(masks, n, doc) / (n + len(doc))
            if score > best_score or (score == best_score and pos < best_pos):
                best_score, best_pos = score, pos
        self.verified += verified
        if best_pos < 0 or best_score <= t:
            return None
        return Match(best_pos, best_score)

    def _verify_batch(self, ids: tuple[int, ...], cand: np.ndarray, m: np.ndarray) -> Match | None:
        """LCS with every candidate at once: bit-parallel, one uint64 lane per candidate."""
        n = len(ids)
        t = self.threshold
        unique = sorted(set(ids))
        masks = _masks(ids)
        qtok = np.asarray(unique, dtype=np.int64)
        qmask = np.asarray([masks[tok] for tok in unique], dtype=np.uint64)
        width = int(m.max())
        flat = np.frombuffer(self._flat, dtype=np.int64)
        starts = np.frombuffer(self._starts, dtype=np.int64)[cand]
        cols = np.arange(width, dtype=np.int64)
        inside = cols[None, :] < m[:, None]
        toks = flat[np.where(inside, starts[:, None] + cols[None, :], 0)]
        del flat  # release the view on the token store before it can grow again
        where = np.minimum(np.searchsorted(qtok, toks), len(qtok) - 1)
        lane = np.where(inside & (qtok[where] == toks), qmask[where], np.uint64(0))
        # Carries past bit n only ever move up (and wrap off the top), so the low n bits
        # are exact without masking in the loop; u is a subset of v, so v - u == v ^ u.
        full = np.uint64((1 << n) - 1)
        rows = np.ascontiguousarray(lane.T)
        v = np.full(len(cand), full, dtype=np.uint64)
        u = np.empty_like(v)
        w = np.empty_like(v)
        for row in rows:
            np.bitwise_and(v, row, out=u)
            np.add(v, u, out=w)
            np.bitwise_xor(v, u, out=v)
            np.bitwise_or(v, w, out=v)
        lcs = n - _popcount(v & full)
        self.verified += len(cand)
        scores = 2 * lcs / (n + m)
        top = scores.max()
        if top <= t:
            return None
        pos = int(cand[scores == top].min())
        return Match(pos, float(2 * int(lcs[cand == pos][0]) / (n + len(self.docs[pos]))))


def _popcount(v: np.ndarray) -> np.ndarray:
    count = getattr(np, "bitwise_count", None)
    if count is not None:
        return count(v).astype(np.int64)
    v = v - ((v >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((v * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)
