"""The claim, lease, heartbeat and exactly-once primitives of graph/pgstore.py, no LLM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.pgcluster import require_postgres_extra

require_postgres_extra()

from dataset.runfolder import RunConfigMismatch  # noqa: E402
from graph.pgstore import PgRunFolder, open_pool, setup_schema  # noqa: E402
from state.records import Reference, ReferenceDone, Sample, Usage  # noqa: E402
from state.settings import RefedSettings  # noqa: E402


def _refs(n: int) -> list[Reference]:
    return [
        Reference(id=f"r{i}", instruction=f"Task {i}?", response=f"Answer {i}.") for i in range(n)
    ]


def _sample(ref: str, i: int) -> Sample:
    return Sample.model_validate(
        {
            "sample_id": f"{ref}-{i}",
            "reference_id": ref,
            "index": i,
            "instruction": f"New task {ref} {i}?",
            "response": "An answer.",
            "status": "accepted",
            "provenance": {
                "run_id": "x",
                "model": "m",
                "feedback_mode": "reference",
                "prompt_versions": {},
                "reference_instruction": "t",
                "reference_response": "a",
            },
        }
    )


async def test_claims_leases_and_exactly_once(pg_dsn: str, tmp_path: Path) -> None:
    settings = RefedSettings(store=pg_dsn, out=tmp_path / "run", seeds="seeds.jsonl")
    refs = _refs(12)
    async with open_pool(pg_dsn, max_size=8) as pool:
        await setup_schema(pool)
        folder, manifest = await PgRunFolder.open_run(
            pool, settings, {"p": "1"}, refs, model="m", base_url=None
        )
        # A second worker joins the same run; a different configuration is refused.
        other, joined = await PgRunFolder.open_run(
            pool, settings, {"p": "1"}, refs, model="m", base_url=None
        )
        assert joined.run_id == manifest.run_id
        with pytest.raises(RunConfigMismatch, match="per_reference"):
            await PgRunFolder.open_run(
                pool,
                settings.model_copy(update={"per_reference": 9}),
                {"p": "1"},
                refs,
                model="m",
                base_url=None,
            )

        # 12 claimers at once, 2 owners: each reference goes to exactly one of them.
        claims = await asyncio.gather(
            *[(other if i % 2 else folder).claim(f"w{i % 2}", 1.0) for i in range(12)]
        )
        ids = [c[0].id for c in claims if c is not None]
        assert sorted(ids) == sorted(r.id for r in refs)
        assert await folder.claim("w0", 1.0) is None  # all leased
        assert await folder.waiting_elsewhere("w0") == 6  # w1 holds half

        # w1 keeps its leases alive; w0 does not, and its references go to w2.
        held_w1 = {c[0].id for i, c in enumerate(claims) if c is not None and i % 2 == 1}
        held_w0 = set(ids) - held_w1
        for _ in range(3):
            await asyncio.sleep(0.5)
            assert await other.renew("w1", 1.0, held_w1) == set()  # nothing lost
        taken = [await folder.claim("w2", 30.0) for _ in range(7)]
        assert taken[-1] is None  # w1's six are still leased
        taken_ids = {t[0].id for t in taken if t is not None}
        assert taken_ids == held_w0
        assert all(t is None or t[1] == 2 for t in taken)  # the second claim on each
        # w0's heartbeat now finds it lost them.
        assert await other.renew("w0", 1.0, held_w0) == held_w0

        # Exactly once: two workers finishing the same reference write its samples once.
        ref = sorted(taken_ids)[0]
        for f in (folder, other):
            f.add_samples([_sample(ref, 0), _sample(ref, 1)])
            f.mark_done(
                ReferenceDone(reference_id=ref, accepted=2, rejected=0, usage=Usage(calls=7))
            )
        assert await folder.commit(ref) is True
        assert await other.commit(ref) is False  # already done: nothing counted twice
        assert folder.accepted == other.accepted == 2 and other.references_done == 1
        assert folder.usage.calls == 7 and other.usage.calls == 0  # usage counted once
        async with pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM refed_samples")
            row = await cur.fetchone()
        assert row is not None and row["n"] == 2

        # Release gives up what is not done, at once.
        assert await folder.release("w2") == 5
        assert await folder.remaining() == 11
        counts = await folder.export()
        assert counts["samples.jsonl"] == 2 and counts["references.jsonl"] == 1
        assert (tmp_path / "run" / "samples.jsonl").read_text().count("\n") == 2
