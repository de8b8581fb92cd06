"""The judge against the real vLLM CPU server (SmolLM2-135M): log-probability scores really
read from the server, and ``judge eval`` end to end on a slice of each human-judgement set.

The model is tiny, so these check that the machinery works (every score an expectation
over the scale, reports written), not how well it agrees with people (``refed judge eval``
on the full sets measures that: BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langgraph.runtime import Runtime

import prompts
from judge.scoring import JudgeOptions, expected_score, score_record
from llm.client import LLMClient
from llm.factory import register_client, unregister_client
from llm.transport import openai_chat_model
from nodes.metric_judge import metric_judge
from state.context import RefedContext
from state.graph_state import CandidateState
from state.llm_outputs import pointwise_schema
from state.records import NewInstruction, Reference

from .conftest import REPO

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
# One event loop for the async tests: langchain-openai keeps one httpx client per URL,
# bound to the loop that first used it.
same_loop = pytest.mark.asyncio(loop_scope="session")


def real_client(base_url: str) -> LLMClient:
    return LLMClient(openai_chat_model(base_url, "smollm2", "EMPTY"), concurrency=4)


@same_loop
async def test_server_returns_usable_logprobs(vllm_base_url: str) -> None:
    cset = prompts.criteria("summeval")
    c = cset.get("fluency")
    opts = JudgeOptions(rationale_chars=40, logprobs=5)
    from judge.scoring import render_pointwise

    reply = await real_client(vllm_base_url).structured(
        render_pointwise(cset, (c,), {"summary": "The cat sat on the mat."}, opts),
        pointwise_schema(c.points, opts.rationale_chars),
        task="judge",
        temperature=0.0,
        max_tokens=opts.max_tokens(1),
        logprobs=5,
    )
    assert reply.logprobs, "the server returned no logprobs"
    assert all("top_logprobs" in t for t in reply.logprobs)
    found = expected_score(reply.logprobs, "score", c.points)
    assert found is not None, [t["token"] for t in reply.logprobs]
    value, probs = found
    assert 1.0 <= value <= 5.0
    assert math.isclose(sum(probs.values()), 1.0)
    assert reply.value.model_dump()["score"] in probs  # the sampled score is among them


@same_loop
async def test_scores_are_expectations_one_call_and_per_criterion(vllm_base_url: str) -> None:
    cset = prompts.criteria("summeval")
    record = {"document": "Rain fell all day in Leeds. Trains were late.", "summary": "Rainy."}
    client = real_client(vllm_base_url)
    for per_criterion in (False, True):
        judged = await score_record(
            client, cset, record, JudgeOptions(rationale_chars=60), per_criterion=per_criterion
        )
        result = judged.value
        assert result.method == "logprob", result
        assert set(result.scores) == set(cset.names)
        assert all(1.0 <= s.score <= 5.0 and s.probs for s in result.scores.values())
        assert judged.usage.calls == (4 if per_criterion else 1)


@same_loop
async def test_metric_judge_node_uses_logprobs(vllm_base_url: str) -> None:
    key = "test-judge-vllm-node"
    register_client(key, real_client(vllm_base_url))
    try:
        ctx = RefedContext(client_key=key, base_url=None, judge_rationale_chars=80, seed=0)
        ref = Reference.from_pair("Name a fruit.", "An apple.")
        state = CandidateState(
            reference=ref,
            instruction=NewInstruction(index=0, text="Name a yellow fruit."),
            first_response="A banana.",
            response="A banana: it is yellow when ripe.",
        )
        update = await metric_judge(state, Runtime(context=ctx))
    finally:
        unregister_client(key)
    j = update["judgement"]
    assert j.method == "logprob"
    assert set(j.scores) == {"helpfulness", "instruction_following", "correctness", "clarity"}
    assert all(1.0 <= v <= 5.0 for v in j.scores.values())


def run_eval(base_url: str, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "graph.judge",
            "eval",
            *args,
            "--base-url",
            base_url,
            "--model",
            "smollm2",
            "--concurrency",
            "8",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.mark.parametrize(
    ("name", "sample", "extra", "levels"),
    [
        ("summeval", 16, ["--judge-rationale-chars", "0"], {"record", "document", "system"}),
        ("topical_chat", 12, ["--judge-rationale-chars", "0"], {"record", "document", "system"}),
        ("sfres", 8, ["--judge-rationale-chars", "0"], {"record", "document"}),
        (
            "topical_chat",
            6,
            [
                *("--criterion", "coherence", "--criterion", "overall"),
                *("--judge-per-criterion", "--judge-rationale-chars", "60"),
            ],
            {"record", "document", "system"},
        ),
    ],
)
def test_judge_eval_pointwise_slice(
    vllm_base_url: str,
    shared_data: Path,
    tmp_path: Path,
    name: str,
    sample: int,
    extra: list[str],
    levels: set[str],
) -> None:
    out = tmp_path / name
    res = run_eval(vllm_base_url, out, "--set", name, "--sample", str(sample), *extra)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["records"] == sample and report["failed"] == 0, report["errors"]
    assert report["method"] == {"logprob": sample}  # the server's logprobs really used
    assert set(report["levels"]) == levels
    criteria = report["levels"]["record"]
    asked = extra.count("--criterion")
    assert len(criteria) == (asked or len(prompts.criteria(report["criteria"]).names))
    for row in criteria.values():
        assert row["n"] == sample
        assert row["spearman"] is None or -1.0 <= row["spearman"] <= 1.0
    judged = [json.loads(line) for line in (out / "judged.jsonl").read_text().splitlines()]
    assert len(judged) == sample
    for row in judged:
        for s in row["judge"]["scores"].values():
            assert s["method"] == "logprob" and s["probs"]
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert "Spearman / Kendall" in (out / "report.md").read_text()


def test_judge_eval_pairwise_slice(vllm_base_url: str, shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "autoj"
    res = run_eval(
        vllm_base_url, out, "--set", "autoj", "--sample", "4", "--judge-rationale-chars", "0"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["records"] == 4 and report["judged"] >= 1, report["errors"]
    a = report["agreement"]
    assert a["n"] == report["judged"]
    assert 0.0 <= a["with_ties"] <= 1.0
    assert sum(sum(row.values()) for row in report["confusion"].values()) == report["judged"]
    for line in (out / "judged.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["verdict"] is not None:
            assert len(row["verdict"]["votes"]) == 2  # both orders asked
    assert "agreement with ties" in (out / "report.md").read_text()
