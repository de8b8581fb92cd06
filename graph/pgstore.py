"""Postgres as the shared store of a run: checkpoints, ledgers and reference claims.

Selected by ``--store postgresql://…`` (``REFED_STORE``). Several ``python -m graph.run``
processes given the same ``--store`` and ``--out`` (the run's name in the database) and
the same settings work on one run:

- every reference is a row of ``refed_references``; a worker takes one with
  ``SELECT … FOR UPDATE SKIP LOCKED`` among the rows not done and not leased, and leases
  it for ``--store-lease`` seconds (default 60);
- a heartbeat renews the leases of the references the worker holds every third of the
  lease; a worker that dies stops renewing, and once its leases run out the others take
  its references and continue them from their LangGraph checkpoints (the checkpointer is
  langgraph's ``AsyncPostgresSaver`` on the same database);
- when a reference finishes, its samples, its feedback and its done marker are written in
  one transaction; samples are keyed by ``(run_id, sample_id)`` and inserted with
  ``ON CONFLICT DO NOTHING``, so a sample is written once whichever worker (or how many)
  wrote it, as the file ledger does by id;
- a worker whose lease was taken over (it stalled past the lease) stops that reference;
- a worker exits when no reference is left that it could still take; it releases what it
  holds (references that crashed in it) so the others or a rerun retry them.

Each worker writes ``run.json`` and, at its end, exports what the database holds to the
run folder's ``samples.jsonl``, ``rejected.jsonl``, ``feedback.jsonl`` and
``references.jsonl`` (replaced atomically), so the run folder looks like an embedded run's;
``python -m graph.pgstore --store … --out …`` exports at any time.

Near-duplicate control (dataset/quality) loads the run's samples from the database at start
and adds the other workers' accepted samples as each reference of its own finishes; two
near-duplicates made in the same moment by two workers can both be kept.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog

try:
    import psycopg
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
    from psycopg import AsyncConnection
    from psycopg.rows import DictRow, dict_row
    from psycopg.types.json import Jsonb
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - the message names the extra to install
    raise ImportError(
        "--store postgresql://… needs the postgres extra: pip install -e '.[postgres]'"
    ) from exc

import prompts
from dataset.ledger import LedgerError
from dataset.quality import QualityGate
from dataset.quality.gate import QUALITY_FILE
from dataset.runfolder import Manifest, RunConfigMismatch, RunFolder, new_manifest
from graph.builder import compile_graph
from graph.checkpoint import serializer
from graph.store import (
    Ending,
    GraphThreads,
    Held,
    ThreadedStore,
    default_workers,
    run_status,
    stopped_line,
    target_reached,
)
from llm.client import LLMClient
from llm.factory import run_clients
from state.logs import add_secret, redact
from state.records import Reference, ReferenceDone, ReferenceFeedback, RunStats, Sample, Usage
from state.settings import RefedSettings, redact_dsn

log = structlog.get_logger("refed.pgstore")

Pool = AsyncConnectionPool[AsyncConnection[DictRow]]

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a store connection: a store that is away stops the worker soon."""

SCHEMA_LOCK = 0x7265666564  # pg_advisory_lock key while creating tables ("refed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS refed_runs (
    run_id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    manifest jsonb NOT NULL,
    accepted bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    references_done bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS refed_references (
    run_id text NOT NULL REFERENCES refed_runs ON DELETE CASCADE,
    reference_id text NOT NULL,
    seq integer NOT NULL,
    reference jsonb NOT NULL,
    owner text,
    lease_until timestamptz,
    claims integer NOT NULL DEFAULT 0,
    done jsonb,
    done_at timestamptz,
    done_by text,
    PRIMARY KEY (run_id, reference_id)
);
CREATE INDEX IF NOT EXISTS refed_references_todo
    ON refed_references (run_id, seq) WHERE done_at IS NULL;
