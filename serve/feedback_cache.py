"""Reference-level feedback cached across requests (SQLite, or Postgres with ``store``).

Keyed by the reference's content, the model and the version of the prompts that
produce feedback, so a second request for the same reference makes no analysis or
distillation call, and a prompt or model change never serves stale feedback.

:func:`feedback_cache` picks the implementation from the settings: ``store``
(``postgresql://…``) gives :class:`PgFeedbackCache`, shared by every service replica on
that database; otherwise :class:`FeedbackCache` on ``service_db`` (SQLite, one host).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

import prompts
from state.records import Reference, ReferenceFeedback, content_id
from state.settings import RefedSettings

FEEDBACK_PROMPTS = ("analyze_instruction", "analyze_response", "distill_feedback")


def feedback_prompt_version() -> str:
    joined = "|".join(prompts.load(name).version for name in FEEDBACK_PROMPTS)
    return hashlib.sha256(joined.encode()).hexdigest()[:12]


_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    content_hash TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    reference_id TEXT NOT NULL,
    feedback TEXT NOT NULL,
    created TEXT NOT NULL DEFAULT (datetime('now')),
    PRIMARY KEY (content_hash, model, prompt_version)
);
CREATE INDEX IF NOT EXISTS feedback_by_reference ON feedback (reference_id);
"""


class FeedbackStore(Protocol):
    """What the service needs of a feedback cache."""

    model: str
    prompt_version: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def get(self, ref: Reference) -> ReferenceFeedback | None: ...
    async def put(self, ref: Reference, feedback: ReferenceFeedback) -> None: ...
    async def by_reference_id(self, reference_id: str) -> ReferenceFeedback | None: ...


def feedback_cache(settings: RefedSettings, model: str) -> FeedbackStore:
    """Postgres when ``settings.store`` is set, else SQLite at ``settings.service_db``."""
    if settings.store:
        return PgFeedbackCache(settings.store, model)
    return FeedbackCache(settings.service_db, model)


class FeedbackCache:
    """The SQLite cache (one service process or host)."""

    def __init__(self, path: Path, model: str) -> None:
        self.path = path
        self.model = model
        self.prompt_version = feedback_prompt_version()
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(str(self.path))
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.executescript(_SCHEMA)
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "FeedbackCache.open() first"
        return self._db

    async def get(self, ref: Reference) -> ReferenceFeedback | None:
        key = content_id(ref.instruction, ref.response, length=64)
        async with self.db.execute(
            "SELECT feedback FROM feedback WHERE content_hash=? AND model=? AND prompt_version=?",
            (key, self.model, self.prompt_version),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        feedback = ReferenceFeedback.model_validate_json(row[0])
        return feedback.model_copy(update={"reference_id": ref.id})

    async def put(self, ref: Reference, feedback: ReferenceFeedback) -> None:
        key = content_id(ref.instruction, ref.response, length=64)
        await self.db.execute(
            "INSERT OR REPLACE INTO feedback (content_hash, model, prompt_version, reference_id,"
            " feedback) VALUES (?, ?, ?, ?, ?)",
            (key, self.model, self.prompt_version, ref.id, feedback.model_dump_json()),
        )
        await self.db.commit()

    async def by_reference_id(self, reference_id: str) -> ReferenceFeedback | None:
        async with self.db.execute(
            "SELECT feedback FROM feedback WHERE reference_id=? AND model=? AND prompt_version=?"
            " ORDER BY created DESC LIMIT 1",
            (reference_id, self.model, self.prompt_version),
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else ReferenceFeedback.model_validate_json(row[0])


_PG_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS refed_feedback_cache (
        content_hash text NOT NULL,
        model text NOT NULL,
        prompt_version text NOT NULL,
        reference_id text NOT NULL,
        feedback jsonb NOT NULL,
        created timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (content_hash, model, prompt_version)
    )""",
    """CREATE INDEX IF NOT EXISTS refed_feedback_cache_by_reference
        ON refed_feedback_cache (reference_id, model, prompt_version, created DESC)""",
)
_PG_SCHEMA_LOCK = 0x726566656466  # pg_advisory_lock key while creating the table


class PgFeedbackCache:
    """The same cache in Postgres (``pip install -e '.[postgres]'``): shared by replicas."""

    def __init__(self, dsn: str, model: str, *, max_connections: int = 8) -> None:
        self.dsn = dsn
        self.model = model
        self.prompt_version = feedback_prompt_version()
        self.max_connections = max_connections
        self._pool: Any = None

    async def open(self) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=self.max_connections,
            open=False,
            kwargs={"autocommit": True, "row_factory": dict_row},
        )
        await pool.open(wait=True, timeout=30)
        self._pool = pool
        async with pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock(%s)", (_PG_SCHEMA_LOCK,))
            try:
                for statement in _PG_SCHEMA:
                    await conn.execute(statement)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_PG_SCHEMA_LOCK,))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        assert self._pool is not None, "PgFeedbackCache.open() first"
        async with self._pool.connection() as conn:
            cur = await conn.execute(sql, params)
            row: dict[str, Any] | None = await cur.fetchone()
            return row

    async def get(self, ref: Reference) -> ReferenceFeedback | None:
        key = content_id(ref.instruction, ref.response, length=64)
        row = await self._one(
            "SELECT feedback FROM refed_feedback_cache WHERE content_hash = %s AND model = %s"
            " AND prompt_version = %s",
            (key, self.model, self.prompt_version),
        )
        if row is None:
            return None
        feedback = ReferenceFeedback.model_validate(row["feedback"])
        return feedback.model_copy(update={"reference_id": ref.id})

    async def put(self, ref: Reference, feedback: ReferenceFeedback) -> None:
        from psycopg.types.json import Jsonb

        key = content_id(ref.instruction, ref.response, length=64)
        await self._one(
            "INSERT INTO refed_feedback_cache (content_hash, model, prompt_version,"
            " reference_id, feedback) VALUES (%s, %s, %s, %s, %s)"
            " ON CONFLICT (content_hash, model, prompt_version) DO UPDATE"
            " SET reference_id = EXCLUDED.reference_id, feedback = EXCLUDED.feedback,"
            " created = now() RETURNING 1",
            (key, self.model, self.prompt_version, ref.id, Jsonb(feedback.model_dump(mode="json"))),
        )

    async def by_reference_id(self, reference_id: str) -> ReferenceFeedback | None:
        row = await self._one(
            "SELECT feedback FROM refed_feedback_cache WHERE reference_id = %s AND model = %s"
            " AND prompt_version = %s ORDER BY created DESC LIMIT 1",
            (reference_id, self.model, self.prompt_version),
        )
        return None if row is None else ReferenceFeedback.model_validate(row["feedback"])
