"""Each graph node called directly, with a scripted model behind the LLM client."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime

from llm.client import LLMClient, derive_seed
from llm.factory import register_client, unregister_client
from nodes.feedback_distillation import feedback_distillation
from nodes.finalize import finalize, sample_id
from nodes.metric_judge import metric_judge, wants_revision
from nodes.reference_analysis import reference_analysis
from nodes.respond import respond
from nodes.self_critique import self_critique
from nodes.synthesis import MAX_PER_CALL, plan_calls, synthesis
from state.context import RefedContext
from state.graph_state import CandidateState, ReferenceState
from state.records import (
    InstructionAnalysis,
    Judgement,
    NewInstruction,
    Reference,
    ReferenceFeedback,
    ResponseAnalysis,
    Usage,
)
from tests.scripted import DEFAULTS, Script, ScriptedChatModel

REF = Reference.from_pair(
    "How do I keep cut apples from turning brown?",
    "Dip the slices in lemon water: the acid slows the browning enzyme.",
    id="ref-apples",
)
INST_A = InstructionAnalysis(**DEFAULTS["InstructionAnalysisOut"])
RESP_A = ResponseAnalysis(**DEFAULTS["ResponseAnalysisOut"])
FEEDBACK = ReferenceFeedback(
    reference_id=REF.id,
    instruction=INST_A,
    response=RESP_A,
    instruction_guidance=["Ask for one concrete, checkable outcome."],
    response_guidance=["Explain the reason behind each step.", "Keep it short."],
)
FEATURES = ["kitchen chemistry", "food safety", "step-by-step explanation"]
NEW = NewInstruction(index=3, text="Explain how to store fresh bread.", feature="food safety")

_keys = itertools.count()

MakeRuntime = Callable[..., tuple[Runtime[RefedContext], Script]]


@pytest.fixture
def make_runtime() -> Iterator[MakeRuntime]:
    """Register a scripted client under a fresh key; return a Runtime naming it."""
    keys: list[str] = []

    def make(
        answers: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[Runtime[RefedContext], Script]:
        script = Script(answers=dict(answers or {}))
        key = f"test-nodes-{next(_keys)}"
        register_client(
            key,
            LLMClient(ScriptedChatModel(script), concurrency=4, max_retries=1, backoff_base=0),
        )
        keys.append(key)
        values: dict[str, Any] = {
            "base_url": None,
            "feedback_mode": "reference",
            "per_reference": 4,
            "judge_bar": 3.0,
            "max_revisions": 1,
            "temperature": 1.0,
            "judge_temperature": 0.0,
            "max_tokens": 256,
            "seed": 0,
        }
        values.update(overrides)
        return Runtime(context=RefedContext(client_key=key, **values)), script

    yield make
    for key in keys:
        unregister_client(key)


def user_text(call: Any) -> str:
    return str(call.messages[-1].content)


def system_text(call: Any) -> str:
    return str(call.messages[0].content)


def server_error() -> openai.InternalServerError:
    import httpx

    response = httpx.Response(
        500, request=httpx.Request("POST", "http://x"), headers={"retry-after": "0"}
    )
    return openai.InternalServerError("boom", response=response, body=None)  # type: ignore[arg-type]


def candidate_state(**kw: Any) -> CandidateState:
    values: dict[str, Any] = {
        "reference": REF,
        "feedback": FEEDBACK,
        "instruction": NEW,
        "first_response": "Draft answer.",
        "response": "Draft answer.",
    }
    values.update(kw)
    return CandidateState(**values)


def judgement(mean: float, passed: bool) -> Judgement:
    return Judgement(scores={"helpfulness": mean}, rationale="r", mean=mean, passed=passed)


# ------------------------------------------------------------------ reference_analysis


async def test_reference_analysis_makes_two_feedback_calls(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime()
    update = await reference_analysis(ReferenceState(reference=REF), runtime)
    assert "error" not in update
    assert update["instruction_analysis"] == INST_A
    assert update["response_analysis"] == RESP_A
    usage: Usage = update["usage"]
    assert (usage.calls, usage.feedback_calls, usage.failed_calls) == (2, 2, 0)
    assert usage.prompt_tokens == 200
    assert sorted(c.task for c in script.calls) == ["InstructionAnalysisOut", "ResponseAnalysisOut"]
    by_task = {c.task: c for c in script.calls}
    inst_call, resp_call = by_task["InstructionAnalysisOut"], by_task["ResponseAnalysisOut"]
    assert REF.instruction in user_text(inst_call)
    assert REF.response not in user_text(inst_call)
    assert REF.instruction in user_text(resp_call) and REF.response in user_text(resp_call)
    assert inst_call.kwargs["seed"] == derive_seed(0, REF.id, "analyze_instruction")
    assert resp_call.kwargs["seed"] == derive_seed(0, REF.id, "analyze_response")
    assert inst_call.kwargs["temperature"] == 0.0


async def test_reference_analysis_failure_sets_error_and_keeps_usage(
    make_runtime: MakeRuntime,
) -> None:
    runtime, script = make_runtime({"ResponseAnalysisOut": "{not json"})
    update = await reference_analysis(ReferenceState(reference=REF), runtime)
    assert update["error"].startswith("reference_analysis failed: parse:")
    assert "analyze_response" in update["error"]
    assert "instruction_analysis" not in update
    assert "response_analysis" not in update
    usage: Usage = update["usage"]
    # 1 good instruction call + 2 attempts (max_retries=1) at the response.
    assert script.count("ResponseAnalysisOut") == 2
    assert (usage.calls, usage.feedback_calls, usage.failed_calls) == (3, 2, 2)


async def test_reference_analysis_both_failing_reports_both(make_runtime: MakeRuntime) -> None:
    runtime, _ = make_runtime(
        {"ResponseAnalysisOut": "{not json", "InstructionAnalysisOut": ("{", "length")}
    )
    update = await reference_analysis(ReferenceState(reference=REF), runtime)
    assert "length:" in update["error"] and "parse:" in update["error"]
    assert update["usage"].calls == 4
    assert update["usage"].feedback_calls == 2


# ------------------------------------------------------------------ feedback_distillation


async def test_feedback_distillation_builds_reference_feedback(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime()
    state = ReferenceState(
        reference=REF,
        instruction_analysis=INST_A,
        response_analysis=RESP_A,
        usage=Usage(calls=2, feedback_calls=2, prompt_tokens=200, completion_tokens=40),
    )
    update = await feedback_distillation(state, runtime)
    assert "error" not in update
    assert script.count("DistilledFeedbackOut") == 1
    assert len(script.calls) == 1
    prompt = user_text(script.calls[0])
    assert "kitchen chemistry; food safety" in prompt
    assert "Say why each step matters." in prompt
    fb: ReferenceFeedback = update["feedback"]
    assert fb.reference_id == REF.id
    assert fb.instruction_guidance == ["Ask for one concrete, checkable outcome."]
    assert fb.response_guidance == ["Explain the reason behind each step."]
    assert fb.instruction == INST_A and fb.response == RESP_A
    assert fb.features() == FEATURES
    usage: Usage = update["usage"]
    assert (usage.calls, usage.feedback_calls) == (1, 1)
    # The feedback record carries the reference's whole feedback spend.
    assert (fb.usage.calls, fb.usage.feedback_calls) == (3, 3)


async def test_feedback_distillation_failure_sets_error(make_runtime: MakeRuntime) -> None:
    runtime, _ = make_runtime({"DistilledFeedbackOut": server_error()})
    state = ReferenceState(reference=REF, instruction_analysis=INST_A, response_analysis=RESP_A)
    update = await feedback_distillation(state, runtime)
    assert update["error"].startswith("feedback_distillation failed: http:")
    assert "feedback" not in update
    assert (update["usage"].calls, update["usage"].feedback_calls) == (2, 1)


def test_features_are_deduplicated_case_insensitively() -> None:
    fb = ReferenceFeedback(
        reference_id="r",
        instruction=InstructionAnalysis(
            subject_areas=["Math", " math ", "  "], skills=["Reasoning", "MATH", "reasoning "]
        ),
        response=ResponseAnalysis(),
    )
    assert fb.features() == ["Math", "Reasoning"]


# ------------------------------------------------------------------ synthesis: planning


@pytest.mark.parametrize(
    ("features", "total", "expected"),
    [
        (["a", "b", "c"], 7, [("a", 3), ("b", 2), ("c", 2)]),
        (["a", "b", "c"], 2, [("a", 1), ("b", 1)]),
        (["a", "b", "c"], 0, []),
        ([], 3, [(None, 3)]),
        (["a"], 25, [("a", 10), ("a", 10), ("a", 5)]),
        (["a", "b"], 23, [("a", 10), ("a", 2), ("b", 10), ("b", 1)]),
        ([], 10, [(None, 10)]),
        ([], 11, [(None, 10), (None, 1)]),
    ],
)
def test_plan_calls(features: list[str | None], total: int, expected: list[Any]) -> None:
    jobs = plan_calls(features, total)
    assert jobs == expected
    assert sum(n for _, n in jobs) == total
    assert all(0 < n <= MAX_PER_CALL for _, n in jobs)


def test_plan_calls_is_never_over_the_list_bound() -> None:
    for n_features in range(1, 7):
        feats: list[str | None] = [f"f{i}" for i in range(n_features)]
        for total in range(0, 61):
            jobs = plan_calls(feats, total)
            assert sum(n for _, n in jobs) == total
            assert max((n for _, n in jobs), default=0) <= MAX_PER_CALL
            counts = [sum(n for f, n in jobs if f == feat) for feat in feats]
            assert max(counts) - min(counts) <= 1


# ------------------------------------------------------------------ synthesis: node


def asked_count(call: Any) -> int:
    return int(user_text(call).split("Write ", 1)[1].split(" ", 1)[0])


async def test_synthesis_reference_mode_one_call_per_feature(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime(feedback_mode="reference", per_reference=5)
    state = ReferenceState(reference=REF, feedback=FEEDBACK)
    update = await synthesis(state, runtime)
    assert "error" not in update
    calls = script.calls
    assert [c.task for c in calls] == ["InstructionsOut"] * 3
    for call, feature, count in zip(calls, FEATURES, [2, 2, 1], strict=True):
        text = user_text(call)
        assert f"exercise this aspect of the reference: {feature}." in text
        assert f"Write {count} new instructions" in text
        assert "- Ask for one concrete, checkable outcome." in text  # the guidance
        assert REF.instruction in text
        assert "Guidance for new instructions" in text
    assert len({c.kwargs["seed"] for c in calls}) == 3
    insts: list[NewInstruction] = update["instructions"]
    assert [i.index for i in insts] == [0, 1, 2, 3, 4]
    # taken round-robin over the calls, so a short list still covers every feature
    assert [i.feature for i in insts] == [*FEATURES, FEATURES[0], FEATURES[1]]
    assert len({i.text for i in insts}) == 5
    assert update["usage"].calls == 3
    assert update["usage"].feedback_calls == 0


@pytest.mark.parametrize("mode", ["sample", "none"])
async def test_synthesis_plain_modes_use_the_plain_prompt(
    make_runtime: MakeRuntime, mode: str
) -> None:
    runtime, script = make_runtime(feedback_mode=mode, per_reference=3)
    # Even if a feedback were present, only reference mode uses it.
    state = ReferenceState(reference=REF, feedback=FEEDBACK)
    update = await synthesis(state, runtime)
    (call,) = script.calls
    text = user_text(call)
    assert "Write 3 new instructions of the same kind as the reference." in text
    assert "aspect" not in text
    assert "Guidance" not in text
    assert "checkable outcome" not in text
    insts = update["instructions"]
    assert [i.index for i in insts] == [0, 1, 2]
    assert all(i.feature is None for i in insts)


async def test_synthesis_drops_duplicates_and_reference_copies(make_runtime: MakeRuntime) -> None:
    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        if "Write 4 new" in str(messages[-1].content):
            return {
                "instructions": [
                    "  how do I keep CUT apples   from turning brown? ",  # the reference
                    "Explain how to store fresh bread.",
                    "explain how to store  FRESH bread.",  # duplicate
                    "Explain how to store hard cheese.",
                ]
            }
        return {
            "instructions": [
                "Explain how to store hard cheese.",  # duplicate of round 0
                "Explain how to store cooked rice safely.",
            ]
        }

    runtime, script = make_runtime(
        {"InstructionsOut": answer}, feedback_mode="none", per_reference=4
    )
    update = await synthesis(ReferenceState(reference=REF), runtime)
    assert [asked_count(c) for c in script.calls] == [4, 2]
    assert [i.text for i in update["instructions"]] == [
        "Explain how to store fresh bread.",
        "Explain how to store hard cheese.",
        "Explain how to store cooked rice safely.",
    ]
    assert [i.index for i in update["instructions"]] == [0, 1, 2]
    assert "error" not in update  # a shortfall is not an error


async def test_synthesis_shortfall_triggers_exactly_one_top_up(make_runtime: MakeRuntime) -> None:
    def one_each(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"instructions": [f"Describe kitchen task number {kwargs['seed']} in detail."]}

    runtime, script = make_runtime(
        {"InstructionsOut": one_each}, feedback_mode="none", per_reference=4
    )
    update = await synthesis(ReferenceState(reference=REF), runtime)
    assert [asked_count(c) for c in script.calls] == [4, 3]
    seeds = [c.kwargs["seed"] for c in script.calls]
    assert seeds == [
        derive_seed(0, REF.id, "synthesize", 0, 0),
        derive_seed(0, REF.id, "synthesize", 1, 0),
    ]
    assert len(update["instructions"]) == 2
    assert [i.index for i in update["instructions"]] == [0, 1]
    assert update["usage"].calls == 2


async def test_synthesis_top_up_in_reference_mode_spreads_the_shortfall(
    make_runtime: MakeRuntime,
) -> None:
    def one_each(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"instructions": [f"Describe kitchen task number {kwargs['seed']} in detail."]}

    runtime, script = make_runtime(
        {"InstructionsOut": one_each}, feedback_mode="reference", per_reference=6
    )
    update = await synthesis(ReferenceState(reference=REF, feedback=FEEDBACK), runtime)
    # Round 0: 3 features x 2 asked, 1 got each -> 3 missing -> round 1: 3 x 1.
    assert [asked_count(c) for c in script.calls] == [2, 2, 2, 1, 1, 1]
    assert len(update["instructions"]) == 6
    assert [i.index for i in update["instructions"]] == list(range(6))


async def test_synthesis_caps_at_per_reference(make_runtime: MakeRuntime) -> None:
    def too_many(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"instructions": [f"Write recipe {kwargs['seed']}-{i} for me." for i in range(10)]}

    runtime, script = make_runtime(
        {"InstructionsOut": too_many}, feedback_mode="reference", per_reference=4
    )
    update = await synthesis(ReferenceState(reference=REF, feedback=FEEDBACK), runtime)
    assert len(script.calls) == 3  # no top-up: enough came back
    insts = update["instructions"]
    assert len(insts) == 4
    assert [i.index for i in insts] == [0, 1, 2, 3]
    assert [i.feature for i in insts] == [FEATURES[0], FEATURES[1], FEATURES[2], FEATURES[0]]


async def test_synthesis_all_calls_failing_is_an_error(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime(
        {"InstructionsOut": {"instructions": ["short"]}},  # under min_length=8
        feedback_mode="none",
        per_reference=3,
    )
    update = await synthesis(ReferenceState(reference=REF), runtime)
    assert update["instructions"] == []
    assert update["error"].startswith("synthesis produced no new instruction: parse:")
    # 2 rounds x 2 attempts each (max_retries=1).
    assert len(script.calls) == 4
    assert (update["usage"].calls, update["usage"].failed_calls) == (4, 4)


async def test_synthesis_partial_failure_keeps_the_rest(make_runtime: MakeRuntime) -> None:
    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        if "food safety" in str(messages[-1].content):
            return server_error()
        return {"instructions": [f"Write recipe {kwargs['seed']} for a picnic."]}

    runtime, script = make_runtime(
        {"InstructionsOut": answer}, feedback_mode="reference", per_reference=3
    )
    update = await synthesis(ReferenceState(reference=REF, feedback=FEEDBACK), runtime)
    assert "error" not in update
    feats = [i.feature for i in update["instructions"]]
    assert "food safety" not in feats
    # round 0: 3 jobs (food safety 2 attempts), round 1 asks for the 1 missing: 1 job
    # on the first feature.
    assert len(update["instructions"]) == 3
    assert feats == [FEATURES[0], FEATURES[2], FEATURES[0]]
    assert update["usage"].failed_calls == 2
    assert len(script.calls) == 5  # 3 jobs + 1 retry, then 1 top-up job


# ------------------------------------------------------------------ respond


async def test_respond_sets_first_response_and_response(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime({"respond": "  Keep bread in a paper bag.  "})
    state = candidate_state(first_response=None, response=None)
    update = await respond(state, runtime)
    assert update["first_response"] == "Keep bread in a paper bag."
    assert update["response"] == update["first_response"]
    assert "error" not in update
    (call,) = script.calls
    assert call.task == "respond"
    text = user_text(call)
    # The reference comes first (shared prefix), the new request last.
    assert text.index(REF.instruction) < text.index(REF.response) < text.index(NEW.text)
    assert call.kwargs["seed"] == derive_seed(0, REF.id, "respond", NEW.index)
    assert call.kwargs["max_tokens"] == 256
    assert (update["usage"].calls, update["usage"].feedback_calls) == (1, 0)


async def test_respond_length_is_recorded_as_error(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime({"respond": ("Keep bread in a", "length")})
    update = await respond(candidate_state(first_response=None, response=None), runtime)
    assert update["error"] == "respond: length: answer cut off at max_tokens"
    assert "response" not in update and "first_response" not in update
    assert len(script.calls) == 1  # no retry for a cut-off free text answer
    assert (update["usage"].calls, update["usage"].failed_calls) == (1, 1)


# ------------------------------------------------------------------ self_critique


async def test_self_critique_reference_mode_uses_distilled_guidance(
    make_runtime: MakeRuntime,
) -> None:
    runtime, script = make_runtime({"refine": "Better answer."}, feedback_mode="reference")
    update = await self_critique(candidate_state(), runtime)
    assert [c.task for c in script.calls] == ["refine"]
    text = user_text(script.calls[0])
    assert "- Explain the reason behind each step.\n- Keep it short." in text
    assert "Draft answer." in text and NEW.text in text
    assert "evaluator" not in text
    assert update["response"] == "Better answer."
    assert "revisions" not in update
    assert "sample_feedback" not in update
    assert (update["usage"].calls, update["usage"].feedback_calls) == (1, 0)
    assert script.calls[0].kwargs["seed"] == derive_seed(0, REF.id, "refine", NEW.index, 0)


async def test_self_critique_sample_mode_asks_for_feedback_then_refines(
    make_runtime: MakeRuntime,
) -> None:
    runtime, script = make_runtime(feedback_mode="sample")
    update = await self_critique(candidate_state(feedback=None), runtime)
    assert [c.task for c in script.calls] == ["SampleFeedbackOut", "refine"]
    fb_prompt = user_text(script.calls[0])
    assert NEW.text in fb_prompt and "Draft answer." in fb_prompt
    assert update["sample_feedback"] == "- Clear.\n- Add an example."
    refine_prompt = user_text(script.calls[1])
    assert "- Clear.\n- Add an example." in refine_prompt
    assert "Explain the reason behind each step." not in refine_prompt
    assert update["response"] == "A scripted refine answer."
    usage: Usage = update["usage"]
    assert (usage.calls, usage.feedback_calls) == (2, 1)


async def test_self_critique_sample_mode_reuses_existing_feedback(
    make_runtime: MakeRuntime,
) -> None:
    runtime, script = make_runtime(feedback_mode="sample")
    state = candidate_state(
        feedback=None,
        sample_feedback="- Use an example.",
        judgement=judgement(2.0, False),
        judge_notes="Too vague.",
    )
    update = await self_critique(state, runtime)
    assert [c.task for c in script.calls] == ["refine"]
    text = user_text(script.calls[0])
    assert "- Use an example.\n- An evaluator said: Too vague." in text
    assert update["usage"].feedback_calls == 0
    assert update["revisions"] == 1
    assert "sample_feedback" not in update


@pytest.mark.parametrize("revisions", [0, 1])
async def test_self_critique_revision_adds_judge_notes(
    make_runtime: MakeRuntime, revisions: int
) -> None:
    runtime, script = make_runtime(feedback_mode="reference", max_revisions=3)
    state = candidate_state(
        response="Refined once.",
        judgement=judgement(2.5, False),
        judge_notes="It skips the why.",
        revisions=revisions,
    )
    update = await self_critique(state, runtime)
    text = user_text(script.calls[0])
    assert "- Keep it short.\n- An evaluator said: It skips the why." in text
    assert "Refined once." in text
    assert update["revisions"] == revisions + 1
    # Each refine round has its own seed: the first refine uses 0, revision k uses k.
    seed = derive_seed(0, REF.id, "refine", NEW.index, revisions + 1)
    assert script.calls[0].kwargs["seed"] == seed


async def test_self_critique_refine_failure_keeps_feedback_and_usage(
    make_runtime: MakeRuntime,
) -> None:
    runtime, script = make_runtime(
        {"refine": ("cut", "length")}, feedback_mode="sample", loop_rule="fail"
    )
    update = await self_critique(candidate_state(feedback=None), runtime)
    assert update["error"] == "refine: length: answer cut off at max_tokens"
    assert [c.task for c in script.calls] == ["SampleFeedbackOut", "refine"]
    assert update["sample_feedback"] == "- Clear.\n- Add an example."
    assert "response" not in update
    usage: Usage = update["usage"]
    assert (usage.calls, usage.feedback_calls, usage.failed_calls) == (2, 1, 1)


async def test_self_critique_unusable_refinement_keeps_the_answer_before_it(
    make_runtime: MakeRuntime,
) -> None:
    """Under the cut rule a refinement cut off with nothing to keep is dropped, not fatal."""
    runtime, _script = make_runtime({"refine": ("cut", "length")}, feedback_mode="sample")
    update = await self_critique(candidate_state(feedback=None), runtime)
    assert "error" not in update
    assert "response" not in update  # the first answer stands
    assert update["refine_dropped"] == "refine: length: answer cut off at max_tokens"
    assert update["sample_feedback"] == "- Clear.\n- Add an example."


async def test_self_critique_sample_feedback_failure(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime({"SampleFeedbackOut": "{"}, feedback_mode="sample")
    update = await self_critique(candidate_state(feedback=None), runtime)
    assert update["error"].startswith("sample_feedback: parse:")
    assert script.count("refine") == 0
    assert (update["usage"].calls, update["usage"].feedback_calls) == (2, 1)


# ------------------------------------------------------------------ metric_judge


async def test_metric_judge_scores_and_passes(make_runtime: MakeRuntime) -> None:
    runtime, script = make_runtime(judge_bar=3.0)
    update = await metric_judge(candidate_state(response="Final answer."), runtime)
    j: Judgement = update["judgement"]
    assert j.scores == {
        "helpfulness": 4.0,
        "instruction_following": 4.0,
        "correctness": 4.0,
        "clarity": 4.0,
    }
    assert j.mean == 4.0
    assert j.passed is True
    assert j.method == "sampled"
    assert j.rationale == "Useful and correct."
    assert update["judge_notes"] == "Useful and correct."
    text = user_text(script.calls[0])
    assert "Final answer." in text and NEW.text in text
    assert "Draft answer." not in text
    assert script.calls[0].kwargs["temperature"] == 0.0


@pytest.mark.parametrize(("bar", "passed"), [(3.5, True), (3.4, True), (3.6, False), (5.0, False)])
async def test_metric_judge_mean_against_the_bar(
    make_runtime: MakeRuntime, bar: float, passed: bool
) -> None:
    answer = {
        "rationale": "Mixed.",
        "helpfulness": 5,
        "instruction_following": 4,
        "correctness": 3,
        "clarity": 2,
    }
    runtime, _ = make_runtime({"JudgeOut": answer}, judge_bar=bar)
    update = await metric_judge(candidate_state(), runtime)
    assert update["judgement"].mean == 3.5
    assert update["judgement"].scores["clarity"] == 2.0
    assert update["judgement"].passed is passed


async def test_metric_judge_failure(make_runtime: MakeRuntime) -> None:
    runtime, _ = make_runtime({"JudgeOut": {"rationale": "x"}})
    update = await metric_judge(candidate_state(), runtime)
    assert update["error"].startswith("metric_judge: parse:")
    assert "judgement" not in update
    assert update["usage"].calls == 2


@pytest.mark.parametrize(
    ("mode", "j", "revisions", "max_revisions", "expected"),
    [
        ("reference", None, 0, 1, False),
        ("reference", judgement(4.0, True), 0, 1, False),
        ("reference", judgement(2.0, False), 0, 1, True),
        ("reference", judgement(2.0, False), 1, 1, False),
        ("reference", judgement(2.0, False), 1, 2, True),
        ("reference", judgement(2.0, False), 2, 2, False),
        ("reference", judgement(2.0, False), 0, 0, False),
        ("sample", judgement(2.0, False), 0, 1, True),
        ("sample", judgement(2.0, False), 1, 1, False),
        ("none", judgement(2.0, False), 0, 1, False),
        ("none", judgement(2.0, False), 0, 5, False),
    ],
)
def test_wants_revision(
    mode: str, j: Judgement | None, revisions: int, max_revisions: int, expected: bool
) -> None:
    ctx = RefedContext(base_url=None, feedback_mode=mode, max_revisions=max_revisions)  # type: ignore[arg-type]
    state = candidate_state(judgement=j, revisions=revisions)
    assert wants_revision(state, ctx) is expected


# ------------------------------------------------------------------ finalize


def test_sample_id_format() -> None:
    assert sample_id("ref-apples", 3) == "ref-apples-0003"
    assert sample_id("abc", 0) == "abc-0000"
    assert sample_id("abc", 12345) == "abc-12345"


async def test_finalize_accepted() -> None:
    usage = Usage(calls=3, prompt_tokens=300)
    state = candidate_state(
        response="Final.", judgement=judgement(4.0, True), revisions=1, usage=usage
    )
    update = await finalize(state)
    (c,) = update["candidates"]
    assert c.status == "accepted"
    assert c.reason is None
    assert c.sample_id == "ref-apples-0003"
    assert c.reference_id == REF.id
    assert (c.index, c.feature, c.instruction) == (3, "food safety", NEW.text)
    assert (c.first_response, c.response) == ("Draft answer.", "Final.")
    assert c.revisions == 1
    assert c.usage == usage
    assert c.judgement is not None and c.judgement.mean == 4.0


async def test_finalize_rejected_gives_the_mean() -> None:
    update = await finalize(candidate_state(judgement=judgement(2.5, False)))
    (c,) = update["candidates"]
    assert c.status == "rejected"
    assert c.reason == "judge mean 2.50 under the bar"


async def test_finalize_failed_with_error_wins_over_judgement() -> None:
    state = candidate_state(judgement=judgement(4.0, True), error="metric_judge: parse: x")
    (c,) = (await finalize(state))["candidates"]
    assert c.status == "failed"
    assert c.reason == "metric_judge: parse: x"


async def test_finalize_failed_without_judgement() -> None:
    (c,) = (await finalize(candidate_state()))["candidates"]
    assert c.status == "failed"
    assert c.reason == "no judgement"
    assert re.fullmatch(r"ref-apples-\d{4}", c.sample_id)
