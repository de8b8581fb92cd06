"""The quality gate: what a judge-accepted sample must also pass before it is kept.

Built once per run (``QualityGate.for_run``), it holds

- the near-duplicate index: the instructions of every seed and of every sample kept
  so far; a new instruction whose ROUGE-L F1 with one of them is above
  ``near_dup_threshold`` is dropped (``rouge.RougeIndex``, or ``minhash.MinHashIndex``
  for large runs);
- the decontaminator: the user's benchmark prompt sets; an instruction or response
  that overlaps one of their prompts is dropped (``decontam.Decontaminator``).

The runner calls ``screen(samples)`` just before samples go to the ledgers: a sample
the gate drops is written to ``rejected.jsonl`` under the same ``sample_id``, with
status ``rejected``, the reason and the closest match (``Sample.filter``); a kept one
is added to the index. Exactly-once across crashes follows from the ledgers: a
decision is final once its sample is in a ledger (the runner never screens a
``sample_id`` the ledgers hold), and a restarted run rebuilds the index from the seeds
and ``samples.jsonl`` (``load``), so it decides against exactly what was kept.

``quality.json`` in the run folder summarises what the gate did, per filter and per
benchmark. It is written at the start (rebuilt from the ledgers, so it survives
crashes), when a sample is dropped, and when the run ends or is stopped;
``with_ledger_counts`` recounts it from a run's ledgers, as the report does.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from dataset.quality.benchmarks import load_benchmarks
from dataset.quality.decontam import Decontaminator
from dataset.quality.rouge import Match, RougeIndex
from dataset.quality.text import Vocab, tokens
from state.records import QualityFilter, Reference, Sample
from state.settings import RefedSettings

if TYPE_CHECKING:
    from dataset.runfolder import RunFolder

__all__ = ["QualityGate", "Rejection", "gate_summary", "with_ledger_counts"]

MATCH_CHARS = 500
QUALITY_FILE = "quality.json"


class NearDupIndex(Protocol):
    def __len__(self) -> int: ...
    def add(self, ids: tuple[int, ...]) -> int: ...
    def best(self, ids: tuple[int, ...]) -> Match | None: ...


@dataclass(frozen=True)
class Rejection:
    """A gate's verdict on one sample: the filter record and the reason line."""

    filter: QualityFilter
    reason: str


def _cut(text: str) -> str:
    return text if len(text) <= MATCH_CHARS else text[: MATCH_CHARS - 1] + "…"


def _reason(f: QualityFilter) -> str:
    if f.name == "near-duplicate":
        return f"near-duplicate ({f.method} {f.score:.2f}) of {f.match_id}"
    how = f"{f.method} {f.score:.2f}" if f.method == "rouge-l" and f.score else f.method
    return f"benchmark contamination: {f.field} overlaps {f.match_id} ({how})"


@dataclass
class _Counts:
    passed: int = 0
    near_dup: Counter[str] = field(default_factory=Counter)  # source: seed / sample
    bench: dict[str, Counter[str]] = field(default_factory=dict)  # benchmark -> method/field

    def count(self, f: QualityFilter) -> None:
        if not f.is_gate:  # a validity check's rejection, before the judge: not the gate's
            return
        source = f.source or "?"
        if f.name == "near-duplicate":
            self.near_dup[source] += 1
        else:
            c = self.bench.setdefault(source, Counter())
            c["dropped"] += 1
            c[f"test:{f.method}"] += 1
            c[f"field:{f.field}"] += 1


