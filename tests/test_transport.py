"""The HTTP transport (the default for real endpoints) against a canned aiohttp server.

It must behave as the ChatOpenAI path does: the same request body, usage, finish
reasons and logprobs, and the same error kinds and retries (tests/test_llm.py covers
the client's retry logic through the scripted model; these cover the wire).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from llm.client import LLMClient, LLMError, json_schema_format
from llm.factory import endpoint_client
from llm.stops import ServerRefused
from llm.transport import HTTPTransport, TransportError, openai_chat_model, openai_transport
from state.llm_outputs import JudgeOut

MESSAGES = [{"role": "system", "content": "You review."}, {"role": "user", "content": "Hi"}]
GOOD = {
    "rationale": "Fine.",
    "helpfulness": 5,
    "instruction_following": 4,
    "correctness": 3,
    "clarity": 2,
}
# The canned server is an async fixture on the session loop: run the tests on it too.
pytestmark = pytest.mark.asyncio(loop_scope="session")

LOGPROBS = [{"token": "{", "logprob": -0.01, "bytes": [123], "top_logprobs": []}]


class Canned:
    """Answers from a queue of (status, body, headers); records every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.queue: list[tuple[int, Any, dict[str, str]]] = []
        self.delay = 0.0

    def answer(
        self,
        content: str = json.dumps(GOOD),
        finish: str = "stop",
        logprobs: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish,
        }
        if logprobs is not None:
            choice["logprobs"] = {"content": logprobs}
        return {
            "id": "c",
            "object": "chat.completion",
            "model": "m",
            "choices": [choice],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
        }

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "smollm2"}, {"id": "smollm2-lora"}]}
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.delay:
            await asyncio.sleep(self.delay)
        status, body, headers = self.queue.pop(0) if self.queue else (200, self.answer(), {})
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)