CREATE TABLE IF NOT EXISTS refed_samples (
    run_id text NOT NULL REFERENCES refed_runs ON DELETE CASCADE,
    sample_id text NOT NULL,
    reference_id text NOT NULL,
    status text NOT NULL,
    seq bigserial,
    sample jsonb NOT NULL,
    PRIMARY KEY (run_id, sample_id)
);
CREATE INDEX IF NOT EXISTS refed_samples_order ON refed_samples (run_id, seq);
CREATE TABLE IF NOT EXISTS refed_feedback (
    run_id text NOT NULL REFERENCES refed_runs ON DELETE CASCADE,
    reference_id text NOT NULL,
    feedback jsonb NOT NULL,
    PRIMARY KEY (run_id, reference_id)
);
"""

_CLAIM = """
WITH picked AS (
    SELECT reference_id FROM refed_references
    WHERE run_id = %(run)s AND done_at IS NULL
      AND (lease_until IS NULL OR lease_until < now())
    ORDER BY seq
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE refed_references r
SET owner = %(owner)s, lease_until = now() + make_interval(secs => %(lease)s),
    claims = r.claims + 1
FROM picked
WHERE r.run_id = %(run)s AND r.reference_id = picked.reference_id
RETURNING r.reference_id, r.reference, r.claims
"""


STOP_GRACE = 10.0
"""Seconds a worker that lost the store gets to unwind before it exits anyway."""


def arm_exit(error: LedgerError) -> None:
    """Exit in ``STOP_GRACE`` seconds unless the process has ended by then.

    Once the store is gone, unwinding can wait on it (a checkpoint write on cancel, a
    pool worker at interpreter exit); the leases are lost and nothing more can be saved,
    so the wait gets a bound. A daemon thread, so it works with the event loop gone too.
    """
    timer = threading.Timer(STOP_GRACE, _exit_now, (error,))
    timer.daemon = True
    timer.start()


def _exit_now(error: LedgerError) -> None:
    print(stopped_line(error, "The worker stopped"), file=sys.stderr, flush=True)
    os._exit(1)


class StoreUnavailable(LedgerError):
    """The store did not answer: the worker stops (its leases run out for the others)."""

    advice = "check that the database is reachable, then rerun the same command to resume"


def run_name(settings: RefedSettings) -> str:
    """The run's name in the database: the ``--out`` path as given, normalised."""
    return os.path.normpath(str(settings.out))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@asynccontextmanager
async def open_pool(dsn: str, *, max_size: int = 10) -> AsyncIterator[Pool]:
    """A connection pool as langgraph's Postgres saver wants it (autocommit, dict rows)."""
    pool: Pool = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=CONNECT_TIMEOUT,
        kwargs={
            "autocommit": True,
            "prepare_threshold": 0,
            "row_factory": dict_row,
            "connect_timeout": int(CONNECT_TIMEOUT),
        },
    )
    await pool.open(wait=True, timeout=30)
    try:
        yield pool
    finally:
        await pool.close()


async def setup_schema(pool: Pool, saver: AsyncPostgresSaver | None = None) -> None:
    """Create our tables (and the checkpointer's) once, however many workers start at once.

    The lock is polled, not waited for: langgraph's migrations run ``CREATE INDEX
    CONCURRENTLY``, which waits for every open statement, a blocked lock request too.
    """
    async with pool.connection() as conn:
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (SCHEMA_LOCK,))
            row = await cur.fetchone()
            if row is not None and row["ok"]:
                break
            await asyncio.sleep(0.05)
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    await conn.execute(statement)
            if saver is not None:
                await saver.setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


