"""What the viewer page shows, packed for it: one small ``meta`` blob (the run, counts and
one column per sample field the page filters and sorts on) and the long texts in chunks
(samples' and references'), each gzip-compressed JSON in base64. The page decodes a chunk
when it first needs it, so the first page of 100,000 samples shows before the rest is read.

meta::

    run        run.json as written (every field, also ones this module does not know)
    counts     candidates, accepted, rejected, failed (ledgers); references (finished)
    outcomes   [[category, count], ...], most common first (dataset.stats.outcome)
    quality    quality.json or null;  report: dataset.report's numbers
    n, chunk, ref_chunk, criteria, statuses, outcome_names, feature_names, filter_names
    cols       id, ref, status, outcome, feature, filter, mean, scores{criterion}, revisions,
               calls, tokens: one entry per sample (names by index into the *_names lists)
    refs       id, error: one entry per reference (index = ``cols.ref``)

A sample chunk is a list of rows ``[instruction, first_response, response, rationale,
sample_feedback, reason, filter, judge, extra]`` (``filter``: the quality-gate match;
``judge``: method, criteria, scale, passed, pairwise; ``extra``: fields this module does
not know); a reference chunk a list of ``[instruction, response, feedback, done]`` (``feedback``:
its feedback.jsonl record, ``done``: its references.jsonl marker; either may be null).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataset.stats import RunData, RunFolderError, outcome

__all__ = ["CHUNK", "REF_CHUNK", "Packed", "ViewerData", "pack", "read_jsonl", "viewer_data"]

CHUNK = 500
"""Samples per text chunk: small enough that a page decodes in milliseconds."""
REF_CHUNK = 250
"""References per chunk."""
COMPRESSLEVEL = 5
"""gzip level: on LIMA-like text, 1 was 17% larger and 6 took twice as long for 1% less."""
STATUSES = ("accepted", "rejected", "failed")

# Sample fields the page shows in their own place; any other field goes to ``extra``.
_KNOWN = frozenset(
    {
        "sample_id",
        "reference_id",
        "index",
        "feature",
        "instruction",
        "first_response",
        "response",
        "sample_feedback",
        "judgement",
        "revisions",
        "status",
        "reason",
        "usage",
        "provenance",
        "filter",
    }
)
_PROVENANCE_RUN_LEVEL = frozenset(
    {"run_id", "model", "feedback_mode", "prompt_versions", "reference_instruction"}
    | {"reference_response"}
)


@dataclass
class ViewerData:
    meta: dict[str, Any]
    samples: list[list[Any]]
    references: list[list[Any]]


@dataclass
class Packed:
    """The blobs, base64 of gzip of compact JSON: ``meta``, then the text chunks."""

    meta: str
    samples: list[str]
    references: list[str]

    @property
    def size(self) -> int:
        return len(self.meta) + sum(map(len, self.samples)) + sum(map(len, self.references))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file as dicts (none if it is absent). A torn last line (a
    crash mid-write) is left out; any other bad line is an error naming file and line."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    out: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == len(lines):  # no newline after it: torn by a crash
                break
            raise RunFolderError(f"{path} line {number}: not JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise RunFolderError(f"{path} line {number}: expected a JSON object")
        out.append(record)
    return out


def _run_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path / 'run.json'}: {exc}") from exc
    if not isinstance(data, dict):
        raise RunFolderError(f"{path / 'run.json'}: expected a JSON object")
    return data


class _Names:
    """Strings to small ints, in order of first use."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, name: str | None) -> int:
        if name is None:
            return -1
        return self.index.setdefault(name, len(self.index))

    @property
    def names(self) -> list[str]:
        return list(self.index)


def _filter_name(flt: dict[str, Any] | None) -> str | None:
    if not flt:
        return None
    name, source = flt.get("name") or "filter", flt.get("source")
    return f"{name} ({source})" if source else str(name)


def _row(record: dict[str, Any]) -> list[Any]:
    """A sample's texts and nested parts (``record``: its JSON form)."""
    judgement = record.get("judgement") or {}
    provenance = record.get("provenance") or {}
    extra = {k: v for k, v in record.items() if k not in _KNOWN}
    extra.update(
        {f"provenance.{k}": v for k, v in provenance.items() if k not in _PROVENANCE_RUN_LEVEL}
    )
    judge = {k: v for k, v in judgement.items() if k not in ("scores", "rationale", "mean")}
    return [
        record.get("instruction"),
        record.get("first_response"),
        record.get("response"),
        judgement.get("rationale") or None,
        record.get("sample_feedback"),
        record.get("reason"),
        record.get("filter"),
        judge or None,
        extra or None,
    ]


