"""Run folders written directly (no LLM): real seed texts as samples, for export/report tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from dataset.ledger import Ledger
from dataset.runfolder import Manifest
from state.records import Judgement, Provenance, QualityFilter, Sample
from state.settings import RefedSettings

CRITERIA = ("helpfulness", "correctness", "clarity", "instruction_following")


def self_instruct_pairs(shared_data: Path) -> list[tuple[str, str]]:
    """(instruction, first instance's output) of the 175 Self-Instruct seed tasks."""
    pairs = []
    with (shared_data / "seeds" / "self_instruct_seed_tasks.jsonl").open() as fh:
        for line in fh:
            rec = json.loads(line)
            inst = rec["instances"][0]
            text = rec["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
            pairs.append((text, inst["output"]))
    return pairs


def make_sample(
    i: int,
    instruction: str,
    response: str,
    *,
    mean: float = 4.5,
    bar: float = 3.0,
    status: str | None = None,
    reason: str | None = None,
    filter: QualityFilter | None = None,
    reference_instruction: str = "Seed instruction.",
) -> Sample:
    rng = random.Random(i)
    scores = {c: min(5.0, max(1.0, round(mean + rng.uniform(-0.5, 0.5), 2))) for c in CRITERIA}
    mean = sum(scores.values()) / len(scores)
    passed = mean >= bar
    if status is None:
        status = "accepted" if passed else "rejected"
    if status == "rejected" and reason is None and filter is None:
        reason = f"judge mean {mean:.2f} under the bar"
    return Sample(
        sample_id=f"ref{i // 4:04d}-{i % 4:04d}",
        reference_id=f"ref{i // 4:04d}",
        index=i % 4,
        feature="writing",
        instruction=instruction,
        first_response=response + " (first draft)",
        response=response,
        judgement=Judgement(scores=scores, mean=mean, passed=passed, rationale="ok"),
        status=status,  # type: ignore[arg-type]
        reason=reason,
        filter=filter,
        provenance=Provenance(
            run_id="testrun1",
            model="test-model",
            feedback_mode="reference",
            prompt_versions={"respond": "abc123", "refine": "def456"},
            reference_instruction=reference_instruction,
            reference_response="Seed response.",
        ),
    )


def write_run(
    path: Path,
    accepted: list[Sample],
    rejected: list[Sample],
    *,
    seeds: str = "../shared/data/seeds/self_instruct_seed_tasks.jsonl",
    quality: dict[str, object] | None = None,
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    settings = RefedSettings(model="test-model", seeds=seeds, out=path)
    manifest = Manifest(
        run_id="testrun1",
        created="2026-01-01T00:00:00+00:00",
        updated="2026-01-01T01:00:00+00:00",
        status="finished",
        seeds=seeds,
        model="test-model",
        base_url=None,
        fingerprint=settings.fingerprint(),
        prompt_versions={"respond": "abc123", "refine": "def456"},
        settings=settings.public_dump(),
    )
    manifest.stats.accepted = len(accepted)
    manifest.stats.rejected = len(rejected)
    (path / "run.json").write_text(manifest.model_dump_json(indent=2))
    for name, rows in (("samples.jsonl", accepted), ("rejected.jsonl", rejected)):
        ledger = Ledger(path / name)
        ledger.append(rows)
        ledger.close()
    if quality is not None:
        (path / "quality.json").write_text(json.dumps(quality))
    return path
