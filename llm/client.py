"""The one LLM client layer every node calls.

One :class:`LLMClient` per endpoint: a limiter (requests in flight), timeouts,
retries with exponential backoff and jitter (honouring ``Retry-After``),
structured output by JSON schema, and token accounting. Failures come out as
:class:`LLMError` with the usage spent, so a node can record them on the
candidate instead of raising through the fan-out.

Error classes: a 429, 5xx, timeout, dropped connection or unreadable answer is retried
(a 500 while the server answers other requests after a short pause only: the request
is at fault, not the load); a 400, 422 or the server's context-length error fails at
once; a 401, 403 or 404 raises :class:`~llm.stops.ServerRefused` (the run stops).

The client sends through a :class:`Transport`. Two exist: :class:`HTTPTransport`,
one JSON POST to ``/chat/completions`` on a shared aiohttp session (the default for
a real endpoint: a tenth of the CPU per call of the openai SDK under langchain, see
BENCHMARKS.md), and :class:`ChatModelTransport`, any langchain chat model (the
scripted test model, or ``ChatOpenAI`` from :func:`openai_chat_model`). Both send the
same request body and give the same answers, errors and retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, Literal, Protocol, TypeVar

import aiohttp
import structlog
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import BaseModel, ValidationError

from llm.circuit import CircuitBreaker
from llm.stops import REFUSING_STATUSES, ServerRefused
from state.context import RefedContext
from state.line_format import LineFormatError, line_regex, parse_lines
from state.records import Usage

log = structlog.get_logger("refed.llm")

T = TypeVar("T", bound=BaseModel)
ErrorKind = Literal["length", "parse", "filtered", "http", "timeout", "connection", "config"]
Messages = Sequence[dict[str, str]]


class LLMError(Exception):
    """An LLM call that failed for good (after retries where a retry could help)."""

    def __init__(self, kind: ErrorKind, message: str, usage: Usage | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.usage = usage or Usage()


V = TypeVar("V")


@dataclass
class Reply(Generic[V]):
    value: V
    usage: Usage
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class TextReply:
    text: str
    usage: Usage
    finish_reason: str | None


@dataclass
class Meter:
    """Live counters for this process (retries and redone calls included)."""

    requests: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    in_flight: int = 0
    started: float = field(default_factory=time.monotonic)

    def tokens_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.completion_tokens / elapsed if elapsed > 0 else 0.0


def derive_seed(base: int, *parts: object) -> int:
    """A per-request seed from the run seed and what the request is for."""
    text = "\x00".join(str(p) for p in (base, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


LINE_FORM_KEYS = frozenset({"line_pattern", "item_pattern"})
"""Schema annotations for the line form only (state/line_format.py): not sent as JSON schema."""


def _without_line_keys(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_line_keys(v) for k, v in node.items() if k not in LINE_FORM_KEYS}
    if isinstance(node, list):
        return [_without_line_keys(v) for v in node]
    return node


@cache
def json_schema_format(schema: type[BaseModel]) -> dict[str, Any]:
    """The ``response_format`` for ``schema`` (built once per schema: treat as read-only)."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.__name__,
            "schema": _without_line_keys(schema.model_json_schema()),
            "strict": True,
        },
    }


@dataclass
class Completion:
    """One answer from the server, whichever transport brought it."""

    content: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[dict[str, Any]] | None = None
    """OpenAI ``choices[0].logprobs.content`` when asked for."""
    choices: list[tuple[str, str | None]] = field(default_factory=list)
    """Every choice's (content, finish_reason) when ``n`` > 1 was asked for."""