class QualityGate:
    """Near-duplicate and decontamination filters for one run (see the module doc)."""

    def __init__(
        self,
        *,
        near_dup: str = "rouge-l",
        threshold: float = 0.7,
        minhash_jaccard: float = 0.5,
        minhash_perm: int = 128,
        decontaminate: list[str] | None = None,
        ngram: int = 13,
        decontam_rouge: float = 0.8,
    ) -> None:
        self.near_dup = near_dup
        self.threshold = threshold
        self.vocab = Vocab()
        self.index: NearDupIndex | None = None
        if near_dup == "rouge-l":
            self.index = RougeIndex(threshold, self.vocab)
        elif near_dup == "minhash":
            from dataset.quality.minhash import MinHashIndex

            self.index = MinHashIndex(
                threshold, self.vocab, jaccard=minhash_jaccard, num_perm=minhash_perm
            )
        elif near_dup != "off":
            raise ValueError(f"near_dup must be rouge-l, minhash or off, not {near_dup!r}")
        self.minhash_jaccard = minhash_jaccard
        self.minhash_perm = minhash_perm
        self.benchmarks = load_benchmarks(decontaminate or [])
        self.decontaminator = (
            Decontaminator(self.benchmarks, ngram=ngram, rouge=decontam_rouge)
            if self.benchmarks
            else None
        )
        self.ngram = ngram
        self.decontam_rouge = decontam_rouge
        self._ids: list[str] = []  # index position -> sample_id or seed:REFERENCE_ID
        self._texts: list[str] = []
        self._kept: set[str] = set()
        self.counts = _Counts()
        self.seeds = 0
        self.path: Path | None = None
        self.seconds = 0.0

    # --- building ---------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: RefedSettings) -> QualityGate | None:
        """The gate the settings ask for, or None when every filter is off."""
        if settings.near_dup == "off" and not settings.decontaminate:
            return None
        return cls(
            near_dup=settings.near_dup,
            threshold=settings.near_dup_threshold,
            minhash_jaccard=settings.minhash_jaccard,
            minhash_perm=settings.minhash_perm,
            decontaminate=settings.decontaminate,
            ngram=settings.decontam_ngram,
            decontam_rouge=settings.decontam_rouge,
        )

    def fresh(self) -> QualityGate:
        """A gate with these settings and the benchmarks already loaded, but nothing
        indexed or counted: the service screens each request on its own with one."""
        gate = QualityGate(
            near_dup=self.near_dup,
            threshold=self.threshold,
            minhash_jaccard=self.minhash_jaccard,
            minhash_perm=self.minhash_perm,
            ngram=self.ngram,
            decontam_rouge=self.decontam_rouge,
        )
        gate.benchmarks = self.benchmarks
        gate.decontaminator = self.decontaminator
        return gate

    @classmethod
    def for_run(
        cls, settings: RefedSettings, folder: RunFolder, references: Iterable[Reference]
    ) -> QualityGate | None:
        """The run's gate, loaded from its ledgers and seeds, writing ``quality.json``."""
        gate = cls.from_settings(settings)
        if gate is None:
            return None
        gate.path = folder.path / QUALITY_FILE
        gate.load(folder.samples.read(Sample), references, folder.rejected.read(Sample))
        gate.write_summary()
        return gate

    def load(
        self,
        samples: Iterable[Sample],
        references: Iterable[Reference],
        rejected: Iterable[Sample] = (),
    ) -> None:
        """Index the seeds and the kept samples; count earlier drops from ``rejected``."""
        started = time.perf_counter()
        for ref in references:
            self._index(f"seed:{ref.id}", ref.instruction)
            self.seeds += 1
        for sample in samples:
            if sample.status == "accepted":
                self.add(sample)
        for sample in rejected:
            if sample.filter is not None and sample.filter.is_gate:
                self.counts.count(sample.filter)
        self.seconds += time.perf_counter() - started

    def _index(self, key: str, text: str) -> None:
        if self.index is None:
            return
        self.index.add(self.vocab.encode(tokens(text)))
        self._ids.append(key)
        self._texts.append(text)

    # --- deciding -----------------------------------------------------------------------
    def check(self, sample: Sample) -> Rejection | None:
        """Why ``sample`` must be dropped, or None. Decontamination is tested first."""
        if sample.sample_id in self._kept:
            return None  # kept before (a write retried): the same decision again
        if self.decontaminator is not None:
            fields = [("instruction", sample.instruction), ("response", sample.response)]
            if sample.first_response and sample.first_response != sample.response:
                fields.append(("first_response", sample.first_response))
            for name, text in fields:
                if not text:
                    continue
                hit = self.decontaminator.check(text, fuzzy=name == "instruction")
                if hit is not None:
                    f = QualityFilter(
                        name="decontamination",
                        method=hit.method,
                        score=hit.score,
                        field=name,
                        match_id=hit.prompt_id,
                        match_text=_cut(hit.prompt_text),
                        source=hit.benchmark,
                    )
                    return Rejection(f, _reason(f))
        if self.index is not None:
            match = self.index.best(self.vocab.encode(tokens(sample.instruction)))
            if match is not None:
                key = self._ids[match.index]
                f = QualityFilter(
                    name="near-duplicate",
                    method="rouge-l",
                    score=round(match.score, 4),
                    field="instruction",
                    match_id=key,
                    match_text=_cut(self._texts[match.index]),
                    source="seed" if key.startswith("seed:") else "sample",
                )
                return Rejection(f, _reason(f))
        return None

    def add(self, sample: Sample) -> None:
        """Index a kept sample (once per sample_id)."""
        if sample.sample_id in self._kept:
            return
        self._kept.add(sample.sample_id)
        self.counts.passed += 1
        self._index(sample.sample_id, sample.instruction)

    def screen(self, samples: list[Sample]) -> list[Sample]:
        """The samples as they must be written: accepted ones the gate drops become
        rejected (same sample_id, reason, filter); kept ones are indexed, in order."""
        started = time.perf_counter()
        out: list[Sample] = []
        dropped = False
        for sample in samples:
            if sample.status != "accepted":
                out.append(sample)
                continue
            rejection = self.check(sample)
            if rejection is None:
                self.add(sample)
                out.append(sample)
                continue
            self.counts.count(rejection.filter)
            dropped = True
            out.append(
                sample.model_copy(
                    update={
                        "status": "rejected",
                        "reason": rejection.reason,
                        "filter": rejection.filter,
                    }
                )
            )
        self.seconds += time.perf_counter() - started
        if dropped:
            self.write_summary()
        return out

    # --- reporting ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "checked": 0,  # the counts: _put_counts
            "passed": 0,
            "dropped": {},
            "near_duplicate": {
                "method": self.near_dup,
                "threshold": self.threshold,
                **(
                    {"minhash_jaccard": self.minhash_jaccard, "minhash_perm": self.minhash_perm}
                    if self.near_dup == "minhash"
                    else {}
                ),
                "seeds_indexed": self.seeds,
            },
            "decontamination": {
                "ngram": self.ngram,
                "rouge": self.decontam_rouge,
                "benchmarks": {
                    b.name: {
                        "path": b.path,
                        "sha256": b.sha256,
                        "field": b.field_name,
                        "prompts": len(b.prompts),
                    }
                    for b in self.benchmarks
                },
            },
            "gate_seconds_this_process": round(self.seconds, 3),
        }
        _put_counts(summary, self.counts)
        return summary

    def write_summary(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(self.summary(), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves the old file and no debris
            raise


def _put_counts(summary: dict[str, Any], c: _Counts) -> None:
    """Write the counts ``c`` into ``summary`` (its settings part already there)."""
    near = sum(c.near_dup.values())
    contaminated = sum(b["dropped"] for b in c.bench.values())
    summary["checked"] = c.passed + near + contaminated
    summary["passed"] = c.passed
    summary["dropped"] = {"near-duplicate": near, "decontamination": contaminated}
    summary["near_duplicate"].update(
        dropped=near, of_seed=c.near_dup["seed"], of_sample=c.near_dup["sample"]
    )
    summary["decontamination"]["dropped"] = contaminated
    for name, bench in summary["decontamination"]["benchmarks"].items():
        got = c.bench.get(name, Counter())
        bench["dropped"] = got["dropped"]
        bench["by_test"] = {k[5:]: v for k, v in sorted(got.items()) if k.startswith("test:")}
        bench["by_field"] = {k[6:]: v for k, v in sorted(got.items()) if k.startswith("field:")}


def with_ledger_counts(
    summary: dict[str, Any], accepted: Iterable[Sample], rejected: Iterable[Sample]
) -> dict[str, Any]:
    """``summary`` (a run's ``quality.json``) with its counts taken from the run's ledgers.

    Every accepted sample passed the gate and every drop is a rejected sample with its
    filter, so the ledgers hold the final numbers even when the file is older than them
    (a run killed before it could write it).
    """
    counts = _Counts(passed=sum(1 for s in accepted if s.status == "accepted"))
    for sample in rejected:
        if sample.filter is not None:
            counts.count(sample.filter)
    out = json.loads(json.dumps(summary))  # a deep copy
    out.setdefault("near_duplicate", {})
    out.setdefault("decontamination", {}).setdefault("benchmarks", {})
    for name in counts.bench:  # a benchmark the file does not know (should not happen)
        out["decontamination"]["benchmarks"].setdefault(name, {})
    _put_counts(out, counts)
    return out


def gate_summary(run_dir: Path) -> dict[str, Any] | None:
    """``quality.json`` of a run folder, if the run had a gate."""
    path = run_dir / QUALITY_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
