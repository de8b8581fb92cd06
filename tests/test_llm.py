"""The LLM client layer: structured output, retries, backoff, limiter, accounting, config."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import BaseModel

import llm.client as llm_mod
import state.llm_outputs as llm_outputs
from llm.balancer import Balancer
from llm.client import LLMClient, LLMError, derive_seed, json_schema_format
from llm.factory import client_for, judge_client, register_client, unregister_client, use_settings
from llm.transport import openai_chat_model
from state.context import RefedContext
from state.llm_outputs import DistilledFeedbackOut, JudgeOut
from state.settings import RefedSettings
from tests.scripted import Script, ScriptedChatModel

MESSAGES = [{"role": "system", "content": "You review."}, {"role": "user", "content": "Hi"}]
TEXT_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hi."},
]
GOOD_JUDGE = {
    "rationale": "Fine.",
    "helpfulness": 5,
    "instruction_following": 4,
    "correctness": 3,
    "clarity": 2,
}


def make_client(script: Script, **kwargs: Any) -> LLMClient:
    opts: dict[str, Any] = {"concurrency": 4, "max_retries": 2, "backoff_base": 0.0}
    opts.update(kwargs)
    return LLMClient(ScriptedChatModel(script), **opts)


def http_error(cls: type[openai.APIStatusError], status: int, retry_after: str = "0") -> Any:
    response = httpx.Response(
        status, request=httpx.Request("POST", "http://x"), headers={"retry-after": retry_after}
    )
    return cls(f"status {status}", response=response, body=None)  # type: ignore[arg-type]


def failing_then(errors: list[BaseException], answer: Any) -> Any:
    """A scripted callable that raises the given errors in turn, then answers."""
    queue = list(errors)

    def spec(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        return queue.pop(0) if queue else answer

    return spec


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the delays llm.client sleeps for, without sleeping.

    llm.client calls ``asyncio.sleep`` through the module, so this patches it for the test.
    """
    delays: list[float] = []

    async def fake_sleep(delay: float, *args: Any) -> None:
        delays.append(delay)

    monkeypatch.setattr(llm_mod.asyncio, "sleep", fake_sleep)
    return delays


# ------------------------------------------------------------------------ structured


async def test_structured_parses_the_schema_and_counts_usage() -> None:
    script = Script(answers={"JudgeOut": GOOD_JUDGE})
    client = make_client(script)
    reply = await client.structured(
        MESSAGES, JudgeOut, task="judge", temperature=0.0, max_tokens=50, seed=7
    )
    assert isinstance(reply.value, JudgeOut)
    assert reply.value.helpfulness == 5
    assert reply.value.clarity == 2
    assert reply.value.rationale == "Fine."
    assert reply.usage.calls == 1
    assert reply.usage.failed_calls == 0
    assert reply.usage.feedback_calls == 0
    assert reply.usage.prompt_tokens == 100
    assert reply.usage.completion_tokens == 20
    assert reply.logprobs is None
    # What was sent: the schema as a strict response_format, and the sampling knobs.
    (call,) = script.calls
    assert call.task == "JudgeOut"
    fmt = call.kwargs["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == JudgeOut.model_json_schema()
    assert call.kwargs["seed"] == 7
    assert call.kwargs["max_tokens"] == 50
    assert call.kwargs["temperature"] == 0.0
    assert client.meter.requests == 1
    assert client.meter.in_flight == 0


async def test_structured_schema_violation_is_retried_then_parse_error() -> None:
    bad = dict(GOOD_JUDGE, helpfulness=9)  # outside Literal[1..5]
    script = Script(answers={"JudgeOut": bad})
    client = make_client(script, max_retries=2)
    with pytest.raises(LLMError) as info:
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=50)
    err = info.value
    assert err.kind == "parse"
    assert "helpfulness" in err.message
    assert script.count("JudgeOut") == 3
    assert err.usage.calls == 3
    assert err.usage.failed_calls == 3
    assert err.usage.prompt_tokens == 300
    assert err.usage.completion_tokens == 60


async def test_structured_invalid_json_then_valid_succeeds_on_retry() -> None:
    answers = iter(["{not json", GOOD_JUDGE])
    script = Script(answers={"JudgeOut": lambda m, k: next(answers)})
    client = make_client(script, max_retries=2)
    reply = await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert reply.value.correctness == 3
    assert reply.usage.calls == 2
    assert reply.usage.failed_calls == 1
    assert script.count("JudgeOut") == 2