@pytest.fixture
async def canned() -> AsyncIterator[tuple[Canned, str]]:
    state = Canned()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", state.handle)
    app.router.add_get("/v1/models", state.models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"http://127.0.0.1:{port}/v1"
    await runner.cleanup()


def client(base_url: str, **kwargs: Any) -> LLMClient:
    opts: dict[str, Any] = {"concurrency": 4, "max_retries": 2, "backoff_base": 0.0}
    opts.update(kwargs)
    return LLMClient(openai_transport(base_url, "m", "sk-test", timeout=5.0), **opts)


async def test_structured_call_sends_what_chatopenai_sends(canned: tuple[Canned, str]) -> None:
    state, url = canned
    c = client(url)
    reply = await c.structured(
        MESSAGES, JudgeOut, task="judge", temperature=0.5, max_tokens=50, seed=7, logprobs=5
    )
    await c.aclose()
    assert reply.value.helpfulness == 5
    assert (reply.usage.calls, reply.usage.prompt_tokens, reply.usage.completion_tokens) == (
        1,
        11,
        7,
    )
    (body,) = state.bodies
    # The same body ChatOpenAI builds for this call.
    from langchain_core.messages import convert_to_messages

    chat: Any = openai_chat_model(url, "m", "sk-test")
    expected = chat._get_request_payload(
        convert_to_messages(MESSAGES),
        temperature=0.5,
        max_tokens=50,
        seed=7,
        logprobs=True,
        top_logprobs=5,
        response_format=json_schema_format(JudgeOut),
    )
    assert body == json.loads(json.dumps(expected))
    assert state.headers[0]["Authorization"] == "Bearer sk-test"
    assert c.meter.requests == 1 and c.meter.prompt_tokens == 11


async def test_text_call_drops_unset_seed(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.queue.append((200, state.answer("  Hello.  "), {}))
    c = client(url)
    reply = await c.text(MESSAGES, task="respond", temperature=1.0, max_tokens=20)
    await c.aclose()
    assert reply.text == "Hello."
    assert reply.finish_reason == "stop"
    assert "seed" not in state.bodies[0] and "response_format" not in state.bodies[0]
    assert state.bodies[0]["max_completion_tokens"] == 20


async def test_logprobs_are_passed_on(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.queue.append((200, state.answer(logprobs=LOGPROBS), {}))
    c = client(url)
    reply = await c.structured(
        MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=50, logprobs=5
    )
    await c.aclose()
    assert reply.logprobs == LOGPROBS


async def test_length_structured_is_retried_then_length_error(canned: tuple[Canned, str]) -> None:
    state, url = canned
    cut = (200, state.answer('{"rationale": "cu', finish="length"), {})
    state.queue += [cut, cut, cut]
    c = client(url)
    with pytest.raises(LLMError) as info:
        await c.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    await c.aclose()
    assert info.value.kind == "length"
    assert info.value.usage.calls == 3
    assert info.value.usage.completion_tokens == 21  # the tokens of cut answers count too


async def test_content_filter_structured_is_a_filtered_error(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.queue += [(200, state.answer("", finish="content_filter"), {})] * 3
    c = client(url)
    with pytest.raises(LLMError) as info:
        await c.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    await c.aclose()
    assert info.value.kind == "filtered"


async def test_text_length_is_not_retried(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.queue.append((200, state.answer("cut", finish="length"), {}))
    c = client(url, max_retries=3)
    with pytest.raises(LLMError) as info:
        await c.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await c.aclose()
    assert info.value.kind == "length"
    assert len(state.bodies) == 1


@pytest.mark.parametrize("status", [429, 500, 503, 408, 409])
async def test_retryable_statuses_are_retried(canned: tuple[Canned, str], status: int) -> None:
    state, url = canned
    state.queue.append((status, {"error": {"message": "busy"}}, {"retry-after": "0"}))
    c = client(url)
    reply = await c.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    await c.aclose()
    assert reply.usage.calls == 2 and reply.usage.failed_calls == 1
    assert len(state.bodies) == 2


async def test_server_error_exhausted_is_an_http_error(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.queue += [(503, {"error": {"message": "overloaded"}}, {})] * 3
    c = client(url)
    with pytest.raises(LLMError) as info:
        await c.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await c.aclose()
    assert info.value.kind == "http"
    assert "InternalServerError" in info.value.message and "overloaded" in info.value.message
    assert info.value.usage.calls == 3 and info.value.usage.failed_calls == 3


@pytest.mark.parametrize("status", [400, 422])
async def test_client_errors_are_not_retried(canned: tuple[Canned, str], status: int) -> None:
    """400 and 422: the request is wrong; its candidate fails at once with the reason."""
    state, url = canned
    state.queue.append((status, {"error": {"message": "bad schema"}}, {}))
    c = client(url, max_retries=3)
    with pytest.raises(LLMError) as info:
        await c.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    await c.aclose()
    assert info.value.kind == "http"
    assert info.value.message == f"HTTP {status}: bad schema"
    assert len(state.bodies) == 1


CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens. However, you requested "
        "2300 tokens (2100 in the messages, 200 in the completion). Please reduce the length "
        "of the messages or completion.",
        "type": "BadRequestError",
        "code": 400,
    }
}


@pytest.mark.parametrize("status", [400, 500])
async def test_context_length_error_is_not_retried(canned: tuple[Canned, str], status: int) -> None:
    """vLLM's context-length error fails at once, also when a server sends it as a 500."""
    state, url = canned
    state.queue += [(status, CONTEXT_ERROR, {})] * 4
    c = client(url, max_retries=3)
    with pytest.raises(LLMError) as info:
        await c.text(MESSAGES, task="respond", temperature=0, max_tokens=200)
    await c.aclose()
    assert f"HTTP {status}: This model's maximum context length is 2048" in info.value.message
    assert len(state.bodies) == 1 and info.value.usage.calls == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_stops_at_once_with_advice(
    canned: tuple[Canned, str], status: int
) -> None:
    """401 and 403 are no candidate's fault: ServerRefused (the run stops), not an LLMError."""
    state, url = canned
    state.queue.append((status, {"error": {"message": "invalid key sk-test"}}, {}))
    c = client(url, max_retries=3)
    with pytest.raises(ServerRefused) as info:
        await c.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await c.aclose()
    assert not isinstance(info.value, LLMError)
    text = str(info.value)
    assert f"refused the API key (HTTP {status}: invalid key ***)" in text  # key scrubbed
    assert "REFED_API_KEY" in text and info.value.status_code == status
    assert len(state.bodies) == 1


async def test_an_unknown_model_stops_at_once_listing_the_served_ones(
    canned: tuple[Canned, str],
) -> None:
    state, url = canned
    state.queue.append((404, {"error": {"message": "The model `m` does not exist."}}, {}))
    c = endpoint_client([url], "m", "sk-test", max_retries=3)
    with pytest.raises(ServerRefused) as info:
        await c.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await c.aclose()
    assert info.value.served == ["smollm2", "smollm2-lora"] and info.value.url == url
    assert str(info.value) == (
        f"the LLM server at {url} does not serve model 'm' (HTTP 404: The model `m` does not "
        "exist.); it serves: smollm2, smollm2-lora (set --model to one of them)"
    )
    assert len(state.bodies) == 1


class Hints(LLMClient):
    """A client that records the server's hint each backoff got, and does not sleep."""

    hints: list[float | None]

    async def _backoff(
        self, attempt: int, hinted: float | None, limit: float = 0, *, quick: bool = False
    ) -> None:
        self.hints.append(hinted)


@pytest.mark.parametrize("status", [429, 503])
async def test_busy_answers_are_retried_with_their_retry_after(
    canned: tuple[Canned, str], status: int
) -> None:
    state, url = canned
    state.queue += [
        (status, {"error": {"message": "busy"}}, {"retry-after": "7"}),
        (status, {"error": {"message": "busy"}}, {"retry-after": "2.5"}),
    ]
    c = Hints(openai_transport(url, "m", "sk-test", timeout=5.0), max_retries=3)
    c.hints = []
    reply = await c.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await c.aclose()
    assert reply.usage.calls == 3 and c.hints == [7.0, 2.5]


async def test_unreadable_answer_is_retried(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.queue.append((200, b"<html>proxy error</html>", {}))
    c = client(url)
    reply = await c.structured(MESSAGES, JudgeOut, task="judge", temperature=0, max_tokens=9)
    await c.aclose()
    assert reply.usage.failed_calls == 1


async def test_timeout_and_connection_errors(canned: tuple[Canned, str]) -> None:
    state, url = canned
    state.delay = 1.0
    slow = LLMClient(
        HTTPTransport(url, "m", "", timeout=0.2), concurrency=2, max_retries=1, backoff_base=0
    )
    with pytest.raises(LLMError) as info:
        await slow.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await slow.aclose()
    assert info.value.kind == "timeout"
    assert info.value.usage.calls == 2

    dead = client("http://127.0.0.1:9/v1", max_retries=1)
    with pytest.raises(LLMError) as info2:
        await dead.text(MESSAGES, task="respond", temperature=0, max_tokens=9)
    await dead.aclose()
    assert info2.value.kind == "connection"


async def test_transport_error_kinds_are_plain_values() -> None:
    err = TransportError("http", "HTTP 500: x", retryable=True, status=500, retry_after=1.5)
    assert (err.kind, err.retryable, err.status, err.retry_after) == ("http", True, 500, 1.5)
