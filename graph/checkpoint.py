"""Checkpointers for the runner and the service, with our record types allow-listed.

:func:`sqlite_saver` gives :class:`InlineSqliteSaver` by default: langgraph's own
``SqliteSaver`` (the same tables, rows and serialisation as ``AsyncSqliteSaver``,
so either reads the other's files) with its async methods running the sync ones
right on the event loop. With WAL and ``synchronous=NORMAL`` a checkpoint write
is a few tens of microseconds and never waits for the disk, which is cheaper than
aiosqlite's hop to its thread and back for every statement (BENCHMARKS.md).
A commit is in the WAL before the call returns, so ``kill -9`` loses nothing that
was written (a power cut can lose the last commits, as with aiosqlite here).
"""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel

import state.graph_state
import state.records


def _state_types() -> list[tuple[str, str]]:
    out = []
    for module in (state.records, state.graph_state):
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseModel)
                and obj.__module__ == module.__name__
            ):
                out.append((module.__name__, name))
    return out


def serializer() -> JsonPlusSerializer:
    """Checkpoint serde that deserializes only our own state types (and the built-in safe ones)."""
    return JsonPlusSerializer(allowed_msgpack_modules=_state_types())


class InlineSqliteSaver(SqliteSaver):
    """``SqliteSaver`` usable from async code: each async method runs the sync one inline.

    Meant for one event loop per process (the runner, the service); every statement is
    short (WAL, no fsync per commit), so running it on the loop costs less than a hop to
    a thread would.
    """

    batch_commits = True
    """Commit once per event-loop turn instead of once per statement (see ``cursor``)."""

    _commit_pending = False
    _commit_error: sqlite3.Error | None = None
    """A deferred commit that failed (a full disk): raised by the next write."""

    @contextmanager
    def cursor(self, transaction: bool = True) -> Iterator[sqlite3.Cursor]:
        """As ``SqliteSaver.cursor``, but the commit of a write is deferred to the end of
        the current event-loop turn, so the writes of one turn share one commit (and one
        WAL append). A ``kill -9`` can lose only the writes of the turn it hit, the same
        as being killed a moment earlier; no write is ever half done."""
        if self._commit_error is not None:
            raise self._commit_error
        with self.lock:
            self.setup()
            cur = self.conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
                if transaction:
                    self._commit_soon()

    def _commit_soon(self) -> None:
        if not self.batch_commits:
            self.conn.commit()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.conn.commit()
            return
        if not self._commit_pending:
            self._commit_pending = True
            loop.call_soon(self._deferred_commit)

    def _deferred_commit(self) -> None:
        try:
            self.commit()
        except sqlite3.Error as exc:  # no caller to tell now: the next write raises it
            self._commit_error = exc

    def commit(self) -> None:
        """Commit what is pending now (also done when the saver is closed)."""
        with self.lock:
            self._commit_pending = False
            self.conn.commit()

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, Any]:
        return self.get_delta_channel_history(config=config, channels=channels)


@asynccontextmanager
async def sqlite_saver(
    path: Path, *, inline: bool = True
) -> AsyncIterator[InlineSqliteSaver | AsyncSqliteSaver]:
    """A checkpointer on ``path`` in WAL mode (one connection per process).

    ``inline=False`` gives langgraph's ``AsyncSqliteSaver`` (aiosqlite) on the same file.
    """
    if not inline:
        async with aiosqlite.connect(str(path)) as conn:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            saver = AsyncSqliteSaver(conn, serde=serializer())
            await saver.setup()
            yield saver
        return
    with _connect(path) as conn:
        inline_saver = InlineSqliteSaver(conn, serde=serializer())
        inline_saver.setup()
        try:
            yield inline_saver
        finally:
            inline_saver.commit()


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        yield conn
    finally:
        conn.close()