async def test_structured_extra_key_is_a_parse_error() -> None:
    script = Script(answers={"JudgeOut": dict(GOOD_JUDGE, extra="x")})
    client = make_client(script, max_retries=0)
    with pytest.raises(LLMError) as info:
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert info.value.kind == "parse"
    assert info.value.usage.calls == 1


async def test_structured_length_is_retried_then_length_error() -> None:
    script = Script(answers={"JudgeOut": ('{"rationale": "cut', "length")})
    client = make_client(script, max_retries=2)
    with pytest.raises(LLMError) as info:
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert info.value.kind == "length"
    assert "max_tokens=9" in info.value.message
    assert script.count("JudgeOut") == 3
    assert info.value.usage.calls == 3
    assert info.value.usage.failed_calls == 3


async def test_structured_length_even_with_valid_json_is_not_accepted() -> None:
    script = Script(answers={"JudgeOut": (json.dumps(GOOD_JUDGE), "length")})
    client = make_client(script, max_retries=1)
    with pytest.raises(LLMError) as info:
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert info.value.kind == "length"
    assert script.count("JudgeOut") == 2


# ------------------------------------------------------------------------ free text


async def test_text_returns_the_stripped_answer() -> None:
    script = Script(answers={"respond": "  Hello there.  \n"})
    client = make_client(script)
    reply = await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert reply.text == "Hello there."
    assert reply.finish_reason == "stop"
    assert reply.usage.calls == 1
    assert reply.usage.failed_calls == 0
    assert "response_format" not in script.calls[0].kwargs


async def test_text_length_raises_at_once_without_retry() -> None:
    script = Script(answers={"respond": ("A long answer that was cut", "length")})
    client = make_client(script, max_retries=3)
    with pytest.raises(LLMError) as info:
        await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert info.value.kind == "length"
    assert script.count("respond") == 1
    assert info.value.usage.calls == 1
    assert info.value.usage.failed_calls == 1
    assert info.value.usage.completion_tokens == 20


async def test_text_empty_answer_is_retried_as_parse() -> None:
    script = Script(answers={"respond": "   "})
    client = make_client(script, max_retries=1)
    with pytest.raises(LLMError) as info:
        await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert info.value.kind == "parse"
    assert script.count("respond") == 2
    assert info.value.usage.calls == 2


# ------------------------------------------------------------------------ HTTP errors


@pytest.mark.parametrize(
    ("cls", "status"), [(openai.InternalServerError, 500), (openai.RateLimitError, 429)]
)
async def test_retryable_errors_are_retried_then_succeed(
    cls: type[openai.APIStatusError], status: int, sleeps: list[float]
) -> None:
    errors = [http_error(cls, status), http_error(cls, status)]
    script = Script(answers={"JudgeOut": failing_then(errors, GOOD_JUDGE)})
    client = make_client(script, max_retries=3)
    reply = await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert reply.value.helpfulness == 5
    assert script.count("JudgeOut") == 3
    assert reply.usage.calls == 3
    assert reply.usage.failed_calls == 2
    # Only the successful attempt reported tokens.
    assert reply.usage.prompt_tokens == 100
    assert sleeps == [0.0, 0.0]  # retry-after: 0, one backoff per failed attempt
    assert client.meter.requests == 3
    assert client.meter.failed == 2


async def test_retryable_errors_exhausted_give_http_error_with_usage(sleeps: list[float]) -> None:
    script = Script(answers={"respond": http_error(openai.InternalServerError, 503)})
    client = make_client(script, max_retries=2)
    with pytest.raises(LLMError) as info:
        await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert info.value.kind == "http"
    assert "InternalServerError" in info.value.message
    assert script.count("respond") == 3
    assert info.value.usage.calls == 3
    assert info.value.usage.failed_calls == 3
    assert len(sleeps) == 2  # no sleep after the last attempt


