"""The judge itself, with no server: criteria files, log-probability scores, pairwise logic,
and the metric_judge node's settings (scripted model)."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from langgraph.runtime import Runtime

import prompts
from judge.scoring import (
    JudgeOptions,
    compare,
    expected_score,
    read_score,
    render_pairwise,
    render_pointwise,
    score_record,
)
from llm.client import LLMClient, LLMError
from llm.factory import register_client, unregister_client
from nodes.metric_judge import metric_judge
from state.context import RefedContext
from state.criteria import CriteriaError, Criterion, load_criteria_file
from state.graph_state import CandidateState
from state.judgements import winner_of
from state.llm_outputs import JUDGE_CRITERIA, JudgeOut, joint_schema
from state.records import NewInstruction, Reference
from tests.scripted import Script, ScriptedChatModel

# --- helpers ------------------------------------------------------------------------------------


def lp(token: str, alternatives: dict[str, float] | None = None) -> dict[str, Any]:
    """One logprobs.content entry: ``token`` sampled; ``alternatives`` token -> probability
    (the sampled token's own probability included, else 1)."""
    alternatives = alternatives or {token: 1.0}
    return {
        "token": token,
        "logprob": math.log(alternatives.get(token, 1.0)),
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in alternatives.items()],
    }


def tokens_of(*parts: str | dict[str, Any]) -> list[dict[str, Any]]:
    return [lp(p) if isinstance(p, str) else p for p in parts]


def client_with(script: Script) -> LLMClient:
    return LLMClient(ScriptedChatModel(script), concurrency=4, max_retries=1, backoff_base=0)


SUMMEVAL = prompts.criteria("summeval")
INSTRUCTION = prompts.criteria("instruction")

# --- criteria files -----------------------------------------------------------------------------

GOOD = """
name = "mine"
task = "Judge a product description."
target = "text"

[fields]
product = "Product"
text = "Description"

[[criteria]]
name = "accuracy"
definition = "Says only true things about the product."
fields = ["product", "text"]
scale = [1, 3]
low = "Wrong."
high = "All true."

[[criteria]]
name = "appeal"
definition = "Makes the reader want it."
"""


def write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_builtin_criteria_sets_load() -> None:
    assert set(prompts.criteria_names()) >= {"instruction", "summeval", "topical_chat", "data2text"}
    assert INSTRUCTION.names == JUDGE_CRITERIA
    assert SUMMEVAL.names == ("coherence", "consistency", "fluency", "relevance")
    tc = prompts.criteria("topical_chat")
    assert tc.get("understandability").scale == (0, 1)
    assert tc.get("naturalness").scale == (1, 3)
    assert tc.get("overall").scale == (1, 5)
    assert prompts.criteria("data2text").get("overall").points == (1, 2, 3, 4, 5, 6)
    assert SUMMEVAL.fields_for([SUMMEVAL.get("fluency")]) == ["summary"]
    versions = prompts.versions()
    assert versions["criteria/summeval"] == SUMMEVAL.version and len(SUMMEVAL.version) == 12


def test_joint_schema_of_the_instruction_set_is_judge_out() -> None:
    schema = joint_schema(tuple((c.name, c.points) for c in INSTRUCTION.criteria), 600)
    assert schema.model_json_schema() == JudgeOut.model_json_schema()


