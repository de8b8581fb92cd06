"""The default store: the run folder's files, and the graph in this process on one SQLite
checkpoint file (``checkpoints.sqlite``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dataset.runfolder import Manifest, RunFolder
from graph.builder import compile_graph
from graph.checkpoint import sqlite_saver
from graph.store import GraphThreads, ThreadedStore
from llm.client import LLMClient
from llm.factory import run_clients
from state.settings import RefedSettings


class LocalStore(ThreadedStore):
    """Ledgers in the run folder, threads run here on its SQLite checkpoints."""


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