class PgRunFolder(RunFolder):
    """A run whose ledgers live in Postgres; the local folder gets run.json and exports.

    The runner's ledger calls (``add_samples``, ``add_feedback``, ``mark_done``) are kept
    in memory per reference and written by :meth:`commit` in one transaction when the
    reference ends; what a crash loses before that is in the reference's checkpoint, and
    the worker that takes the reference over writes it (the runner reconciles).
    """

    def __init__(self, path: Path, pool: Pool, run_id: str) -> None:
        super().__init__(path)
        self.pool = pool
        self.run_id = run_id
        self.checkpoints = path / "checkpoints.postgres"  # not a file: the store holds them
        self._samples: dict[str, list[Sample]] = {}
        self._feedback: dict[str, ReferenceFeedback] = {}
        self._done_pending: dict[str, ReferenceDone] = {}
        self.references_done = 0
        self.owner: str | None = None
        """The worker writing through this folder (recorded as ``done_by``)."""
        self._seen_seq = 0

    # --- opening ------------------------------------------------------------------
    @classmethod
    async def open_run(
        cls,
        pool: Pool,
        settings: RefedSettings,
        prompt_versions: dict[str, str],
        references: list[Reference],
        *,
        model: str,
        base_url: str | None,
    ) -> tuple[PgRunFolder, Manifest]:
        """Create the run (first worker) or join it; refuse a different configuration."""
        name = run_name(settings)
        fingerprint = settings.fingerprint()
        fresh = new_manifest(settings, prompt_versions, model=model, base_url=base_url)
        async with pool.connection() as conn, conn.transaction():
            if settings.force_new:
                stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
                await conn.execute(
                    "UPDATE refed_runs SET name = name || %s WHERE name = %s",
                    (f".replaced-{stamp}", name),
                )
            await conn.execute(
                "INSERT INTO refed_runs (run_id, name, manifest) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING",
                (fresh.run_id, name, Jsonb(fresh.model_dump(mode="json"))),
            )
            cur = await conn.execute(
                "SELECT run_id, manifest FROM refed_runs WHERE name = %s", (name,)
            )
            row = await cur.fetchone()
            assert row is not None
            manifest = Manifest.model_validate(row["manifest"])
            wanted = {**fingerprint, "prompt_versions": prompt_versions, "seeds": settings.seeds}
            have = {
                **manifest.fingerprint,
                "prompt_versions": manifest.prompt_versions,
                "seeds": manifest.seeds,
            }
            wanted = json.loads(json.dumps(wanted, default=str))
            diffs = [k for k in wanted if wanted[k] != have.get(k)]
            if diffs:
                lines = ", ".join(f"{k}: {have.get(k)!r} → {wanted[k]!r}" for k in diffs)
                raise RunConfigMismatch(
                    f"run {name!r} in the store holds a different configuration ({lines}). "
                    "Use the same settings to join or resume it, another --out, or "
                    "--force-new to start over (the old run is kept, renamed)."
                )
        manifest.status = "running"
        manifest.base_url = base_url
        manifest.settings = settings.public_dump()
        settings.out.mkdir(parents=True, exist_ok=True)
        folder = cls(settings.out, pool, manifest.run_id)
        await folder.register(references)
        await folder.refresh()
        folder.write_schemas()
        folder.write_manifest(manifest)
        return folder, manifest

    async def register(self, references: list[Reference]) -> None:
        """Add the references (each once; a joining worker adds nothing new)."""
        async with self.pool.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO refed_references (run_id, reference_id, seq, reference)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (self.run_id, ref.id, i, Jsonb(ref.model_dump(mode="json")))
                    for i, ref in enumerate(references)
                ],
            )

    async def refresh_counts(self) -> None:
        """The run's counters (all workers) as the database has them now."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT accepted, rejected, references_done FROM refed_runs WHERE run_id = %s",
                (self.run_id,),
            )
            row = await cur.fetchone()
        assert row is not None
        self.accepted = int(row["accepted"])
        self.rejected_count = int(row["rejected"])
        self.references_done = int(row["references_done"])

    async def refresh(self) -> None:
        """Counters and finished references as the database has them now."""
        await self.refresh_counts()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT done FROM refed_references WHERE run_id = %s AND done_at IS NOT NULL",
                (self.run_id,),
            )
            usage = Usage()
            for done_row in await cur.fetchall():
                done = ReferenceDone.model_validate(done_row["done"])
                self.done[done.reference_id] = done
                usage += done.usage
            self.usage = usage

    def load(self) -> None:
        """The ledgers are in the database: nothing to read from the folder."""

    # --- the runner's ledger calls (in memory until commit) ----------------------
    def add_samples(self, samples: list[Sample]) -> tuple[int, int]:
        fresh = [s for s in samples if s.sample_id not in self.sample_ids]
        for s in fresh:
            self._samples.setdefault(s.reference_id, []).append(s)
        self.sample_ids.update(s.sample_id for s in fresh)
        self.gated_ids.update(
            s.sample_id for s in fresh if s.filter is not None and s.filter.is_gate
        )
        accepted = sum(s.status == "accepted" for s in fresh)
        return accepted, len(fresh) - accepted

    def add_feedback(self, feedback: ReferenceFeedback) -> None:
        self._feedback.setdefault(feedback.reference_id, feedback)

    def mark_done(self, done: ReferenceDone) -> None:
        self._done_pending[done.reference_id] = done

    def _forget(self, reference_id: str) -> list[Sample]:
        samples = self._samples.pop(reference_id, [])
        self.sample_ids.difference_update(s.sample_id for s in samples)
        self._feedback.pop(reference_id, None)
        self._done_pending.pop(reference_id, None)
        return samples

    async def commit(self, reference_id: str, gate: QualityGate | None = None) -> bool:
        """Write a finished reference's samples, feedback and marker in one transaction.

        Returns whether this call marked the reference done (False: another worker had).
        ``gate`` gets the other workers' accepted samples written since the last commit.
        """
        samples = self._samples.get(reference_id, [])
        feedback = self._feedback.get(reference_id)
        done = self._done_pending.get(reference_id)
        try:
            async with self.pool.connection() as conn, conn.transaction():
                counts = {"accepted": 0, "rejected": 0}
                for s in samples:
                    cur = await conn.execute(
                        "INSERT INTO refed_samples (run_id, sample_id, reference_id, status,"
                        " sample) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
                        " RETURNING status",
                        (
                            self.run_id,
                            s.sample_id,
                            s.reference_id,
                            s.status,
                            Jsonb(s.model_dump(mode="json")),
                        ),
                    )
                    if await cur.fetchone() is not None:
                        counts["accepted" if s.status == "accepted" else "rejected"] += 1
                if feedback is not None:
                    await conn.execute(
                        "INSERT INTO refed_feedback (run_id, reference_id, feedback)"
                        " VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                        (self.run_id, reference_id, Jsonb(feedback.model_dump(mode="json"))),
                    )
                marked = False
                if done is not None:
                    cur = await conn.execute(
                        "UPDATE refed_references SET done = %s, done_at = now(), done_by = %s,"
                        " owner = NULL, lease_until = NULL WHERE run_id = %s"
                        " AND reference_id = %s AND done_at IS NULL RETURNING reference_id",
                        (
                            Jsonb(done.model_dump(mode="json")),
                            self.owner,
                            self.run_id,
                            reference_id,
                        ),
                    )
                    marked = await cur.fetchone() is not None
                cur = await conn.execute(
                    "UPDATE refed_runs SET accepted = accepted + %s, rejected = rejected + %s,"
                    " references_done = references_done + %s WHERE run_id = %s"
                    " RETURNING accepted, rejected, references_done",
                    (counts["accepted"], counts["rejected"], int(marked), self.run_id),
                )
                row = await cur.fetchone()
                assert row is not None
                others = await self._new_accepted(conn) if gate is not None else []
        except BaseException:
            self._forget(reference_id)  # the checkpoint still holds them: a retry rewrites
            raise
        self._samples.pop(reference_id, None)
        self._feedback.pop(reference_id, None)
        self._done_pending.pop(reference_id, None)
        self.accepted = int(row["accepted"])
        self.rejected_count = int(row["rejected"])
        self.references_done = int(row["references_done"])
        if done is not None and marked:
            self.done[reference_id] = done
            self.usage += done.usage
        if gate is not None:
            for sample in others:
                gate.add(sample)
        return marked

    async def _new_accepted(self, conn: AsyncConnection[DictRow]) -> list[Sample]:
        cur = await conn.execute(
            "SELECT seq, sample FROM refed_samples WHERE run_id = %s AND status = 'accepted'"
            " AND seq > %s ORDER BY seq",
            (self.run_id, self._seen_seq),
        )
        out = []
        for row in await cur.fetchall():
            self._seen_seq = max(self._seen_seq, int(row["seq"]))
            out.append(Sample.model_validate(row["sample"]))
        return out

    async def samples_for_gate(self, gate: QualityGate, references: list[Reference]) -> None:
        """Load the run's kept samples and earlier drops into ``gate``."""
        async with self.pool.connection() as conn:
            accepted = await self._new_accepted(conn)
            cur = await conn.execute(
                "SELECT sample FROM refed_samples WHERE run_id = %s AND status <> 'accepted'"
                " AND sample->>'filter' IS NOT NULL",
                (self.run_id,),
            )
            rejected = [Sample.model_validate(r["sample"]) for r in await cur.fetchall()]
        gate.load(accepted, references, rejected)

    # --- claims -------------------------------------------------------------------
    async def claim(self, owner: str, lease: float) -> tuple[Reference, int] | None:
        """Lease the next free reference (not done, no live lease) to ``owner``."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_CLAIM, {"run": self.run_id, "owner": owner, "lease": lease})
            row = await cur.fetchone()
        if row is None:
            return None
        return Reference.model_validate(row["reference"]), int(row["claims"])

    async def waiting_elsewhere(self, owner: str) -> int:
        """References not done that ``owner`` does not hold (others hold them, or soon free)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM refed_references WHERE run_id = %s"
                " AND done_at IS NULL AND owner IS DISTINCT FROM %s",
                (self.run_id, owner),
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row["n"])

    async def renew(self, owner: str, lease: float, held: set[str]) -> set[str]:
        """Extend ``owner``'s leases; returns the held references another worker now owns."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE refed_references SET lease_until = now() + make_interval(secs => %s)"
                " WHERE run_id = %s AND owner = %s AND done_at IS NULL",
                (lease, self.run_id, owner),
            )
            if not held:
                return set()
            cur = await conn.execute(
                "SELECT reference_id FROM refed_references WHERE run_id = %s"
                " AND reference_id = ANY(%s) AND done_at IS NULL"
                " AND owner IS DISTINCT FROM %s",
                (self.run_id, sorted(held), owner),
            )
            return {r["reference_id"] for r in await cur.fetchall()}

    async def release(self, owner: str) -> int:
        """Give up ``owner``'s unfinished references (free for the others at once)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE refed_references SET owner = NULL, lease_until = NULL"
                " WHERE run_id = %s AND owner = %s AND done_at IS NULL",
                (self.run_id, owner),
            )
            return cur.rowcount

    async def remaining(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM refed_references WHERE run_id = %s AND done_at IS NULL",
                (self.run_id,),
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row["n"])

    # --- output -------------------------------------------------------------------
    async def export(self) -> dict[str, int]:
        """Write the run's ledgers from the database into the folder (atomic replace)."""
        queries = {
            "samples.jsonl": (
                "SELECT sample AS r FROM refed_samples WHERE run_id = %s AND status = 'accepted'"
                " ORDER BY seq"
            ),
            "rejected.jsonl": (
                "SELECT sample AS r FROM refed_samples WHERE run_id = %s"
                " AND status <> 'accepted' ORDER BY seq"
            ),
            "feedback.jsonl": (
                "SELECT f.feedback AS r FROM refed_feedback f JOIN refed_references x"
                " USING (run_id, reference_id) WHERE f.run_id = %s ORDER BY x.seq"
            ),
            "references.jsonl": (
                "SELECT done AS r FROM refed_references WHERE run_id = %s"
                " AND done_at IS NOT NULL ORDER BY done_at, seq"
            ),
        }
        counts: dict[str, int] = {}
        async with self.pool.connection() as conn:
            for filename, query in queries.items():
                target = self.path / filename
                tmp = target.with_name(f".{filename}.{os.getpid()}.{time.monotonic_ns()}.tmp")
                n = 0
                with tmp.open("w", encoding="utf-8") as fh:
                    async with conn.transaction(), conn.cursor(name="refed_export") as cur:
                        await cur.execute(query, (self.run_id,))
                        async for row in cur:
                            _write_line(fh, row["r"])
                            n += 1
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
                counts[filename] = n
        return counts

    def stats(self, process_calls: int = 0) -> RunStats:
        return RunStats(
            references_done=self.references_done,
            accepted=self.accepted,
            rejected=self.rejected_count,
            usage=self.usage,
            process_calls=process_calls,
        ).finish()

    def close(self) -> None:
        """Nothing is waiting: commits are synchronous; the pool is closed by its owner."""