class TransportError(Exception):
    """A request that got no answer: retried by :class:`LLMClient` when ``retryable``."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class Transport(Protocol):
    """Sends one chat completion request; raises :class:`TransportError` when none came."""

    async def complete(self, messages: Messages, params: dict[str, Any]) -> Completion: ...

    async def aclose(self) -> None: ...


VLLM_ONLY_PARAMS = frozenset({"top_k", "min_p", "repetition_penalty", "structured_outputs"})
"""Sampling and decoding parameters vLLM reads from the request body that the OpenAI API
lacks: sent at the body's top level (the openai SDK's ``extra_body``)."""

_RETRYABLE_STATUS = frozenset({408, 409})
"""Status codes worth another try besides 429 and 5xx (as the openai SDK's own policy)."""


def _retryable_status(status: int) -> bool:
    return status == 429 or status >= 500 or status in _RETRYABLE_STATUS


_CONTEXT_LENGTH = re.compile(
    r"maximum context length|context[_ ]length[_ ]exceeded|max_model_len|"
    r"reduce the length of the (messages|prompt)",
    re.IGNORECASE,
)
"""The server's "prompt too long for the model" error (vLLM's words, and OpenAI's code):
the same request fails the same way every time, whatever status it came with."""


def context_length_error(text: str) -> bool:
    return _CONTEXT_LENGTH.search(text) is not None


_UNAVAILABLE_STATUS = frozenset({429, 502, 503, 504})
"""Statuses that say the server (or the proxy before it) could not take the request."""


def server_unavailable(exc: TransportError) -> bool:
    """``exc`` says the server is away or overloaded (no answer, 429, 502-504), not that
    it answered this request with an error (a 500 it gives every time, an unreadable body)."""
    return exc.kind in ("connection", "timeout") or exc.status in _UNAVAILABLE_STATUS


def _parse_retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _request_body(model: str, messages: Messages, params: dict[str, Any]) -> dict[str, Any]:
    """The body ChatOpenAI sends for the same call (``max_tokens`` as max_completion_tokens)."""
    body: dict[str, Any] = {"model": model, "stream": False, "messages": list(messages)}
    for key, value in params.items():
        if value is None:
            continue
        body["max_completion_tokens" if key == "max_tokens" else key] = value
    return body


_OPENAI_ERROR_NAMES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


class HTTPTransport:
    """One JSON POST per call to ``{base_url}/chat/completions`` on a pooled aiohttp session.

    A session belongs to an event loop, so there is one per running loop. Connections are
    not capped here: :class:`LLMClient`'s limiter bounds the requests in flight.
    """

    def __init__(self, base_url: str, model: str, api_key: str, *, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.timeout = timeout
        self._api_key = api_key
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            self._sessions = {lp: s for lp, s in self._sessions.items() if not lp.is_closed()}
            session = self._sessions[loop] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self._headers,
            )
        return session

    async def complete(self, messages: Messages, params: dict[str, Any]) -> Completion:
        payload = json.dumps(_request_body(self.model, messages, params)).encode()
        try:
            async with self._session().post(self.url, data=payload) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = _parse_retry_after(resp.headers.get("retry-after"))
        except TimeoutError as exc:
            raise TransportError(
                "timeout", f"APITimeoutError: no answer in {self.timeout:g} s", retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise TransportError(
                "connection", f"APIConnectionError: {type(exc).__name__}: {exc}", retryable=True
            ) from exc
        if status >= 400:
            error = _status_error(status, raw, retry_after)
            error.message = self._scrub(error.message)  # some servers echo the key back
            raise error
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            message = choice.get("message") or {}
            usage = data.get("usage") or {}
            lp = choice.get("logprobs")
            choices = data["choices"]
            return Completion(
                content=message.get("content") or "",
                finish_reason=choice.get("finish_reason"),
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                logprobs=lp.get("content") if isinstance(lp, dict) else None,
                choices=[
                    ((c.get("message") or {}).get("content") or "", c.get("finish_reason"))
                    for c in choices
                ]
                if len(choices) > 1
                else [],
            )
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise TransportError(
                "http",
                self._scrub(f"unreadable answer (HTTP {status}): {raw[:200]!r}"),
                retryable=True,
            ) from exc

    def _scrub(self, text: str) -> str:
        """``text`` without the API key (error bodies are stored on failed candidates)."""
        key = self._api_key
        return text.replace(key, "***") if len(key) >= 4 and key != "EMPTY" else text

    async def aclose(self) -> None:
        """Close the session of the running loop (others are dropped with their loops)."""
        loop = asyncio.get_running_loop()
        session = self._sessions.pop(loop, None)
        if session is not None:
            await session.close()


def _status_error(status: int, raw: bytes, retry_after: float | None) -> TransportError:
    detail = raw[:300].decode("utf-8", "replace")
    try:
        body = json.loads(raw)
        err = body.get("error", body) if isinstance(body, dict) else body
        detail = str(err.get("message", err) if isinstance(err, dict) else err)[:300]
    except ValueError:
        pass
    retryable = _retryable_status(status) and not context_length_error(
        raw[:2000].decode("utf-8", "replace")
    )
    message = f"HTTP {status}: {detail}"
    if retryable:
        name = _OPENAI_ERROR_NAMES.get(status, "InternalServerError")
        message = f"{name}: {message}"
    return TransportError(
        "http", message, retryable=retryable, status=status, retry_after=retry_after
    )


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    return _parse_retry_after(response.headers.get("retry-after"))


class ChatModelTransport:
    """Any langchain chat model: ``ChatOpenAI``, or the scripted model of the tests.

    openai SDK errors become :class:`TransportError`; ChatOpenAI's parse path raises on a
    cut-off or filtered structured answer, which becomes a completion with that
    ``finish_reason`` (and the tokens spent), as the HTTP transport reports it.
    """

    def __init__(self, chat_model: BaseChatModel) -> None:
        self.chat_model = chat_model

    async def complete(self, messages: Messages, params: dict[str, Any]) -> Completion:
        """One call; ``n`` > 1 becomes that many calls (a chat model returns one message)."""
        n = int(params.get("n") or 1)
        params = {k: v for k, v in params.items() if k != "n"}
        extra = {k: params.pop(k) for k in list(params) if k in VLLM_ONLY_PARAMS}
        if extra:
            params["extra_body"] = {**params.get("extra_body", {}), **extra}
        if n == 1:
            return await self._complete_one(messages, params)
        seed = params.get("seed")
        done = [
            await self._complete_one(
                messages, {**params, "seed": None if seed is None else seed + i}
            )
            for i in range(n)
        ]
        first = done[0]
        first.prompt_tokens = sum(d.prompt_tokens for d in done)
        first.completion_tokens = sum(d.completion_tokens for d in done)
        first.choices = [(d.content, d.finish_reason) for d in done]
        return first

    async def _complete_one(self, messages: Messages, params: dict[str, Any]) -> Completion:
        import openai  # only this path needs the SDK's error types (a slow import)

        retryable = (
            openai.APIConnectionError,  # includes APITimeoutError
            openai.RateLimitError,
            openai.InternalServerError,
        )
        try:
            msg = await self.chat_model.ainvoke(list(messages), **params)
        except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
            completion = getattr(exc, "completion", None)
            usage = getattr(completion, "usage", None)
            length = isinstance(exc, openai.LengthFinishReasonError)
            return Completion(
                content="",
                finish_reason="length" if length else "content_filter",
                prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            )
        except retryable as exc:
            kind: ErrorKind = "http"
            if isinstance(exc, openai.APITimeoutError):
                kind = "timeout"
            elif isinstance(exc, openai.APIConnectionError):
                kind = "connection"
            raise TransportError(
                kind,
                f"{type(exc).__name__}: {exc}",
                retryable=not context_length_error(str(exc)),
                status=getattr(exc, "status_code", None),
                retry_after=_retry_after(exc),
            ) from exc
        except openai.APIStatusError as exc:
            raise TransportError(
                "http",
                f"HTTP {exc.status_code}: {exc.message}",
                retryable=exc.status_code in _RETRYABLE_STATUS,
                status=exc.status_code,
                retry_after=_retry_after(exc),
            ) from exc
        assert isinstance(msg, AIMessage)
        meta: dict[str, Any] = dict(msg.usage_metadata or {})
        lp = msg.response_metadata.get("logprobs")
        return Completion(
            content=msg.content if isinstance(msg.content, str) else str(msg.content),
            finish_reason=msg.response_metadata.get("finish_reason"),
            prompt_tokens=int(meta.get("input_tokens", 0)),
            completion_tokens=int(meta.get("output_tokens", 0)),
            logprobs=lp.get("content") if isinstance(lp, dict) else None,
        )

    async def aclose(self) -> None:
        return None


class LLMClient:
    """Calls one endpoint with bounded concurrency, retries and accounting.

    ``transport`` is a :class:`Transport`, or a langchain chat model (wrapped in a
    :class:`ChatModelTransport`).
    """

    def __init__(
        self,
        transport: Transport | BaseChatModel,
        *,
        concurrency: int = 16,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        name: str = "default",
        circuit: CircuitBreaker | None = None,
    ) -> None:
        self.transport: Transport = (
            ChatModelTransport(transport) if isinstance(transport, BaseChatModel) else transport
        )
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.name = name
        self.concurrency = concurrency
        self._limiters: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self.meter = Meter()
        self.circuit = circuit
        """The run's circuit breaker (see llm/circuit.py); None: retries only."""
        self.answered_at = -math.inf
        """When the server last answered a request of this client (monotonic seconds)."""

    def _limiter(self) -> asyncio.Semaphore:
        """The limiter for the running loop (a semaphore belongs to one event loop)."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            self._limiters = {lp: s for lp, s in self._limiters.items() if not lp.is_closed()}
            limiter = self._limiters[loop] = asyncio.Semaphore(self.concurrency)
        return limiter

    async def aclose(self) -> None:
        """Release the transport's connections for the running loop."""
        await self.transport.aclose()

    async def _invoke(self, messages: Messages, params: dict[str, Any]) -> Completion:
        meter = self.meter
        async with self._limiter():
            meter.in_flight += 1
            meter.requests += 1
            try:
                done = await self.transport.complete(messages, params)
            except BaseException:
                meter.failed += 1
                raise
            finally:
                meter.in_flight -= 1
        meter.prompt_tokens += done.prompt_tokens
        meter.completion_tokens += done.completion_tokens
        return done

    async def _backoff(
        self, attempt: int, hinted: float | None, limit: float = math.inf, *, quick: bool = False
    ) -> None:
        """Full jitter up to ``backoff_base * 2**attempt`` (or the server's Retry-After),
        capped by ``backoff_cap`` and by ``limit`` (when the circuit breaker would open).

        ``quick``: the server answered this request with an error while it answered
        others: it is not overloaded, so there is nothing to back off from; a short
        jitter (up to a quarter of ``backoff_base``) and the request goes again.
        """
        if quick and hinted is None:
            await asyncio.sleep(random.uniform(0, self.backoff_base / 4))
            return
        delay = min(self.backoff_cap, self.backoff_base * 2 ** min(attempt, 30))
        delay = hinted if hinted is not None else random.uniform(0, delay)
        await asyncio.sleep(max(0.0, min(delay, self.backoff_cap, limit)))

    async def _call(
        self,
        messages: Messages,
        parse: Any,
        params: dict[str, Any],
        *,
        feedback: bool,
        task: str,
    ) -> tuple[Any, Usage, Completion]:
        """Send with retries; ``parse(completion)`` returns the value or raises LLMError.

        With a circuit breaker, a call whose retries are used up goes on retrying while
        the server is away (no answer, 429, 502-504: :func:`server_unavailable`) and no
        request at all was answered between its last two failures (the server is down,
        not just this request), until it gets an answer or the breaker opens and raises
        ``CircuitOpen``. A status that no retry gets past for any request (401, 403,
        404) raises :class:`~llm.stops.ServerRefused` at once: the run stops.
        """
        usage = Usage(feedback_calls=1 if feedback else 0)
        last: LLMError | None = None
        circuit = self.circuit
        previous_failure: float | None = None
        failed_at: float | None = None
        attempt = 0
        while True:
            if circuit is not None:
                circuit.check()
            usage.calls += 1
            sent_at = time.monotonic()
            try:
                done = await self._invoke(messages, params)
            except TransportError as exc:
                usage.failed_calls += 1
                if exc.status in REFUSING_STATUSES:
                    raise ServerRefused(exc.status, exc.message) from exc
                last = LLMError(exc.kind, exc.message, usage)
                if not exc.retryable:
                    raise last from exc
                log.debug("llm_retry", task=task, attempt=attempt, error=last.message[:200])
                if circuit is not None:
                    circuit.failure(last.message[:300])
                    previous_failure, failed_at = failed_at, circuit.clock()
                if attempt < self.max_retries:
                    # others answered while this one failed: the request, not the load
                    quick = self.answered_at > sent_at and not server_unavailable(exc)
                    await self._backoff(attempt, exc.retry_after, quick=quick)
                elif (
                    circuit is not None
                    and previous_failure is not None
                    and server_unavailable(exc)
                    and not circuit.answered_since(previous_failure)
                ):
                    await self._backoff(attempt, exc.retry_after, circuit.remaining())
                else:
                    break
                attempt += 1
                continue
            self.answered_at = time.monotonic()
            if circuit is not None:
                circuit.success()
            usage.prompt_tokens += done.prompt_tokens
            usage.completion_tokens += done.completion_tokens
            try:
                return parse(done), usage, done
            except LLMError as exc:
                usage.failed_calls += 1
                exc.usage = usage
                last = exc
                if exc.kind == "length" and parse in (_text, _text_or_cut):
                    raise  # a longer answer will not fit the next time either
                log.debug("llm_retry", task=task, attempt=attempt, error=exc.message[:200])
            if attempt >= self.max_retries:
                break
            attempt += 1
        assert last is not None
        last.usage = usage
        raise last

    async def text(
        self,
        messages: Messages,
        *,
        task: str,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        feedback: bool = False,
        sampling: Mapping[str, Any] | None = None,
        allow_length: bool = False,
    ) -> TextReply:
        """A free-text answer. A cut-off one (``finish_reason`` length) raises, unless
        ``allow_length``: then it comes back as is, for the caller to repair or reject."""
        params = {**(sampling or {}), "temperature": temperature, "max_tokens": max_tokens}
        params["seed"] = seed
        parse = _text_or_cut if allow_length else _text
        text, usage, done = await self._call(messages, parse, params, feedback=feedback, task=task)
        return TextReply(text, usage, done.finish_reason)

    async def structured(
        self,
        messages: Messages,
        schema: type[T],
        *,
        task: str,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        feedback: bool = False,
        logprobs: int | None = None,
        fmt: Literal["json", "lines"] = "json",
        sampling: Mapping[str, Any] | None = None,
        line_max_chars: int | None = None,
    ) -> Reply[T]:
        """An answer in ``schema``: JSON by schema, or (``fmt="lines"``) labelled lines held
        to a regular expression (:mod:`state.line_format`; no value over ``line_max_chars``),
        for small models."""
        params = _structured_params(
            schema, fmt, temperature, max_tokens, seed, sampling, line_max_chars
        )
        if logprobs:
            params.update(logprobs=True, top_logprobs=logprobs)

        def parse(done: Completion) -> T:
            return _parse_choice(schema, fmt, task, max_tokens, done.content, done.finish_reason)

        value, usage, done = await self._call(messages, parse, params, feedback=feedback, task=task)
        return Reply(value, usage, done.logprobs)

    async def structured_n(
        self,
        messages: Messages,
        schema: type[T],
        *,
        n: int,
        task: str,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        fmt: Literal["json", "lines"] = "json",
        sampling: Mapping[str, Any] | None = None,
        line_max_chars: int | None = None,
    ) -> Reply[list[T]]:
        """``n`` answers to one request (the prompt is processed once). Answers that are
        cut off or malformed are dropped; the call fails only when none is usable."""
        params = _structured_params(
            schema, fmt, temperature, max_tokens, seed, sampling, line_max_chars
        )
        params["n"] = n

        def parse(done: Completion) -> list[T]:
            found: list[T] = []
            last: LLMError | None = None
            for content, finish in done.choices or [(done.content, done.finish_reason)]:
                try:
                    found.append(_parse_choice(schema, fmt, task, max_tokens, content, finish))
                except LLMError as exc:
                    last = exc
            if not found:
                assert last is not None
                raise last
            return found

        value, usage, _ = await self._call(messages, parse, params, feedback=False, task=task)
        return Reply(value, usage)


def _structured_params(
    schema: type[BaseModel],
    fmt: Literal["json", "lines"],
    temperature: float,
    max_tokens: int,
    seed: int | None,
    sampling: Mapping[str, Any] | None,
    line_max_chars: int | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {**(sampling or {})}
    if fmt == "lines":
        params["structured_outputs"] = {"regex": line_regex(schema, line_max_chars)}
    else:
        params["response_format"] = json_schema_format(schema)
    params.update(temperature=temperature, max_tokens=max_tokens, seed=seed)
    return params


def _parse_choice(
    schema: type[T],
    fmt: Literal["json", "lines"],
    task: str,
    max_tokens: int,
    content: str,
    finish_reason: str | None,
) -> T:
    if finish_reason == "length":
        raise LLMError("length", f"{task}: output cut off at max_tokens={max_tokens}")
    if finish_reason == "content_filter":
        raise LLMError("filtered", f"{task}: the server's content filter stopped it")
    if fmt == "lines":
        try:
            return parse_lines(schema, content)
        except LineFormatError as exc:
            raise LLMError("parse", f"{task}: {exc}") from exc
    try:
        return schema.model_validate_json(content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise LLMError("parse", f"{task}: {where}: {first['msg']}") from exc


def _text(done: Completion) -> str:
    text = done.content.strip()
    if done.finish_reason == "length":
        raise LLMError("length", "answer cut off at max_tokens")
    if not text:
        raise LLMError("parse", "empty answer")
    return text


def _text_or_cut(done: Completion) -> str:
    """As :func:`_text`, but a cut-off answer is returned (its finish_reason says so)."""
    text = done.content.strip()
    if not text:
        raise LLMError("parse", "empty answer")
    return text


# --- one client per endpoint ----------------------------------------------------------

_clients: dict[str, LLMClient] = {}


def register_client(key: str, client: LLMClient) -> None:
    """Make ``client`` the one nodes use when the context names ``key``."""
    _clients[key] = client


def unregister_client(key: str) -> None:
    _clients.pop(key, None)


def openai_transport(
    base_url: str, model: str, api_key: str, *, timeout: float = 120.0
) -> HTTPTransport:
    """The fast transport to an OpenAI-compatible endpoint (what the runner uses)."""
    return HTTPTransport(base_url, model, api_key, timeout=timeout)


def openai_chat_model(
    base_url: str, model: str, api_key: str, *, timeout: float = 120.0
) -> BaseChatModel:
    """ChatOpenAI for the same endpoint (the langchain path; same requests, more CPU)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        base_url=base_url,
        model=model,
        api_key=api_key,  # type: ignore[arg-type]
        timeout=timeout,
        max_retries=0,  # retries are ours (backoff, Retry-After, accounting)
        stream_usage=False,
    )


def client_for(ctx: RefedContext) -> LLMClient:
    """The client for this context: a registered one, else one built per endpoint."""
    if ctx.client_key is not None:
        try:
            return _clients[ctx.client_key]
        except KeyError:
            raise LLMError("config", f"no LLM client registered as {ctx.client_key!r}") from None
    if not ctx.base_url:
        raise LLMError(
            "config",
            "no base_url: set REFED_BASE_URL/OPENAI_BASE_URL or start the embedded server "
            "with `python -m embedded serve`",
        )
    key = f"{ctx.base_url}|{ctx.model}"
    if key not in _clients:
        from llm.balancer import endpoint_client
        from state.settings import RefedSettings

        settings = RefedSettings()
        _clients[key] = endpoint_client(
            ctx.base_url,  # one URL, or several separated by commas
            ctx.model,
            settings.api_key.get_secret_value(),
            timeout=settings.timeout,
            concurrency=settings.concurrency,
            adaptive=not settings.fixed_concurrency,
            max_retries=settings.max_retries,
        )
    return _clients[key]


def judge_client_for(ctx: RefedContext) -> LLMClient:
    """The judge's client: a registered one, its own endpoint/model, else the generator's."""
    if ctx.judge_client_key is not None:
        try:
            return _clients[ctx.judge_client_key]
        except KeyError:
            raise LLMError(
                "config", f"no LLM client registered as {ctx.judge_client_key!r}"
            ) from None
    if ctx.judge_base_url is None and ctx.judge_model is None:
        return client_for(ctx)
    base_url = ctx.judge_base_url or ctx.base_url
    model = ctx.judge_model or ctx.model
    if not base_url:
        raise LLMError("config", "no base_url for the judge: set judge_base_url or base_url")
    key = f"judge|{base_url}|{model}"
    if key not in _clients:
        from llm.balancer import endpoint_client
        from state.settings import RefedSettings

        settings = RefedSettings()
        _clients[key] = endpoint_client(
            base_url,
            model,
            settings.api_key.get_secret_value(),
            timeout=settings.timeout,
            concurrency=ctx.judge_concurrency or settings.concurrency,
            adaptive=not settings.fixed_concurrency,
            max_retries=settings.max_retries,
            name="judge",
        )
    return _clients[key]
