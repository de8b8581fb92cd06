"""Reference-level feedback cached across requests (SQLite).

Keyed by the reference's content, the model and the version of the prompts that
produce feedback, so a second request for the same reference makes no analysis or
distillation call, and a prompt or model change never serves stale feedback.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import aiosqlite

import prompts
from state.records import Reference, ReferenceFeedback, content_id

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


class FeedbackCache:
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
