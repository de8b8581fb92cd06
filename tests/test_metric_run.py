"""``python -m metric run``: the LLM-judge baseline's endpoint (configured, or skipped with one
line and no retry noise), and a ``--quick`` run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metric.llm_baseline import SKIP_HINT, embedded_problem, resolve_endpoint
from tests.conftest import REPO, FakeServerProc, free_port
from tests.metric_helpers import need_base, need_judge_data

ENDPOINT_VARS = ("REFED_BASE_URL", "OPENAI_BASE_URL", "REFED_JUDGE_BASE_URL", "REFED_CONFIG")


@pytest.fixture
def no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENDPOINT_VARS:
        monkeypatch.delenv(name, raising=False)


def test_no_endpoint_and_no_embedded_model_skips_with_a_hint(
    no_endpoint: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REFED_CACHE_DIR", str(tmp_path))  # no prepared embedded weights here
    end = resolve_endpoint(None)
    assert end.url is None and not end.embedded
    assert "no endpoint configured" in end.note and "not prepared" in end.note
    assert SKIP_HINT in end.note and "8391" not in end.note and "\n" not in end.note
    off = resolve_endpoint("none")
    assert off.url is None and "off" in off.note


def test_no_endpoint_falls_back_to_the_embedded_server(no_endpoint: None) -> None:
    """With nothing configured the embedded server is used where it can run (as Refed does),
    never in a --quick run."""
    problem = embedded_problem()
    end = resolve_endpoint(None)
    assert end.embedded == (problem is None)
    if problem is not None:
        assert problem in end.note
    quick = resolve_endpoint(None, embedded_fallback=False)
    assert not quick.embedded and "--quick" in quick.note and SKIP_HINT in quick.note


def test_dead_endpoint_skips_at_once(no_endpoint: None, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("REFED_BASE_URL", dead)
    end = resolve_endpoint(None)
    assert end.url is None and dead in end.note and "does not answer" in end.note


def test_configured_endpoint_is_used(no_endpoint: None, fake_server: FakeServerProc) -> None:
    end = resolve_endpoint(fake_server.base_url, "fake-model")
    assert end.url == fake_server.base_url and end.model == "fake-model"
    assert resolve_endpoint("embedded").embedded


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path: Path) -> None:
    """``--quick`` trains and scores every setting, writes the tables and the served model;
    with a dead endpoint configured the console gets one line about the LLM baseline and no
    retry noise."""
    need_base()
    need_judge_data()
    env = {k: v for k, v in os.environ.items() if k not in ENDPOINT_VARS}
    env.update(
        PYTHONPATH=str(REPO),
        OMP_NUM_THREADS="1",
        REFED_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
    )
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "metric",
        "run",
        "--quick",
        "--bases",
        "minilm",  # the quicker base on CI; the SmolLM2 base: tests/test_metric_bases.py
        "--tasks",
        "data2text,preference",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3000, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    llm_lines = [line for line in proc.stderr.splitlines() if "LLM-judge baseline" in line]
    assert len(llm_lines) == 1 and "does not answer" in llm_lines[0], llm_lines
    assert "llm_retry" not in proc.stderr and "Cannot connect" not in proc.stderr
    results = json.loads((out / "results.json").read_text())
    settings = {r["setting"] for r in results["rows"]}
    assert {"single", "multi", "multi+neg", "loto", "untrained", "rouge_l", "cosine"} <= settings
    assert "llm" not in settings
    assert {j["setting"] for j in results["junk"]} == {"untrained", "multi", "multi+neg"}
    assert all(0.0 <= j["auc"] <= 1.0 for j in results["junk"])
    assert results["config"]["seeds"] == [0] and results["config"]["caps"]["train_per_criterion"]
    md = (out / "results.md").read_text()
    assert "### Base: minilm" in md and "| sfhot |" in md and "Junk set" in md
    meta = json.loads((out / "model" / "refed_metric.json").read_text())
    assert meta["kind"] == "encoder" and meta["base"] == "minilm" and meta["negatives"] == 8
    assert meta["max_len"] == 128 and not (tmp_path / "cache").exists()
    assert (out / "model" / "README.md").read_text().startswith("---")