def _write_line(fh: IO[str], record: Any) -> None:
    fh.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")


class PgStore(ThreadedStore):
    """References claimed from Postgres under leases, ledgers committed there per reference,
    threads run here on Postgres checkpoints."""

    folder: PgRunFolder

    def __init__(
        self,
        settings: RefedSettings,
        folder: PgRunFolder,
        manifest: Manifest,
        threads: GraphThreads,
    ) -> None:
        super().__init__(settings, folder, manifest, threads)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.folder.owner = self.owner
        self.lease = float(settings.store_lease)

    # --- claims ---------------------------------------------------------------------
    async def plan(self, references: Sequence[Reference]) -> int:
        return await self.folder.remaining()

    async def claim(self) -> Reference | None:
        """A claimed reference; waits while others hold some; None when nothing is left."""
        try:
            return await self._next()
        except psycopg.Error as exc:  # the store is away: stop, the leases run out
            gone = StoreUnavailable(f"the store is unavailable: {redact(str(exc))}")
            arm_exit(gone)
            raise gone from exc

    async def _next(self) -> Reference | None:
        poll = min(1.0, self.lease / 4)
        while True:
            if self.settings.samples is not None:  # the others' samples count too
                await self.folder.refresh_counts()
            if target_reached(self.settings, self.folder):
                return None
            claimed = await self.folder.claim(self.owner, self.lease)
            if claimed is not None:
                ref, claims = claimed
                if claims > 1:
                    log.info("reference_taken_over", reference_id=ref.id, claims=claims)
                return ref
            if await self.folder.waiting_elsewhere(self.owner) == 0:
                return None
            await asyncio.sleep(poll)  # a dead worker's leases run out, or the others finish

    async def keep_claims(self, slots: Sequence[asyncio.Task[None]], held: Held) -> None:
        """Renew the leases every third of a lease while any slot works.

        A beat that fails is tried again at the next one; when no beat has succeeded for a
        whole lease, the leases are gone (other workers may take the references over), so
        the worker stops with :class:`StoreUnavailable` rather than wait for the store. A
        reference another worker now owns (this one stalled past its lease) is dropped.
        """
        renewed = time.monotonic()
        while True:
            await asyncio.wait(slots, timeout=self.lease / 3)
            if all(slot.done() for slot in slots):
                return
            try:
                lost = await self.folder.renew(self.owner, self.lease, set(held.tasks))
            except Exception as exc:  # the store is away: the next beat tries again
                log.warning("heartbeat_failed", error=redact(repr(exc)))
                if time.monotonic() - renewed > self.lease:
                    gone = StoreUnavailable(
                        f"the store has not answered for {time.monotonic() - renewed:.0f} s "
                        f"(last error: {' '.join(redact(str(exc)).split())})"
                    )
                    arm_exit(gone)
                    raise gone from exc
                continue
            renewed = time.monotonic()
            for ref_id in lost:
                held.drop(ref_id)

    # --- ledgers --------------------------------------------------------------------
    async def open_gate(self, references: Sequence[Reference]) -> QualityGate | None:
        """The gate loaded with the seeds and every worker's samples in the store."""
        gate = QualityGate.from_settings(self.settings)
        if gate is not None:
            gate.path = self.folder.path / QUALITY_FILE
            await self.folder.samples_for_gate(gate, list(references))
            gate.write_summary()
        return gate

    async def commit(self, reference_id: str, gate: QualityGate | None) -> None:
        await self.folder.commit(reference_id, gate)

    async def finish(self, ending: Ending) -> None:
        """Give back what this worker holds, export the store's ledgers to the run folder
        and write ``run.json``; with the store away, ``run.json`` only."""
        folder, manifest, stopped_by = self.folder, self.manifest, ending.stopped_by
        try:
            if isinstance(stopped_by, StoreUnavailable):
                raise stopped_by  # no release, no export: write run.json only
            try:
                released = await asyncio.shield(folder.release(self.owner))
            except Exception as exc:  # the leases run out anyway
                log.warning("release_failed", error=redact(repr(exc)))
            else:
                if released:
                    log.info("references_released", references=released)
            await asyncio.shield(self._export(ending))
        except (psycopg.Error, OSError, StoreUnavailable) as exc:  # keep the first error
            log.error("export_failed", error=redact(str(exc)))
            arm_exit(LedgerError(f"cannot export the run: {redact(str(exc))}"))
            manifest.status = "storage_error"
            with contextlib.suppress(OSError):
                folder.write_manifest(manifest)
            if stopped_by is None and not ending.interrupted:
                raise LedgerError(f"cannot export the run: {redact(str(exc))}") from exc

    async def _export(self, ending: Ending) -> None:
        folder, manifest = self.folder, self.manifest
        await folder.refresh()
        await folder.export()
        manifest.stats = folder.stats(ending.requests)
        left = await folder.remaining()
        done = left == 0 or target_reached(self.settings, folder)
        manifest.status = run_status(ending.interrupted, done, ending.stopped_by)
        folder.write_manifest(manifest)


