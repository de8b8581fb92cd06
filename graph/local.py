"""The default store: the run folder's files, and the graph in this process on one SQLite
checkpoint file (``checkpoints.sqlite``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dataset.runfolder import Manifest, RunFolder
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from graph.store import GraphThreads, OnUpdate, Store
from llm.client import LLMClient, Meter
from llm.factory import run_clients
from state.records import Reference
from state.settings import RefedSettings


class LocalStore(Store):
    """Ledgers in the run folder, threads run here on its SQLite checkpoints."""

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


@asynccontextmanager
async def local_store(
    settings: RefedSettings, folder: RunFolder, manifest: Manifest, client: LLMClient | None
) -> AsyncIterator[LocalStore]:
    """The store of a one-process run: its clients made (or ``client``, tests), the graph
    compiled on the folder's checkpoint file; all closed at the end."""
    clients = run_clients(settings, manifest.run_id, client)
    try:
        async with sqlite_saver(folder.checkpoints) as saver:
            threads = GraphThreads(compile_graph(saver), clients, settings)
            yield LocalStore(settings, folder, manifest, threads)
    finally:
        await clients.aclose()
