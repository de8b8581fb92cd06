"""Reading evaluation prompt sets (user-given files) for decontamination.

No benchmark text ships with Refed: the sets are files the user names. Each name is
``PATH`` or ``PATH#FIELD``; the set is called by the file's stem (``mt_bench_questions``)
and a prompt by ``STEM#N`` (N: 0-based record number, plus ``.turnK`` for multi-turn
records). Formats: JSONL, a JSON list (or an object with the list under ``data``,
``records`` or ``rows``), CSV with a header, Parquet.

Without ``#FIELD``, the prompt text of a record is found by the first field that fits:

- ``turns``: a list of user turns, strings (MT-Bench) or ``{"content": ...}``
  (Arena-Hard); every turn is a prompt;
- ``messages`` / ``conversations``: the user turns (``role``/``from`` user or human);
- ``instruction`` (+ ``input``, AlpacaEval and Alpaca-style), ``prompt`` (IFEval),
  ``question``, ``query``, ``problem``, ``input``, ``text``: a string.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Benchmark", "BenchmarkError", "Prompt", "load_benchmark", "load_benchmarks"]

TEXT_FIELDS = ("instruction", "prompt", "question", "query", "problem", "input", "text")
CHAT_FIELDS = ("turns", "messages", "conversations")
_USER_ROLES = frozenset({"user", "human"})


class BenchmarkError(ValueError):
    """A benchmark file cannot be read or has no usable prompt."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass
class Benchmark:
    name: str
    path: str
    sha256: str
    field_name: str | None = None
    prompts: list[Prompt] = field(default_factory=list)
    skipped: int = 0


def _user_turns(turns: list[Any]) -> list[str]:
    out: list[str] = []
    for turn in turns:
        if isinstance(turn, str):
            out.append(turn)
        elif isinstance(turn, Mapping):
            role = str(turn.get("role", turn.get("from", "user"))).lower()
            text = turn.get("content", turn.get("value"))
            if role in _USER_ROLES and isinstance(text, str):
                out.append(text)
    return out


def prompt_texts(record: Mapping[str, Any], given: str | None = None) -> list[str]:
    """The prompt texts of one record (several for multi-turn records)."""
    names = (given,) if given else (*CHAT_FIELDS, *TEXT_FIELDS)
    for name in names:
        value = record.get(name)
        if isinstance(value, list):
            texts = _user_turns(value)
        elif isinstance(value, str):
            texts = [value]
            extra = record.get("input") if name == "instruction" else None
            if isinstance(extra, str) and extra.strip():
                texts = [f"{value}\n\n{extra}"]
        else:
            continue
        texts = [t for t in texts if t.strip()]
        if texts:
            return texts
    return []


def _records(path: Path) -> Iterator[Any]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8-sig") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if isinstance(data, Mapping):
            data = next((data[k] for k in ("data", "records", "rows") if k in data), None)
        if not isinstance(data, list):
            raise BenchmarkError(f"{path}: expected a JSON list of records")
        yield from data
    elif suffix == ".csv":
        yield from csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig")))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
    else:
        raise BenchmarkError(f"{path}: unsupported format (use .jsonl, .json, .csv or .parquet)")


def load_benchmark(spec: str) -> Benchmark:
    """Read one set named ``PATH`` or ``PATH#FIELD``."""
    raw, _, given = spec.partition("#")
    path = Path(raw).expanduser()
    if not path.is_file():
        raise BenchmarkError(f"benchmark file not found: {raw}")
    bench = Benchmark(
        name=path.stem,
        path=raw,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        field_name=given or None,
    )
    try:
        for number, record in enumerate(_records(path)):
            texts = prompt_texts(record, given or None) if isinstance(record, Mapping) else []
            if not texts:
                bench.skipped += 1
                continue
            for k, text in enumerate(texts):
                suffix = f".turn{k + 1}" if len(texts) > 1 else ""
                bench.prompts.append(Prompt(f"{bench.name}#{number}{suffix}", text))
    except (ValueError, OSError) as exc:
        if isinstance(exc, BenchmarkError):
            raise
        raise BenchmarkError(f"{raw}: cannot read: {exc}") from exc
    if not bench.prompts:
        fields = f"field {given!r}" if given else ", ".join((*CHAT_FIELDS, *TEXT_FIELDS))
        raise BenchmarkError(f"{raw}: no prompts found (looked for {fields})")
    return bench


def load_benchmarks(specs: list[str]) -> list[Benchmark]:
    """Read every set; two sets with the same file stem are told apart by a suffix."""
    out: list[Benchmark] = []
    names: set[str] = set()
    for spec in specs:
        bench = load_benchmark(spec)
        base, n = bench.name, 2
        while bench.name in names:
            bench.name = f"{base}_{n}"
            n += 1
        if bench.name != base:
            bench.prompts = [
                Prompt(p.id.replace(base, bench.name, 1), p.text) for p in bench.prompts
            ]
        names.add(bench.name)
        out.append(bench)
    return out
