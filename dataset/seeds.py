"""Reading seed files into references.

A seed source is a file, a folder or a Hub dataset holding instruction/response pairs:

* ``.jsonl`` / ``.ndjson``: one JSON object per line (blank lines are ignored);
* ``.json``: a list of objects, or an object holding that list under ``"data"``,
  ``"records"`` or ``"rows"``;
* ``.csv``: a header row, then one record per row;
* ``.parquet``;
* a folder written by ``datasets.Dataset.save_to_disk`` (for a ``DatasetDict`` folder,
  its ``"train"`` split);
* ``hf:NAME[:SPLIT]``: a dataset on the Hugging Face Hub (split ``train`` by default).

Each record is mapped to an instruction and a response by the first layout that fits
(see ``_map_record``). Problems are reported as ``SeedError`` naming the file, the record
and the field, so that a bad seed file fails the run before any LLM call.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from state.records import Reference, content_id

__all__ = ["SUPPORTED_FORMATS", "SeedError", "iter_seeds", "read_seeds"]

OnBadRecord = Literal["fail", "skip"]
SeedLog = Callable[..., object]

HF_PREFIX = "hf:"
SUPPORTED_FORMATS = (
    ".jsonl, .ndjson, .json, .csv, .parquet, a datasets.save_to_disk folder or hf:NAME[:split]"
)
_LIST_KEYS = ("data", "records", "rows")
_USER_ROLES = frozenset({"user", "human"})
_ASSISTANT_ROLES = frozenset({"assistant", "gpt", "model", "bot", "chatgpt"})
_KNOWN_LAYOUTS = (
    "instruction+response, instruction+output (Alpaca/LIMA), messages or conversations "
    "(chat), instruction+instances (Self-Instruct) or prompt+completion"
)


class SeedError(ValueError):
    """A seed source or one of its records cannot be used.

    ``path`` names the source as the user gave it, ``record`` locates the record
    (``"line 3"`` for JSONL/CSV, 1-based with the CSV header on line 1; ``"record 17"``
    for JSON lists, Parquet and datasets, 0-based) or is None for file-level problems,
    and ``field`` names the offending field when there is one.
    """

    def __init__(
        self, path: str, reason: str, *, record: str | None = None, field: str | None = None
    ) -> None:
        self.path = path
        self.record = record
        self.field = field
        self.reason = reason
        where = f"{path} {record}" if record else path
        message = f"{where}: field '{field}': {reason}" if field else f"{where}: {reason}"
        super().__init__(message)


class _BadField(Exception):
    """Raised by the mapping code; turned into a SeedError once the record is known."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class _Raw:
    """One record as a reader yields it: parsed data, or why it could not be parsed."""

    number: int
    data: Any = None
    problem: str | None = None


@dataclass(frozen=True)
class _Source:
    label: str  # the source as the user named it, used in errors
    name: str  # short name used in Reference.source
    unit: Literal["line", "record"]
    records: Iterator[_Raw]


# --------------------------------------------------------------------------- public API


def read_seeds(
    source: str | Path,
    *,
    on_bad_record: OnBadRecord = "fail",
    limit: int | None = None,
    log: SeedLog | None = None,
) -> list[Reference]:
    """Read and validate every record of ``source`` and return its references.

    With ``on_bad_record="fail"`` the first bad record raises ``SeedError``; with
    ``"skip"`` each bad record is logged (``log("seed_skipped", file=..., record=...,
    field=..., reason=...)``, structlog's warning by default) and left out. File-level
    problems always raise, and so does a source left with no valid record. ``limit``
    stops reading once that many references were collected. Records with the same id
    and the same content are read once; the same id on different content is an error.
    """
    return list(iter_seeds(source, on_bad_record=on_bad_record, limit=limit, log=log))


