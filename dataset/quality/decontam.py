"""Benchmark decontamination: does a text overlap an evaluation prompt?

Four tests, on the tokens of ``text.tokens`` (case, punctuation and spacing ignored):

- ``exact``: the text's tokens equal a prompt's tokens (a copy up to case and
  punctuation);
- ``N-gram``: the text shares a run of N tokens with a prompt (N = 13 by default, the
  GPT-3 paper's contamination test);
- ``whole prompt``: a prompt shorter than N tokens but with at least ``min_tokens``
  appears whole, as one run, inside the text (a short prompt pasted into a longer text);
- ``rouge-l`` (instructions only): ROUGE-L F1 with a prompt above ``rouge``, which
  catches light edits of short prompts that no long n-gram survives (a word changed,
  one added or removed).

Responses get the first three tests: a response may well answer a question like a
benchmark's, but should not contain the benchmark's text.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataset.quality.benchmarks import Benchmark
from dataset.quality.rouge import RougeIndex
from dataset.quality.text import Vocab, tokens

__all__ = ["Decontaminator", "Hit"]

MIN_TOKENS = 8
"""Shortest prompt whose whole text counts as a run (shorter ones: exact and ROUGE-L only)."""


@dataclass(frozen=True)
class Hit:
    """A text that overlaps a benchmark prompt: which prompt, by which test."""

    benchmark: str
    prompt_id: str
    prompt_text: str
    method: str
    score: float | None


class Decontaminator:
    def __init__(
        self,
        benchmarks: list[Benchmark],
        *,
        ngram: int = 13,
        rouge: float = 0.8,
        min_tokens: int = MIN_TOKENS,
    ) -> None:
        if ngram < 1:
            raise ValueError(f"n-gram length must be at least 1, not {ngram}")
        self.benchmarks = benchmarks
        self.ngram = ngram
        self.rouge = rouge
        self.vocab = Vocab()
        self._owner: list[tuple[str, str, str]] = []  # position -> (benchmark, id, text)
        self._exact: dict[tuple[int, ...], int] = {}
        self._grams: dict[tuple[int, ...], int] = {}
        self._short: dict[int, dict[tuple[int, ...], int]] = {}
        self._fuzzy = RougeIndex(rouge, self.vocab)
        for bench in benchmarks:
            for prompt in bench.prompts:
                ids = self.vocab.encode(tokens(prompt.text))
                if not ids:
                    continue
                pos = len(self._owner)
                self._owner.append((bench.name, prompt.id, prompt.text))
                self._exact.setdefault(ids, pos)
                self._fuzzy.add(ids)
                n = len(ids)
                if n >= ngram:
                    for i in range(n - ngram + 1):
                        self._grams.setdefault(ids[i : i + ngram], pos)
                elif n >= min_tokens:
                    self._short.setdefault(n, {}).setdefault(ids, pos)
        self.method_ngram = f"{ngram}-gram"

    def __len__(self) -> int:
        return len(self._owner)

    def _hit(self, pos: int, method: str, score: float | None) -> Hit:
        bench, pid, text = self._owner[pos]
        return Hit(bench, pid, text, method, score)

    def check(self, text: str, *, fuzzy: bool = True) -> Hit | None:
        """The first overlap of ``text`` with a prompt, tests in the order above."""
        ids = self.vocab.lookup(tokens(text))
        if not ids:
            return None
        pos = self._exact.get(ids)
        if pos is not None:
            return self._hit(pos, "exact", 1.0)
        n = len(ids)
        grams = self._grams
        k = self.ngram
        if grams and n >= k:
            for i in range(n - k + 1):
                pos = grams.get(ids[i : i + k])
                if pos is not None:
                    return self._hit(pos, self.method_ngram, None)
        for length, table in self._short.items():
            for i in range(n - length + 1):
                pos = table.get(ids[i : i + length])
                if pos is not None:
                    return self._hit(pos, "whole prompt", None)
        if fuzzy:
            match = self._fuzzy.best(ids)
            if match is not None:
                return self._hit(match.index, "rouge-l", match.score)
        return None
