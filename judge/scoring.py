"""The judge as a metric: pointwise scores and pairwise verdicts on a criteria set.

A record is a mapping from the criteria set's field names to text. The judge is told
the task and each criterion in plain words (HEAP's evaluator-instruction form), shown
the fields a criterion looks at, and answers in JSON by schema.

Pointwise: one call per record scoring every criterion (``score_record``, the
default: cheapest), or one call per criterion (``per_criterion=True``, one
instruction-style prompt per (task, criterion); the record's fields come first in the
prompt, so the server's prefix cache shares them across the criteria). Where the
server returns token log-probabilities, each score is the probability-weighted mean
over the scale's score tokens at the score's position in the answer, a continuous
value; otherwise it is the score the model wrote. ``CriterionScore.method`` says which.

Pairwise: which of two texts is better, asked in both orders to cancel position
bias, with ties (``compare``).

Everything goes through :class:`llm.client.LLMClient`; failures raise
:class:`llm.client.LLMError` carrying the usage spent.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import prompts
from llm.client import LLMClient, LLMError, derive_seed
from state.context import RefedContext
from state.criteria import CriteriaSet, Criterion
from state.judgements import (
    CriterionScore,
    PairwiseVerdict,
    PointwiseResult,
    Vote,
    combined_method,
    winner_of,
)
from state.llm_outputs import joint_schema, pairwise_schema, pointwise_schema
from state.records import Usage

V = TypeVar("V")
Record = Mapping[str, str]


@dataclass(frozen=True)
class JudgeOptions:
    """How the judge is asked."""

    temperature: float = 0.0
    logprobs: int = 5
    """Top log-probabilities asked per token (raised to the scale's size); 0: none."""
    rationale_chars: int = 300
    """Cap on the rationale; 0 asks for scores only."""
    max_field_chars: int = prompts.MAX_FIELD_CHARS
    seed: int = 0
    sampling: tuple[tuple[str, Any], ...] = ()
    """Further sampling parameters (top_p, repetition_penalty, ...) as (name, value) pairs."""

    @classmethod
    def from_context(cls, ctx: RefedContext) -> JudgeOptions:
        return cls(
            temperature=ctx.judge_temperature,
            logprobs=ctx.judge_logprobs,
            rationale_chars=ctx.judge_rationale_chars,
            seed=ctx.seed,
            sampling=tuple(sorted(ctx.judge_sampling().items())),
        )

    def top_logprobs(self, criteria: Sequence[Criterion]) -> int | None:
        if self.logprobs <= 0:
            return None
        return max(self.logprobs, *(len(c.points) for c in criteria))

    def max_tokens(self, n_scores: int) -> int:
        """Room for the rationale (a token can be one character) and the JSON around it."""
        return self.rationale_chars + 24 + 12 * n_scores


@dataclass
class Judged(Generic[V]):
    value: V
    usage: Usage


# --- prompt pieces ----------------------------------------------------------------------


def _scale(c: Criterion) -> str:
    lo, hi = c.scale
    return f"{lo} to {hi}"


def criterion_text(c: Criterion, *, scale: bool = True) -> str:
    """One criterion in plain words, with its scale and what its ends mean."""
    if not scale:
        return f"{c.name}: {c.definition}"
    lo, hi = c.scale
    text = f"{c.name} (score {_scale(c)}): {c.definition}"
    ends = [f"{lo} = {c.low.rstrip('.')}" if c.low else ""]
    ends += [f"{hi} = {c.high.rstrip('.')}" if c.high else ""]
    ends = [e for e in ends if e]
    return f"{text} ({'; '.join(ends)})" if ends else text


def criteria_block(criteria: Sequence[Criterion], *, scale: bool = True) -> str:
    if len(criteria) == 1:
        return f"Criterion: {criterion_text(criteria[0], scale=scale)}"
    lines = "\n".join(f"- {criterion_text(c, scale=scale)}" for c in criteria)
    head = "Criteria, each on its own scale" if scale else "Criteria"
    return f"{head}:\n{lines}"


def fields_block(cset: CriteriaSet, names: Sequence[str], record: Record, limit: int) -> str:
    parts = []
    for name in names:
        if name not in record:
            raise KeyError(f"record has no field {name!r} (criteria set {cset.name!r} needs it)")
        text = prompts.clip(str(record[name]).strip(), limit)
        parts.append(f"{cset.fields[name]}:\n<{name}>\n{text}\n</{name}>")
    return "\n\n".join(parts)


def _rationale_ask(opts: JudgeOptions, about: str) -> str:
    n = opts.rationale_chars
    return f'"rationale", a brief reason (at most {n} characters) {about}, then '


def pointwise_answer(criteria: Sequence[Criterion], opts: JudgeOptions) -> str:
    if len(criteria) == 1:
        scores = f'"score", an integer from {_scale(criteria[0])}'
        about = f"for the score on {criteria[0].name}"
    else:
        named = ", ".join(f"{c.name} ({_scale(c)})" for c in criteria)
        scores = f"one integer score per criterion under its name: {named}"
        about = "for the scores"
    if opts.rationale_chars <= 0:
        return f"Reply in JSON with {scores}; nothing else."
    return f"Reply in JSON with {_rationale_ask(opts, about)}{scores}."


def render_pointwise(
    cset: CriteriaSet, criteria: Sequence[Criterion], record: Record, opts: JudgeOptions
) -> list[dict[str, str]]:
    """The messages asking for ``criteria`` on ``record`` (only the fields they look at)."""
    return prompts.load("judge_pointwise").render(
        task=cset.task,
        fields=fields_block(cset, cset.fields_for(list(criteria)), record, opts.max_field_chars),
        criteria=criteria_block(criteria),
        answer=pointwise_answer(criteria, opts),
    )


def render_pairwise(
    cset: CriteriaSet,
    criteria: Sequence[Criterion],
    record: Record,
    a: str,
    b: str,
    opts: JudgeOptions,
) -> list[dict[str, str]]:
    """The messages asking which of ``a`` and ``b`` (the target field) is better."""
    context = [f for f in cset.fields_for(list(criteria)) if f != cset.target]
    label = cset.fields[cset.target]
    limit = opts.max_field_chars
    candidates = "\n\n".join(
        f"Candidate {tag} ({label.lower()}):\n<{tag.lower()}>\n{prompts.clip(text.strip(), limit)}"
        f"\n</{tag.lower()}>"
        for tag, text in (("A", a), ("B", b))
    )
    which = "this criterion" if len(criteria) == 1 else "these criteria, taken together"
    about = "comparing the two"
    winner = '"winner": "A", "B" or "tie"'
    if opts.rationale_chars <= 0:
        answer = f"Which candidate is better by {which}? Reply in JSON with {winner}; nothing else."
    else:
        answer = (
            f"Which candidate is better by {which}? Reply in JSON with "
            f"{_rationale_ask(opts, about)}{winner}."
        )
    return prompts.load("judge_pairwise").render(
        task=cset.task,
        fields=fields_block(cset, context, record, limit) if context else "",
        candidates=candidates,
        criteria=criteria_block(criteria, scale=False),
        answer=answer,
    )


# --- reading scores -------------------------------------------------------------------------


def expected_score(
    logprobs: Sequence[Mapping[str, Any]] | None, key: str, points: Sequence[int]
) -> tuple[float, dict[int, float]] | None:
    """The probability-weighted score for JSON key ``key``, from OpenAI ``logprobs.content``.

    Finds the token holding the key's value (the last ``"key": <digit>`` in the answer, so a
    rationale quoting the key cannot fool it), takes that token and its top alternatives
    that are score tokens on the scale (one digit, surrounding whitespace allowed),
    renormalises their probabilities over the scale and returns the mean with the
    distribution. None when there are no log-probabilities or the digit is not a token by
    itself at that position.
    """
    if not logprobs:
        return None
    tokens = [str(t.get("token", "")) for t in logprobs]
    text = "".join(tokens)
    found = list(re.finditer(r'(?<!\\)"' + re.escape(key) + r'"\s*:\s*(\d)', text))
    if not found:
        return None
    pos = found[-1].start(1)
    ends = list(itertools.accumulate(len(t) for t in tokens))
    at = bisect.bisect_right(ends, pos)  # the token whose span holds ``pos``
    entry, token = logprobs[at], tokens[at]
    if token.strip() != text[pos]:
        return None
    allowed = set(points)
    mass: dict[int, float] = {}
    seen: set[str] = set()
    options = [entry, *(entry.get("top_logprobs") or [])]
    for option in options:
        tok = str(option.get("token", ""))
        logprob = option.get("logprob")
        if tok in seen or logprob is None:
            continue
        seen.add(tok)
        digit = tok.strip()
        if len(digit) == 1 and digit.isdigit() and int(digit) in allowed:
            mass[int(digit)] = mass.get(int(digit), 0.0) + math.exp(float(logprob))
    total = sum(mass.values())
    if total <= 0:
        return None
    probs = {k: mass[k] / total for k in sorted(mass)}
    return sum(k * p for k, p in probs.items()), probs


def read_score(
    logprobs: Sequence[Mapping[str, Any]] | None, key: str, c: Criterion, sampled: int
) -> CriterionScore:
    found = expected_score(logprobs, key, c.points)
    if found is None:
        return CriterionScore(score=float(sampled), sampled=sampled, method="sampled")
    value, probs = found
    return CriterionScore(score=value, sampled=sampled, method="logprob", probs=probs)


# --- pointwise --------------------------------------------------------------------------------


async def score_together(
    client: LLMClient,
    cset: CriteriaSet,
    record: Record,
    opts: JudgeOptions,
    *,
    seed_parts: Sequence[object] = (),
    task: str = "judge",
) -> Judged[PointwiseResult]:
    """Every criterion of ``cset`` in one call."""
    criteria = cset.criteria
    schema = joint_schema(tuple((c.name, c.points) for c in criteria), opts.rationale_chars)
    reply = await client.structured(
        render_pointwise(cset, criteria, record, opts),
        schema,
        task=task,
        temperature=opts.temperature,
        sampling=dict(opts.sampling),
        max_tokens=opts.max_tokens(len(criteria)),
        seed=derive_seed(opts.seed, *seed_parts, "judge"),
        logprobs=opts.top_logprobs(criteria),
    )
    scores = {
        c.name: read_score(reply.logprobs, c.name, c, int(getattr(reply.value, c.name)))
        for c in criteria
    }
    result = PointwiseResult(
        criteria=cset.name,
        scores=scores,
        rationale=str(getattr(reply.value, "rationale", "")),
        method=combined_method([s.method for s in scores.values()]),
    )
    return Judged(result, reply.usage)


async def score_one(
    client: LLMClient,
    cset: CriteriaSet,
    criterion: Criterion,
    record: Record,
    opts: JudgeOptions,
    *,
    seed_parts: Sequence[object] = (),
    task: str = "judge",
) -> Judged[tuple[CriterionScore, str]]:
    """One criterion in its own call."""
    reply = await client.structured(
        render_pointwise(cset, (criterion,), record, opts),
        pointwise_schema(criterion.points, opts.rationale_chars),
        task=f"{task}:{criterion.name}",
        temperature=opts.temperature,
        sampling=dict(opts.sampling),
        max_tokens=opts.max_tokens(1),
        seed=derive_seed(opts.seed, *seed_parts, "judge", criterion.name),
        logprobs=opts.top_logprobs([criterion]),
    )
    score = read_score(reply.logprobs, "score", criterion, int(reply.value.model_dump()["score"]))
    return Judged((score, str(getattr(reply.value, "rationale", ""))), reply.usage)


async def _gather(coros: Sequence[Any]) -> tuple[list[Any], Usage]:
    """Run calls together; on any failure raise the first LLMError with all usage spent."""
    results = await asyncio.gather(*coros, return_exceptions=True)
    usage = Usage()
    errors: list[BaseException] = []
    values: list[Any] = []
    for r in results:
        if isinstance(r, LLMError):
            usage += r.usage
            errors.append(r)
        elif isinstance(r, BaseException):
            raise r
        else:
            usage += r.usage
            values.append(r.value)
    if errors:
        first = errors[0]
        assert isinstance(first, LLMError)
        raise LLMError(first.kind, first.message, usage)
    return values, usage


async def score_record(
    client: LLMClient,
    cset: CriteriaSet,
    record: Record,
    opts: JudgeOptions,
    *,
    per_criterion: bool = False,
    seed_parts: Sequence[object] = (),
    task: str = "judge",
) -> Judged[PointwiseResult]:
    """Score ``record`` on every criterion of ``cset``: one call, or one per criterion."""
    if not per_criterion or len(cset.criteria) == 1:
        if len(cset.criteria) == 1:
            judged = await score_one(
                client, cset, cset.criteria[0], record, opts, seed_parts=seed_parts, task=task
            )
            score, rationale = judged.value
            result = PointwiseResult(
                criteria=cset.name,
                scores={cset.criteria[0].name: score},
                rationale=rationale,
                method=score.method,
            )
            return Judged(result, judged.usage)
        return await score_together(client, cset, record, opts, seed_parts=seed_parts, task=task)
    values, usage = await _gather(
        [
            score_one(client, cset, c, record, opts, seed_parts=seed_parts, task=task)
            for c in cset.criteria
        ]
    )
    scores = {c.name: v[0] for c, v in zip(cset.criteria, values, strict=True)}
    rationale = "\n".join(f"{c.name}: {v[1]}" for c, v in zip(cset.criteria, values, strict=True))
    result = PointwiseResult(
        criteria=cset.name,
        scores=scores,
        rationale=rationale if opts.rationale_chars > 0 else "",
        method=combined_method([s.method for s in scores.values()]),
    )
    return Judged(result, usage)


# --- pairwise ---------------------------------------------------------------------------------

_AS_VOTE: dict[tuple[int, str], Vote] = {
    (0, "A"): "first",
    (0, "B"): "second",
    (1, "A"): "second",
    (1, "B"): "first",
}


async def compare(
    client: LLMClient,
    cset: CriteriaSet,
    record: Record,
    first: str,
    second: str,
    opts: JudgeOptions,
    *,
    criterion: Criterion | None = None,
    seed_parts: Sequence[object] = (),
    task: str = "pairwise",
) -> Judged[PairwiseVerdict]:
    """Which of ``first`` and ``second`` (texts for the set's target field) is better.

    Asked twice, concurrently: ``first`` shown as A, then ``second`` shown as A. On one
    criterion, or on all of the set's together (``criterion=None``). Identical texts
    make a tie without a call.
    """
    name = criterion.name if criterion is not None else None
    if first.strip() == second.strip():
        return Judged(PairwiseVerdict(winner="tie", votes=(), criterion=name), Usage())
    criteria = (criterion,) if criterion is not None else cset.criteria
    schema = pairwise_schema(opts.rationale_chars)

    async def ask(order: int) -> Judged[tuple[Vote, str]]:
        a, b = (first, second) if order == 0 else (second, first)
        reply = await client.structured(
            render_pairwise(cset, criteria, record, a, b, opts),
            schema,
            task=task,
            temperature=opts.temperature,
            sampling=dict(opts.sampling),
            max_tokens=opts.max_tokens(1),
            seed=derive_seed(opts.seed, *seed_parts, "pairwise", name or "all", order),
        )
        winner = str(reply.value.model_dump()["winner"])
        vote: Vote = "tie" if winner == "tie" else _AS_VOTE[(order, winner)]
        return Judged((vote, str(getattr(reply.value, "rationale", ""))), reply.usage)

    values, usage = await _gather([ask(0), ask(1)])
    votes: tuple[Vote, ...] = tuple(v[0] for v in values)
    rationale = ""
    if opts.rationale_chars > 0:
        rationale = f"first shown as A: {values[0][1]}\nsecond shown as A: {values[1][1]}"
    verdict = PairwiseVerdict(
        winner=winner_of(votes), votes=votes, criterion=name, rationale=rationale
    )
    return Judged(verdict, usage)
