"""Runs that must stop rather than burn their references: the pre-flight check of every
endpoint before the first reference, and a key or model refused in the middle of a run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataset.runfolder import Manifest
from state.records import Sample
from testing.runs import write_seeds
from testing.servers import FakeServer
from testing.servers import blackhole as common_blackhole

from .conftest import REPO, free_port
from .test_run import EXAMPLES, _wait_lines, read


def run(
    *args: str, key: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graph.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": key or "EMPTY"},
    )


def args(
    base_url: str, out: Path, *extra: str, model: str = "fake", seeds: Path = EXAMPLES
) -> list[str]:
    return [
        "--seeds",
        str(seeds),
        "--base-url",
        base_url,
        "--model",
        model,
        "--out",
        str(out),
        "--per-reference",
        "2",
        *extra,
    ]


def nothing_was_run(res: subprocess.CompletedProcess[str], out: Path) -> None:
    assert res.returncode == 2, res.stderr
    assert "nothing was run" in res.stderr and "Traceback" not in res.stderr
    assert not (out / "run.json").exists()  # the corrected command starts afresh here


# --- the pre-flight check ---------------------------------------------------------------


def test_nothing_listening_exits_2_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    out = tmp_path / "run"
    res = run(*args(url, out))
    nothing_was_run(res, out)
    assert f"error: cannot reach the LLM server at {url} (ClientConnectorError: " in res.stderr


@pytest.fixture
def blackhole() -> Iterator[str]:
    with common_blackhole() as url:
        yield url


def test_a_connection_that_never_opens_is_unreachable_after_the_connect_timeout(
    blackhole: str, tmp_path: Path
) -> None:
    """Not the request timeout (120 s): the connect timeout (4 s), so the run exits early."""
    out = tmp_path / "run"
    res = run(*args(blackhole, out))
    nothing_was_run(res, out)
    assert f"cannot reach the LLM server at {blackhole} (no connection in 4 s)" in res.stderr


def test_a_model_the_server_does_not_serve_exits_2_listing_the_served_ones(
    tmp_path: Path,
) -> None:
    with FakeServer(0.0, models=["smollm2", "qwen"]) as server:
        out = tmp_path / "run"
        res = run(*args(server.base_url, out, model="fake"))
        requests = server.stats()["requests"]
    nothing_was_run(res, out)
    assert (
        f"error: the LLM server at {server.base_url} does not serve model 'fake'; it serves: "
        "smollm2, qwen (set --model to one of them)"
    ) in res.stderr
    assert requests == 0  # no chat request was sent


def test_a_refused_key_exits_2_with_advice(tmp_path: Path) -> None:
    with FakeServer(0.0, api_key="sk-right-1234") as server:
        out = tmp_path / "run"
        res = run(*args(server.base_url, out), key="sk-wrong-5678")
        assert server.stats()["requests"] == 0
        nothing_was_run(res, out)
        assert (
            f"error: the LLM server at {server.base_url} refused the API key (HTTP 401: invalid "
            "API key): set REFED_API_KEY (or OPENAI_API_KEY, or --api-key)"
        ) in res.stderr
        assert "sk-wrong-5678" not in res.stderr
        ok = run(*args(server.base_url, out), key="sk-right-1234")
    assert ok.returncode == 0, ok.stderr


def test_the_judge_endpoint_is_checked_too(tmp_path: Path) -> None:
    with FakeServer(0.0) as generator, FakeServer(0.0, models=["judge-a"]) as judge:
        out = tmp_path / "run"
        res = run(
            *args(generator.base_url, out, "--judge-base-url", judge.base_url),
            "--judge-model",
            "judge-b",
        )
        nothing_was_run(res, out)
        assert (
            f"the LLM server at {judge.base_url} does not serve model 'judge-b'; it serves: "
            "judge-a (set --judge-model to one of them)"
        ) in res.stderr
        assert generator.base_url not in res.stderr  # that one passed
        gone = f"http://127.0.0.1:{free_port()}/v1"
        res = run(*args(generator.base_url, out, "--judge-base-url", gone))
        nothing_was_run(res, out)
        assert f"cannot reach the LLM server at {gone}" in res.stderr


def test_a_slow_but_live_server_is_not_refused(tmp_path: Path) -> None:
    """/v1/models answers after 6 s, past the 4 s connect timeout: the run goes ahead."""
    with FakeServer(0.0, extra_args=["--models-delay", "6"]) as server:
        out = tmp_path / "run"
        res = run(*args(server.base_url, out))
    assert res.returncode == 0, res.stderr
    assert (
        len(read(out / "samples.jsonl", Sample)) + len(read(out / "rejected.jsonl", Sample)) == 12
    )


# --- refused in the middle of a run ---------------------------------------------------------


def start(*argv: str, key: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "graph.run", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": key},
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_a_key_refused_mid_run_stops_it_at_once_and_fails_no_candidate(
    tmp_path: Path, processes: int
) -> None:
    out = tmp_path / "run"
    seeds = write_seeds(tmp_path / "seeds.jsonl", 16)
    argv = args(
        "", out, "--per-reference", "3", "--concurrency", "4", "--workers", "2", seeds=seeds
    )
    argv += ["--processes", str(processes)]
    with FakeServer(0.1, api_key="sk-first-1111") as server:
        argv[argv.index("--base-url") + 1] = server.base_url
        proc = start(*argv, key="sk-first-1111")
        _wait_lines(out / "samples.jsonl", 2, proc)
        server.require_key("sk-second-2222")  # the key is revoked
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, stderr
        assert "refused the API key (HTTP 401: invalid API key)" in stderr
        assert "The run stopped; finished samples are saved" in stderr
        manifest = Manifest.model_validate_json((out / "run.json").read_text())
        assert manifest.status == "server_refused"
        refused = server.stats()["unauthorized"]
        assert refused <= 4 * 2 * processes  # the requests in flight, not a retried flood
        assert not [s for s in read(out / "rejected.jsonl", Sample) if s.status == "failed"]
        res = run(*argv, key="sk-second-2222")  # the new key: the run resumes and ends
    assert res.returncode == 0, res.stderr
    done = read(out / "samples.jsonl", Sample) + read(out / "rejected.jsonl", Sample)
    assert len(done) == len({s.sample_id for s in done}) == 48


def test_a_model_gone_mid_run_stops_it_listing_the_served_ones(tmp_path: Path) -> None:
    out = tmp_path / "run"
    seeds = write_seeds(tmp_path / "seeds.jsonl", 16)
    argv = args(
        "", out, "--per-reference", "3", "--concurrency", "4", "--workers", "2", seeds=seeds
    )
    with FakeServer(0.1) as server:
        argv[argv.index("--base-url") + 1] = server.base_url
        proc = start(*argv, key="EMPTY")
        _wait_lines(out / "samples.jsonl", 2, proc)
        server.serve_models("other-model")  # unloaded (a LoRA adapter, a restart)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert (
        f"the LLM server at {server.base_url} does not serve model 'fake' (HTTP 404: The "
        "model `fake` does not exist.); it serves: other-model (set --model to one of them)"
    ) in stderr
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.status == "server_refused"
    assert not [s for s in read(out / "rejected.jsonl", Sample) if s.status == "failed"]