def pool_size(settings: RefedSettings) -> int:
    """Connections per worker: one per reference in flight at most, plus a few."""
    return min(default_workers(settings), 16) + 2


@asynccontextmanager
async def pg_store(
    settings: RefedSettings, references: Sequence[Reference], client: LLMClient | None
) -> AsyncIterator[PgStore]:
    """Join (or start) the run named by ``--out`` in the store: its clients made (or
    ``client``, tests), the graph compiled on Postgres checkpoints; all closed at the end."""
    assert settings.store is not None
    add_secret(_password(settings.store))
    clients = None
    try:
        async with open_pool(settings.store, max_size=pool_size(settings)) as pool:
            saver = AsyncPostgresSaver(pool, serde=serializer())
            await setup_schema(pool, saver)
            folder, manifest = await PgRunFolder.open_run(
                pool,
                settings,
                prompts.versions(),
                list(references),
                model=settings.model,
                base_url=settings.base_url,
            )
            log.info("store_joined", store=redact_dsn(settings.store), run_id=manifest.run_id)
            clients = run_clients(settings, manifest.run_id, client)
            threads = GraphThreads(compile_graph(saver), clients, settings)
            yield PgStore(settings, folder, manifest, threads)
    finally:
        if clients is not None:
            await clients.aclose()


