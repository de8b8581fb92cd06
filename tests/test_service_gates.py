"""The service screens accepted samples with the batch job's quality gates (scripted LLM)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.messages import BaseMessage

from llm.client import LLMClient
from serve.app import create_app
from state.settings import RefedSettings

from .scripted import Script, ScriptedChatModel

REFERENCE = {
    "instruction": "How do I keep cut apples from turning brown?",
    "response": "Dip the slices in water with a little lemon juice, then keep them cold.",
}
NEAR_COPY = "How do I keep cut apples from turning brown overnight?"
BENCHMARK_PROMPT = "Write a haiku about the autumn moon rising over a quiet mountain lake."
DISTINCT = "Explain why bread goes stale faster in the fridge than on the counter."


def _service(tmp_path: Path, **overrides: Any) -> tuple[TestClient, Script]:
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"instruction": BENCHMARK_PROMPT}) + "\n")
    texts = itertools.cycle([NEAR_COPY, BENCHMARK_PROMPT, DISTINCT])

    def instructions(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"instructions": [next(texts)]}

    script = Script(answers={"InstructionsOut": instructions})
    settings = RefedSettings(
        **{
            "service_db": tmp_path / "svc.sqlite",
            "decontaminate": [str(bench)],
            "max_revisions": 0,
            **overrides,
        }
    )
    client = LLMClient(ScriptedChatModel(script), concurrency=4, max_retries=0)
    app = create_app(settings, base_url="http://scripted.invalid/v1", model="s", client=client)
    return TestClient(app), script


def _by_instruction(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["instruction"]: s for s in body["samples"] + body["rejected"]}


def test_gates_drop_a_near_copy_and_a_benchmark_prompt(tmp_path: Path) -> None:
    http, script = _service(tmp_path)
    with http:
        r = http.post("/v1/synthesize", json={**REFERENCE, "samples": 3})
        assert r.status_code == 200, r.text
        got = _by_instruction(r.json())
        assert set(got) == {NEAR_COPY, BENCHMARK_PROMPT, DISTINCT}
        assert [s["instruction"] for s in r.json()["samples"]] == [DISTINCT]
        near = got[NEAR_COPY]
        assert near["status"] == "rejected" and near["filter"]["name"] == "near-duplicate"
        assert near["filter"]["match_id"].startswith("seed:")
        assert near["reason"].startswith("near-duplicate (rouge-l")
        bench = got[BENCHMARK_PROMPT]
        assert bench["filter"]["name"] == "decontamination"
        assert bench["filter"]["source"] == "bench" and bench["filter"]["method"] == "exact"
        assert bench["reason"].startswith("benchmark contamination: instruction overlaps")
        assert script.count("JudgeOut") + script.count("PointwiseOut") >= 3  # all were judged

        # the stream reports the same verdicts in its sample events
        with http.stream(
            "POST", "/v1/synthesize/stream", json={**REFERENCE, "samples": 3}
        ) as stream:
            text = "".join(stream.iter_text())
        events = [block.split("\n", 1) for block in text.strip().split("\n\n")]
        samples = [json.loads(d[6:]) for e, d in events if e == "event: sample"]
        assert sorted(s["status"] for s in samples) == ["accepted", "rejected", "rejected"]
        done = json.loads(events[-1][1][6:])
        assert [s["instruction"] for s in done["samples"]] == [DISTINCT]


@pytest.mark.parametrize("near_dup", ["rouge-l", "off"])
def test_a_request_can_turn_the_gates_off(tmp_path: Path, near_dup: str) -> None:
    http, _ = _service(tmp_path, near_dup=near_dup)
    with http:
        body = {**REFERENCE, "samples": 3, "options": {"quality_gates": False}}
        r = http.post("/v1/synthesize", json=body)
        assert r.status_code == 200, r.text
        assert len(r.json()["samples"]) == 3
        assert all(s["filter"] is None for s in r.json()["samples"])


def test_a_request_can_turn_the_gates_on_when_the_service_has_none(tmp_path: Path) -> None:
    """near_dup off and no benchmarks: off by default, the batch's near-dup gate on request."""
    http, _ = _service(tmp_path, near_dup="off", decontaminate=[])
    with http:
        r = http.post("/v1/synthesize", json={**REFERENCE, "samples": 3})
        assert len(r.json()["samples"]) == 3
        body = {**REFERENCE, "samples": 3, "options": {"quality_gates": True}}
        got = _by_instruction(http.post("/v1/synthesize", json=body).json())
        assert got[NEAR_COPY]["filter"]["name"] == "near-duplicate"
        assert got[BENCHMARK_PROMPT]["status"] == "accepted"  # no benchmarks to check
