"""Several ``graph.run`` workers on one run kept in Postgres (--store), against the fake server.

Three workers share the references without overlap; a SIGKILLed worker's references are
finished by the others once its lease runs out; a run whose workers all died resumes.
Every reference is done once and every sample written once, in Postgres and in the
exported run folder.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dataset.ledger import Ledger
from dataset.runfolder import Manifest
from state.records import ReferenceDone, Sample
from testing.runs import start_workers, wait_workers, write_seeds

from .conftest import REPO, FakeServerProc
from .pgcluster import require_postgres_extra

psycopg = require_postgres_extra()

PER_REFERENCE = 2


def run_args(server: FakeServerProc, seeds: Path, out: Path, lease: float) -> list[str]:
    return [
        "--seeds",
        str(seeds),
        "--base-url",
        server.base_url,
        "--model",
        "fake",
        "--out",
        str(out),
        "--per-reference",
        str(PER_REFERENCE),
        "--concurrency",
        "4",
        "--workers",
        "3",
        "--store-lease",
        str(lease),
    ]


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


def count(dsn: str, sql: str, *params: Any) -> int:
    """``SELECT count(*) …``, 0 while the first worker has not created the tables yet."""
    try:
        return int(query(dsn, sql, *params)[0][0])
    except psycopg.errors.UndefinedTable:
        return 0


def wait_for(
    what: str, check: Any, procs: list[subprocess.Popen[str]], timeout: float = 120
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for proc in procs:
            assert proc.poll() is None, f"a worker exited early: {proc.communicate()[1][-2000:]}"
        if time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            errors = "\n---\n".join(proc.communicate()[1][-1500:] for proc in procs)
            raise AssertionError(f"timed out waiting for {what}; the workers said:\n{errors}")
        time.sleep(0.05)


def check_exactly_once(dsn: str, out: Path, references: int) -> dict[str, int]:
    """Every reference done once, every sample once, in Postgres and in the run folder."""
    refs = query(
        dsn, "SELECT reference_id, done_at IS NOT NULL, done_by, claims FROM refed_references"
    )
    assert len(refs) == references
    assert all(done for _, done, _, _ in refs), [r for r in refs if not r[1]]
    samples = query(dsn, "SELECT sample_id, reference_id FROM refed_samples")
    ids = [s for s, _ in samples]
    assert len(ids) == len(set(ids)) == references * PER_REFERENCE
    per_ref = Counter(r for _, r in samples)
    assert set(per_ref.values()) == {PER_REFERENCE}
    exported = [
        s.sample_id
        for name in ("samples.jsonl", "rejected.jsonl")
        for s in Ledger(out / name).read(Sample)
    ]
    assert sorted(exported) == sorted(ids)
    done = list(Ledger(out / "references.jsonl").read(ReferenceDone))
    assert len(done) == len({d.reference_id for d in done}) == references
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert manifest.status == "finished"
    assert manifest.stats.references_done == references
    assert manifest.stats.accepted + manifest.stats.rejected == references * PER_REFERENCE
    return dict(Counter(by for _, _, by, _ in refs))


@pytest.mark.slow
def test_three_workers_share_a_run(
    fake_server: FakeServerProc, pg_dsn: str, tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 15)
    out = tmp_path / "run"
    args = run_args(fake_server, seeds, out, lease=10)
    wait_workers(start_workers(3, args, store=pg_dsn), timeout=90)
    by_worker = check_exactly_once(pg_dsn, out, 15)
    assert len(by_worker) == 3, f"some worker did no reference: {by_worker}"
    # No reference was processed twice: the LLM calls made are the calls recorded.
    assert query(pg_dsn, "SELECT max(claims) FROM refed_references")[0][0] == 1
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    assert fake_server.stats()["requests"] == manifest.stats.usage.calls
    # The same command again: all done, no LLM call, nothing added.
    before = fake_server.stats()["requests"]
    err = wait_workers(start_workers(1, args, store=pg_dsn), timeout=90)[0]
    assert "15 references already done, 0 to go" in err
    assert fake_server.stats()["requests"] == before
    check_exactly_once(pg_dsn, out, 15)
    # The export command writes the same ledgers into another folder.
    other = tmp_path / "elsewhere" / "run"
    export = ["--store", pg_dsn, "--out", str(out), "--to", str(other)]
    res = subprocess.run(
        [sys.executable, "-m", "graph.pgstore", *export],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert "samples.jsonl: " in res.stderr
    for name in ("samples.jsonl", "rejected.jsonl", "feedback.jsonl"):
        assert (other / name).read_bytes() == (out / name).read_bytes(), name
    assert Manifest.model_validate_json((other / "run.json").read_text()).status == "finished"


@pytest.mark.slow
def test_killed_worker_is_taken_over(
    slow_fake_server: FakeServerProc, pg_dsn: str, tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 12)
    out = tmp_path / "run"
    args = run_args(slow_fake_server, seeds, out, lease=2)
    procs = start_workers(3, args, store=pg_dsn)
    victim = procs[0]

    def victim_holds() -> list[str]:
        sql = "SELECT reference_id FROM refed_references WHERE done_at IS NULL AND owner LIKE %s"
        try:
            return [r[0] for r in query(pg_dsn, sql, f"%:{victim.pid}:%")]
        except psycopg.errors.UndefinedTable:
            return []

    held = wait_for("the victim to hold references", victim_holds, procs)
    # Let it get into them (some LLM calls made, checkpoints written), then kill it.
    wait_for(
        "a few finished samples",
        lambda: count(pg_dsn, "SELECT count(*) FROM refed_samples") >= 2,
        procs,
    )
    held = victim_holds() or held
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    wait_workers(procs[1:], timeout=90)
    check_exactly_once(pg_dsn, out, 12)
    taken = query(
        pg_dsn,
        "SELECT reference_id, claims, done_by FROM refed_references WHERE reference_id = ANY(%s)",
        held,
    )
    # What the victim held when it died was finished by the others, after its lease ran out.
    assert len(taken) == len(held) > 0
    assert all(claims >= 2 and f":{victim.pid}:" not in by for _, claims, by in taken), taken


@pytest.mark.slow
def test_resume_after_every_worker_died(
    slow_fake_server: FakeServerProc, pg_dsn: str, tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 10)
    out = tmp_path / "run"
    args = run_args(slow_fake_server, seeds, out, lease=2)
    procs = start_workers(2, args, store=pg_dsn)
    wait_for(
        "some finished references",
        lambda: (
            count(pg_dsn, "SELECT count(*) FROM refed_references WHERE done_at IS NOT NULL") >= 2
        ),
        procs,
    )
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = query(pg_dsn, "SELECT count(*) FROM refed_references WHERE done_at IS NULL")[0][0]
    assert left > 0, "the run finished before the kill; make it longer"
    calls_at_kill = slow_fake_server.stats()["requests"]
    wait_workers(start_workers(1, args, store=pg_dsn), timeout=120)
    check_exactly_once(pg_dsn, out, 10)
    manifest = Manifest.model_validate_json((out / "run.json").read_text())
    # Only the work in flight at the kill was done again: per worker at most its
    # references in flight (3) times the calls of one node round (4 requests).
    redone = slow_fake_server.stats()["requests"] - manifest.stats.usage.calls
    assert 0 <= redone <= 2 * 3 * 4, (redone, calls_at_kill)


@pytest.mark.slow
def test_worker_drops_a_reference_whose_lease_was_taken(
    slow_fake_server: FakeServerProc, pg_dsn: str, tmp_path: Path
) -> None:
    seeds = write_seeds(tmp_path / "seeds.jsonl", 4)
    out = tmp_path / "run"
    procs = start_workers(1, run_args(slow_fake_server, seeds, out, lease=1.5), store=pg_dsn)
    worker = procs[0]
    mine = f"%:{worker.pid}:%"

    def held() -> list[str]:
        sql = "SELECT reference_id FROM refed_references WHERE done_at IS NULL AND owner LIKE %s"
        try:
            return [r[0] for r in query(pg_dsn, sql, mine)]
        except psycopg.errors.UndefinedTable:
            return []

    stolen = wait_for("the worker to hold a reference", held, procs)[0]
    # Another worker (a stand-in) takes it over, as if this one had stalled past its lease.
    query(
        pg_dsn,
        "UPDATE refed_references SET owner = 'thief', lease_until = now() + interval '1 hour',"
        " claims = claims + 1 WHERE reference_id = %s RETURNING 1",
        stolen,
    )
    log_file = out / "log.jsonl"
    wait_for(
        "the worker to notice",
        lambda: log_file.exists() and "reference_lease_lost" in log_file.read_text(),
        procs,
    )
    # The thief dies: its lease runs out, and the worker takes the reference back.
    query(
        pg_dsn,
        "UPDATE refed_references SET lease_until = now() WHERE reference_id = %s RETURNING 1",
        stolen,
    )
    wait_workers(procs, timeout=90)
    check_exactly_once(pg_dsn, out, 4)
    claims = query(pg_dsn, "SELECT claims FROM refed_references WHERE reference_id = %s", stolen)
    assert claims[0][0] == 3


@pytest.mark.slow
def test_database_lost_mid_run_stops_with_advice(
    slow_fake_server: FakeServerProc, pg_cluster: Any, tmp_path: Path
) -> None:
    """The store going away stops the worker with exit 1 and what to do, no traceback."""
    from testing.pgcluster import PgCluster, find_bin

    bin_dir = find_bin()
    assert bin_dir is not None  # pg_cluster has failed or skipped the test otherwise
    cluster = PgCluster(bin_dir)  # its own cluster: this test stops it
    running = True
    try:
        dsn = cluster.create_database()
        seeds = write_seeds(tmp_path / "seeds.jsonl", 12)
        out = tmp_path / "run"
        args = run_args(slow_fake_server, seeds, out, lease=10)
        (proc,) = start_workers(1, args, store=dsn)
        wait_for(
            "a finished reference",
            lambda: count(dsn, "SELECT count(*) FROM refed_references WHERE done_at IS NOT NULL"),
            [proc],
        )
        cluster.stop()
        running, stopped = False, time.monotonic()
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # the worker prints where its tasks wait
            time.sleep(2)
            proc.kill()
            err = proc.communicate()[1]
            (tmp_path / "worker.err").write_text(err)
            raise AssertionError(f"the worker did not stop: {err[-3000:]}") from None
        took = time.monotonic() - stopped
        print(f"FIGURE database lost: worker exit {proc.returncode} after {took:.1f} s")
        assert proc.returncode == 1, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and "check that the database is reachable" in last
        assert took < 30
    finally:
        if running:
            cluster.stop()


@pytest.mark.slow
def test_three_workers_two_endpoints_lose_a_worker_and_an_endpoint(
    pg_dsn: str, tmp_path: Path
) -> None:
    """Issue 9's scenario: 3 workers, 2 endpoints; one worker SIGKILLed and one endpoint
    stopped mid-run; every reference done once, every sample once, none lost."""
    from testing.servers import FakeServer

    seeds = write_seeds(tmp_path / "seeds.jsonl", 15)
    out = tmp_path / "run"
    with FakeServer(0.15) as first, FakeServer(0.15) as second:
        args = run_args(first, seeds, out, lease=2)
        at = args.index("--base-url")
        args[at : at + 2] = ["--base-url", first.base_url, "--base-url", second.base_url]
        procs = start_workers(3, args, store=pg_dsn)
        done_sql = "SELECT count(*) FROM refed_references WHERE done_at IS NOT NULL"
        wait_for("a finished reference", lambda: count(pg_dsn, done_sql) >= 1, procs)
        assert first.stats()["requests"] > 0 and second.stats()["requests"] > 0
        victim = procs[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        wait_for("more finished references", lambda: count(pg_dsn, done_sql) >= 4, procs[1:])
        second.stop()  # an endpoint goes away with calls in flight
        left = 15 - count(pg_dsn, done_sql)
        assert left > 0, "the run finished before the endpoint stopped; make it longer"
        calls_on_first = first.stats()["requests"]
        wait_workers(procs[1:], timeout=180)
        assert first.stats()["requests"] > calls_on_first  # the rest went to the first
    check_exactly_once(pg_dsn, out, 15)
    failed = [s for s in Ledger(out / "rejected.jsonl").read(Sample) if s.status == "failed"]
    assert failed == [], [s.reason for s in failed]  # failover: no candidate lost to it
    print(f"FIGURE scale-out: 3 workers x 2 endpoints, 1 killed, 1 endpoint down, {left} refs left")