def test_good_criteria_file(tmp_path: Path) -> None:
    cset = load_criteria_file(write(tmp_path, GOOD))
    assert cset.name == "mine" and cset.target == "text"
    assert list(cset.fields) == ["product", "text"]
    acc, appeal = cset.criteria
    assert acc == Criterion(
        name="accuracy",
        definition="Says only true things about the product.",
        fields=("product", "text"),
        scale=(1, 3),
        low="Wrong.",
        high="All true.",
    )
    assert appeal.scale == (1, 5) and appeal.fields == ()
    assert cset.fields_for([appeal]) == ["product", "text"]
    assert cset.subset(["appeal"]).names == ("appeal",)
    # By path through the prompts loader too, and the name defaults to the file's stem.
    no_name = write(tmp_path, GOOD.replace('name = "mine"\n', ""), "Other-Set.toml")
    assert prompts.criteria(str(no_name)).name == "other_set"


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (("scale = [1, 3]", "scale = [1, 10]"), "criteria[0].scale", "single-digit"),
        (("scale = [1, 3]", "scale = [3, 3]"), "criteria[0].scale", "lo < hi"),
        (
            ('fields = ["product", "text"]', 'fields = ["price", "text"]'),
            "criteria[0].fields",
            "price",
        ),
        (('fields = ["product", "text"]', 'fields = ["product"]'), "criteria[0].fields", "target"),
        (('target = "text"', 'target = "body"'), "target", "body"),
        (('name = "appeal"', 'name = "accuracy"'), "criteria[1].name", "twice"),
        (('name = "appeal"', 'name = "rationale"'), "criteria[1].name", "reserved"),
        (('name = "appeal"', 'name = "Appeal!"'), "criteria[1].name", "pattern"),
        (('definition = "Makes the reader want it."\n', ""), "criteria[1].definition", "required"),
        (('task = "Judge a product description."\n', ""), "task", "required"),
        (("low = ", "lowest = "), "criteria[0].lowest", "not permitted"),
    ],
)
def test_bad_criteria_file_names_file_and_key(
    tmp_path: Path, change: tuple[str, str], key: str, message: str
) -> None:
    assert change[0] in GOOD
    path = write(tmp_path, GOOD.replace(change[0], change[1], 1))
    with pytest.raises(CriteriaError) as info:
        load_criteria_file(path)
    text = str(info.value)
    assert text.startswith(f"criteria file {path}: {key}:"), text
    assert message in text


def test_criteria_file_not_toml_or_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "name = \n")
    with pytest.raises(CriteriaError, match=r"not valid TOML"):
        load_criteria_file(path)
    with pytest.raises(CriteriaError, match=r"criteria file not found: .*nope\.toml"):
        load_criteria_file(tmp_path / "nope.toml")
    with pytest.raises(CriteriaError, match=r"no built-in criteria set 'nope' \(built-in: "):
        prompts.criteria("nope")


# --- prompts -------------------------------------------------------------------------------------


def test_pointwise_prompt_shows_the_criterion_and_only_its_fields() -> None:
    record = {"document": "The ARTICLE text.", "summary": "The SUMMARY text."}
    fluency = SUMMEVAL.get("fluency")
    msgs = render_pointwise(SUMMEVAL, (fluency,), record, JudgeOptions())
    user = msgs[1]["content"]
    assert "Judge a short summary written for a news article." in user
    assert "The SUMMARY text." in user and "The ARTICLE text." not in user
    assert "fluency (score 1 to 5)" in user and "coherence" not in user
    assert '"rationale"' in user and "at most 300 characters" in user
    # The record comes before the criterion, so per-criterion calls share a prefix.
    assert user.index("The SUMMARY text.") < user.index("fluency (score")
    coherence = SUMMEVAL.get("coherence")
    user2 = render_pointwise(SUMMEVAL, (coherence,), record, JudgeOptions(rationale_chars=0))[1]
    assert "The ARTICLE text." in user2["content"]
    assert "rationale" not in user2["content"]
    assert user2["content"].index("The ARTICLE text.") < user2["content"].index("The SUMMARY")
    with pytest.raises(KeyError, match="document"):
        render_pointwise(SUMMEVAL, (coherence,), {"summary": "x"}, JudgeOptions())


