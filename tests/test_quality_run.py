"""The quality gates inside resumable runs (fake server): kill -9, rerun, nothing slips.

The fake server's instructions look like ``fake 1a2b3c4d5e text``: any two have ROUGE-L
2/3 (``fake`` and ``text`` in common). With ``--near-dup-threshold 0.6`` every
instruction after the first kept one is its near-duplicate, so a correct gate keeps
exactly one sample in the whole run, however often the run is killed and restarted;
an index not rebuilt from samples.jsonl after a restart would keep another.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from dataset.runfolder import Manifest
from state.records import ReferenceDone, Sample

from .conftest import FakeServerProc
from .test_run import EXAMPLES, _wait_lines, read, run_cli, start_cli


def _args(base_url: str, out: Path, *extra: str) -> list[str]:
    return [
        "--seeds",
        str(EXAMPLES),
        "--base-url",
        base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        "4",
        "--concurrency",
        "4",
        *extra,
    ]


@pytest.mark.slow
def test_filtered_samples_stay_filtered_across_kills(
    slow_fake_server: FakeServerProc, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = _args(slow_fake_server.base_url, out, "--near-dup-threshold", "0.6")
    before: dict[str, Sample] = {}
    for wanted in (3, 10):  # two kill -9s at growing progress
        proc = start_cli(*args)
        _wait_lines(out / "rejected.jsonl", wanted, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kept = read(out / "samples.jsonl", Sample)
        assert len(kept) == 1, "a kill let a near-duplicate in"
        now = {s.sample_id: s for s in read(out / "rejected.jsonl", Sample)}
        for sid, sample in before.items():  # filtered before the kill: still, unchanged
            assert now[sid] == sample
        before = now
    assert len(before) + 1 < 24, "the kills came too late to test anything"
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    kept = read(out / "samples.jsonl", Sample)
    rejected = read(out / "rejected.jsonl", Sample)
    ids = [s.sample_id for s in kept + rejected]
    assert len(ids) == 24 and len(set(ids)) == 24  # every sample once, in one ledger
    assert len(kept) == 1
    keeper = kept[0]
    for s in rejected:
        assert s.status == "rejected" and s.filter is not None
        assert s.filter.name == "near-duplicate" and s.filter.source == "sample"
        assert s.filter.match_id == keeper.sample_id
        assert s.filter.match_text == keeper.instruction
        assert s.filter.score == pytest.approx(2 / 3, abs=1e-4)
        assert s.reason == f"near-duplicate (rouge-l 0.67) of {keeper.sample_id}"
    assert set(before) <= {s.sample_id for s in rejected}
    quality = json.loads((out / "quality.json").read_text())
    assert quality["checked"] == 24 and quality["passed"] == 1
    assert quality["dropped"] == {"near-duplicate": 23, "decontamination": 0}
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.stats.accepted == 1 and manifest.stats.rejected == 23
    # Per reference, the counts are after the gate (the same 1 and 23 in all).
    done = read(out / "references.jsonl", ReferenceDone)
    assert sum(d.accepted for d in done) == 1 and sum(d.rejected for d in done) == 23

    # The gate's settings are part of the run's configuration: a change is refused.
    res = run_cli(*_args(slow_fake_server.base_url, out, "--near-dup-threshold", "0.5"))
    assert res.returncode == 2
    assert "near_dup_threshold: 0.6 → 0.5" in res.stderr


def test_decontamination_in_a_run_and_bad_benchmark_file(
    fake_server: FakeServerProc, tmp_path: Path
) -> None:
    # A made-up evaluation set whose one prompt, "fake text", has ROUGE-L 0.8 with every
    # fake instruction: above --decontam-rouge 0.75, so every sample is contaminated.
    bench = tmp_path / "made_up_eval.jsonl"
    bench.write_text(json.dumps({"prompt": "fake text"}) + "\n")
    out = tmp_path / "run"

    missing = run_cli(
        *_args(fake_server.base_url, out, "--decontaminate", str(tmp_path / "no.jsonl"))
    )
    assert missing.returncode == 2
    assert f"error: benchmark file not found: {tmp_path / 'no.jsonl'}" in missing.stderr
    assert fake_server.stats()["requests"] == 0
    assert not (out / "run.json").exists()  # the corrected command can use this folder

    args = _args(
        fake_server.base_url,
        out,
        "--per-reference",
        "2",
        "--decontaminate",
        str(bench),
        "--decontam-rouge",
        "0.75",
    )
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert read(out / "samples.jsonl", Sample) == []
    rejected = read(out / "rejected.jsonl", Sample)
    assert len(rejected) == 12
    done = read(out / "references.jsonl", ReferenceDone)
    assert len(done) == 6 and all(d.accepted == 0 and d.rejected == 2 for d in done)
    for s in rejected:
        assert s.filter is not None and s.filter.name == "decontamination"
        assert s.filter.match_id == "made_up_eval#0" and s.filter.method == "rouge-l"
        assert (
            s.reason
            == "benchmark contamination: instruction overlaps made_up_eval#0 (rouge-l 0.80)"
        )
    quality = json.loads((out / "quality.json").read_text())
    b = quality["decontamination"]["benchmarks"]["made_up_eval"]
    assert b["dropped"] == 12 and b["prompts"] == 1
    assert b["by_test"] == {"rouge-l": 12} and b["by_field"] == {"instruction": 12}

    # Nothing accepted, nothing to export: said plainly.
    from dataset.export import main as export_main

    assert export_main([str(out)]) == 2


def test_quality_json_is_final_when_the_run_ends(
    fake_server: FakeServerProc, tmp_path: Path
) -> None:
    """No sample dropped (the fake instructions are 2/3 alike, under the default 0.7): the
    summary written at the end counts every accepted sample as checked, and the report
    takes its numbers from the ledgers even when quality.json is older than them."""
    from dataset.report import build_report, markdown
    from dataset.stats import load_run

    out = tmp_path / "run"
    res = run_cli(*_args(fake_server.base_url, out, "--per-reference", "2"))
    assert res.returncode == 0, res.stderr
    accepted = read(out / "samples.jsonl", Sample)
    assert len(accepted) == 12 and read(out / "rejected.jsonl", Sample) == []
    quality = json.loads((out / "quality.json").read_text())
    assert quality["checked"] == quality["passed"] == len(accepted)
    assert quality["dropped"] == {"near-duplicate": 0, "decontamination": 0}

    stale = {**quality, "checked": 0, "passed": 0}  # as written at the start of the run
    (out / "quality.json").write_text(json.dumps(stale))
    report = build_report(load_run(out))
    assert report["quality"]["checked"] == report["quality"]["passed"] == 12
    assert "Quality gates: 12 checked, 12 kept" in markdown(report, [])
