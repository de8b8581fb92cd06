"""A scripted chat model for unit tests of node logic (no server, no network).

It answers by what was asked: for a structured call, the JSON schema's name picks
a canned, schema-valid answer; for a free-text call, the prompt's system text
picks one. Tests override any task with ``answers`` (a value or a callable), and
can inject failures. An answer may be a tuple ``(content, finish_reason)`` or
``(content, finish_reason, logprobs)`` with an OpenAI ``logprobs.content`` list.
Every call is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import PrivateAttr

Answer = str | dict[str, Any] | Callable[[list[BaseMessage], dict[str, Any]], Any]

DEFAULTS: dict[str, Any] = {
    "InstructionAnalysisOut": {
        "subject_areas": ["kitchen chemistry", "food safety"],
        "skills": ["step-by-step explanation"],
        "clarity": "It names one concrete goal.",
    },
    "ResponseAnalysisOut": {
        "content": "Accurate and practical.",
        "communication": "Short numbered steps.",
        "alignment": "Does exactly what was asked.",
        "improvements": ["Say why each step matters."],
    },
    "DistilledFeedbackOut": {
        "instruction_guidance": ["Ask for one concrete, checkable outcome."],
        "response_guidance": ["Explain the reason behind each step."],
    },
    "SampleFeedbackOut": {"strengths": "Clear.", "improvements": ["Add an example."]},
    "JudgeOut": {
        "rationale": "Useful and correct.",
        "helpfulness": 4,
        "instruction_following": 4,
        "correctness": 4,
        "clarity": 4,
    },
}


def _pointwise(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A score of 4 (or the scale's top if 4 is off it), with a rationale if one is asked."""
    props = kwargs["response_format"]["json_schema"]["schema"]["properties"]
    points = props["score"]["enum"]
    answer: dict[str, Any] = {"score": 4 if 4 in points else max(points)}
    if "rationale" in props:
        answer = {"rationale": "Scripted reason.", **answer}
    return answer


def _pairwise(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Always "B": a position-biased judge (both orders together make a tie)."""
    props = kwargs["response_format"]["json_schema"]["schema"]["properties"]
    answer: dict[str, Any] = {"winner": "B"}
    if "rationale" in props:
        answer = {"rationale": "Scripted comparison.", **answer}
    return answer


def _instructions(messages: list[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
    """As many distinct instructions as the prompt asks for (``Write N new``)."""
    text = str(messages[-1].content)
    count = int(text.split("Write ", 1)[1].split(" ", 1)[0])
    seed = kwargs.get("seed", 0)
    return {
        "instructions": [
            f"Scripted instruction {seed}-{i}: explain topic {i}." for i in range(count)
        ]
    }


SCHEMA_DEFAULTS: dict[str, Answer] = {
    "InstructionsOut": _instructions,
    "PointwiseOut": _pointwise,
    "PairwiseOut": _pairwise,
}


def _fit(answer: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Drop keys the schema does not ask for (the judge's rationale can be switched off)."""
    props = kwargs["response_format"]["json_schema"]["schema"]["properties"]
    return {k: v for k, v in answer.items() if k in props}


class ScriptedError(Exception):
    pass


@dataclass
class Call:
    task: str
    messages: list[BaseMessage]
    kwargs: dict[str, Any]


@dataclass
class Script:
    answers: dict[str, Answer] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def task_of(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        fmt = kwargs.get("response_format")
        if isinstance(fmt, dict):
            return str(fmt["json_schema"]["name"])
        system = str(messages[0].content)
        return "refine" if "editor" in system else "respond"

    def answer(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> AIMessage:
        task = self.task_of(messages, kwargs)
        self.calls.append(Call(task, messages, kwargs))
        spec: Any = self.answers.get(task)
        if spec is None and task in DEFAULTS:
            spec = DEFAULTS[task]
            if task == "JudgeOut":
                spec = _fit(spec, kwargs)
        if spec is None:
            spec = SCHEMA_DEFAULTS.get(task, f"A scripted {task} answer.")
        if callable(spec):
            spec = spec(messages, kwargs)
        if isinstance(spec, BaseException):
            raise spec
        finish = "stop"
        logprobs = None
        if isinstance(spec, tuple):  # (content, finish_reason[, logprobs content list])
            spec, finish, *rest = spec
            logprobs = rest[0] if rest else None
        content = spec if isinstance(spec, str) else json.dumps(spec)
        meta: dict[str, Any] = {"finish_reason": finish}
        if logprobs is not None:  # as langchain-openai passes the server's logprobs on
            meta["logprobs"] = {"content": logprobs}
        return AIMessage(
            content=content,
            usage_metadata={"input_tokens": 100, "output_tokens": 20, "total_tokens": 120},
            response_metadata=meta,
        )

    def count(self, task: str) -> int:
        return sum(1 for c in self.calls if c.task == task)


class ScriptedChatModel(BaseChatModel):
    """A chat model whose answers come from a :class:`Script`."""

    _script: Script = PrivateAttr(default_factory=Script)

    def __init__(self, script: Script | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._script = script or Script()

    @property
    def script(self) -> Script:
        return self._script

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(
            generations=[ChatGeneration(message=self._script.answer(messages, kwargs))]
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._generate(messages, stop, **kwargs)