def test_pairwise_prompt_shows_context_and_both_candidates() -> None:
    msgs = render_pairwise(
        INSTRUCTION,
        INSTRUCTION.criteria,
        {"instruction": "Q?"},
        "ANSWER ONE",
        "ANSWER TWO",
        JudgeOptions(),
    )
    user = msgs[1]["content"]
    assert "Q?" in user
    assert user.index("Candidate A") < user.index("ANSWER ONE") < user.index("Candidate B")
    assert user.index("Candidate B") < user.index("ANSWER TWO")
    assert all(name in user for name in JUDGE_CRITERIA)
    assert '"winner": "A", "B" or "tie"' in user


# --- log-probability expectation ----------------------------------------------------------------


def test_expected_score_from_crafted_logprobs() -> None:
    content = tokens_of('{"', "score", '":', lp("4", {"4": 0.5, "3": 0.3, "5": 0.1, "x": 0.1}), "}")
    value, probs = expected_score(content, "score", (1, 2, 3, 4, 5))  # type: ignore[misc]
    # Non-score tokens are dropped and the rest renormalised over the scale.
    assert probs == pytest.approx({3: 0.3 / 0.9, 4: 0.5 / 0.9, 5: 0.1 / 0.9})
    assert value == pytest.approx((3 * 0.3 + 4 * 0.5 + 5 * 0.1) / 0.9)


def test_expected_score_details() -> None:
    points = (1, 2, 3, 4, 5)
    # Leading spaces on the digit tokens; the same digit twice (with and without) adds up.
    spaced = tokens_of('{"score":', lp(" 2", {" 2": 0.4, "2": 0.2, " 5": 0.4}), "}")
    value, probs = expected_score(spaced, "score", points)  # type: ignore[misc]
    assert probs == pytest.approx({2: 0.6, 5: 0.4})
    assert value == pytest.approx(2 * 0.6 + 5 * 0.4)
    # The sampled token is used even when it is missing from the top list.
    entry = {
        "token": "3",
        "logprob": math.log(0.5),
        "top_logprobs": [{"token": "1", "logprob": math.log(0.5)}],
    }
    assert expected_score(tokens_of('{"score":', entry, "}"), "score", points) == (
        pytest.approx(2.0),
        pytest.approx({1: 0.5, 3: 0.5}),
    )
    # Off-scale digits are ignored (a 0-1 scale).
    binary = tokens_of('{"score":', lp("1", {"1": 0.6, "0": 0.2, "2": 0.2}), "}")
    assert expected_score(binary, "score", (0, 1))[0] == pytest.approx(0.75)  # type: ignore[index]
    # A rationale quoting the key does not fool it: the last occurrence is the real one.
    tricky = tokens_of(
        '{"rationale":"',
        'I give \\"score\\": 1',
        '",',
        '"score":',
        lp("5", {"5": 0.5, "4": 0.5}),
        "}",
    )
    assert expected_score(tricky, "score", points)[0] == pytest.approx(4.5)  # type: ignore[index]
    # Several keys in one answer (one call scoring every criterion).
    joint = tokens_of(
        '{"', "coherence", '":', lp("2", {"2": 0.5, "1": 0.5}), ',"', "fluency", '":', lp("4"), "}"
    )
    assert expected_score(joint, "coherence", points)[0] == pytest.approx(1.5)  # type: ignore[index]
    assert expected_score(joint, "fluency", points)[0] == pytest.approx(4.0)  # type: ignore[index]


@pytest.mark.parametrize(
    "content",
    [
        None,
        [],
        tokens_of('{"', "rationale", '":"x"}'),  # no such key
        tokens_of('{"score":4}'),  # the digit shares a token with other text
        tokens_of('{"score":', "4}"),
    ],
)
def test_expected_score_none_when_unusable(content: list[dict[str, Any]] | None) -> None:
    assert expected_score(content, "score", (1, 2, 3, 4, 5)) is None


def test_read_score_says_which_method() -> None:
    c = SUMMEVAL.get("coherence")
    sampled = read_score(None, "score", c, 3)
    assert (sampled.score, sampled.method, sampled.sampled, sampled.probs) == (
        3.0,
        "sampled",
        3,
        None,
    )
    content = tokens_of('{"score":', lp("3", {"3": 0.5, "4": 0.5}), "}")
    expected = read_score(content, "score", c, 3)
    assert (expected.score, expected.method, expected.sampled) == (3.5, "logprob", 3)


