"""Generation profiles, prompt variants, the line form and sampling settings on the wire."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import prompts
from llm.client import LLMClient, json_schema_format
from llm.transport import openai_transport
from state.context import RefedContext
from state.judgements import JudgeBar
from state.line_format import LineFormatError, line_regex, parse_lines, render_lines
from state.llm_outputs import (
    DistilledFeedbackOut,
    InstructionAnalysisOut,
    OneInstructionOut,
    ResponseAnalysisOut,
    SampleFeedbackOut,
)
from state.profile import ProfileError
from state.settings import RefedSettings

SCHEMA_OF = {
    "analyze_instruction": InstructionAnalysisOut,
    "analyze_response": ResponseAnalysisOut,
    "distill_feedback": DistilledFeedbackOut,
    "sample_feedback": SampleFeedbackOut,
    "synthesize_instructions": OneInstructionOut,
    "synthesize_plain": OneInstructionOut,
}


def test_every_worked_example_of_a_line_prompt_holds_to_its_schema() -> None:
    """The examples are what a small model imitates: each must be an answer the server's
    grammar would allow, and parse back."""
    profile = prompts.profile("smollm2")
    variants = profile.settings["prompt_variants"]
    checked = 0
    for task, name in variants.items():
        prompt = prompts.load(name)
        if prompt.format != "lines":
            continue
        schema = SCHEMA_OF[task]
        rx = line_regex(schema, profile.settings.get("line_max_chars"))
        for role, template in prompt.turns:
            if role == "assistant":
                assert re.fullmatch(rx, template.template), (name, template.template)
                parse_lines(schema, template.template)
                checked += 1
    assert checked >= 10


def test_line_form_round_trip_and_errors() -> None:
    value = InstructionAnalysisOut(
        subject_areas=["cooking", "food safety"],
        skills=["step-by-step advice"],
        clarity="It is clear about the dish.",
    )
    text = render_lines(value)
    assert text.splitlines()[0] == "Topics: cooking; food safety"
    assert parse_lines(InstructionAnalysisOut, text) == value
    assert re.fullmatch(line_regex(InstructionAnalysisOut), text)
    with pytest.raises(LineFormatError, match="expected 3 lines"):
        parse_lines(InstructionAnalysisOut, "Topics: cooking")
    with pytest.raises(LineFormatError, match="Skills"):
        parse_lines(InstructionAnalysisOut, "Topics: a b\nAbilities: x\nClarity: It is.")


def test_line_value_cap_bounds_every_value() -> None:
    class Notes(BaseModel):
        note: str
        items: list[str]

    rx = line_regex(Notes, 20)
    assert re.fullmatch(rx, "Note: " + "x" * 20 + "\nItems: a; b")
    assert not re.fullmatch(rx, "Note: " + "x" * 21 + "\nItems: a; b")


def test_line_shapes_are_not_sent_as_json_schema() -> None:
    sent = json.dumps(json_schema_format(InstructionAnalysisOut))
    assert "item_pattern" not in sent and "line_pattern" not in sent
    assert "subject_areas" in sent


def test_prompt_turns_parse_and_render() -> None:
    prompt = prompts.load("small/respond")
    messages = prompt.render(instruction="Q1", response="A1", new_instruction="Q2")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert [m["content"] for m in messages[1:]] == ["Q1", "A1", "Q2"]
    assert prompts.for_task("respond", {}).name == "respond"
    assert prompts.for_task("respond", {"respond": "small/respond"}).name == "small/respond"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[user]\nhi", "one \\[system\\] part"),
        ("hello\n[system]\ns\n[user]\nu", "first line"),
        ("[system]\ns\n[assistant]\na\n[user]\nu", "alternate"),
        ("[system]\ns\n[user]\nu\n[assistant]\na", "alternate"),
        ("[format]\nyaml\n[system]\ns\n[user]\nu", "json or lines"),
    ],
)
def test_malformed_prompt_files_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prompts._parse("x", text)


def test_profile_sits_under_everything_the_user_gave(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "refed.toml"
    config.write_text("top_p = 0.5\n")
    monkeypatch.setenv("REFED_CONFIG", str(config))
    monkeypatch.setenv("REFED_REPETITION_PENALTY", "1.3")
    settings = prompts.resolve_profile(RefedSettings(temperature=0.7))
    assert settings.profile == "smollm2"  # no endpoint: the embedded model's profile
    assert settings.temperature == 0.7  # flag
    assert settings.repetition_penalty == 1.3  # environment
    assert settings.top_p == 0.5  # config file
    assert settings.synthesis_mode == "sampled"  # profile
    assert settings.judge_bar == "reference:0.5"  # profile
    assert settings.max_revisions == 1  # default


def test_a_given_endpoint_keeps_the_defaults() -> None:
    settings = prompts.resolve_profile(RefedSettings(base_url="http://gpu:8000/v1"))
    assert settings.profile is None
    assert settings.temperature == 1.0 and settings.prompt_variants == {}
    chosen = prompts.resolve_profile(
        RefedSettings(base_url="http://gpu:8000/v1", profile="smollm2")
    )
    assert chosen.profile == "smollm2" and chosen.repetition_penalty is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("name = 'x'\n[settings]\ntemprature = 0.3\n", "'temprature' is not a setting"),
        ("name = 'x'\n[settings]\nbase_url = 'http://a:1/v1'\n", "cannot be set by a profile"),
        ("name = 'x'\n[settings]\ntemperature = 9\n", "temperature"),
        ("name = 'x'\nsettngs = 1\n", "unknown keys settngs"),
        ("name = [\n", "profile"),
    ],
)
def test_bad_profiles_name_the_file_and_key(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(body)
    with pytest.raises(ProfileError, match=message) as err:
        prompts.resolve_profile(RefedSettings(base_url="http://a:1/v1", profile=str(path)))
    assert str(path) in str(err.value)


def test_a_missing_prompt_variant_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("name = 'x'\n[settings.prompt_variants]\nrespond = 'small/nope'\n")
    with pytest.raises(ProfileError, match=r"respond.*small/nope"):
        prompts.resolve_profile(RefedSettings(base_url="http://a:1/v1", profile=str(path)))


@pytest.mark.parametrize(
    ("raw", "text", "anchored", "value"),
    [
        (3, "3", False, 3.0),
        ("2.5", "2.5", False, 2.5),
        ("reference", "reference:0.5", True, 0.5),
        ("reference:0.2", "reference:0.2", True, 0.2),
    ],
)
def test_judge_bar_forms(raw: Any, text: str, anchored: bool, value: float) -> None:
    bar = JudgeBar.parse(raw)
    assert (bar.text, bar.anchored, bar.value) == (text, anchored, value)
    assert RefedSettings(judge_bar=raw).judge_bar == text
    if anchored:
        assert bar.threshold(1.3) == pytest.approx(1.3 - value)
        assert bar.threshold(None) is None
    else:
        assert bar.threshold(None) == value


def test_sampling_settings_reach_the_fingerprint() -> None:
    base = RefedSettings(base_url="http://a:1/v1")
    other = RefedSettings(base_url="http://a:1/v1", min_p=0.1)
    judge = RefedSettings(base_url="http://a:1/v1", judge_repetition_penalty=1.1)
    assert base.fingerprint() != other.fingerprint()
    assert base.fingerprint() != judge.fingerprint()
    for name in (
        "top_p",
        "min_p",
        "top_k",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "judge_top_p",
        "profile",
        "respond_max_tokens",
    ):
        assert name in base.fingerprint()


async def test_sampling_goes_in_the_request_body_as_vllm_reads_it(fake_server: Any) -> None:
    """Generator and judge parameters are separate; vLLM's own ones sit at the body's top
    level; the line form is sent as structured_outputs.regex."""
    ctx = RefedContext(
        base_url=fake_server.base_url,
        top_p=0.9,
        min_p=0.05,
        top_k=40,
        repetition_penalty=1.15,
        frequency_penalty=0.1,
        presence_penalty=0.2,
        judge_repetition_penalty=1.02,
    )
    assert ctx.sampling() == {
        "top_p": 0.9,
        "min_p": 0.05,
        "top_k": 40,
        "repetition_penalty": 1.15,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
    }
    assert ctx.judge_sampling() == {"repetition_penalty": 1.02}
    client = LLMClient(openai_transport(fake_server.base_url, "fake", "EMPTY"), concurrency=2)
    try:
        await client.text(
            [{"role": "user", "content": "hi"}],
            task="t",
            temperature=0.3,
            max_tokens=32,
            sampling=ctx.sampling(),
        )
        await client.structured(
            [{"role": "user", "content": "hi"}],
            InstructionAnalysisOut,
            task="t",
            temperature=0.2,
            max_tokens=64,
            fmt="lines",
            line_max_chars=50,
        )
    finally:
        await client.aclose()
    plain, lines = fake_server.requests()[-2:]
    for key, value in ctx.sampling().items():
        assert plain[key] == value
    assert plain["temperature"] == 0.3
    assert lines["structured_outputs"]["regex"] == line_regex(InstructionAnalysisOut, 50)
    assert "response_format" not in lines