def iter_seeds(
    source: str | Path,
    *,
    on_bad_record: OnBadRecord = "fail",
    limit: int | None = None,
    log: SeedLog | None = None,
) -> Iterator[Reference]:
    """Lazy form of ``read_seeds``: errors surface as the records are reached."""
    if on_bad_record not in ("fail", "skip"):
        raise ValueError(f"on_bad_record must be 'fail' or 'skip', not {on_bad_record!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    emit = log if log is not None else structlog.get_logger().warning

    src = _open_source(source)
    seen: dict[str, tuple[str, str]] = {}  # id -> (record locator, content hash)
    total = kept = skipped = 0
    for raw in src.records:
        total += 1
        where = f"{src.unit} {raw.number}"
        try:
            ref = _to_reference(raw, src, where, seen)
        except SeedError as err:
            if on_bad_record == "fail":
                raise
            skipped += 1
            emit(
                "seed_skipped", file=err.path, record=err.record, field=err.field, reason=err.reason
            )
            continue
        if ref is None:  # an exact duplicate of an earlier record
            continue
        for field, reason in _flags(ref):  # kept: prompts quote it, outputs are schema-bound
            emit("seed_flagged", file=src.label, record=where, field=field, reason=reason)
        kept += 1
        yield ref
        if limit is not None and kept >= limit:
            return
    if total == 0:
        raise SeedError(src.label, "no records")
    if kept == 0:
        raise SeedError(src.label, f"no valid records ({skipped} of {total} skipped)")


# ----------------------------------------------------------------------- record mapping


def _map_record(record: Mapping[str, Any]) -> tuple[str, str]:
    """Return the (instruction, response) of one seed record, stripped.

    Layouts, tried in this order:

    1. ``instruction`` + ``response``;
    2. ``instruction`` (+ optional ``input``) + ``output``: Alpaca and LIMA. A non-empty
       ``history`` marks a multi-turn record, which is refused;
    3. ``messages`` or ``conversations``: chat turns as ``{role, content}`` or ShareGPT
       ``{from, value}``; the first user turn and the first assistant turn after it;
    4. ``instruction`` + ``instances``: Self-Instruct seed tasks, first instance;
    5. ``prompt`` + ``completion``.

    A non-empty ``input`` is appended to the instruction after a blank line. Raises
    ``_BadField`` (wrapped into ``SeedError`` by ``iter_seeds``) when a field is unusable.
    """

    def has(key: str) -> bool:
        return record.get(key) is not None

    def text(key: str) -> str:
        return _text(record.get(key), key, keys=list(record))

    if has("instruction") and has("response"):
        return text("instruction"), text("response")
    if has("instruction") and has("output"):
        if record.get("history"):
            raise _BadField("history", "multi-turn records are not supported")
        return _with_input(text("instruction"), record.get("input"), "input"), text("output")
    for key in ("messages", "conversations"):
        if has(key):
            return _from_chat(record[key], key)
    if has("instruction") and has("instances"):
        return _from_instances(text("instruction"), record["instances"])
    if has("prompt") or has("completion"):
        return text("prompt"), text("completion")
    if has("instruction"):
        return text("instruction"), text("response")  # raises: no response field
    raise _BadField(
        None, f"no known seed fields (record has keys: {_keys(record)}); expected {_KNOWN_LAYOUTS}"
    )


def _keys(record: Mapping[str, Any]) -> str:
    return ", ".join(str(k) for k in record) or "none"


def _text(value: Any, field: str, *, keys: list[str] | None = None) -> str:
    if value is not None and not isinstance(value, str):
        raise _BadField(field, f"expected a string, got {type(value).__name__}")
    if value is None or not value.strip():
        hint = f" (record has keys: {', '.join(map(str, keys)) or 'none'})" if keys else ""
        raise _BadField(field, f"missing or empty{hint}")
    _check_text(value, field)
    return value.strip()


MAX_FIELD_CHARS = 32_000
"""Longest seed text field (LIMA's longest record is about 18,000 characters): a longer
one would crowd the prompts out of a small model's context."""
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069]")
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget)\b.{0,40}\b(?:previous|prior|above|earlier|all)\b"
    r".{0,40}\b(?:instructions?|prompts?|rules|messages?)\b"
    r"|<\|(?:im_start|im_end|system|endoftext)\|>|\[/?(?:system|user|INST)\]",
    re.IGNORECASE | re.DOTALL,
)


def _check_text(value: str, field: str) -> None:
    """Refuse text no prompt should carry: too long, control characters, broken Unicode."""
    if len(value) > MAX_FIELD_CHARS:
        raise _BadField(field, f"{len(value):,} characters, over the limit of {MAX_FIELD_CHARS:,}")
    bad = _SURROGATE.search(value)
    if bad is not None:
        raise _BadField(
            field,
            f"invalid Unicode: lone surrogate U+{ord(bad.group()):04X} at character "
            f"{bad.start() + 1} (mis-encoded text)",
        )
    bad = _CONTROL.search(value)
    if bad is not None:
        raise _BadField(
            field,
            f"control character U+{ord(bad.group()):04X} at character {bad.start() + 1} "
            "(binary or mis-encoded text?)",
        )
    if not any(ch.isprintable() and not ch.isspace() for ch in value):
        raise _BadField(field, "no visible character (only spaces or invisible formatting)")