# --- pointwise with the scripted model -------------------------------------------------------


def joint_answer(scores: dict[str, dict[str, float]]) -> Callable[..., Any]:
    """A JudgeOut answer with logprobs: criterion -> {digit: probability}."""

    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        props = kwargs["response_format"]["json_schema"]["schema"]["properties"]
        parts: list[str | dict[str, Any]] = ["{"]
        value: dict[str, Any] = {}
        for name in props:
            if name == "rationale":
                value[name] = "ok"
                parts += ['"rationale":"ok",']
                continue
            dist = scores[name]
            top = max(dist, key=lambda k: dist[k])
            value[name] = int(top)
            parts += [f'"{name}":', lp(top, dist), ","]
        parts[-1] = "}"
        return (json.dumps(value), "stop", tokens_of(*parts))

    return answer


async def test_score_record_one_call_reads_logprobs() -> None:
    script = Script(
        answers={
            "JudgeOut": joint_answer(
                {
                    "coherence": {"2": 0.5, "3": 0.5},
                    "consistency": {"5": 1.0},
                    "fluency": {"4": 0.75, "2": 0.25},
                    "relevance": {"1": 1.0},
                }
            )
        }
    )
    record = {"document": "Doc.", "summary": "Sum."}
    judged = await score_record(client_with(script), SUMMEVAL, record, JudgeOptions(logprobs=5))
    result = judged.value
    assert result.values() == pytest.approx(
        {"coherence": 2.5, "consistency": 5.0, "fluency": 3.5, "relevance": 1.0}
    )
    assert result.method == "logprob" and result.rationale == "ok"
    assert result.scores["coherence"].sampled in (2, 3)
    assert result.mean == pytest.approx(3.0)
    (call,) = script.calls
    assert (call.kwargs["logprobs"], call.kwargs["top_logprobs"]) == (True, 5)
    assert judged.usage.calls == 1


async def test_score_record_per_criterion_and_no_logprobs() -> None:
    script = Script()
    opts = JudgeOptions(logprobs=0, rationale_chars=0)
    record = {"document": "Doc.", "summary": "Sum."}
    judged = await score_record(client_with(script), SUMMEVAL, record, opts, per_criterion=True)
    assert [c.task for c in script.calls] == ["PointwiseOut"] * 4
    assert all("logprobs" not in c.kwargs for c in script.calls)
    assert judged.value.method == "sampled"
    assert judged.value.values() == {n: 4.0 for n in SUMMEVAL.names}
    assert judged.value.rationale == ""
    assert judged.usage.calls == 4
    schema = script.calls[0].kwargs["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["score"]
    # Each criterion is asked on its own, with its own seed.
    asked = [re.findall(r"Criterion: (\w+)", str(c.messages[-1].content))[0] for c in script.calls]
    assert sorted(asked) == sorted(SUMMEVAL.names)
    assert len({c.kwargs["seed"] for c in script.calls}) == 4


async def test_top_logprobs_cover_the_scale() -> None:
    script = Script(answers={"PointwiseOut": {"score": 6}})
    d2t = prompts.criteria("data2text").subset(["overall"])
    record = {"act": "inform(name=x)", "utterance": "x is here."}
    await score_record(
        client_with(script), d2t, record, JudgeOptions(logprobs=2, rationale_chars=0)
    )
    assert script.calls[0].kwargs["top_logprobs"] == 6


async def test_score_record_per_criterion_failure_keeps_usage() -> None:
    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        return "{" if "Criterion: fluency" in str(messages[-1].content) else {"score": 3}

    script = Script(answers={"PointwiseOut": answer})
    with pytest.raises(LLMError) as info:
        await score_record(
            client_with(script),
            SUMMEVAL,
            {"document": "D", "summary": "S"},
            JudgeOptions(rationale_chars=0),
            per_criterion=True,
        )
    assert info.value.kind == "parse"
    assert info.value.usage.calls == 3 + 2  # three good calls, two tries at fluency


# --- pairwise --------------------------------------------------------------------------------


def shown(messages: list[BaseMessage]) -> tuple[str, str]:
    text = str(messages[-1].content)
    a = re.search(r"<a>\n(.*?)\n</a>", text, re.S).group(1)  # type: ignore[union-attr]
    b = re.search(r"<b>\n(.*?)\n</b>", text, re.S).group(1)  # type: ignore[union-attr]
    return a, b


def pairwise_judge(pick: Callable[[str, str], str]) -> Callable[..., dict[str, Any]]:
    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"rationale": "r", "winner": pick(*shown(messages))}

    return answer


