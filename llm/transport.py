"""How a request reaches an OpenAI-compatible server: one chat completion per call.

A :class:`Transport` sends one request body and gives back a :class:`Completion`, or
raises :class:`TransportError` when no answer came (``retryable`` says whether another
try may help). Two exist: :class:`HTTPTransport`, one JSON POST to ``/chat/completions``
on a shared aiohttp session (the default for a real endpoint: a tenth of the CPU per
call of the openai SDK under langchain), and :class:`ChatModelTransport`, any langchain
chat model (the scripted test model, or ``ChatOpenAI`` from :func:`openai_chat_model`).
Both send the same request body and report the same answers and errors.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import aiohttp
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage

ErrorKind = Literal["length", "parse", "filtered", "http", "timeout", "connection", "config"]
Messages = Sequence[dict[str, str]]


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