async def test_rate_limit_retry_after_is_honoured(sleeps: list[float]) -> None:
    errors = [
        http_error(openai.RateLimitError, 429, retry_after="3"),
        http_error(openai.RateLimitError, 429, retry_after="1.5"),
    ]
    script = Script(answers={"respond": failing_then(errors, "ok")})
    client = make_client(script, max_retries=4, backoff_base=0.001, backoff_cap=20.0)
    reply = await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert reply.text == "ok"
    assert sleeps == [3.0, 1.5]


async def test_retry_after_is_capped_and_backoff_without_hint_is_bounded(
    sleeps: list[float],
) -> None:
    response = httpx.Response(500, request=httpx.Request("POST", "http://x"))  # no header
    no_hint = openai.InternalServerError("boom", response=response, body=None)  # type: ignore[arg-type]
    errors = [
        http_error(openai.RateLimitError, 429, retry_after="100"),
        no_hint,
        no_hint,
    ]
    script = Script(answers={"respond": failing_then(errors, "ok")})
    client = make_client(script, max_retries=4, backoff_base=0.01, backoff_cap=5.0)
    await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert len(sleeps) == 3
    assert sleeps[0] == 5.0  # hint capped at backoff_cap
    assert 0 <= sleeps[1] <= 0.01 * 2**1
    assert 0 <= sleeps[2] <= 0.01 * 2**2


async def test_connection_and_timeout_errors_are_classified(sleeps: list[float]) -> None:
    request = httpx.Request("POST", "http://x")
    script = Script(answers={"respond": openai.APITimeoutError(request=request)})  # type: ignore[arg-type]
    client = make_client(script, max_retries=1)
    with pytest.raises(LLMError) as info:
        await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert info.value.kind == "timeout"
    assert script.count("respond") == 2

    script2 = Script(answers={"respond": openai.APIConnectionError(request=request)})  # type: ignore[arg-type]
    client2 = make_client(script2, max_retries=1)
    with pytest.raises(LLMError) as info2:
        await client2.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert info2.value.kind == "connection"
    assert script2.count("respond") == 2