@pytest.mark.parametrize(
    ("pick", "votes", "winner"),
    [
        (lambda a, b: "A" if "good" in a else "B", ("second", "second"), "second"),  # consistent
        (lambda a, b: "A", ("first", "second"), "tie"),  # position bias cancels out
        (lambda a, b: "B", ("second", "first"), "tie"),
        (lambda a, b: "tie", ("tie", "tie"), "tie"),
        (lambda a, b: "tie" if a.startswith("plain") else "A", ("tie", "second"), "second"),
        (lambda a, b: "A" if "plain" in a else "B", ("first", "first"), "first"),
    ],
)
async def test_compare_asks_both_orders(
    pick: Callable[[str, str], str], votes: tuple[str, ...], winner: str
) -> None:
    script = Script(answers={"PairwiseOut": pairwise_judge(pick)})
    judged = await compare(
        client_with(script),
        INSTRUCTION,
        {"instruction": "Say hi."},
        "plain answer",
        "good answer",
        JudgeOptions(rationale_chars=50),
        seed_parts=["x"],
    )
    assert [shown(c.messages) for c in script.calls] == [
        ("plain answer", "good answer"),
        ("good answer", "plain answer"),
    ]
    assert len({c.kwargs["seed"] for c in script.calls}) == 2
    v = judged.value
    assert v.votes == votes and v.winner == winner
    assert v.consistent is (len(set(votes)) == 1)
    assert v.rationale.startswith("first shown as A: r")
    assert judged.usage.calls == 2


async def test_compare_identical_texts_makes_no_call() -> None:
    script = Script()
    judged = await compare(
        client_with(script), INSTRUCTION, {"instruction": "Q"}, "same ", " same", JudgeOptions()
    )
    assert script.calls == []
    assert (judged.value.winner, judged.value.votes) == ("tie", ())


def test_winner_of() -> None:
    assert winner_of(["first", "first"]) == "first"
    assert winner_of(["first", "second"]) == "tie"
    assert winner_of(["tie", "second"]) == "second"
    assert winner_of([]) == "tie"


# --- the metric_judge node's settings --------------------------------------------------------

REF = Reference.from_pair("Name a fruit.", "An apple.", id="ref-fruit")
_keys = itertools.count()


@pytest.fixture
def judge_runtime() -> Iterator[Callable[..., tuple[Runtime[RefedContext], Script, Script]]]:
    keys: list[str] = []

    def make(
        answers: dict[str, Any] | None = None, *, own_judge: bool = False, **overrides: Any
    ) -> tuple[Runtime[RefedContext], Script, Script]:
        gen, jud = Script(answers=dict(answers or {})), Script(answers=dict(answers or {}))
        key = f"test-judging-{next(_keys)}"
        register_client(key, client_with(gen))
        keys.append(key)
        values: dict[str, Any] = {
            "base_url": None,
            "feedback_mode": "reference",
            "judge_bar": 3.0,
            "seed": 0,
            "judge_logprobs": 5,
            "judge_rationale_chars": 300,
            "judge_per_criterion": False,
            "judge_criteria": "instruction",
            "pairwise_filter": False,
        }
        if own_judge:
            register_client(key + "-judge", client_with(jud))
            keys.append(key + "-judge")
            values["judge_client_key"] = key + "-judge"
        values.update(overrides)
        return Runtime(context=RefedContext(client_key=key, **values)), gen, jud

    yield make
    for key in keys:
        unregister_client(key)


