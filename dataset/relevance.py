"""The relevance check: does an answer address its request? Cosine similarity of their
all-MiniLM-L6-v2 embeddings against a floor (``relevance_min``). It catches the answer
that is fluent but about something else, which a small judge misses.

The embedding runs in a worker thread (one at a time: the model is not shared across
threads safely), so the event loop goes on serving other candidates.
"""

from __future__ import annotations

import asyncio
import threading

from dataset.embeddings import similarity
from state.records import QualityFilter

_LOCK = threading.Lock()


def _similarity(request: str, answer: str) -> float:
    with _LOCK:
        return similarity(request, answer)


async def relevance(request: str, answer: str) -> float:
    return await asyncio.to_thread(_similarity, request, answer)


async def off_topic(request: str, answer: str, floor: float) -> QualityFilter | None:
    """A filter record when the answer's similarity with the request is under ``floor``."""
    score = await relevance(request, answer)
    if score >= floor:
        return None
    return QualityFilter(
        name="off-topic",
        method="cosine of all-MiniLM-L6-v2 embeddings with the request",
        score=round(score, 3),
        field="response",
        match_text=answer if len(answer) <= 300 else answer[:299] + "…",
        source="check",
    )
