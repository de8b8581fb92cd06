"""The LLM client every node calls.

One :class:`LLMClient` per endpoint (or per balanced set of endpoints): a limiter
(requests in flight), retries with exponential backoff and jitter (honouring
``Retry-After``), structured output by JSON schema or in the line form, and token
accounting. Failures come out as :class:`LLMError` with the usage spent, so a node can
record them on the candidate instead of raising through the fan-out.

Error classes: a 429, 5xx, timeout, dropped connection or unreadable answer is retried
(a 500 while the server answers other requests after a short pause only: the request
is at fault, not the load); a 400, 422 or the server's context-length error fails at
once; a 401, 403 or 404 raises :class:`~llm.stops.ServerRefused` (the run stops). The
request itself goes through a :class:`~llm.transport.Transport`.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Generic, Literal, TypeVar

import structlog
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ValidationError

from llm.circuit import CircuitBreaker
from llm.stops import REFUSING_STATUSES, ServerRefused
from llm.transport import (
    ChatModelTransport,
    Completion,
    ErrorKind,
    Messages,
    Transport,
    TransportError,
    server_unavailable,
)
from state.line_format import LineFormatError, line_regex, parse_lines
from state.records import Usage

log = structlog.get_logger("refed.llm")

T = TypeVar("T", bound=BaseModel)


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
                if params.get("seed") is not None:
                    # A seeded request gives the same answer again: ask for another one.
                    params = {**params, "seed": (params["seed"] + 1) & 0x7FFFFFFF}
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
