"""The one LLM client layer every node calls.

One :class:`LLMClient` per endpoint: a limiter (requests in flight), timeouts,
retries with exponential backoff and jitter (honouring ``Retry-After``),
structured output by JSON schema, and token accounting. Failures come out as
:class:`LLMError` with the usage spent, so a node can record them on the
candidate instead of raising through the fan-out.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import openai
import structlog
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from pydantic import BaseModel, ValidationError

from state.context import RefedContext
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


@dataclass
class Reply(Generic[T]):
    value: T
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


def json_schema_format(schema: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {
            "name": schema.__name__,
            "schema": schema.model_json_schema(),
            "strict": True,
        },
    }


_RETRYABLE = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
)


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


_RETRYABLE_STATUS = frozenset({408, 409})
"""Status codes worth another try besides 429 and 5xx (as the openai SDK's own policy)."""


def _classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    return "http"


def _finish_error(exc: openai.OpenAIError) -> tuple[LLMError, int, int]:
    """ChatOpenAI's parse path raises on a cut-off or filtered structured answer."""
    completion = getattr(exc, "completion", None)
    usage = getattr(completion, "usage", None)
    prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    done = int(getattr(usage, "completion_tokens", 0) or 0)
    if isinstance(exc, openai.LengthFinishReasonError):
        return LLMError("length", "output cut off at max_tokens"), prompt, done
    return LLMError("filtered", "the server's content filter stopped the answer"), prompt, done


class LLMClient:
    """Calls one chat model with bounded concurrency, retries and accounting."""

    def __init__(
        self,
        chat_model: BaseChatModel,
        *,
        concurrency: int = 16,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        name: str = "default",
    ) -> None:
        self.chat_model = chat_model
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.name = name
        self.concurrency = concurrency
        self._limiters: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self.meter = Meter()

    def _limiter(self) -> asyncio.Semaphore:
        """The limiter for the running loop (a semaphore belongs to one event loop)."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            self._limiters = {lp: s for lp, s in self._limiters.items() if not lp.is_closed()}
            limiter = self._limiters[loop] = asyncio.Semaphore(self.concurrency)
        return limiter

    async def _invoke(self, messages: Messages, **kwargs: Any) -> AIMessage:
        async with self._limiter():
            self.meter.in_flight += 1
            self.meter.requests += 1
            try:
                msg = await self.chat_model.ainvoke(list(messages), **kwargs)
            except BaseException:
                self.meter.failed += 1
                raise
            finally:
                self.meter.in_flight -= 1
        assert isinstance(msg, AIMessage)
        meta: dict[str, Any] = dict(msg.usage_metadata or {})
        self.meter.prompt_tokens += int(meta.get("input_tokens", 0))
        self.meter.completion_tokens += int(meta.get("output_tokens", 0))
        return msg

    async def _backoff(self, attempt: int, exc: BaseException | None) -> None:
        hinted = _retry_after(exc) if exc is not None else None
        delay = min(self.backoff_cap, self.backoff_base * 2**attempt)
        delay = hinted if hinted is not None else random.uniform(0, delay)
        await asyncio.sleep(min(delay, self.backoff_cap))

    async def _call(
        self,
        messages: Messages,
        parse: Any,
        *,
        feedback: bool,
        task: str,
        **kwargs: Any,
    ) -> tuple[Any, Usage, AIMessage]:
        """Send with retries; ``parse(msg)`` returns the value or raises LLMError."""
        usage = Usage(feedback_calls=1 if feedback else 0)
        last: LLMError | None = None
        for attempt in range(self.max_retries + 1):
            usage.calls += 1
            try:
                msg = await self._invoke(messages, **kwargs)
            except _RETRYABLE as exc:
                usage.failed_calls += 1
                last = LLMError(_classify(exc), f"{type(exc).__name__}: {exc}", usage)
                log.debug("llm_retry", task=task, attempt=attempt, error=last.message[:200])
                if attempt < self.max_retries:
                    await self._backoff(attempt, exc)
                continue
            except openai.APIStatusError as exc:
                usage.failed_calls += 1
                last = LLMError("http", f"HTTP {exc.status_code}: {exc.message}", usage)
                if exc.status_code not in _RETRYABLE_STATUS:
                    raise last from exc
                if attempt < self.max_retries:
                    await self._backoff(attempt, exc)
                continue
            except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
                usage.failed_calls += 1
                last, prompt_tokens, completion_tokens = _finish_error(exc)
                usage.prompt_tokens += prompt_tokens
                usage.completion_tokens += completion_tokens
                last.usage = usage
                log.debug("llm_retry", task=task, attempt=attempt, error=last.message)
                continue
            meta: dict[str, Any] = dict(msg.usage_metadata or {})
            usage.prompt_tokens += int(meta.get("input_tokens", 0))
            usage.completion_tokens += int(meta.get("output_tokens", 0))
            try:
                return parse(msg), usage, msg
            except LLMError as exc:
                usage.failed_calls += 1
                exc.usage = usage
                last = exc
                if exc.kind == "length" and parse is _text:
                    raise  # a longer answer will not fit the next time either
                log.debug("llm_retry", task=task, attempt=attempt, error=exc.message[:200])
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
    ) -> TextReply:
        msg_text, usage, msg = await self._call(
            messages,
            _text,
            feedback=feedback,
            task=task,
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
        )
        return TextReply(msg_text, usage, msg.response_metadata.get("finish_reason"))

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
    ) -> Reply[T]:
        extra: dict[str, Any] = {}
        if logprobs:
            extra = {"logprobs": True, "top_logprobs": logprobs}

        def parse(msg: AIMessage) -> T:
            if msg.response_metadata.get("finish_reason") == "length":
                raise LLMError("length", f"{task}: output cut off at max_tokens={max_tokens}")
            try:
                return schema.model_validate_json(_content(msg))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "(root)"
                raise LLMError("parse", f"{task}: {where}: {first['msg']}") from exc

        value, usage, msg = await self._call(
            messages,
            parse,
            feedback=feedback,
            task=task,
            response_format=json_schema_format(schema),
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            **extra,
        )
        lp = msg.response_metadata.get("logprobs")
        return Reply(value, usage, lp.get("content") if isinstance(lp, dict) else None)


def _content(msg: AIMessage) -> str:
    return msg.content if isinstance(msg.content, str) else str(msg.content)


def _text(msg: AIMessage) -> str:
    text = _content(msg).strip()
    if msg.response_metadata.get("finish_reason") == "length":
        raise LLMError("length", "answer cut off at max_tokens")
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


def openai_chat_model(
    base_url: str, model: str, api_key: str, *, timeout: float = 120.0
) -> BaseChatModel:
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
        from state.settings import RefedSettings

        settings = RefedSettings()
        chat = openai_chat_model(
            ctx.base_url,
            ctx.model,
            settings.api_key.get_secret_value(),
            timeout=settings.timeout,
        )
        _clients[key] = LLMClient(
            chat, concurrency=settings.concurrency, max_retries=settings.max_retries
        )
    return _clients[key]
