"""A run's storage: the one interface the runner writes through, and what its three
implementations share.

A :class:`Store` keeps what a run has done and is doing:

- the **run folder** and its **ledgers** (``folder``: samples, rejected candidates,
  feedback, finished references, ``run.json``);
- the **checkpoints** of the reference threads: :meth:`Store.execute` runs or resumes one;
- the **claims** on references: :meth:`Store.claim` gives the next one to work on.

Three implementations: ``graph.batch.LocalStore`` (files and one SQLite checkpoint file,
the graph in this process), ``graph.procpool.ProcessStore`` (files, the graph in
several processes with a checkpoint file each) and ``graph.pgstore.PgStore`` (Postgres,
shared by several workers); the first and the last run their threads in this process
(:class:`ThreadedStore`). The defaults here are the run folder's on disk: the claims
are a queue of the references not yet done, the gate is loaded from the ledgers, and the
end is written to ``run.json``.
"""

from __future__ import annotations

import asyncio
import errno
import math
import sqlite3
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph

from dataset.ledger import LedgerError
from dataset.quality import QualityGate
from dataset.runfolder import Manifest, RunFolder
from llm.client import Meter
from llm.factory import RunClients, endpoint_stats
from state.context import RefedContext
from state.graph_state import ReferenceState
from state.logs import redact
from state.records import Reference
from state.settings import RefedSettings

log = structlog.get_logger("refed.store")

Graph = CompiledStateGraph[ReferenceState, RefedContext, ReferenceState, ReferenceState]
OnUpdate = Callable[[str, dict[str, Any]], None]


def default_workers(settings: RefedSettings) -> int:
    """References in flight: enough candidates to keep ``concurrency`` busy on each endpoint."""
    if settings.workers:
        return settings.workers
    endpoints = max(1, len(settings.base_urls))
    return max(2, math.ceil(2 * settings.concurrency * endpoints / settings.per_reference))


def target_reached(settings: RefedSettings, folder: RunFolder) -> bool:
    """The run has the ``--samples`` it asked for."""
    return settings.samples is not None and folder.accepted >= settings.samples


async def run_thread(
    app: Graph,
    ref: Reference,
    run_id: str,
    context: RefedContext,
    durability: Any,
    on_update: OnUpdate,
) -> dict[str, Any]:
    """Run or resume ``ref``'s thread (``run_id:reference_id``) to its end.

    ``on_update(node, update)`` sees each finished step that changed the thread's state
    as it lands (not a candidate step that only passed the candidate on); returns the
    thread's final state values (a finished thread: at once).

    A thread is finished when its checkpoint has no task at all. ``snapshot.next`` is not
    the test: it lists only the tasks still to run, and a step whose every task saved its
    result before the run stopped (the disk filled, or a kill, before the step's own
    checkpoint) has none left while the thread is not done; its state then lacks what
    those tasks and the steps after them make (the candidates), so resume must run it on.
    """
    cfg: RunnableConfig = {"configurable": {"thread_id": f"{run_id}:{ref.id}"}}
    snapshot = await app.aget_state(cfg)
    if snapshot.values and not snapshot.tasks:
        return dict(snapshot.values)
    start = None if snapshot.tasks else ReferenceState(reference=ref)
    if start is None:
        step = [task.name for task in snapshot.tasks]
        log.info("reference_resumed", reference_id=ref.id, next=list(snapshot.next), step=step)
    async for chunk in app.astream(
        start, cfg, context=context, stream_mode="updates", durability=durability
    ):
        for node, update in chunk.items():
            if update:
                on_update(node, update)
    return dict((await app.aget_state(cfg)).values)