def _password(dsn: str) -> str | None:
    from psycopg.conninfo import conninfo_to_dict

    try:
        value = conninfo_to_dict(dsn).get("password")
    except Exception:
        return None
    return None if value is None else str(value)


async def export_run(settings: RefedSettings, to: Path | None = None) -> dict[str, int]:
    """Export the run named by ``--out`` from the store into that folder (or ``to``)."""
    assert settings.store is not None
    async with open_pool(settings.store, max_size=2) as pool:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT run_id, manifest FROM refed_runs WHERE name = %s", (run_name(settings),)
            )
            row = await cur.fetchone()
        if row is None:
            raise SystemExit(f"error: no run named {run_name(settings)!r} in the store")
        target = to or settings.out
        target.mkdir(parents=True, exist_ok=True)
        folder = PgRunFolder(target, pool, row["run_id"])
        manifest = Manifest.model_validate(row["manifest"])
        await folder.refresh()
        counts = await folder.export()
        manifest.stats = folder.stats()
        left = await folder.remaining()
        manifest.status = "finished" if left == 0 else "incomplete"
        folder.write_schemas()
        folder.write_manifest(manifest)
        return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m graph.pgstore",
        description="Export a run kept in Postgres (--store) to its run folder (--out): "
        "samples.jsonl, rejected.jsonl, feedback.jsonl, references.jsonl, run.json.",
    )
    parser.add_argument("--store", default=None, help="postgresql://… (or REFED_STORE)")
    parser.add_argument("--out", type=Path, required=True, help="The run's --out (its name).")
    parser.add_argument(
        "--to", type=Path, default=None, help="Write into this folder instead of --out."
    )
    args = parser.parse_args(argv)
    store = args.store or os.environ.get("REFED_STORE")
    if not store:
        print("error: --store (or REFED_STORE) is required", file=sys.stderr)
        return 2
    settings = RefedSettings(store=store, out=args.out)
    counts = asyncio.run(export_run(settings, args.to))
    for name, n in counts.items():
        print(f"{name}: {n}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
