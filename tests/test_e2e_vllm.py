"""End to end on the real vLLM CPU server (SmolLM2-135M): 3 LIMA references, 2 samples each.

The model is tiny, so these tests check structure, counts and counters, not prose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dataset.embeddings import similarity
from dataset.ledger import Ledger
from dataset.runfolder import Manifest
from dataset.seeds import read_seeds
from dataset.validity import answer_problem, degenerate, not_a_request
from state.records import ReferenceDone, ReferenceFeedback, Sample

from .conftest import REPO

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PER_REFERENCE = 2


@pytest.fixture(scope="module")
def lima3(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first three single-turn LIMA references, as a JSONL seed file."""
    return _lima_seeds(shared_data, 3, tmp_path_factory.mktemp("seeds") / "lima3.jsonl")


def _lima_seeds(shared_data: Path, n: int, path: Path) -> Path:
    """The first ``n`` single-turn LIMA references written to ``path`` as JSONL."""
    refs = read_seeds(shared_data / "seeds" / "lima.json", limit=n)
    path.write_text(
        "".join(
            json.dumps({"instruction": r.instruction, "response": r.response}) + "\n" for r in refs
        )
    )
    return path


def _graph_run(seeds: Path, base_url: str, out: Path, *flags: str, timeout: int) -> None:
    """``python -m graph.run`` on the real server; fails the test with its stderr's tail."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "graph.run",
            "--seeds",
            str(seeds),
            "--base-url",
            base_url,
            "--model",
            "smollm2",
            "--out",
            str(out),
            *flags,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]


# `none` runs on scripted fakes only (tests/test_graph.py): on the real server it adds a
# run's time and nothing the other two modes do not show.
@pytest.mark.parametrize("mode", ["reference", "sample"])
def test_modes_on_real_vllm(vllm_base_url: str, lima3: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / mode
    _graph_run(
        lima3,
        vllm_base_url,
        out,
        "--per-reference",
        str(PER_REFERENCE),
        "--feedback-mode",
        mode,
        "--concurrency",
        "8",
        "--max-tokens",
        "256",
        "--temperature",
        "0.7",
        timeout=900,
    )
    samples = list(Ledger(out / "samples.jsonl").read(Sample))
    rejected = list(Ledger(out / "rejected.jsonl").read(Sample))
    done = list(Ledger(out / "references.jsonl").read(ReferenceDone))
    assert len(done) == 3
    # Every reference that got through synthesis yields exactly PER_REFERENCE candidates
    # (or fewer if the model repeated itself), each accounted for as accepted or rejected.
    produced = {d.reference_id: d.accepted + d.rejected for d in done}
    assert all(0 < n <= PER_REFERENCE for n in produced.values() if n), produced
    assert len(samples) + len(rejected) == sum(produced.values()) > 0
    for s in samples + rejected:
        assert s.provenance.feedback_mode == mode
        assert s.provenance.model == "smollm2"
        if s.status == "failed" or s.filter is not None:  # failed, or a check rejected it
            assert s.reason
            continue
        assert s.judgement is not None and 1 <= s.judgement.mean <= 5
        assert set(s.judgement.scores) == {
            "helpfulness",
            "instruction_following",
            "correctness",
            "clarity",
        }
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    stats = manifest.stats
    assert manifest.status == "finished"
    assert stats.accepted == len(samples)
    assert stats.usage.calls >= len(samples) + len(rejected)
    feedback = list(Ledger(out / "feedback.jsonl").read(ReferenceFeedback))
    n_candidates = len(samples) + len(rejected)
    if mode == "reference":
        # Fixed per reference (2 analysis + 1 distillation), whatever the sample count.
        # A reference that failed after distillation (at synthesis, say) keeps its feedback.
        early = ("reference_analysis", "analyze_", "feedback_distillation", "distill")
        with_feedback = [d for d in done if d.error is None or not d.error.startswith(early)]
        assert {f.reference_id for f in feedback} == {d.reference_id for d in with_feedback}, [
            d.error for d in done
        ]
        assert all(d.usage.feedback_calls == 3 for d in with_feedback), [d.usage for d in done]
    else:
        assert feedback == []
        # One feedback call for every candidate whose first answer passed the checks (made
        # even if it then failed), none for the others: a check-rejected first answer is
        # never critiqued.
        answered = [
            s
            for s in samples + rejected
            if s.first_response is not None and (s.filter is None or s.filter.source != "check")
        ]
        assert stats.usage.feedback_calls == len(answered) <= n_candidates


def test_embedded_profile_yields_valid_samples(
    vllm_base_url: str, shared_data: Path, tmp_path: Path
) -> None:
    """Issue 15: four LIMA references x 2 on the embedded model's profile give at least
    four accepted samples, each a request (not a copy of the prompt, not markup) answered
    by text that neither loops nor asks back and is about the request."""
    seeds = _lima_seeds(shared_data, 4, tmp_path / "lima4.jsonl")
    out = tmp_path / "run"
    _graph_run(
        seeds, vllm_base_url, out, "--per-reference", "2", "--profile", "smollm2", timeout=1200
    )
    samples = list(Ledger(out / "samples.jsonl").read(Sample))
    done = list(Ledger(out / "references.jsonl").read(ReferenceDone))
    assert [d.error for d in done] == [None] * 4  # no reference failed at analysis
    assert len(samples) >= 4, [s.reason for s in Ledger(out / "rejected.jsonl").read(Sample)]
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.fingerprint["profile"] == "smollm2"
    assert manifest.fingerprint["repetition_penalty"] is not None
    for s in samples:
        assert not_a_request(s.instruction) is None, s.instruction
        assert degenerate(s.instruction, "instruction") is None, s.instruction
        assert s.response and answer_problem(s.response, s.instruction) is None, s.response
        assert similarity(s.instruction, s.response) >= 0.3
        assert s.judgement is not None and s.judgement.threshold is not None
