"""``--processes N``: the graph in N child processes, the ledgers in the run's process.

Against the fake server (testing/fake_server.py): a whole run, a SIGKILL of the run's
process (its graph processes go with it, the rerun finishes exactly once), a SIGKILL of
one graph process (the run stops with advice, the rerun finishes), and a rerun with a
different process count refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from testing.runs import write_seeds
from testing.servers import FakeServer

from .test_reliability import cli, run_args, run_cli, samples, wait_for

PER_REF = 2


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _check_complete(out: Path, refs: int) -> None:
    accepted, rejected = samples(out)
    ids = [s.sample_id for s in accepted + rejected]
    dup = [i for i, n in Counter(ids).items() if n > 1]
    assert not dup, f"samples written twice: {dup[:5]}"
    assert len(ids) == refs * PER_REF
    done = [json.loads(line)["reference_id"] for line in (out / "references.jsonl").open()]
    assert sorted(done) == sorted(set(done)) and len(done) == refs


def _start_two(
    tmp_path: Path, server: FakeServer, refs: int
) -> tuple[list[str], subprocess.Popen[str]]:
    """A run of ``refs`` references with two graph processes, once it has written samples."""
    seeds = write_seeds(tmp_path / "seeds.jsonl", refs)
    out = tmp_path / "run"
    args = run_args(server, seeds, out, "--per-reference", str(PER_REF), "--concurrency", "8")
    proc = cli(*args, "--processes", "2")
    wait_for(out / "samples.jsonl", 10, proc)
    return args, proc


def test_two_processes_run_the_whole_batch(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 30)
    out = tmp_path / "run"
    with FakeServer(0.01) as server:
        code, text = run_cli(
            *run_args(server, seeds, out, "--per-reference", str(PER_REF), "--processes", "2")
        )
    assert code == 0, text[-3000:]
    _check_complete(out, 30)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["processes"] == 2 and manifest["status"] == "finished"
    assert manifest["stats"]["usage"]["calls"] >= 30 * (3 + 3 * PER_REF)
    # both processes took references: each checkpoint file holds threads
    for shard in ("checkpoints.sqlite", "checkpoints-1.sqlite"):
        assert (out / shard).stat().st_size > 0


def test_sigkill_of_the_run_takes_its_graph_processes_and_resume_finishes(
    tmp_path: Path,
) -> None:
    refs = 60
    out = tmp_path / "run"
    with FakeServer(0.05) as server:
        args, proc = _start_two(tmp_path, server, refs)
        children = _children(proc.pid)
        assert len(children) == 2, children
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 15
        while any(_alive(c) for c in children):  # stdin closed: they stop on their own
            assert time.monotonic() < deadline, "graph processes outlived their run"
            time.sleep(0.05)
        before = len(samples(out)[0])
        assert 0 < before < refs * PER_REF
        code, text = run_cli(*args)  # no --processes: the run's own 2
        assert code == 0, text[-3000:]
        assert "resuming" in text
    _check_complete(out, refs)


def test_a_killed_graph_process_stops_the_run_with_advice(tmp_path: Path) -> None:
    refs = 60
    out = tmp_path / "run"
    with FakeServer(0.05) as server:
        args, proc = _start_two(tmp_path, server, refs)
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, err[-3000:]
        assert "graph process" in err and "rerun the same command" in err
        assert json.loads((out / "run.json").read_text())["status"] == "process_died"
        code, text = run_cli(*args)
        assert code == 0, text[-3000:]
    _check_complete(out, refs)


def test_a_different_process_count_is_refused_on_resume(tmp_path: Path) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 4)
    out = tmp_path / "run"
    with FakeServer(0.0) as server:
        args = run_args(server, seeds, out, "--per-reference", str(PER_REF))
        code, text = run_cli(*args, "--processes", "2", "--limit", "2")
        assert code == 0, text[-3000:]
        code, text = run_cli(*args, "--processes", "3")
    assert code == 2
    assert "--processes 2" in text and str(out) in text


def test_default_processes_follow_the_in_flight_budget() -> None:
    from graph.procpool import default_processes
    from state.settings import RefedSettings

    cores = len(os.sched_getaffinity(0))
    one = RefedSettings(concurrency=32, base_url="http://127.0.0.1:1/v1")
    assert default_processes(one) == 1
    two = RefedSettings(concurrency=32, base_url="http://127.0.0.1:1/v1,http://127.0.0.1:2/v1")
    assert default_processes(two) == min(cores, 2)
    many = RefedSettings(concurrency=256, base_url="http://127.0.0.1:1/v1")
    assert default_processes(many) == min(cores, 8)
    pg = RefedSettings(concurrency=256, store="postgresql://u:p@127.0.0.1:1/db")
    assert default_processes(pg) == 1
    with pytest.raises(ValueError, match="processes"):
        RefedSettings(processes=2, store="postgresql://u:p@127.0.0.1:1/db")
