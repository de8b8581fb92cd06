"""The service's feedback cache in Postgres (``REFED_STORE``), shared by service replicas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serve.feedback_cache import PgFeedbackCache, feedback_cache
from state.records import InstructionAnalysis, Reference, ReferenceFeedback, ResponseAnalysis
from state.settings import RefedSettings

from .conftest import REPO, FakeServerProc, free_port, wait_http
from .pgcluster import require_postgres_extra

psycopg = require_postgres_extra()

PAIR = {
    "instruction": "How do I keep cut apples from turning brown?",
    "response": "Dip the slices in water with a little lemon juice: the acid slows the enzyme "
    "that browns them. Pat them dry and keep them cold in a closed box.",
}


def _feedback(reference_id: str, note: str) -> ReferenceFeedback:
    return ReferenceFeedback(
        reference_id=reference_id,
        instruction=InstructionAnalysis(subject_areas=[note], skills=["care"]),
        response=ResponseAnalysis(content=note, improvements=[note]),
        instruction_guidance=[note],
        response_guidance=[note],
    )


async def test_pg_cache_keys_by_content_model_and_prompts(pg_dsn: str, tmp_path: Path) -> None:
    assert isinstance(feedback_cache(RefedSettings(store=pg_dsn), "m"), PgFeedbackCache)
    assert not isinstance(
        feedback_cache(RefedSettings(service_db=tmp_path / "c.sqlite"), "m"), PgFeedbackCache
    )
    ref = Reference(id="r1", **PAIR)
    same_text = Reference(id="other-id", **PAIR)
    cache = PgFeedbackCache(pg_dsn, "model-a")
    await cache.open()
    try:
        assert await cache.get(ref) is None
        await cache.put(ref, _feedback("r1", "kitchen"))
        hit = await cache.get(same_text)  # keyed by content: another id, the same pair
        assert hit is not None and hit.reference_id == "other-id"
        assert hit.instruction.subject_areas == ["kitchen"]
        by_id = await cache.by_reference_id("r1")
        assert by_id is not None and by_id.response_guidance == ["kitchen"]
        await cache.put(ref, _feedback("r1", "fruit"))  # replaced, not duplicated
        again = await cache.get(ref)
        assert again is not None and again.instruction.subject_areas == ["fruit"]
    finally:
        await cache.close()
    other_model = PgFeedbackCache(pg_dsn, "model-b")
    await other_model.open()
    try:
        assert await other_model.get(ref) is None  # another model never gets it
    finally:
        await other_model.close()
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM refed_feedback_cache").fetchone() == (1,)


class Replica:
    """``python -m serve`` on the fake server with the cache in Postgres."""

    def __init__(self, base_url: str, dsn: str, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serve",
                "--base-url",
                base_url,
                "--model",
                "fake",
                "--port",
                str(self.port),
                "--service-db",
                str(tmp / f"{name}.sqlite"),
            ],
            cwd=REPO,
            stdout=(tmp / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "REFED_STORE": dsn, "REFED_MAX_SAMPLES_PER_REQUEST": "2"},
        )
        wait_http(self.url + "/healthz", timeout=60, proc=self.proc)

    def synthesize(self) -> dict[str, object]:
        res = httpx.post(self.url + "/v1/synthesize", json={**PAIR, "samples": 1}, timeout=60)
        assert res.status_code == 200, res.text
        return dict(res.json())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


@pytest.mark.slow
def test_service_replicas_share_the_postgres_cache(
    fake_server: FakeServerProc, pg_dsn: str, tmp_path: Path
) -> None:
    first = Replica(fake_server.base_url, pg_dsn, tmp_path, "a")
    second = Replica(fake_server.base_url, pg_dsn, tmp_path, "b")
    try:
        miss = first.synthesize()
        assert miss["feedback_cached"] is False
        assert miss["usage"]["feedback_calls"] == 3  # type: ignore[index]
        # Another replica, the same reference: the feedback comes from Postgres.
        hit = second.synthesize()
        assert hit["feedback_cached"] is True
        assert hit["usage"]["feedback_calls"] == 0  # type: ignore[index]
        fb = httpx.get(second.url + f"/v1/feedback/{miss['reference_id']}")
        assert fb.status_code == 200, fb.text
        assert fb.json()["feedback"]["reference_id"] == miss["reference_id"]
    finally:
        first.stop()
        second.stop()
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT model FROM refed_feedback_cache").fetchall()
    assert rows == [("fake",)]