def state(first: str = "A banana.", response: str = "A ripe banana.") -> CandidateState:
    return CandidateState(
        reference=REF,
        instruction=NewInstruction(index=1, text="Name a yellow fruit."),
        first_response=first,
        response=response,
    )


def prefers_improved(a: str, b: str) -> str:
    return "A" if "ripe" in a else "B"


async def test_metric_judge_defaults_one_call_with_logprobs(judge_runtime: Any) -> None:
    runtime, script, _ = judge_runtime()
    update = await metric_judge(state(), runtime)
    j = update["judgement"]
    assert [c.task for c in script.calls] == ["JudgeOut"]
    assert script.calls[0].kwargs["logprobs"] is True
    assert j.criteria == "instruction" and j.pairwise is None and j.passed
    assert j.method == "sampled"  # the scripted model returns no log-probabilities
    assert update["usage"].calls == 1


async def test_metric_judge_uses_logprobs_when_returned(judge_runtime: Any) -> None:
    dists = {name: {"4": 0.5, "5": 0.5} for name in JUDGE_CRITERIA}
    runtime, _, _ = judge_runtime({"JudgeOut": joint_answer(dists)})
    j = (await metric_judge(state(), runtime))["judgement"]
    assert j.method == "logprob"
    assert j.scores == {name: 4.5 for name in JUDGE_CRITERIA}
    assert j.mean == 4.5


async def test_metric_judge_per_criterion(judge_runtime: Any) -> None:
    runtime, script, _ = judge_runtime(judge_per_criterion=True, judge_rationale_chars=0)
    update = await metric_judge(state(), runtime)
    assert [c.task for c in script.calls] == ["PointwiseOut"] * 4
    assert update["judgement"].scores == {name: 4.0 for name in JUDGE_CRITERIA}
    assert update["usage"].calls == 4


@pytest.mark.parametrize(
    ("pick", "passed", "reason_part"),
    [
        (prefers_improved, True, None),
        (lambda a, b: "B" if "ripe" in a else "A", False, "pairwise first: first, first"),
        (lambda a, b: "A", False, "pairwise tie: first, second"),
    ],
)
async def test_metric_judge_pairwise_filter(
    judge_runtime: Any, pick: Callable[[str, str], str], passed: bool, reason_part: str | None
) -> None:
    from nodes.finalize import finalize

    runtime, script, _ = judge_runtime({"PairwiseOut": pairwise_judge(pick)}, pairwise_filter=True)
    update = await metric_judge(state(), runtime)
    j = update["judgement"]
    assert [c.task for c in script.calls] == ["JudgeOut", "PairwiseOut", "PairwiseOut"]
    assert j.pairwise is not None and j.passed is passed
    assert update["usage"].calls == 3
    (cand,) = (await finalize(state().model_copy(update={"judgement": j})))["candidates"]
    assert cand.status == ("accepted" if passed else "rejected")
    if reason_part:
        assert cand.reason == f"improved response did not beat the first ({reason_part})"


async def test_pairwise_filter_skipped_under_the_bar_and_in_none_mode(judge_runtime: Any) -> None:
    low = {"rationale": "weak", **{n: 2 for n in JUDGE_CRITERIA}}
    runtime, script, _ = judge_runtime({"JudgeOut": low}, pairwise_filter=True)
    j = (await metric_judge(state(), runtime))["judgement"]
    assert not j.passed and j.pairwise is None
    assert script.count("PairwiseOut") == 0
    runtime, script, _ = judge_runtime(pairwise_filter=True, feedback_mode="none")
    j = (await metric_judge(state(first="Same.", response="Same."), runtime))["judgement"]
    assert j.passed and j.pairwise is None and script.count("PairwiseOut") == 0


