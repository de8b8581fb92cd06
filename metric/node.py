"""The metric-judge node's encoder backend (``judge_backend = "encoder"``).

Scores a record on every criterion of the configured criteria set with the trained
metric model (``judge_encoder``: a saved folder, run in-process, or the URL of a vLLM server
serving it), and compares two responses by the same model. No LLM call, no token usage.
Scores come back with ``method`` ``encoder`` and a rationale naming the backend.
"""

from __future__ import annotations

import asyncio

from state.context import RefedContext
from state.criteria import CriteriaSet
from state.judgements import PairwiseVerdict, PointwiseResult


async def encoder_score(
    ctx: RefedContext, cset: CriteriaSet, record: dict[str, str]
) -> PointwiseResult:
    """``record`` scored by the metric encoder (errors raise; the node records them)."""
    from metric.serving import metric_judge_for

    judge = await asyncio.to_thread(metric_judge_for, ctx.judge_encoder)
    return await asyncio.to_thread(judge.score_record, cset, record)


async def encoder_compare(
    ctx: RefedContext, cset: CriteriaSet, record: dict[str, str], first: str, second_mean: float
) -> PairwiseVerdict:
    """The improved response (already scored ``second_mean``) against ``first``."""
    from metric.evaluate import vote

    before = await encoder_score(ctx, cset, {**record, cset.target: first})
    winner = vote(before.mean, second_mean)
    return PairwiseVerdict(
        winner=winner,
        votes=(winner,),
        rationale=f"metric encoder: first {before.mean:.3f}, improved {second_mean:.3f}",
    )
