"""A fake OpenAI-compatible chat server for tests and benchmarks.

It sleeps a set latency, then answers ``/v1/chat/completions``: for a
``response_format`` json_schema request, a small JSON that satisfies the
schema (strings filled to their ``minLength``, lists to ``maxItems`` up to 10,
the last enum value), varied by the request so instructions differ; otherwise a short
text. It reports its own CPU time at ``/stats`` so a benchmark can show it is
not the bottleneck.

    python -m bench.fake_server --port 8100 --latency 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import time
from typing import Any

from aiohttp import web


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


class FakeServer:
    def __init__(self, latency: float = 0.05, model: str = "fake") -> None:
        self.latency = latency
        self.model = model
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
        finally:
            self.in_flight -= 1
        salt = f"{self.requests}:{body.get('seed')}:{len(json.dumps(body['messages']))}"
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            schema = fmt["json_schema"]["schema"]
            content = json.dumps(instance(schema, schema.get("$defs", {}), salt))
        else:
            content = f"A fake answer ({salt})."
        prompt_tokens = sum(len(m.get("content", "")) for m in body["messages"]) // 4
        completion_tokens = max(1, len(content) // 4)
        return web.json_response(
            {
                "id": f"chatcmpl-{self.requests}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model"}]}
        )

    async def stats(self, request: web.Request) -> web.Response:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return web.json_response(
            {
                "requests": self.requests,
                "max_in_flight": self.max_in_flight,
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "pid": os.getpid(),
            }
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    web.run_app(
        FakeServer(args.latency).app(),
        host=args.host,
        port=args.port,
        print=lambda *_: print(f"fake server on http://{args.host}:{args.port}/v1", flush=True),
        access_log=None,
        backlog=1024,
    )


if __name__ == "__main__":
    main()
