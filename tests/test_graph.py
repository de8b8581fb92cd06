"""The compiled graph end to end on a scripted model: counts per mode, revisions, failures."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import BaseMessage
from langgraph.checkpoint.memory import InMemorySaver

from graph.builder import compile_graph
from llm.client import LLMClient
from llm.factory import register_client, unregister_client
from state.context import RefedContext
from state.records import Candidate, Reference, Usage
from tests.scripted import Script, ScriptedChatModel

REF = Reference.from_pair(
    "How do I keep cut apples from turning brown?",
    "Dip the slices in lemon water: the acid slows the browning enzyme.",
)
FEATURES = ["kitchen chemistry", "food safety", "step-by-step explanation"]
LOW_JUDGE = {
    "rationale": "Vague.",
    "helpfulness": 2,
    "instruction_following": 2,
    "correctness": 2,
    "clarity": 2,
}

_keys = itertools.count()
Run = Callable[..., Any]


def total_usage(out: dict[str, Any]) -> Usage:
    usage: Usage = out["usage"]
    for c in out["candidates"]:
        usage = usage + c.usage
    return usage


def by_feature(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Instructions naming the feature asked for (or 'general'), distinct per call."""
    text = str(messages[-1].content)
    count = int(text.split("Write ", 1)[1].split(" ", 1)[0])
    m = re.search(r"aspect of the reference: (.+)\.\n", text)
    feature = m.group(1) if m else "general"
    return {
        "instructions": [
            f"Write a short guide on {feature}, part {kwargs['seed']}-{i}." for i in range(count)
        ]
    }


@pytest.fixture
def run() -> Iterator[Run]:
    """run(answers=..., saver=..., **context) -> (final state, script); with a saver the
    graph is compiled with it and runs on a thread of its own."""
    keys: list[str] = []

    async def go(
        answers: dict[str, Any] | None = None, saver: Any = None, **overrides: Any
    ) -> tuple[dict[str, Any], Script]:
        script = Script(answers=dict(answers or {}))
        key = f"test-graph-{next(_keys)}"
        register_client(
            key,
            LLMClient(ScriptedChatModel(script), concurrency=4, max_retries=1, backoff_base=0),
        )
        keys.append(key)
        values: dict[str, Any] = {
            "base_url": None,
            "feedback_mode": "reference",
            "per_reference": 2,
            "judge_bar": 3.0,
            "max_revisions": 1,
            "seed": 0,
            "run_id": "test",
        }
        values.update(overrides)
        app = compile_graph(saver)
        cfg: Any = {"configurable": {"thread_id": key}} if saver is not None else None
        ctx = RefedContext(client_key=key, **values)
        out = await app.ainvoke({"reference": REF}, cfg, context=ctx)
        return out, script

    yield go
    for key in keys:
        unregister_client(key)


@pytest.mark.parametrize("k", [2, 5])
@pytest.mark.parametrize("mode", ["reference", "sample", "none"])
async def test_counts_per_mode(run: Run, mode: str, k: int) -> None:
    out, script = await run(feedback_mode=mode, per_reference=k)
    cands: list[Candidate] = out["candidates"]
    assert out.get("error") is None
    assert len(cands) == k
    assert sorted(c.index for c in cands) == list(range(k))
    assert {c.status for c in cands} == {"accepted"}
    assert len({c.instruction for c in cands}) == k
    assert all(c.sample_id == f"{REF.id}-{c.index:04d}" for c in cands)

    usage = total_usage(out)
    expected_feedback = {"reference": 3, "sample": k, "none": 0}[mode]
    assert usage.feedback_calls == expected_feedback
    assert usage.calls == len(script.calls)  # every request accounted for, once
    assert usage.failed_calls == 0

    feedback_tasks = ["InstructionAnalysisOut", "ResponseAnalysisOut", "DistilledFeedbackOut"]
    assert [script.count(t) for t in feedback_tasks] == (
        [1, 1, 1] if mode == "reference" else [0, 0, 0]
    )
    assert script.count("SampleFeedbackOut") == (k if mode == "sample" else 0)
    assert script.count("respond") == k
    assert script.count("refine") == (0 if mode == "none" else k)
    assert script.count("JudgeOut") == k
    # Synthesis: one call per feature used in reference mode, one plain call otherwise.
    assert script.count("InstructionsOut") == (min(k, 3) if mode == "reference" else 1)

    for c in cands:
        assert c.usage.feedback_calls == (1 if mode == "sample" else 0)
        assert c.revisions == 0
        assert c.judgement is not None and c.judgement.passed
        if mode == "none":
            assert c.response == c.first_response == "A scripted respond answer."
            assert c.sample_feedback is None
        else:
            assert c.first_response == "A scripted respond answer."
            assert c.response == "A scripted refine answer."
        if mode == "sample":
            assert c.sample_feedback == "- Clear.\n- Add an example."
    if mode == "reference":
        assert out["feedback"].features() == FEATURES
        assert sorted({c.feature for c in cands}) == sorted(FEATURES[: min(k, 3)])
    else:
        assert "feedback" not in out or out["feedback"] is None
        assert all(c.feature is None for c in cands)


