"""A batch run as a library call: :func:`run_batch` picks the run's store, drives the
runner through it and says how it went.

The store follows the settings: ``--store postgresql://…`` is Postgres
(``graph.pgstore``); otherwise the run folder, with the graph in this process on one
SQLite checkpoint file (:class:`LocalStore`, here) or, for a run of several graph
processes, in those (``graph.procpool``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prompts
from dataset.runfolder import Manifest, RunFolder
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from graph.procpool import Forked, planned_processes, process_store
from graph.runner import Runner, drive
from graph.store import GraphThreads, Store, ThreadedStore
from llm.client import LLMClient
from llm.factory import run_clients
from llm.preflight import preflight, targets
from state.records import Reference, RunStats
from state.settings import RefedSettings


@dataclass
class RunResult:
    folder: Path
    manifest: Manifest
    stats: RunStats
    failed_references: list[str]
    interrupted: bool = False
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    """Per-endpoint counters of the generator's client (in flight, limit, calls, ...)."""


class LocalStore(ThreadedStore):
    """Ledgers in the run folder, threads run here on its SQLite checkpoints."""


@asynccontextmanager
async def local_store(
    settings: RefedSettings, folder: RunFolder, manifest: Manifest, client: LLMClient | None
) -> AsyncIterator[LocalStore]:
    """The store of a one-process run: its clients made (or ``client``, tests), the graph
    compiled on the folder's checkpoint file (``checkpoints.sqlite``); all closed at the
    end."""
    clients = run_clients(settings, manifest.run_id, client)
    try:
        async with sqlite_saver(folder.checkpoints) as saver:
            threads = GraphThreads(compile_graph(saver), clients, settings)
            yield LocalStore(settings, folder, manifest, threads)
    finally:
        await clients.aclose()


async def check_endpoints(settings: RefedSettings) -> None:
    """The pre-flight check of every endpoint the run will call (``llm.preflight``):
    raises :class:`~llm.stops.PreflightFailed` before the run folder is touched."""
    await preflight(
        targets(settings),
        settings.api_key.get_secret_value(),
        timeout=settings.timeout,
    )


async def run_batch(
    settings: RefedSettings,
    references: Sequence[Reference],
    *,
    client: LLMClient | None = None,
    forked: Sequence[Forked] = (),
) -> RunResult:
    """Run (or resume) a batch over ``references`` with the LLM the settings name.

    ``client`` replaces the generator's client (tests; one process only). ``forked``:
    graph processes forked ahead (``graph.procpool.prefork``) for a run with several;
    any it lacks are started here.
    """
    if client is None:
        if not settings.base_urls:
            raise ValueError("run_batch needs settings.base_url or a client")
        await check_endpoints(settings)
    opened: AbstractAsyncContextManager[Store]
    folder: RunFolder | None = None
    if settings.store:  # Postgres: several workers on one run
        from graph.pgstore import pg_store  # needs the postgres extra

        opened = pg_store(settings, references, client)
    else:
        folder, manifest = RunFolder.open(
            settings,
            prompts.versions(),
            model=settings.model,
            base_url=settings.base_url,
            processes=planned_processes(settings),
        )
        if manifest.processes > 1:
            if client is not None:
                folder.close()
                raise ValueError("a run with several processes calls the LLM itself, not a client")
            opened = process_store(settings, folder, manifest, list(forked))
        else:
            opened = local_store(settings, folder, manifest, client)
    try:
        async with opened as store:
            runner = Runner(store, settings)
            interrupted = await drive(runner, references)
    finally:
        if folder is not None:
            folder.close()
    manifest = store.manifest
    return RunResult(
        settings.out, manifest, manifest.stats, runner.failed, interrupted, store.endpoints()
    )
