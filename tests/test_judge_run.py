"""The batch runner with the judge on its own endpoint, and the pairwise filter (fake servers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dataset.ledger import Ledger
from dataset.runfolder import Manifest
from state.records import Sample

from .conftest import REPO, FakeServerProc

EXAMPLES = REPO / "examples" / "seeds.jsonl"


def test_judge_on_its_own_endpoint_with_the_pairwise_filter(tmp_path: Path) -> None:
    generator = FakeServerProc(latency=0.01)
    judge = FakeServerProc(latency=0.01, models=["fake-judge"])
    try:
        out = tmp_path / "run"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "graph.run",
                "--seeds",
                str(EXAMPLES),
                "--base-url",
                generator.base_url,
                "--model",
                "fake",
                "--judge-base-url",
                judge.base_url,
                "--judge-model",
                "fake-judge",
                "--judge-concurrency",
                "2",
                "--pairwise-filter",
                "--max-revisions",
                "0",
                "--per-reference",
                "3",
                "--out",
                str(out),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert res.returncode == 0, res.stderr
        rejected = list(Ledger(out / "rejected.jsonl").read(Sample))
        assert len(rejected) == 18
        # The fake judge scores 5 but answers "tie" to every comparison: the filter rejects.
        for s in rejected:
            assert s.judgement is not None and s.judgement.mean == 5.0
            assert s.judgement.pairwise is not None and s.judgement.pairwise.votes == ("tie", "tie")
            assert s.reason == "improved response did not beat the first (pairwise tie: tie, tie)"
        judge_requests = judge.stats()["requests"]
        assert judge_requests == 18 * 3  # one scoring call and two comparisons per sample
        assert judge.stats()["max_in_flight"] <= 2
        manifest = Manifest.model_validate_json((out / "run.json").read_text())
        total = generator.stats()["requests"] + judge_requests
        assert manifest.stats.usage.calls == total
        assert manifest.stats.process_calls == total
        assert manifest.fingerprint["pairwise_filter"] is True
        assert manifest.fingerprint["judge_model"] == "fake-judge"
        assert "criteria/instruction" in manifest.prompt_versions
    finally:
        generator.stop()
        judge.stop()