@pytest.mark.parametrize("mode", ["reference", "sample"])
@pytest.mark.parametrize("max_revisions", [1, 2])
async def test_under_the_bar_revises_then_rejects(run: Run, mode: str, max_revisions: int) -> None:
    k = 2
    out, script = await run(
        {"JudgeOut": LOW_JUDGE}, feedback_mode=mode, per_reference=k, max_revisions=max_revisions
    )
    cands: list[Candidate] = out["candidates"]
    assert len(cands) == k
    for c in cands:
        assert c.status == "rejected"
        assert c.reason == "judge mean 2.00 under the bar"
        assert c.revisions == max_revisions
        assert c.judgement is not None and c.judgement.mean == 2.0
    assert script.count("refine") == k * (1 + max_revisions)
    assert script.count("JudgeOut") == k * (1 + max_revisions)
    # Revision rounds pass the judge's notes on; the first refine does not.
    refine_prompts = [str(c.messages[-1].content) for c in script.calls if c.task == "refine"]
    with_notes = [p for p in refine_prompts if "An evaluator said: Vague." in p]
    assert len(with_notes) == k * max_revisions
    # Sample feedback is asked once per sample, not once per round.
    assert total_usage(out).feedback_calls == (3 if mode == "reference" else k)


async def test_none_mode_never_revises(run: Run) -> None:
    out, script = await run({"JudgeOut": LOW_JUDGE}, feedback_mode="none", max_revisions=3)
    assert [c.status for c in out["candidates"]] == ["rejected", "rejected"]
    assert all(c.revisions == 0 for c in out["candidates"])
    assert script.count("refine") == 0
    assert script.count("JudgeOut") == 2


