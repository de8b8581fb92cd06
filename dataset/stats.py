"""Statistics of a run folder's output, shared by ``dataset.export`` and ``dataset.report``.

- ``load_run``: run.json, the accepted and rejected samples, quality.json;
- ``outcome``: one short category per sample (accepted, judge under the bar, pairwise
  lost, near-duplicate, benchmark contamination, failed: ...);
- ``score_stats``: distributions of the judge's mean and per-criterion scores;
- ``diversity``: distinct-1/2, length spread, most common first and leading words.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.ledger import Ledger
from dataset.quality.gate import gate_summary
from dataset.quality.rouge import rouge_l
from dataset.quality.text import tokens
from dataset.runfolder import Manifest
from state.records import Sample

__all__ = [
    "RunData",
    "diversity",
    "load_run",
    "outcome",
    "outcomes",
    "quantiles",
    "score_stats",
]


class RunFolderError(ValueError):
    """Not a run folder, or one without the files needed."""


@dataclass
class RunData:
    path: Path
    manifest: Manifest
    accepted: list[Sample]
    rejected: list[Sample]
    quality: dict[str, Any] | None


def load_run(path: Path) -> RunData:
    if not (path / "run.json").is_file():
        raise RunFolderError(f"{path} is not a run folder (no run.json)")
    manifest = Manifest.model_validate_json((path / "run.json").read_text(encoding="utf-8"))

    def read(name: str) -> list[Sample]:
        file = path / name
        return list(Ledger(file).read(Sample)) if file.exists() else []

    return RunData(
        path, manifest, read("samples.jsonl"), read("rejected.jsonl"), gate_summary(path)
    )


def outcome(sample: Sample) -> str:
    """A short category for why the sample ended as it did."""
    if sample.status == "accepted":
        return "accepted"
    if sample.filter is not None:
        if sample.filter.name == "near-duplicate":
            return f"near-duplicate of a {sample.filter.source}"
        if sample.filter.name == "decontamination":
            return f"benchmark contamination ({sample.filter.source})"
        return f"check: {sample.filter.name}"
    reason = sample.reason or ""
    if sample.status == "rejected":
        if reason.startswith("judge mean"):
            return "judge: under the bar"
        if reason.startswith("improved response did not beat"):
            return "judge: improved response lost (pairwise)"
        return "rejected: " + _head(reason)
    return "failed: " + _head(reason)


def _head(reason: str) -> str:
    """The reason without its variable tail (numbers, quoted parts), for grouping."""
    head = re.split(r"[:(\[{\"']", reason, maxsplit=1)[0].strip()
    head = re.sub(r"\d+(\.\d+)?", "N", head)
    return (head[:60] + "…") if len(head) > 60 else (head or "unknown")


def outcomes(samples: Iterable[Sample]) -> Counter[str]:
    return Counter(outcome(s) for s in samples)


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """min, p10, p25, median, p75, p90, max, mean, std of ``values`` (empty: {})."""
    if not values:
        return {}
    data = sorted(values)

    def q(p: float) -> float:
        k = (len(data) - 1) * p
        lo, hi = math.floor(k), math.ceil(k)
        return data[lo] + (data[hi] - data[lo]) * (k - lo)

    return {
        "min": data[0],
        "p10": q(0.1),
        "p25": q(0.25),
        "median": q(0.5),
        "p75": q(0.75),
        "p90": q(0.9),
        "max": data[-1],
        "mean": statistics.fmean(data),
        "std": statistics.pstdev(data),
    }


def score_stats(samples: Sequence[Sample]) -> dict[str, Any]:
    """The judge's mean score and each criterion's: quantiles and a histogram (bins of 0.5)."""
    means = [s.judgement.mean for s in samples if s.judgement is not None]
    criteria: dict[str, list[float]] = {}
    scale = (1, 5)
    for s in samples:
        if s.judgement is None:
            continue
        scale = s.judgement.scale
        for name, value in s.judgement.scores.items():
            criteria.setdefault(name, []).append(value)
    lo, hi = scale
    edges = [lo + 0.5 * i for i in range(int((hi - lo) * 2) + 1)]

    def histogram(values: list[float]) -> dict[str, int]:
        counts = Counter(min(int((v - lo) * 2), len(edges) - 2) for v in values)
        return {
            f"{edges[i]:.1f}-{edges[i + 1]:.1f}": counts.get(i, 0) for i in range(len(edges) - 1)
        }

    return {
        "scale": list(scale),
        "judged": len(means),
        "mean": {**quantiles(means), "histogram": histogram(means)},
        "criteria": {
            name: {**quantiles(values), "histogram": histogram(values)}
            for name, values in sorted(criteria.items())
        },
    }


# Words that come before the verb that says what to do ("please", "can you", ...).
_LEAD_IN = frozenset(
    [
        "please",
        "kindly",
        "can",
        "could",
        "would",
        "will",
        "you",
        "i",
        "we",
        "let",
        "lets",
        "let's",
        "help",
        "me",
        "us",
        "now",
        "ok",
        "okay",
        "hey",
        "hi",
        "hello",
        "so",
        "then",
        "also",
        "just",
    ]
)
_QUESTION = frozenset(
    [
        "what",
        "how",
        "why",
        "who",
        "when",
        "where",
        "which",
        "whose",
        "whom",
        "is",
        "are",
        "do",
        "does",
        "did",
    ]
)


def leading_word(instruction: str) -> str | None:
    """The first word after lead-ins like "please, can you": a cheap stand-in for the main
    verb of an imperative (no part-of-speech tagger); questions give "what?", "how?"."""
    for word in tokens(instruction):
        if word in _LEAD_IN:
            continue
        return f"{word}?" if word in _QUESTION else word
    return None


def diversity(instructions: Sequence[str], top: int = 15) -> dict[str, Any]:
    """distinct-1/2 (unique n-grams over all n-grams, corpus level), token length spread,
    the most common first words and leading words."""
    toks = [tokens(text) for text in instructions]
    out: dict[str, Any] = {"instructions": len(instructions)}
    for n in (1, 2):
        grams: Counter[tuple[str, ...]] = Counter()
        for t in toks:
            grams.update(tuple(t[i : i + n]) for i in range(len(t) - n + 1))
        total = sum(grams.values())
        out[f"distinct_{n}"] = len(grams) / total if total else 0.0
    out["unique_instructions"] = len({" ".join(t) for t in toks})
    out["length_tokens"] = quantiles([float(len(t)) for t in toks])
    firsts = Counter(t[0] for t in toks if t)
    leads = Counter(w for w in (leading_word(text) for text in instructions) if w)
    out["first_words"] = firsts.most_common(top)
    out["leading_words"] = leads.most_common(top)
    return out


def reference_similarity(samples: Sequence[Sample]) -> list[float]:
    """ROUGE-L F1 of each sample's instruction with its reference's instruction."""
    return [
        rouge_l(tokens(s.instruction), tokens(s.provenance.reference_instruction)) for s in samples
    ]