def viewer_data(run: RunData, report: dict[str, Any] | None = None) -> ViewerData:
    """Everything the page shows of ``run`` (``report``: dataset.report's numbers)."""
    everything = [*run.accepted, *run.rejected]
    ref_ids = _Names()
    for sample in everything:
        ref_ids(sample.reference_id)
    feedback = {str(r.get("reference_id")): r for r in read_jsonl(run.path / "feedback.jsonl")}
    done = {str(r.get("reference_id")): r for r in read_jsonl(run.path / "references.jsonl")}
    for ref in [*done, *feedback]:
        ref_ids(ref)
    # Candidates by reference (in the order references first appear), then by index.
    everything.sort(key=lambda s: (ref_ids.index[s.reference_id], s.index))

    outcomes, features, filters = _Names(), _Names(), _Names()
    criteria = sorted({c for s in everything if s.judgement for c in s.judgement.scores})
    cols: dict[str, Any] = {
        k: []
        for k in (
            "id",
            "ref",
            "status",
            "outcome",
            "feature",
            "filter",
            "mean",
            "revisions",
            "calls",
            "tokens",
        )
    }
    scores: dict[str, list[float | None]] = {c: [] for c in criteria}
    rows: list[list[Any]] = []
    ref_text: dict[str, tuple[str, str]] = {}
    counts = Counter(s.status for s in everything)
    for sample in everything:
        record = sample.model_dump(mode="json")
        judgement = record.get("judgement") or {}
        flt = record.get("filter")
        usage = record.get("usage") or {}
        cols["id"].append(sample.sample_id)
        cols["ref"].append(ref_ids.index[sample.reference_id])
        cols["status"].append(
            STATUSES.index(sample.status) if sample.status in STATUSES else len(STATUSES)
        )
        cols["outcome"].append(outcomes(outcome(sample)))
        cols["feature"].append(features(sample.feature))
        cols["filter"].append(filters(_filter_name(flt)))
        cols["mean"].append(judgement.get("mean"))
        cols["revisions"].append(sample.revisions)
        cols["calls"].append(usage.get("calls", 0))
        cols["tokens"].append(usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0))
        given = judgement.get("scores") or {}
        for c in criteria:
            scores[c].append(given.get(c))
        provenance = record.get("provenance") or {}
        ref_text.setdefault(
            sample.reference_id,
            (
                provenance.get("reference_instruction") or "",
                provenance.get("reference_response") or "",
            ),
        )
        rows.append(_row(record))
    cols["scores"] = scores

    references: list[list[Any]] = []
    errors: list[str | None] = []
    for ref in ref_ids.names:
        instruction, response = ref_text.get(ref, ("", ""))
        marker = done.get(ref)
        errors.append(marker.get("error") if marker else None)
        references.append([instruction, response, feedback.get(ref), marker])

    raw_run = _run_json(run.path)
    stats = raw_run.get("stats") or {}
    meta: dict[str, Any] = {
        "version": 1,
        "run": raw_run,
        "counts": {
            "candidates": len(everything),
            "accepted": counts.get("accepted", 0),
            "rejected": counts.get("rejected", 0),
            "failed": counts.get("failed", 0),
            "references": stats.get("references_done", len(done)),
        },
        "outcomes": Counter(outcomes.names[i] for i in cols["outcome"]).most_common(),
        "quality": run.quality,
        "report": report,
        "n": len(everything),
        "chunk": CHUNK,
        "ref_chunk": REF_CHUNK,
        "criteria": criteria,
        "statuses": [*STATUSES, "other"],
        "outcome_names": outcomes.names,
        "feature_names": features.names,
        "filter_names": filters.names,
        "cols": cols,
        "refs": {"id": ref_ids.names, "error": errors},
    }
    return ViewerData(meta, rows, references)


def _blob(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    packed = gzip.compress(text.encode("utf-8"), compresslevel=COMPRESSLEVEL, mtime=0)
    return base64.b64encode(packed).decode("ascii")


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def pack(data: ViewerData) -> Packed:
    """Compress the blobs, on every core (zlib lets go of the GIL while it works)."""
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        samples = pool.map(_blob, [list(c) for c in _chunks(data.samples, CHUNK)])
        references = pool.map(_blob, [list(c) for c in _chunks(data.references, REF_CHUNK)])
        return Packed(meta=_blob(data.meta), samples=list(samples), references=list(references))