async def test_revision_that_passes_is_accepted(run: Run) -> None:
    good = LOW_JUDGE | {"helpfulness": 5, "clarity": 5, "correctness": 5, "rationale": "Good."}

    def judge(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        return LOW_JUDGE if "first draft" in str(messages[-1].content) else good

    def refine(messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        revising = "An evaluator said: Vague." in str(messages[-1].content)
        return "second draft" if revising else "first draft"

    out, script = await run(
        {"JudgeOut": judge, "refine": refine},
        feedback_mode="reference",
        max_revisions=3,
    )
    for c in out["candidates"]:
        assert c.status == "accepted"
        assert c.revisions == 1
        assert c.response == "second draft"
        assert c.judgement is not None and c.judgement.mean == 4.25
    assert script.count("refine") == 4
    assert script.count("JudgeOut") == 4


async def test_one_failing_respond_fails_only_its_candidate(run: Run) -> None:
    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        if "food safety" in str(messages[-1].content):
            response = httpx.Response(
                503, request=httpx.Request("POST", "http://x"), headers={"retry-after": "0"}
            )
            return openai.InternalServerError("overloaded", response=response, body=None)  # type: ignore[arg-type]
        return "A fine answer."

    out, script = await run(
        {"InstructionsOut": by_feature, "respond": answer},
        feedback_mode="reference",
        per_reference=3,
    )
    assert out.get("error") is None
    cands = {c.feature: c for c in out["candidates"]}
    assert set(cands) == set(FEATURES)
    bad = cands["food safety"]
    assert bad.status == "failed"
    assert bad.reason is not None and bad.reason.startswith("respond: http: InternalServerError")
    assert bad.response is None and bad.judgement is None
    assert (bad.usage.calls, bad.usage.failed_calls) == (2, 2)  # max_retries=1
    for feature in ("kitchen chemistry", "step-by-step explanation"):
        assert cands[feature].status == "accepted"
        assert cands[feature].reason is None
        assert cands[feature].first_response == "A fine answer."
    assert script.count("refine") == 2
    assert script.count("JudgeOut") == 2
    assert total_usage(out).calls == len(script.calls)


async def test_failing_judge_fails_only_its_candidate(run: Run) -> None:
    def judge(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        if "kitchen chemistry" in str(messages[-1].content):
            return "{not json"
        return LOW_JUDGE | {"helpfulness": 5, "clarity": 5, "correctness": 5}

    out, _ = await run(
        {"InstructionsOut": by_feature, "JudgeOut": judge}, feedback_mode="reference"
    )
    cands = {c.feature: c for c in out["candidates"]}
    assert cands["kitchen chemistry"].status == "failed"
    assert cands["kitchen chemistry"].reason.startswith("metric_judge: parse:")  # type: ignore[union-attr]
    assert cands["food safety"].status == "accepted"


async def test_reference_analysis_failure_gives_no_candidates(run: Run) -> None:
    response = httpx.Response(400, request=httpx.Request("POST", "http://x"))
    bad = openai.BadRequestError("bad schema", response=response, body=None)  # type: ignore[arg-type]
    out, script = await run({"InstructionAnalysisOut": bad}, feedback_mode="reference")
    assert out["candidates"] == []
    assert out["error"].startswith("reference_analysis failed: http: HTTP 400")
    assert script.count("DistilledFeedbackOut") == 0
    assert script.count("InstructionsOut") == 0
    assert script.count("respond") == 0
    usage: Usage = out["usage"]
    assert (usage.calls, usage.feedback_calls, usage.failed_calls) == (2, 2, 1)


async def test_distillation_failure_gives_no_candidates(run: Run) -> None:
    out, script = await run({"DistilledFeedbackOut": "{"}, feedback_mode="reference")
    assert out["candidates"] == []
    assert out["error"].startswith("feedback_distillation failed: parse:")
    assert script.count("InstructionsOut") == 0
    assert out["usage"].feedback_calls == 3
    assert out["usage"].calls == 4


@pytest.mark.parametrize("mode", ["reference", "none"])
async def test_synthesis_failure_gives_no_candidates(run: Run, mode: str) -> None:
    out, script = await run({"InstructionsOut": {"instructions": []}}, feedback_mode=mode)
    assert out["candidates"] == []
    assert out["error"].startswith("synthesis produced no new instruction")
    assert script.count("respond") == 0


def length_error() -> openai.LengthFinishReasonError:
    """What ChatOpenAI raises for a structured call cut off at max_tokens."""
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": '{"rationale": "cut'},
                    "finish_reason": "length",
                }
            ],
        }
    )
    return openai.LengthFinishReasonError(completion=completion)