async def test_pairwise_filter_identical_refinement_is_a_tie(judge_runtime: Any) -> None:
    runtime, script, _ = judge_runtime(pairwise_filter=True)
    j = (await metric_judge(state(first="Same.", response="Same."), runtime))["judgement"]
    assert script.count("PairwiseOut") == 0
    assert j.pairwise.winner == "tie" and j.pairwise.votes == () and not j.passed


async def test_metric_judge_on_its_own_client(judge_runtime: Any) -> None:
    runtime, gen, jud = judge_runtime(own_judge=True)
    await metric_judge(state(), runtime)
    assert gen.calls == [] and [c.task for c in jud.calls] == ["JudgeOut"]


async def test_metric_judge_custom_criteria_file(judge_runtime: Any, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'task = "Judge an answer."\ntarget = "response"\n[fields]\ninstruction = "Q"\n'
        'response = "A"\n[[criteria]]\nname = "brevity"\ndefinition = "Short."\n'
        "scale = [0, 1]\n",
        "brief.toml",
    )
    runtime, script, _ = judge_runtime(
        {"PointwiseOut": {"rationale": "ok", "score": 1}}, judge_criteria=str(path), judge_bar=0.5
    )
    j = (await metric_judge(state(), runtime))["judgement"]
    assert j.scores == {"brevity": 1.0} and j.scale == (0, 1) and j.criteria == "brief"
    assert "Criterion: brevity" in str(script.calls[0].messages[-1].content)


async def test_metric_judge_unusable_criteria_fail_the_candidate(
    judge_runtime: Any, tmp_path: Path
) -> None:
    runtime, script, _ = judge_runtime(judge_criteria="summeval")
    update = await metric_judge(state(), runtime)
    assert update["error"].startswith("metric_judge: config: criteria set 'summeval'")
    assert script.calls == []
    runtime, _, _ = judge_runtime(judge_criteria=str(tmp_path / "missing.toml"))
    update = await metric_judge(state(), runtime)
    assert "criteria file not found" in update["error"]


# --- the pairwise filter in the compiled graph ---------------------------------------------------


@pytest.mark.parametrize(
    ("pick", "accepted", "rounds"),
    [(prefers_improved, True, 1), (lambda a, b: "A", False, 2)],
)
async def test_graph_with_pairwise_filter(
    pick: Callable[[str, str], str], accepted: bool, rounds: int
) -> None:
    from graph.builder import compile_graph

    def pick_refined(a: str, b: str) -> str:  # the scripted refine answer plays "ripe"
        return pick(a.replace("scripted refine", "ripe"), b.replace("scripted refine", "ripe"))

    script = Script(answers={"PairwiseOut": pairwise_judge(pick_refined)})
    key = f"test-judging-graph-{next(_keys)}"
    register_client(key, client_with(script))
    try:
        ctx = RefedContext(
            client_key=key,
            base_url=None,
            feedback_mode="reference",
            per_reference=2,
            max_revisions=1,
            pairwise_filter=True,
            judge_bar=3.0,
            seed=0,
        )
        out = await compile_graph().ainvoke({"reference": REF}, context=ctx)
    finally:
        unregister_client(key)
    cands = out["candidates"]
    assert len(cands) == 2
    assert {c.status for c in cands} == {"accepted" if accepted else "rejected"}
    assert script.count("JudgeOut") == 2 * rounds
    assert script.count("PairwiseOut") == 2 * 2 * rounds  # both orders, every round
    for c in cands:
        assert c.judgement.pairwise is not None
        assert c.judgement.pairwise.winner == ("second" if accepted else "tie")
        assert c.revisions == rounds - 1
