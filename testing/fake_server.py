"""A fake OpenAI-compatible chat server for tests and benchmarks.

It sleeps a set latency, then answers ``/v1/chat/completions``: for a
``response_format`` json_schema request, a small JSON that satisfies the
schema (strings filled to their ``minLength``, lists to ``maxItems`` up to 10,
the last enum value), varied by the request so instructions differ; otherwise a short
text. It reports its own CPU time at ``/stats`` so a benchmark can show it is
not the bottleneck.

    python -m testing.fake_server --port 8100 --latency 0.2

For reliability tests it injects faults: ``--fault-rate 0.2`` answers that share of
chat requests with a fault drawn from ``--faults`` (comma-separated kinds, all of
:data:`FAULT_KINDS` by default; ``--fault-seed`` makes the draw repeatable):

    429        rate limited, with a ``Retry-After`` header (``--retry-after`` seconds)
    500, 503   server errors with an OpenAI-style error body
    reset      the connection is dropped halfway through the body
    timeout    no answer for ``--hang`` seconds (longer than the client's timeout)
    truncated  a 200 whose JSON body is cut in half
    nonjson    a 200 with an HTML page instead of JSON
    length     a 200 with half the content and ``finish_reason: length``
    badschema  a 200 whose content is JSON that violates the requested schema
    auth       (not in the default set) a 401 that echoes the bearer token back, as
               some servers do, to check that clients never print it

``--down-after N`` drops every chat request after the N-th (connection reset), as
if the server were gone; ``POST /admin/down`` and ``POST /admin/up`` do the same by
hand (``/admin/down?for=S`` comes back up by itself after S seconds). ``/stats``
counts requests and the faults injected by kind.

Poison requests: ``--poison-rate 0.2`` fails that share of *distinct* requests every
time they are sent, keyed on a hash of the request body (``--poison-seed`` picks which
ones), with ``--poison-status`` (500) and the message ``poisoned request HASH``, after
the usual latency; the others are answered normally. A retry is the same body, so it
fails again, as a prompt that trips a server bug does. ``/stats`` lists the poisoned
hashes and how often each was sent.

What the server serves: ``--models a,b`` (default: ``fake``) at ``/v1/models``; a chat
request for another model gets vLLM's 404. ``--api-key K`` answers 401 to any request
without that bearer token. ``--models-delay S`` makes ``/v1/models`` answer after S
seconds (a slow but live server). ``POST /admin/models?set=a,b`` and
``POST /admin/key?set=K`` change them while running.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import json
import os
import random
import resource
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

_FILL = "fake answer text about the given topic with more words here "


def regex_text(pattern: str, salt: str) -> str:
    """A string the regular expression matches (the subset the line form uses: literals,
    classes, groups, alternation, bounded repeats), varied by ``salt`` and word-like where
    a class allows letters and spaces."""
    import re._constants as c
    import re._parser as parser

    seed = int(hashlib.sha1(salt.encode()).hexdigest()[:8], 16)
    rng = random.Random(seed)

    def allowed(items: Any, ch: str) -> bool:
        negate, hit = False, False
        for op, av in items:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL:
                hit |= ord(ch) == av
            elif op is c.RANGE:
                hit |= av[0] <= ord(ch) <= av[1]
            elif op is c.CATEGORY:
                if av is c.CATEGORY_SPACE:
                    hit |= ch.isspace()
                elif av is c.CATEGORY_DIGIT:
                    hit |= ch.isdigit()
                elif av is c.CATEGORY_WORD:
                    hit |= ch.isalnum() or ch == "_"
        return hit != negate

    def one_of(items: Any, offset: int) -> str:
        for k in range(len(_FILL)):
            ch = _FILL[(offset + k) % len(_FILL)]
            if allowed(items, ch):
                return ch
        for ch in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.?!":
            if allowed(items, ch):
                return ch
        raise ValueError("fake server: a character class it cannot fill")

    def walk(tree: Any) -> str:
        out: list[str] = []
        for op, av in tree:
            if op is c.LITERAL:
                out.append(chr(av))
            elif op is c.IN:
                out.append(one_of(av, rng.randrange(len(_FILL))))
            elif op is c.NOT_LITERAL:
                out.append(one_of([(c.NEGATE, None), (c.LITERAL, av)], rng.randrange(len(_FILL))))
            elif op is c.SUBPATTERN:
                out.append(walk(av[-1]))
            elif op is c.BRANCH:
                out.append(walk(rng.choice(av[1])))
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
                lo, hi, sub = av
                top = lo if hi is c.MAXREPEAT else min(hi, max(lo, 24))
                n = rng.randint(lo, max(lo, top))
                if len(sub) == 1 and sub[0][0] in (c.IN, c.NOT_LITERAL):
                    op1, av1 = sub[0]
                    items = av1 if op1 is c.IN else [(c.NEGATE, None), (c.LITERAL, av1)]
                    start = rng.randrange(len(_FILL))
                    out.append("".join(one_of(items, start + i) for i in range(n)))
                else:
                    out.extend(walk(sub) for _ in range(n))
            elif op is c.ANY:
                out.append("x")
            elif op is c.AT:
                continue
            else:
                raise ValueError(f"fake server: regex op {op} not supported")
        return "".join(out)

    return walk(parser.parse(pattern))


def instance(schema: dict[str, Any], defs: dict[str, Any], salt: str) -> Any:
    """A small value valid under ``schema`` (the subset our schemas use)."""
    if "$ref" in schema:
        return instance(defs[schema["$ref"].split("/")[-1]], defs, salt)
    if "enum" in schema:
        return schema["enum"][-1]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return instance(schema[key][0], defs, salt)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: instance(v, defs, f"{salt}.{k}") for k, v in props.items()}
    if kind == "array":
        # As many items as allowed (up to 10): a model asked for N items gives N.
        n = max(schema.get("minItems", 1), min(schema.get("maxItems", 3), 10))
        return [instance(schema.get("items", {}), defs, f"{salt}.{i}") for i in range(n)]
    if kind == "string":
        text = f"fake {hashlib.sha1(salt.encode()).hexdigest()[:10]} text"
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 200)
        text = text.ljust(lo, "x")
        return text[:hi]
    if kind == "integer":
        return int(schema.get("maximum", schema.get("minimum", 4)))
    if kind == "number":
        return float(schema.get("minimum", 1.0))
    if kind == "boolean":
        return True
    return None


FAULT_KINDS = (
    "429",
    "500",
    "503",
    "reset",
    "timeout",
    "truncated",
    "nonjson",
    "length",
    "badschema",
)
"""The faults ``--faults`` injects by default."""
EXTRA_FAULT_KINDS = ("auth",)


class FakeServer:
    def __init__(
        self,
        latency: float = 0.05,
        model: str = "fake",
        *,
        fault_rate: float = 0.0,
        faults: Sequence[str] = FAULT_KINDS,
        fault_seed: int | None = None,
        down_after: int | None = None,
        hang: float = 30.0,
        retry_after: float = 1.0,
        capacity: int | None = None,
        poison_rate: float = 0.0,
        poison_seed: int = 0,
        poison_status: int = 500,
        models: Sequence[str] | None = None,
        api_key: str | None = None,
        models_delay: float = 0.0,
    ) -> None:
        unknown = set(faults) - set(FAULT_KINDS) - set(EXTRA_FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(sorted(unknown))}")
        if fault_rate > 0 and not faults:
            raise ValueError("--fault-rate needs at least one fault kind")
        self.latency = latency
        self.model = model
        self.slots = asyncio.Semaphore(capacity) if capacity else None
        """``capacity``: at most this many requests processed at once, the others wait."""
        self.requests = 0
        self.last_bodies: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.in_flight = 0
        self.max_in_flight = 0
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.rng = random.Random(fault_seed)
        self.down_after = down_after
        self.hang = hang
        self.retry_after = retry_after
        self.down = False
        self.up_at: float | None = None
        """When a timed ``/admin/down?for=S`` ends (monotonic seconds)."""
        self.injected: dict[str, int] = {}
        self.refused = 0
        self.answered = 0
        self.poison_rate = poison_rate
        self.poison_seed = poison_seed
        self.poison_status = poison_status
        self.poisoned: dict[str, int] = {}
        """Poisoned body hash -> how many times it was sent."""
        self.served = list(models) if models else [model]
        self.api_key = api_key
        self.models_delay = models_delay
        self.unauthorized = 0
        self.unknown_model = 0

    def poison_hash(self, body: dict[str, Any]) -> str | None:
        """The body's hash when it is one of the poisoned requests, else None."""
        if self.poison_rate <= 0:
            return None
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(f"{self.poison_seed}:{canonical}".encode()).hexdigest()
        return digest[:16] if int(digest[:8], 16) / 2**32 < self.poison_rate else None

    def authorized(self, request: web.Request) -> bool:
        if self.api_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    def is_down(self) -> bool:
        if self.down and self.up_at is not None and time.monotonic() >= self.up_at:
            self.down, self.up_at = False, None
        if self.down_after is not None and self.requests > self.down_after:
            return True
        return self.down

    def draw_fault(self) -> str | None:
        if self.fault_rate <= 0 or self.rng.random() >= self.fault_rate:
            return None
        return self.rng.choice(self.faults)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests += 1
        if not self.authorized(request):
            self.unauthorized += 1
            return _error(401, "invalid API key", "AuthenticationError")
        if body.get("model") not in self.served:
            self.unknown_model += 1
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if self.is_down():
            self.refused += 1
            return await _drop(request, b"")
        poison = self.poison_hash(body)
        if poison is not None:
            self.poisoned[poison] = self.poisoned.get(poison, 0) + 1
            async with self.slots or contextlib.nullcontext():
                await asyncio.sleep(self.latency)
            message = f"poisoned request {poison}: it fails every time"
            return _error(self.poison_status, message, "fake_poison")
        fault = self.draw_fault()
        if fault is not None:
            self.injected[fault] = self.injected.get(fault, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async with self.slots or contextlib.nullcontext():
                await asyncio.sleep(self.hang if fault == "timeout" else self.latency)
        finally:
            self.in_flight -= 1
        if fault is not None and fault != "timeout":
            return await self.faulty(request, body, fault)
        self.answered += 1
        return web.json_response(self.completion(body))

    def completion(
        self, body: dict[str, Any], *, content: str | None = None, finish: str = "stop"
    ) -> dict[str, Any]:
        self.last_bodies.append(body)
        salt = f"{self.requests}:{body.get('seed')}:{len(json.dumps(body['messages']))}"
        fmt = body.get("response_format") or {}
        regex = (body.get("structured_outputs") or {}).get("regex")
        contents: list[str] = []
        for i in range(max(1, int(body.get("n") or 1))):
            one = f"{salt}:{i}"
            if content is not None:
                contents.append(content)
            elif fmt.get("type") == "json_schema":
                schema = fmt["json_schema"]["schema"]
                contents.append(json.dumps(instance(schema, schema.get("$defs", {}), one)))
            elif regex:
                contents.append(regex_text(regex, one))
            else:
                contents.append(f"A fake answer ({one}).")
        prompt_tokens = sum(len(m.get("content", "")) for m in body["messages"]) // 4
        completion_tokens = max(1, sum(len(text) for text in contents) // 4)
        return {
            "id": f"chatcmpl-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                }
                for i, text in enumerate(contents)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    async def faulty(
        self, request: web.Request, body: dict[str, Any], fault: str
    ) -> web.StreamResponse:
        """The answer for an injected ``fault`` (any kind but ``timeout``)."""
        if fault in ("429", "500", "503"):
            status = int(fault)
            headers = {"Retry-After": f"{self.retry_after:g}"} if status == 429 else None
            error = {"message": f"injected fault {fault}", "type": "fake_fault", "code": status}
            return web.json_response({"error": error}, status=status, headers=headers)
        if fault == "auth":
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            error = {"message": f"Incorrect API key provided: {token}", "code": 401}
            return web.json_response({"error": error}, status=401)
        if fault == "reset":
            return await _drop(request, json.dumps(self.completion(body)).encode())
        if fault == "truncated":
            raw = json.dumps(self.completion(body)).encode()
            return web.Response(body=raw[: len(raw) // 2], content_type="application/json")
        if fault == "nonjson":
            page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
            return web.Response(text=page, content_type="text/html")
        if fault == "length":
            full = self.completion(body)["choices"][0]["message"]["content"]
            return web.json_response(
                self.completion(body, content=full[: len(full) // 2], finish="length")
            )
        if fault == "badschema":
            return web.json_response(self.completion(body, content='{"unexpected": [1, 2]}'))
        raise AssertionError(fault)

    async def models(self, request: web.Request) -> web.Response:
        if self.models_delay:
            await asyncio.sleep(self.models_delay)
        if not self.authorized(request):
            return _error(401, "invalid API key", "AuthenticationError")
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served]}
        )

    async def last(self, request: web.Request) -> web.Response:
        """The last chat request bodies answered (at most 50), oldest first."""
        return web.json_response(list(self.last_bodies))

    async def stats(self, request: web.Request) -> web.Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response(
            {
                "requests": self.requests,
                "answered": self.answered,
                "max_in_flight": self.max_in_flight,
                "faults": dict(sorted(self.injected.items())),
                "refused": self.refused,
                "unauthorized": self.unauthorized,
                "unknown_model": self.unknown_model,
                "poisoned": {
                    "distinct": len(self.poisoned),
                    "requests": sum(self.poisoned.values()),
                    "sent": dict(sorted(self.poisoned.items())),
                },
                "down": self.is_down(),
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "pid": os.getpid(),
            }
        )

    async def admin_down(self, request: web.Request) -> web.Response:
        self.down = True
        seconds = request.query.get("for")
        self.up_at = time.monotonic() + float(seconds) if seconds else None
        return web.json_response({"down": True, "for": seconds})

    async def admin_up(self, request: web.Request) -> web.Response:
        self.down, self.up_at, self.down_after = False, None, None
        return web.json_response({"down": False})

    async def admin_models(self, request: web.Request) -> web.Response:
        self.served = [m for m in request.query.get("set", "").split(",") if m]
        return web.json_response({"models": self.served})

    async def admin_key(self, request: web.Request) -> web.Response:
        self.api_key = request.query.get("set") or None
        return web.json_response({"api_key_set": self.api_key is not None})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        app.router.add_get("/admin/last", self.last)
        app.router.add_post("/admin/down", self.admin_down)
        app.router.add_post("/admin/up", self.admin_up)
        app.router.add_post("/admin/models", self.admin_models)
        app.router.add_post("/admin/key", self.admin_key)
        return app


def _error(status: int, message: str, kind: str) -> web.Response:
    """An OpenAI-style error body."""
    error = {"message": message, "type": kind, "code": status}
    return web.json_response({"error": error}, status=status)


async def _drop(request: web.Request, raw: bytes) -> web.StreamResponse:
    """Promise ``raw`` (a whole body), send half of it, then reset the connection."""
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.content_length = max(len(raw), 1)
    await resp.prepare(request)
    if raw:
        await resp.write(raw[: len(raw) // 2])
    transport = request.transport
    if transport is not None:
        transport.abort()
    return resp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of chat requests given a fault"
    )
    parser.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds (of {', '.join(FAULT_KINDS + EXTRA_FAULT_KINDS)})",
    )
    parser.add_argument("--fault-seed", type=int, default=None, help="seed of the fault draw")
    parser.add_argument(
        "--down-after", type=int, default=None, help="drop every chat request after the N-th"
    )
    parser.add_argument(
        "--hang", type=float, default=30.0, help="seconds a 'timeout' fault keeps silent"
    )
    parser.add_argument(
        "--retry-after", type=float, default=1.0, help="Retry-After seconds of a 429"
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="requests processed at once (the others wait): throughput = capacity/latency",
    )
    parser.add_argument(
        "--poison-rate", type=float, default=0.0, help="share of distinct requests that always fail"
    )
    parser.add_argument("--poison-seed", type=int, default=0, help="which requests are poisoned")
    parser.add_argument("--poison-status", type=int, default=500, help="their HTTP status")
    parser.add_argument("--models", default="fake", help="comma-separated models served")
    parser.add_argument("--api-key", default=None, help="the bearer token required")
    parser.add_argument(
        "--models-delay", type=float, default=0.0, help="seconds /v1/models takes to answer"
    )
    args = parser.parse_args()
    server = FakeServer(
        args.latency,
        fault_rate=args.fault_rate,
        faults=[k.strip() for k in args.faults.split(",") if k.strip()],
        fault_seed=args.fault_seed,
        down_after=args.down_after,
        hang=args.hang,
        retry_after=args.retry_after,
        capacity=args.capacity,
        poison_rate=args.poison_rate,
        poison_seed=args.poison_seed,
        poison_status=args.poison_status,
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        api_key=args.api_key,
        models_delay=args.models_delay,
    )
    web.run_app(
        server.app(),
        host=args.host,
        port=args.port,
        print=lambda *_: print(f"fake server on http://{args.host}:{args.port}/v1", flush=True),
        access_log=None,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
