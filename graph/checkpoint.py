"""Checkpointers for the runner and the service, with our record types allow-listed."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
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


@asynccontextmanager
async def sqlite_saver(path: Path) -> AsyncIterator[AsyncSqliteSaver]:
    """An AsyncSqliteSaver on ``path`` in WAL mode (one connection per process)."""
    async with aiosqlite.connect(str(path)) as conn:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        saver = AsyncSqliteSaver(conn, serde=serializer())
        await saver.setup()
        yield saver
