"""MinHash-LSH candidates (``datasketch``), verified by ROUGE-L: near-duplicates at scale.

Each text's set of token ids is sketched with MinHash and inserted into a MinHash-LSH
index tuned for Jaccard ``jaccard``; a query verifies the texts that LSH returns with
the exact ROUGE-L of ``rouge.py`` and keeps the best above ``threshold``. So a drop
always means ROUGE-L above the threshold, as with ``RougeIndex``; what changes is how
candidates are found: LSH time per query does not grow with the number of texts
sharing common tokens, and it may miss a pair whose token sets are less similar than
the LSH curve expects (``bench/filters.py`` measures how many).

Needs the ``quality`` extra (``pip install 'refed[quality]'``).
"""

from __future__ import annotations

from typing import Any

from dataset.quality.rouge import Match, _lcs, _masks
from dataset.quality.text import Vocab

__all__ = ["MinHashIndex"]


def _identity(token_id: int) -> int:
    # Token ids are small distinct ints; datasketch mixes them (MurmurHash3 finaliser)
    # before its permutations, so they need no hashing of their own.
    return token_id


class MinHashIndex:
    """Same interface as ``RougeIndex``: ``add(ids) -> position``, ``best(ids) -> Match``."""

    def __init__(
        self,
        threshold: float,
        vocab: Vocab,
        *,
        jaccard: float = 0.5,
        num_perm: int = 128,
        seed: int = 1,
    ) -> None:
        try:
            from datasketch import MinHash, MinHashLSH
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "near_dup = minhash needs the datasketch package: pip install 'refed[quality]'"
            ) from exc
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"ROUGE-L threshold must be in [0, 1), not {threshold}")
        self.threshold = threshold
        self.vocab = vocab
        self.num_perm = num_perm
        self._minhash = MinHash
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=_identity)
        self.lsh = MinHashLSH(threshold=jaccard, num_perm=num_perm)
        self.docs: list[tuple[int, ...]] = []
        self._exact: dict[tuple[int, ...], int] = {}
        self.verified = 0

    def __len__(self) -> int:
        return len(self.docs)

    def _sketch(self, ids: tuple[int, ...]) -> Any:
        sketch = self._minhash(
            num_perm=self.num_perm,
            hashfunc=_identity,
            permutations=self._template.permutations,
            scheme=self._template.scheme,
        )
        sketch.update_batch(sorted(set(ids)))
        return sketch

    def add(self, ids: tuple[int, ...]) -> int:
        position = len(self.docs)
        self.docs.append(ids)
        if ids:
            self._exact.setdefault(ids, position)
            self.lsh.insert(position, self._sketch(ids), check_duplication=False)
        return position

    def best(self, ids: tuple[int, ...]) -> Match | None:
        if not ids:
            return None
        exact = self._exact.get(ids)
        if exact is not None:
            return Match(exact, 1.0)
        candidates = self.lsh.query(self._sketch(ids))
        if not candidates:
            return None
        n = len(ids)
        t = self.threshold
        masks = _masks(ids)
        best_score, best_pos = 0.0, -1
        for pos in candidates:
            doc = self.docs[pos]
            m = len(doc)
            if 2 * min(n, m) <= t * (n + m):
                continue
            self.verified += 1
            score = 2 * _lcs(masks, n, doc) / (n + m)
            if score > best_score or (score == best_score and pos < best_pos):
                best_score, best_pos = score, pos
        if best_pos < 0 or best_score <= t:
            return None
        return Match(best_pos, best_score)