def _flags(ref: Reference) -> Iterator[tuple[str, str]]:
    """(field, reason) for text that is kept but worth a look: instructions to the model,
    or bidirectional overrides (text that displays differently from how it reads)."""
    for field, text in (("instruction", ref.instruction), ("response", ref.response)):
        found = _INJECTION.search(text)
        if found is not None:
            yield field, f"reads like an instruction to the model ({found.group()[:60]!r})"
        bidi = _BIDI.search(text)
        if bidi is not None:
            yield (
                field,
                (
                    f"bidirectional control U+{ord(bidi.group()):04X} at character "
                    f"{bidi.start() + 1} (may display differently from how it reads)"
                ),
            )


def _with_input(instruction: str, extra: Any, field: str) -> str:
    if extra is None:
        return instruction
    if not isinstance(extra, str):
        raise _BadField(field, f"expected a string, got {type(extra).__name__}")
    return f"{instruction}\n\n{extra.strip()}" if extra.strip() else instruction


def _from_chat(turns: Any, key: str) -> tuple[str, str]:
    if not isinstance(turns, list):
        raise _BadField(key, f"expected a list of turns, got {type(turns).__name__}")
    user: str | None = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise _BadField(f"{key}[{i}]", f"expected an object, got {type(turn).__name__}")
        role_key = "role" if "role" in turn else "from"
        content_key = "content" if "content" in turn else "value"
        role = str(turn.get(role_key, "")).strip().lower()
        if user is None and role in _USER_ROLES:
            user = _text(turn.get(content_key), f"{key}[{i}].{content_key}")
        elif user is not None and role in _ASSISTANT_ROLES:
            return user, _text(turn.get(content_key), f"{key}[{i}].{content_key}")
    if user is None:
        raise _BadField(key, "no user turn")
    raise _BadField(key, "no assistant turn after the first user turn")


def _from_instances(instruction: str, instances: Any) -> tuple[str, str]:
    if not isinstance(instances, list) or not instances:
        raise _BadField("instances", "expected a non-empty list of {input, output}")
    first = instances[0]
    if not isinstance(first, Mapping):
        raise _BadField("instances[0]", f"expected an object, got {type(first).__name__}")
    response = _text(first.get("output"), "instances[0].output")
    return _with_input(instruction, first.get("input"), "instances[0].input"), response


def _given_id(record: Mapping[str, Any]) -> str | None:
    for key in ("id", "reference_id"):
        value = record.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) or (isinstance(value, str) and value.strip()):
            return str(value).strip()
    return None


def _to_reference(
    raw: _Raw, src: _Source, where: str, seen: dict[str, tuple[str, str]]
) -> Reference | None:
    """Map one raw record; None when it repeats an earlier record exactly."""
    if raw.problem is not None:
        raise SeedError(src.label, raw.problem, record=where)
    if not isinstance(raw.data, Mapping):
        got = type(raw.data).__name__
        raise SeedError(src.label, f"expected a JSON object, got {got}", record=where)
    try:
        instruction, response = _map_record(raw.data)
    except _BadField as bad:
        raise SeedError(src.label, bad.reason, record=where, field=bad.field) from None
    digest = content_id(instruction, response)
    ref_id = _given_id(raw.data) or digest
    if ref_id in seen:
        first_where, first_digest = seen[ref_id]
        if first_digest == digest:
            return None
        raise SeedError(
            src.label,
            f"duplicate id {ref_id!r}: {first_where} has the same id with different content",
            record=where,
            field="id",
        )
    seen[ref_id] = (where, digest)
    return Reference(
        id=ref_id, instruction=instruction, response=response, source=f"{src.name}#{raw.number}"
    )


# ---------------------------------------------------------------------------- readers


def _open_source(source: str | Path) -> _Source:
    label = str(source)
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        return _Source(label, label, "record", _read_hub(label))
    path = Path(source)
    if not path.exists():
        raise SeedError(label, "file not found")
    if path.is_dir():
        return _Source(label, path.name, "record", _read_dataset_folder(path, label))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _Source(label, path.name, "line", _read_jsonl(path, label))
    if suffix == ".json":
        return _Source(label, path.name, "record", _read_json(path, label))
    if suffix == ".csv":
        return _Source(label, path.name, "line", _read_csv(path, label))
    if suffix == ".parquet":
        return _Source(label, path.name, "record", _read_parquet(path, label))
    problem = f"unsupported seed format '{path.suffix}'" if path.suffix else "no file extension"
    raise SeedError(label, f"{problem}; supported: {SUPPORTED_FORMATS}")


def _read_text(path: Path, label: str) -> str:
    """The file as UTF-8 text (a leading BOM is dropped); names the bad byte otherwise."""
    data = path.read_bytes()
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = start + err.start
        line = data.count(b"\n", 0, offset) + 1
        raise SeedError(
            label,
            f"not valid UTF-8 (byte 0x{data[offset]:02x} at byte offset {offset}); "
            "convert the file to UTF-8",
            record=f"line {line}",
        ) from None


