"""Shared pieces of the benchmarks: the fake server in its own process, seeds, versions.

Every measured client runs in its own process (``python -m bench.<name> _child ...``)
so its ``getrusage`` CPU and peak RSS are its own; the fake server runs in another
process and reports its own CPU at ``/stats``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

VERSIONS = (
    "langgraph",
    "langgraph-checkpoint",
    "langgraph-checkpoint-sqlite",
    "langchain-core",
    "langchain-openai",
    "openai",
    "aiohttp",
    "httpx",
    "pydantic",
    "aiosqlite",
    "uvloop",
)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_pressure_at_start": cpu_pressure(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def cpu_pressure() -> float | None:
    """Share of the last 10 s some task waited for a CPU (Linux PSI): how busy the box is."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split("avg10=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def run_child(module: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module _child ARGS`` and return the JSON it prints last on stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "_child", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"{module} child failed ({proc.returncode}):\n{proc.stderr[-3000:]}\n"
            f"{proc.stdout[-1000:]}"
        )
    return dict(json.loads(lines[-1]))


def rusage_self() -> dict[str, float]:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for children, e.g. --processes
    return {
        "cpu": ru.ru_utime + ru.ru_stime,
        "maxrss_mb": ru.ru_maxrss / 1024,
        "children_cpu": kids.ru_utime + kids.ru_stime,
        "children_maxrss_mb": kids.ru_maxrss / 1024,
    }


async def decode_rate(base_url: str, bodies: list[dict[str, Any]]) -> dict[str, float]:
    """Generated tokens per second of ``bodies`` sent to ``/chat/completions`` all at once,
    after the first sent alone to warm the server up."""
    import aiohttp

    async with aiohttp.ClientSession() as session:

        async def one(body: dict[str, Any]) -> int:
            async with session.post(f"{base_url}/chat/completions", json=body) as resp:
                data = await resp.json()
            return int(data["usage"]["completion_tokens"])

        await one(bodies[0])
        started = time.perf_counter()
        done = await asyncio.gather(*(one(b) for b in bodies))
        seconds = time.perf_counter() - started
    return {"tokens": sum(done), "seconds": seconds, "tokens_per_s": sum(done) / seconds}


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)