async def test_bad_request_is_not_retried(sleeps: list[float]) -> None:
    script = Script(answers={"JudgeOut": http_error(openai.BadRequestError, 400)})
    client = make_client(script, max_retries=3)
    with pytest.raises(LLMError) as info:
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert info.value.kind == "http"
    assert "HTTP 400" in info.value.message
    assert script.count("JudgeOut") == 1
    assert info.value.usage.calls == 1
    assert info.value.usage.failed_calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    ("cls", "status", "quick"),
    [(openai.InternalServerError, 500, True), (openai.InternalServerError, 503, False)],
)
async def test_a_500_while_others_are_answered_is_retried_after_a_short_pause(
    cls: type[openai.APIStatusError],
    status: int,
    quick: bool,
    sleeps: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 500 while the server answers other requests: the request, not the load, so no
    exponential backoff (a quarter of backoff_base at most); a 503 backs off as usual."""
    monkeypatch.setattr(llm_mod.random, "uniform", lambda lo, hi: hi)  # the longest draw
    response = httpx.Response(status, request=httpx.Request("POST", "http://x"))  # no hint
    error = cls("boom", response=response, body=None)  # type: ignore[arg-type]
    script = Script(answers={"respond": failing_then([error, error], "ok")})
    client = make_client(script, max_retries=3, backoff_base=4.0, backoff_cap=60.0)
    client.answered_at = float("inf")  # another request is answered after each send
    await client.text(TEXT_MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    assert sleeps == ([1.0, 1.0] if quick else [4.0, 8.0])


# ------------------------------------------------------------------------ limiter


class SlowModel(BaseChatModel):
    """Awaits on every call and records how many calls were in flight at once."""

    delay: float = 0.05
    active: int = 0
    peak: int = 0
    total: int = 0

    @property
    def _llm_type(self) -> str:
        return "slow"

    def _generate(self, *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.active += 1
        self.total += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="done"))])


async def test_limiter_bounds_concurrency() -> None:
    model = SlowModel()
    client = LLMClient(model, concurrency=3, max_retries=0)
    replies = await asyncio.gather(
        *(client.text(TEXT_MESSAGES, task="t", temperature=0, max_tokens=5) for _ in range(12))
    )
    assert [r.text for r in replies] == ["done"] * 12
    assert model.total == 12
    assert model.peak == 3  # saturated, never above the limit
    assert client.meter.in_flight == 0


async def test_without_a_tight_limit_calls_do_overlap() -> None:
    """Sanity check of SlowModel itself: the limiter test above can fail."""
    model = SlowModel()
    client = LLMClient(model, concurrency=50, max_retries=0)
    await asyncio.gather(
        *(client.text(TEXT_MESSAGES, task="t", temperature=0, max_tokens=5) for _ in range(8))
    )
    assert model.peak > 3


# ------------------------------------------------------------------------ feedback accounting


async def test_feedback_call_counted_once_even_when_retried(sleeps: list[float]) -> None:
    errors = [http_error(openai.InternalServerError, 500)]
    answers = iter(["{bad", {"instruction_guidance": ["a"], "response_guidance": ["b"]}])

    def spec(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        return errors.pop(0) if errors else next(answers)

    script = Script(answers={"DistilledFeedbackOut": spec})
    client = make_client(script, max_retries=3)
    reply = await client.structured(
        MESSAGES, DistilledFeedbackOut, task="distill", temperature=0, max_tokens=9, feedback=True
    )
    assert reply.value.response_guidance == ["b"]
    assert reply.usage.calls == 3
    assert reply.usage.failed_calls == 2
    assert reply.usage.feedback_calls == 1


async def test_failed_feedback_call_still_counts_once() -> None:
    script = Script(answers={"DistilledFeedbackOut": "{bad"})
    client = make_client(script, max_retries=2)
    with pytest.raises(LLMError) as info:
        await client.structured(
            MESSAGES, DistilledFeedbackOut, task="d", temperature=0, max_tokens=9, feedback=True
        )
    assert info.value.usage.calls == 3
    assert info.value.usage.feedback_calls == 1


async def test_text_feedback_flag_and_non_feedback_default() -> None:
    client = make_client(Script())
    fb = await client.text(TEXT_MESSAGES, task="r", temperature=0, max_tokens=9, feedback=True)
    plain = await client.text(TEXT_MESSAGES, task="r", temperature=0, max_tokens=9)
    assert fb.usage.feedback_calls == 1
    assert plain.usage.feedback_calls == 0


# ------------------------------------------------------------------------ seeds, schemas


def test_derive_seed_is_stable_distinct_and_in_range() -> None:
    a = derive_seed(0, "ref", "respond", 1)
    assert a == derive_seed(0, "ref", "respond", 1)
    assert isinstance(a, int)
    assert 0 <= a <= 0x7FFFFFFF
    others = {
        derive_seed(1, "ref", "respond", 1),
        derive_seed(0, "ref2", "respond", 1),
        derive_seed(0, "ref", "refine", 1),
        derive_seed(0, "ref", "respond", 2),
        derive_seed(0, "ref", "respond"),
    }
    assert a not in others
    assert len(others) == 5
    many = {derive_seed(0, "ref", "synthesize", r, s) for r in range(3) for s in range(20)}
    assert len(many) == 60
    # Known value: pinned so an accidental change of the derivation is noticed.
    import hashlib

    expected = (
        int.from_bytes(hashlib.sha256(b"0\x00ref\x00respond\x001").digest()[:4], "big") & 0x7FFFFFFF
    )
    assert a == expected


def _output_models() -> list[type[BaseModel]]:
    models = [
        obj
        for name, obj in vars(llm_outputs).items()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == llm_outputs.__name__
        and not name.startswith("_")
    ]
    assert len(models) >= 6
    return models


def _walk(node: Any, path: str, found: list[tuple[str, dict[str, Any]]]) -> None:
    if isinstance(node, dict):
        if "type" in node or "enum" in node or "const" in node:
            found.append((path, node))
        for key, value in node.items():
            _walk(value, f"{path}/{key}", found)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk(value, f"{path}[{i}]", found)


@pytest.mark.parametrize("model", _output_models(), ids=lambda m: m.__name__)
def test_json_schema_format_is_strict_and_bounded(model: type[BaseModel]) -> None:
    fmt = json_schema_format(model)
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == model.__name__
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["type"] == "object"
    assert schema.get("additionalProperties") is False
    assert set(schema["required"]) == set(schema["properties"])
    for defn in schema.get("$defs", {}).values():
        if defn.get("type") == "object":
            assert defn.get("additionalProperties") is False
    nodes: list[tuple[str, dict[str, Any]]] = []
    _walk(schema, "#", nodes)
    strings = [(p, n) for p, n in nodes if n.get("type") == "string"]
    arrays = [(p, n) for p, n in nodes if n.get("type") == "array"]
    assert strings, "every output schema has some text"
    for path, node in strings:
        assert isinstance(node.get("maxLength"), int), f"{model.__name__} {path}: no maxLength"
        assert node["maxLength"] <= 700
    for path, node in arrays:
        assert isinstance(node.get("maxItems"), int), f"{model.__name__} {path}: no maxItems"
        assert node["maxItems"] <= 10


def test_schema_walk_catches_an_uncapped_string() -> None:
    class Loose(BaseModel):
        text: str
        items: list[str]

    nodes: list[tuple[str, dict[str, Any]]] = []
    _walk(json_schema_format(Loose)["json_schema"]["schema"], "#", nodes)
    strings = [n for _, n in nodes if n.get("type") == "string"]
    arrays = [n for _, n in nodes if n.get("type") == "array"]
    assert len(strings) == 2
    assert all("maxLength" not in n for n in strings)
    assert arrays and all("maxItems" not in n for n in arrays)


# ------------------------------------------------------------------------ client_for


def test_client_for_without_base_url_is_a_config_error() -> None:
    with pytest.raises(LLMError) as info:
        client_for(RefedContext(base_url=None, client_key=None))
    assert info.value.kind == "config"
    assert "base_url" in info.value.message


def test_client_for_unknown_key_is_a_config_error() -> None:
    with pytest.raises(LLMError) as info:
        client_for(RefedContext(base_url=None, client_key="test-llm-never-registered"))
    assert info.value.kind == "config"
    assert "test-llm-never-registered" in info.value.message


def test_client_for_returns_the_registered_client() -> None:
    a, b = make_client(Script()), make_client(Script())
    register_client("test-llm-a", a)
    register_client("test-llm-b", b)
    try:
        assert client_for(RefedContext(base_url=None, client_key="test-llm-a")) is a
        assert client_for(RefedContext(base_url="http://unused/v1", client_key="test-llm-b")) is b
    finally:
        unregister_client("test-llm-a")
        unregister_client("test-llm-b")
    with pytest.raises(LLMError) as info:
        client_for(RefedContext(base_url=None, client_key="test-llm-a"))
    assert info.value.kind == "config"


def test_client_for_builds_one_client_per_endpoint() -> None:
    ctx = RefedContext(base_url="http://127.0.0.1:9/v1", model="m-test", client_key=None)
    use_settings(RefedSettings(concurrency=3))
    try:
        first = client_for(ctx)
        assert client_for(ctx) is first
        other = client_for(
            RefedContext(base_url="http://127.0.0.1:9/v1", model="m-other", client_key=None)
        )
        assert other is not first
    finally:
        use_settings(None)
        unregister_client("http://127.0.0.1:9/v1|m-test")
        unregister_client("http://127.0.0.1:9/v1|m-other")


def test_client_for_uses_the_settings_given_not_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client a context without a key gets is made from the settings given once
    (Studio's), over every endpoint of the context: the environment at call time, which
    says otherwise, is not read."""
    ctx = RefedContext(
        base_url="http://127.0.0.1:9/v1,http://127.0.0.1:10/v1", model="m-env", client_key=None
    )
    use_settings(RefedSettings(concurrency=3, fixed_concurrency=True, max_retries=1))
    monkeypatch.setenv("REFED_CONCURRENCY", "50")
    monkeypatch.setenv("REFED_MAX_RETRIES", "9")
    key = "http://127.0.0.1:9/v1,http://127.0.0.1:10/v1|m-env"
    try:
        client = client_for(ctx)
        assert client.max_retries == 1
        balancer = client.transport
        assert isinstance(balancer, Balancer)
        assert [ep.base_url for ep in balancer.endpoints] == [
            "http://127.0.0.1:9/v1",
            "http://127.0.0.1:10/v1",
        ]
        assert [ep.limit.limit for ep in balancer.endpoints] == [3, 3]
    finally:
        use_settings(None)
        unregister_client(key)


def test_client_for_without_settings_or_key_is_a_config_error() -> None:
    ctx = RefedContext(base_url="http://127.0.0.1:9/v1", model="m-none", client_key=None)
    with pytest.raises(LLMError) as info:
        client_for(ctx)
    assert info.value.kind == "config"
    assert "use_settings" in info.value.message


# ------------------------------------------------------------------------ a real OpenAI client


class _CannedHandler(BaseHTTPRequestHandler):
    """Answers every chat completion with ``server.content`` / ``server.finish``."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        server: Any = self.server
        server.requests += 1
        body = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": server.content},
                    "finish_reason": server.finish,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def canned_server() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _CannedHandler)
    server.requests = 0
    server.content = json.dumps(GOOD_JUDGE)
    server.finish = "stop"
    server.base_url = f"http://127.0.0.1:{server.server_port}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _real_client(base_url: str) -> LLMClient:
    chat = openai_chat_model(base_url, "m", "key", timeout=5.0)
    return LLMClient(chat, concurrency=2, max_retries=1, backoff_base=0.0)


async def test_real_openai_client_structured_success(canned_server: Any) -> None:
    """Control for the test below: the harness itself works."""
    client = _real_client(canned_server.base_url)
    reply = await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert reply.value.helpfulness == 5
    assert (reply.usage.calls, reply.usage.prompt_tokens) == (1, 10)
    assert canned_server.requests == 1


async def test_real_openai_client_structured_length_is_an_llm_error(canned_server: Any) -> None:
    canned_server.content = '{"rationale": "cut'
    canned_server.finish = "length"
    client = _real_client(canned_server.base_url)
    with pytest.raises(LLMError) as info:
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    assert info.value.kind == "length"
    assert info.value.usage.calls == 2
    assert canned_server.requests == 2


async def test_real_openai_client_structured_content_filter_is_an_llm_error(
    canned_server: Any,
) -> None:
    canned_server.finish = "content_filter"
    client = _real_client(canned_server.base_url)
    with pytest.raises(LLMError):
        await client.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)


async def test_real_openai_client_text_length_is_an_llm_error(canned_server: Any) -> None:
    canned_server.content = "An answer that was cut"
    canned_server.finish = "length"
    client = _real_client(canned_server.base_url)
    with pytest.raises(LLMError) as info:
        await client.text(TEXT_MESSAGES, task="respond", temperature=0, max_tokens=9)
    assert info.value.kind == "length"
    assert canned_server.requests == 1


async def test_a_retry_after_a_bad_answer_asks_with_another_seed() -> None:
    """A seeded request gives the same answer again: a retry that kept the seed could never
    succeed (a small model that runs to the cap at temperature 0.2 would do it every time)."""
    answers = iter(["{", json.dumps({"instruction_guidance": ["a"], "response_guidance": ["b"]})])
    script = Script(answers={"DistilledFeedbackOut": lambda m, k: next(answers)})
    client = LLMClient(ScriptedChatModel(script), max_retries=2, backoff_base=0)
    reply = await client.structured(
        [{"role": "user", "content": "x"}],
        DistilledFeedbackOut,
        task="distill",
        temperature=0.2,
        max_tokens=64,
        seed=41,
    )
    assert reply.value.response_guidance == ["b"]
    assert [c.kwargs["seed"] for c in script.calls] == [41, 42]


def test_judge_client_spreads_over_the_judges_own_endpoints() -> None:
    """``judge_base_url`` with several URLs: the judge's client balances over them, with
    its own model and limiter; without one it is on the generator's endpoints."""
    settings = RefedSettings(
        base_url="http://127.0.0.1:9/v1",
        model="gen",
        judge_base_url="http://127.0.0.1:10/v1,http://127.0.0.1:11/v1",
        judge_model="judge-m",
        judge_concurrency=2,
        fixed_concurrency=True,
    )
    balancer = judge_client(settings).transport
    assert isinstance(balancer, Balancer)
    assert [ep.base_url for ep in balancer.endpoints] == [
        "http://127.0.0.1:10/v1",
        "http://127.0.0.1:11/v1",
    ]
    assert balancer.model == "judge-m" and [ep.limit.limit for ep in balancer.endpoints] == [2, 2]
    shared = judge_client(settings.model_copy(update={"judge_base_url": None})).transport
    assert isinstance(shared, Balancer)
    assert [ep.base_url for ep in shared.endpoints] == ["http://127.0.0.1:9/v1"]