def _read_jsonl(path: Path, label: str) -> Iterator[_Raw]:
    """One record a line; a line that is not UTF-8 or not JSON is a bad record, not a bad
    file, so ``--on-bad-record skip`` can step over it."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SeedError(label, "UTF-16 text (byte order mark); convert the file to UTF-8")
    # split on "\n" only: str.splitlines would also break inside JSON strings (U+2028).
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problem = (
                f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                "convert the file to UTF-8"
            )
            yield _Raw(number, problem=problem)
            continue
        yield _parse_json_line(number, line)


def _parse_json_line(number: int, line: str) -> _Raw:
    try:
        return _Raw(number, json.loads(line))
    except json.JSONDecodeError as err:
        return _Raw(number, problem=f"invalid JSON: {err.msg} (column {err.colno})")
    except RecursionError:
        return _Raw(number, problem="invalid JSON: nested too deeply")
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        return _Raw(number, problem=f"invalid JSON: {err}")


def _read_json(path: Path, label: str) -> Iterator[_Raw]:
    text = _read_text(path, label)
    if not text.strip():
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SeedError(
            label, f"invalid JSON: {err.msg} (column {err.colno})", record=f"line {err.lineno}"
        ) from None
    except RecursionError:
        raise SeedError(label, "invalid JSON: nested too deeply") from None
    except ValueError as err:
        raise SeedError(label, f"invalid JSON: {err}") from None
    if isinstance(data, Mapping):
        lists = [data[k] for k in _LIST_KEYS if isinstance(data.get(k), list)]
        if not lists:
            raise SeedError(
                label,
                'expected a JSON list of records, or an object with a list under "data", '
                f'"records" or "rows" (found keys: {_keys(data)})',
            )
        data = lists[0]
    if not isinstance(data, list):
        raise SeedError(label, f"expected a JSON list of records, got {type(data).__name__}")
    for index, item in enumerate(data):
        yield _Raw(index, item)


def _read_csv(path: Path, label: str) -> Iterator[_Raw]:
    reader = csv.reader(io.StringIO(_read_text(path, label), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return
        header = [name.strip() for name in header]
        last = reader.line_num
        for row in reader:
            number, last = last + 1, reader.line_num
            if not row:  # blank line
                continue
            if len(row) != len(header):
                problem = f"has {len(row)} fields but the header has {len(header)}"
                yield _Raw(number, problem=problem)
            else:
                yield _Raw(number, dict(zip(header, row, strict=True)))
    except csv.Error as err:
        raise SeedError(label, f"invalid CSV: {err}", record=f"line {reader.line_num}") from None


def _read_parquet(path: Path, label: str) -> Iterator[_Raw]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise SeedError(label, f"not a readable Parquet file ({err})") from None
    index = 0
    for batch in parquet.iter_batches():
        for row in batch.to_pylist():
            yield _Raw(index, row)
            index += 1


def _read_dataset_folder(path: Path, label: str) -> Iterator[_Raw]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise SeedError(
            label, f"not a folder written by datasets' save_to_disk; supported: {SUPPORTED_FORMATS}"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            splits = ", ".join(loaded) or "none"
            raise SeedError(label, f"no 'train' split in this DatasetDict (splits: {splits})")
        loaded = loaded["train"]
    for index, row in enumerate(loaded):
        yield _Raw(index, row)


def _read_hub(label: str) -> Iterator[_Raw]:
    import datasets

    name, _, split = label.removeprefix(HF_PREFIX).partition(":")
    if not name:
        raise SeedError(label, "expected hf:NAME[:split], e.g. hf:tatsu-lab/alpaca:train")
    try:
        loaded = datasets.load_dataset(name, split=split or "train")
    except Exception as err:
        if _is_network_error(err):
            raise SeedError(
                label,
                f"the Hugging Face Hub could not be reached ({err}); check the network, "
                "or save the dataset to a local file or folder and read that",
            ) from None
        raise SeedError(label, f"could not load the dataset: {type(err).__name__}: {err}") from None
    for index, row in enumerate(loaded):
        yield _Raw(index, row)


def _is_network_error(err: BaseException) -> bool:
    markers = ("Connection", "Timeout", "OfflineModeIsEnabled", "LocalEntryNotFound")
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionError | TimeoutError):
            return True
        if any(marker in type(current).__name__ for marker in markers):
            return True
        current = current.__cause__ or current.__context__
    return False
