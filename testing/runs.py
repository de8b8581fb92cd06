"""Seed files of a chosen size, and ``graph.run`` worker processes on one Postgres run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WORDS = [
    "garden",
    "soil",
    "water",
    "light",
    "season",
    "plant",
    "root",
    "leaf",
    "budget",
    "plan",
    "team",
    "code",
    "test",
    "data",
    "model",
    "river",
    "bridge",
    "travel",
    "museum",
    "recipe",
    "flour",
    "oven",
    "history",
    "letter",
    "design",
    "colour",
    "method",
    "rule",
    "market",
    "price",
    "risk",
    "energy",
    "battery",
    "sensor",
    "signal",
    "network",
    "memory",
    "story",
    "chapter",
    "voice",
]


def _text(i: int, words: int, salt: str) -> str:
    n = len(_WORDS)
    return " ".join(_WORDS[(i * 7 + j * (i % 5 + 1) + len(salt)) % n] for j in range(words))


def write_seeds(path: Path, n: int) -> Path:
    """``n`` distinct references of realistic size (instruction ~60 words, answer ~350)."""
    with path.open("w") as fh:
        for i in range(n):
            rec = {
                "id": f"bench-{i:06d}",
                "instruction": f"Task {i}: " + _text(i, 60, "i") + "?",
                "response": f"Answer {i}. " + _text(i, 350, "r") + ".",
            }
            fh.write(json.dumps(rec) + "\n")
    return path


def start_workers(
    n: int, run_args: Sequence[str], *, store: str, env: dict[str, str] | None = None
) -> list[subprocess.Popen[str]]:
    """``n`` ``python -m graph.run`` workers on one run kept in Postgres (graph/pgstore.py).

    ``run_args`` are the run's flags (``--seeds``, ``--base-url``, ``--out``, …), the same for
    every worker: the run is named by ``--out`` in the store, and the workers share its
    references through leases. Wait for them with :func:`wait_workers`.
    """
    return [
        subprocess.Popen(
            [sys.executable, "-m", "graph.run", *run_args, "--store", store],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        for _ in range(n)
    ]


def wait_workers(procs: Sequence[subprocess.Popen[str]], timeout: float = 1800) -> list[str]:
    """Wait for every worker; their stderr, in order. A worker that failed raises."""
    errors = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise RuntimeError(f"graph.run worker exited with {proc.returncode}:\n{err[-3000:]}")
        errors.append(err)
    return errors