async def test_truncated_structured_answer_fails_only_its_candidate(run: Run) -> None:
    def judge(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        if "kitchen chemistry" in str(messages[-1].content):
            return length_error()
        return LOW_JUDGE | {"helpfulness": 5, "clarity": 5, "correctness": 5}

    out, _ = await run(
        {"InstructionsOut": by_feature, "JudgeOut": judge}, feedback_mode="reference"
    )
    cands = {c.feature: c for c in out["candidates"]}
    assert cands["kitchen chemistry"].status == "failed"
    assert cands["kitchen chemistry"].reason.startswith("metric_judge: length:")  # type: ignore[union-attr]
    assert cands["food safety"].status == "accepted"


async def test_checkpoints_grow_with_steps_not_with_candidates(run: Run) -> None:
    """Candidates ride in Send packets of the reference's own thread: one checkpoint per
    superstep whatever K is, none in a sub-namespace, no candidate field as a channel."""
    counts: dict[int, int] = {}
    for k in (2, 5):
        saver = InMemorySaver()
        out, _ = await run(saver=saver, per_reference=k)
        assert len(out["candidates"]) == k
        rows = list(saver.list(None))
        assert {r.config["configurable"]["checkpoint_ns"] for r in rows} == {""}
        counts[k] = len(rows)
    assert counts[2] == counts[5]
    assert not {"instruction", "response", "judgement"} & set(compile_graph().channels)


def _judge_scoring(reference: int, candidate: int) -> Callable[..., dict[str, Any]]:
    """Joint judge answers: ``reference`` for the reference pair itself, else ``candidate``."""

    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        text = str(messages[-1].content)
        score = reference if REF.response in text.split("Response", 1)[-1] else candidate
        names = ("helpfulness", "instruction_following", "correctness", "clarity")
        return {"rationale": "ok", **dict.fromkeys(names, score)}

    return answer


@pytest.mark.parametrize(
    ("bar", "reference", "candidate", "status"),
    [
        ("reference:0.5", 2, 2, "accepted"),  # as good as its reference: passes a low judge
        ("reference:0.5", 4, 3, "rejected"),  # a whole point under its reference
        ("3", 2, 2, "rejected"),  # the same answers under a fixed bar
    ],
)
async def test_a_bar_anchored_on_the_reference(
    run: Run, bar: str, reference: int, candidate: int, status: str
) -> None:
    out, script = await run(
        {"JudgeOut": _judge_scoring(reference, candidate)}, judge_bar=bar, max_revisions=0
    )
    cands: list[Candidate] = out["candidates"]
    assert [c.status for c in cands] == [status] * 2
    anchored = bar.startswith("reference")
    judged_reference = out.get("reference_judgement")
    assert (judged_reference is not None) == anchored
    if anchored:
        assert judged_reference.mean == reference
        assert out["feedback"].reference_judgement == judged_reference  # cached with it
        for c in cands:
            assert c.judgement is not None
            assert c.judgement.threshold == pytest.approx(reference - 0.5)
    assert script.count("JudgeOut") == 2 + (1 if anchored else 0)  # the reference: once


async def test_cached_feedback_brings_its_reference_score(run: Run) -> None:
    first, _ = await run(judge_bar="reference:0.5")
    cached = first["feedback"]
    assert cached.reference_judgement is not None
    script = Script()
    key = f"test-graph-{next(_keys)}"
    register_client(key, LLMClient(ScriptedChatModel(script), max_retries=1, backoff_base=0))
    try:
        ctx = RefedContext(
            client_key=key, base_url=None, per_reference=2, judge_bar="reference:0.5"
        )
        out = await compile_graph().ainvoke({"reference": REF, "feedback": cached}, context=ctx)
    finally:
        unregister_client(key)
    assert out["reference_judgement"] == cached.reference_judgement
    assert script.count("JudgeOut") == 2  # the two candidates only: no new reference call
    assert script.count("InstructionAnalysisOut") == 0


async def test_an_answer_that_asks_back_is_rejected_unjudged(run: Run) -> None:
    out, script = await run({"respond": "I'm ready to help. What's your request?"})
    cands: list[Candidate] = out["candidates"]
    assert [c.status for c in cands] == ["rejected", "rejected"]
    for c in cands:
        assert c.filter is not None and c.filter.name == "asks-back"
        assert c.reason == "check asks-back on the response: asks for the request"
        assert c.judgement is None
    assert script.count("JudgeOut") == 0 and script.count("refine") == 0


async def test_a_refinement_that_loops_to_the_cap_is_cut_before_the_loop(run: Run) -> None:
    looped = "Chill the slices first. Then dip them in lemon water. " + "Keep them cold. " * 60
    out, _ = await run({"refine": (looped, "length")})
    for c in out["candidates"]:
        assert c.status == "accepted"
        assert c.response == "Chill the slices first. Then dip them in lemon water. Keep them cold."
        assert c.cut == "loop" and c.refine_dropped is None