def storage_error(exc: BaseException) -> bool:
    """A write the disk refused (full, read-only, over quota or size limit)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return True
    text = str(exc).lower()
    return isinstance(exc, sqlite3.Error) and any(
        mark in text for mark in ("disk is full", "disk i/o error", "readonly database")
    )


_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES})


def stopped_line(exc: LedgerError, who: str) -> str:
    """The one line a run stopped by ``exc`` ends with (a database error's lines joined)."""
    return (
        f"error: {' '.join(redact(str(exc)).split())}. {who}; what was written before is "
        f"intact: {exc.advice}."
    )


def run_status(interrupted: bool, done: bool, stopped_by: BaseException | None) -> str:
    """run.json's status for a run that ended so (``done``: all of it, or its target)."""
    if stopped_by is not None:  # a RunStop's (server_unavailable, server_refused) or a disk's
        return getattr(stopped_by, "status", "storage_error")
    if interrupted:
        return "interrupted"
    return "finished" if done else "incomplete"


@dataclass(frozen=True)
class Ending:
    """How the runner's work ended, for the store to record."""

    references: int
    """References the run was given."""
    requests: int
    """LLM requests this process's run made."""
    failed: bool
    """Some reference crashed (a bug): the run is not finished."""
    interrupted: bool
    stopped_by: BaseException | None


class Held:
    """The references a runner works on now, each with its task; a store whose claim on
    one was taken over (a lease that ran out) drops it."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.lost: set[str] = set()

    def drop(self, reference_id: str) -> None:
        task = self.tasks.get(reference_id)
        if task is not None and not task.done():
            self.lost.add(reference_id)
            task.cancel()


class GraphThreads:
    """Reference threads run in this process, on ``app``'s checkpointer, with the run's
    LLM clients (what the SQLite and Postgres stores share)."""

    def __init__(self, app: Graph, clients: RunClients, settings: RefedSettings) -> None:
        self.app = app
        self.clients = clients
        self.durability = settings.durability

    async def execute(self, ref: Reference, run_id: str, on_update: OnUpdate) -> dict[str, Any]:
        return await run_thread(
            self.app, ref, run_id, self.clients.context, self.durability, on_update
        )

    def meter(self) -> Meter:
        return self.clients.generator.meter

    def endpoints(self) -> list[dict[str, Any]]:
        return endpoint_stats(self.clients.generator)


class Store(ABC):
    """What a run keeps and where (see the module docstring)."""

    def __init__(self, settings: RefedSettings, folder: RunFolder, manifest: Manifest) -> None:
        self.settings = settings
        self.folder = folder
        self.manifest = manifest
        self._queue: deque[Reference] = deque()

    # --- claims ---------------------------------------------------------------------
    async def plan(self, references: Sequence[Reference]) -> int:
        """Get ready to hand out ``references``; how many are left to do."""
        self._queue = deque(r for r in references if r.id not in self.folder.done)
        return len(self._queue)

    async def claim(self) -> Reference | None:
        """The next reference to work on; None when there is none left for this worker."""
        return self._queue.popleft() if self._queue else None

    async def keep_claims(self, slots: Sequence[asyncio.Task[None]], held: Held) -> None:
        """Keep this worker's claims alive while ``slots`` work (claims that never lapse:
        nothing to do)."""
        return

    # --- checkpoints ----------------------------------------------------------------
    @abstractmethod
    async def execute(self, ref: Reference, on_update: OnUpdate) -> dict[str, Any]:
        """Run or resume ``ref``'s thread on its checkpoints; its final state values."""

    # --- ledgers --------------------------------------------------------------------
    async def open_gate(self, references: Sequence[Reference]) -> QualityGate | None:
        """The run's quality gate, loaded with the seeds and what the ledgers hold."""
        return QualityGate.for_run(self.settings, self.folder, references)

    async def commit(self, reference_id: str, gate: QualityGate | None) -> None:
        """A finished reference's ledger records are final (the files' are already)."""
        return

    async def finish(self, ending: Ending) -> None:
        """Write the run's counters and how it ended to ``run.json``."""
        folder, manifest = self.folder, self.manifest
        manifest.stats = folder.stats(ending.requests)
        done = len(folder.done) >= ending.references and not ending.failed
        manifest.status = run_status(
            ending.interrupted,
            done or target_reached(self.settings, folder),
            ending.stopped_by,
        )
        try:
            folder.write_manifest(manifest)
        except OSError as exc:  # a full disk: keep the error that stopped the run
            log.error("manifest_not_written", error=str(exc))
            if ending.stopped_by is None:
                raise LedgerError(
                    f"cannot write {folder.manifest_path}: {exc.strerror or exc}"
                ) from exc

    # --- counters -------------------------------------------------------------------
    @abstractmethod
    def meter(self) -> Meter:
        """Live counters of the generator's LLM calls (what the progress line shows)."""

    @abstractmethod
    def requests(self) -> int:
        """LLM requests the run made from this process (the judge's own client included)."""

    @abstractmethod
    def endpoints(self) -> list[dict[str, Any]]:
        """Per-endpoint counters of the generator's client (the run summary's)."""


class ThreadedStore(Store):
    """A store whose reference threads run in this process (:class:`GraphThreads`): the
    SQLite and the Postgres stores."""

    def __init__(
        self, settings: RefedSettings, folder: RunFolder, manifest: Manifest, threads: GraphThreads
    ) -> None:
        super().__init__(settings, folder, manifest)
        self.threads = threads

    async def execute(self, ref: Reference, on_update: OnUpdate) -> dict[str, Any]:
        return await self.threads.execute(ref, self.manifest.run_id, on_update)

    def meter(self) -> Meter:
        return self.threads.meter()

    def requests(self) -> int:
        return self.threads.clients.requests

    def endpoints(self) -> list[dict[str, Any]]:
        return self.threads.endpoints()
