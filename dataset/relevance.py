"""The relevance check: does an answer address its request? Cosine similarity of their
all-MiniLM-L6-v2 embeddings against a floor (``relevance_min``). It catches the answer
that is fluent but about something else, which a small judge misses.

The embedding runs in a worker thread (one at a time: the model is not shared across
threads safely), so the event loop goes on serving other candidates.
"""

from __future__ import annotations

import asyncio
import threading

from dataset.embeddings import BaseModelMissing, base_folder, similarity
from state.records import QualityFilter

_LOCK = threading.Lock()


def require_model(relevance_min: float | None) -> None:
    """With a relevance check (``relevance_min`` set), its embedding model must be
    installed: :class:`BaseModelMissing` says so before a run starts."""
    if relevance_min is not None:
        try:
            base_folder()
        except BaseModelMissing as exc:
            raise BaseModelMissing(
                f"relevance_min is set, but {exc}; or unset relevance_min"
            ) from None


def _similarity(request: str, answer: str) -> float:
    with _LOCK:
        return similarity(request, answer)


async def relevance(request: str, answer: str) -> float:
    return await asyncio.to_thread(_similarity, request, answer)


DRIFT_SLACK = 0.05
"""How much less similar to its request a refined answer may be than the answer before it."""


def _off_topic(answer: str, score: float, method: str) -> QualityFilter:
    return QualityFilter(
        name="off-topic",
        method=method,
        score=round(score, 3),
        field="response",
        match_text=answer if len(answer) <= 300 else answer[:299] + "…",
        source="check",
    )


async def off_topic(
    request: str, answer: str, floor: float, before: str | None = None
) -> QualityFilter | None:
    """A filter record when the answer's similarity with the request is under ``floor``, or
    (a refinement: ``before`` is the answer it rewrote) more than :data:`DRIFT_SLACK` under
    the similarity of the answer before it."""
    score = await relevance(request, answer)
    if score < floor:
        return _off_topic(answer, score, "cosine of all-MiniLM-L6-v2 embeddings with the request")
    if before is not None:
        was = await relevance(request, before)
        if score < was - DRIFT_SLACK:
            return _off_topic(answer, score, f"drifted from the request (was {was:.3f})")
    return None
