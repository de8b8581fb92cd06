"""The batch runner end to end against the fake server: outputs, resume, kill -9, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dataset.ledger import Ledger
from dataset.runfolder import Manifest
from state.records import ReferenceDone, ReferenceFeedback, Sample

from .conftest import REPO, FakeServerProc

EXAMPLES = REPO / "examples" / "seeds.jsonl"


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graph.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "graph.run", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read(path: Path, model: type) -> list:
    return list(Ledger(path).read(model)) if path.exists() else []


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_cli_writes_run_folder(fake_server: FakeServerProc, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "3",
        "--concurrency",
        "8",
    )
    assert res.returncode == 0, res.stderr
    samples = read(out / "samples.jsonl", Sample)
    rejected = read(out / "rejected.jsonl", Sample)
    assert len(samples) + len(rejected) == 18
    assert len({s.sample_id for s in samples + rejected}) == 18
    assert len(samples) == 18  # the fake judge gives top scores
    s = samples[0]
    assert s.provenance.feedback_mode == "reference"
    assert s.provenance.model == "fake"
    assert set(s.provenance.prompt_versions) >= {
        "respond",
        "refine",
        "judge_pointwise",
        "judge_pairwise",
        "criteria/instruction",
    }
    assert s.first_response and s.response and s.judgement and s.feature
    feedback = read(out / "feedback.jsonl", ReferenceFeedback)
    assert len(feedback) == 6
    done = read(out / "references.jsonl", ReferenceDone)
    assert len(done) == 6
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.status == "finished"
    assert manifest.stats.accepted == 18
    assert manifest.stats.usage.feedback_calls == 3 * 6
    assert manifest.stats.usage.calls == fake_server.stats()["requests"]
    assert (out / "checkpoints.sqlite").exists()
    assert (out / "schema.json").exists()
    log_lines = (out / "log.jsonl").read_text().splitlines()
    assert all(json.loads(line)["event"] for line in log_lines)
    assert "18" in res.stderr and "accepted" in res.stderr

    # The same command again: everything is done, no LLM call, nothing rewritten.
    before = fake_server.stats()["requests"]
    again = run_cli(
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "3",
    )
    assert again.returncode == 0, again.stderr
    assert "6 references already done, 0 to go" in again.stderr
    assert fake_server.stats()["requests"] == before
    assert count_lines(out / "samples.jsonl") == 18


def test_different_config_is_refused(fake_server: FakeServerProc, tmp_path: Path) -> None:
    out = tmp_path / "run"
    base = [
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--limit",
        "2",
    ]
    assert run_cli(*base, "--per-reference", "2").returncode == 0
    res = run_cli(*base, "--per-reference", "3")
    assert res.returncode == 2
    assert "holds a run with a different configuration (per_reference: 2 → 3)" in res.stderr
    assert "--force-new" in res.stderr
    res = run_cli(*base, "--per-reference", "3", "--force-new")
    assert res.returncode == 0, res.stderr
    assert count_lines(out / "samples.jsonl") == 6
    assert len(list(tmp_path.glob("run.replaced-*"))) == 1


def test_bad_seeds_fail_before_any_llm_call(fake_server: FakeServerProc, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "response": "b"}\n{"instruction": "c"}\n')
    res = run_cli(
        "--seeds", str(bad), "--base-url", fake_server.base_url, "--out", str(tmp_path / "run")
    )
    assert res.returncode == 2
    assert res.stderr.strip().endswith(
        f"error: {bad} line 2: field 'response': missing or empty (record has keys: instruction)"
    )
    assert fake_server.stats()["requests"] == 0
    skipped = run_cli(
        "--seeds",
        str(bad),
        "--base-url",
        fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(tmp_path / "run"),
        "--on-bad-record",
        "skip",
        "--per-reference",
        "1",
    )
    assert skipped.returncode == 0, skipped.stderr
    assert count_lines(tmp_path / "run" / "samples.jsonl") == 1


def test_samples_target_stops_new_references(fake_server: FakeServerProc, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_cli(
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "3",
        "--samples",
        "4",
        "--workers",
        "1",
    )
    assert res.returncode == 0, res.stderr
    # One reference in flight at a time: two references give 6 >= 4, the third never starts.
    assert count_lines(out / "samples.jsonl") == 6
    assert count_lines(out / "references.jsonl") == 2


def _wait_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while count_lines(path) < n:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never reached {n} lines"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_loses_nothing_and_duplicates_nothing(
    slow_fake_server: FakeServerProc, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    concurrency = 4
    args = [
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        slow_fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "4",
        "--concurrency",
        str(concurrency),
    ]
    kills = 0
    for wanted in (3, 9, 15):  # kill three times at growing progress
        proc = start_cli(*args)
        _wait_lines(out / "samples.jsonl", wanted, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        ids = [s.sample_id for s in read(out / "samples.jsonl", Sample)]
        assert len(ids) == len(set(ids)), "a kill left a duplicate"
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    samples = read(out / "samples.jsonl", Sample)
    ids = [s.sample_id for s in samples]
    assert len(ids) == 24 and len(set(ids)) == 24
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    redone = slow_fake_server.stats()["requests"] - manifest.stats.usage.calls
    # Only work in flight at each kill is done again: the requests in flight (at most
    # `concurrency`) plus the finished calls of a multi-call node that had not finished
    # (synthesis asks per feature, at most per_reference calls).
    assert 0 <= redone <= kills * (concurrency + 4), redone


@pytest.mark.slow
def test_sigint_stops_quickly_and_resumes(slow_fake_server: FakeServerProc, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        slow_fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "4",
        "--concurrency",
        "4",
    ]
    proc = start_cli(*args)
    _wait_lines(out / "samples.jsonl", 4, proc)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 130
    assert "rerun the same command to resume" in stderr
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.status == "interrupted"
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    ids = [s.sample_id for s in read(out / "samples.jsonl", Sample)]
    assert len(ids) == 24 and len(set(ids)) == 24


def test_torn_last_line_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    Ledger(path)
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": 2\n')  # newline written, JSON torn
    Ledger(path)
    assert path.read_text() == '{"a": 1}\n'


def test_a_small_model_profile_run_on_the_fake_server(
    fake_server: FakeServerProc, tmp_path: Path
) -> None:
    """The smollm2 profile end to end without a model: labelled lines held to regular
    expressions, one request per completion, the bar anchored on each reference (whose
    scores run.json and the summary show), and a resume that makes no call."""
    out = tmp_path / "run"
    args = (
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        fake_server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "2",
        "--profile",
        "smollm2",
        "--relevance-min",
        "-1",  # on, but every answer passes: fake answers are about nothing
    )
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert "profile: smollm2" in res.stderr
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.fingerprint["synthesis_mode"] == "sampled"
    assert manifest.fingerprint["judge_bar"] == "reference:0.5"
    scores = manifest.stats.reference_scores
    assert scores is not None and scores["n"] == 6
    assert f"judge bar: reference:0.5 (its references scored {scores['min']:.2f}" in res.stderr
    done = read(out / "references.jsonl", ReferenceDone)
    assert [d.error for d in done] == [None] * 6
    assert all(d.reference_score is not None for d in done)
    bodies = fake_server.requests()
    assert any("structured_outputs" in b for b in bodies)
    assert any(b.get("n", 1) > 1 for b in bodies)  # several new requests from one call
    samples = read(out / "samples.jsonl", Sample) + read(out / "rejected.jsonl", Sample)
    assert len(samples) == 12
    for s in samples:
        if s.judgement is not None:
            assert s.judgement.threshold is not None
    before = fake_server.stats()["requests"]
    assert run_cli(*args).returncode == 0
    assert fake_server.stats()["requests"] == before
