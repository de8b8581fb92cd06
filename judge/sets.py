"""Human-judgement sets: where they are, how their records map onto a criteria set.

A pointwise set is a file of records, each with the fields the criteria set shows the
judge and a ``scores`` mapping (criterion -> human score, averaged over annotators);
optionally a document key (records about the same source, for summary-level
correlation) and a system key (for system-level correlation). A pairwise set has a
context, two texts and a label (which one people preferred, or a tie).

The built-in sets read the files in ``../shared/data/judge/`` (never copied into this
repository); any other file is described with :class:`HumanSet` (the ``judge`` CLI
builds one from flags).
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from state.judgements import Vote

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JUDGE_DATA = SHARED_DATA / "judge"


class HumanSetError(ValueError):
    """A human-judgement file that cannot be read as described."""


@dataclass(frozen=True)
class HumanSet:
    """How to read one human-judgement file."""

    name: str
    path: Path
    criteria: str
    """Criteria set (built-in name or TOML path) whose fields and criteria the records use."""
    fields: dict[str, str]
    """Criteria-set field -> record key."""
    kind: Literal["pointwise", "pairwise"] = "pointwise"
    scores_key: str = "scores"
    doc_key: str | None = None
    system_key: str | None = None
    id_key: str | None = None
    primary: Literal["record", "document", "system"] = "record"
    """The level reported first (SummEval: per document, as G-Eval and UniEval do)."""
    first_key: str = "response 1"
    second_key: str = "response 2"
    label_key: str = "label"
    labels: dict[Any, Vote] = field(default_factory=lambda: {0: "first", 1: "second", 2: "tie"})
    note: str = ""


BUILTIN: dict[str, HumanSet] = {
    "summeval": HumanSet(
        name="summeval",
        path=JUDGE_DATA / "summeval.jsonl",
        criteria="summeval",
        fields={"document": "src", "summary": "sys_summ"},
        doc_key="doc_id",
        system_key="system",
        primary="document",
        note="100 CNN/DM articles x 16 systems; expert ratings 1-5, averaged",
    ),
    "topical_chat": HumanSet(
        name="topical_chat",
        path=JUDGE_DATA / "topical_chat_usr.json",
        criteria="topical_chat",
        fields={"history": "source", "fact": "context", "response": "system_output"},
        doc_key="source",
        system_key="system_id",
        primary="record",
        note="60 conversations x 6 responses (USR annotations); turn-level correlation",
    ),
    "sfres": HumanSet(
        name="sfres",
        path=JUDGE_DATA / "sfres_data2text.json",
        criteria="data2text",
        fields={"act": "source", "utterance": "system_output"},
        doc_key="source",
        id_key="doc_id",
        note="SF restaurants: dialogue act to text, ratings 1-6",
    ),
    "sfhot": HumanSet(
        name="sfhot",
        path=JUDGE_DATA / "sfhot_data2text.json",
        criteria="data2text",
        fields={"act": "source", "utterance": "system_output"},
        doc_key="source",
        id_key="doc_id",
        note="SF hotels: dialogue act to text, ratings 1-6",
    ),
    "autoj": HumanSet(
        name="autoj",
        path=JUDGE_DATA / "autoj_pairwise.jsonl",
        criteria="instruction",
        fields={"instruction": "prompt"},
        kind="pairwise",
        doc_key="scenario",
        note="Auto-J pairwise human preferences (label 0/1, 2 = tie)",
    ),
}


@dataclass(frozen=True)
class HumanItem:
    """One judged text with its human scores."""

    id: str
    fields: dict[str, str]
    human: dict[str, float]
    doc: str | None = None
    system: str | None = None


@dataclass(frozen=True)
class HumanPair:
    """Two texts for one context, and which one people preferred."""

    id: str
    fields: dict[str, str]
    first: str
    second: str
    label: Vote
    group: str | None = None


def builtin(name: str) -> HumanSet:
    try:
        return BUILTIN[name]
    except KeyError:
        raise HumanSetError(
            f"no built-in human-judgement set {name!r} (built-in: {', '.join(BUILTIN)}; "
            "or give a file with --file and the field flags)"
        ) from None


def read_records(path: Path) -> list[dict[str, Any]]:
    """JSONL, a JSON list, or Parquet."""
    if not path.is_file():
        raise HumanSetError(f"human-judgement file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [dict(r) for r in pq.read_table(path).to_pylist()]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" or text.lstrip().startswith("["):
        data = json.loads(text)
        if not isinstance(data, list):
            raise HumanSetError(f"{path}: expected a JSON list of records")
        return [dict(r) for r in data]
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(dict(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise HumanSetError(f"{path} line {n}: not JSON: {exc.msg}") from None
    return records


def _scores(value: Any, where: str) -> dict[str, float]:
    if isinstance(value, str):  # some files hold a Python dict literal as a string
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise HumanSetError(f"{where}: scores is a string that is not a dict literal") from None
    if not isinstance(value, dict):
        raise HumanSetError(f"{where}: scores must be a mapping of criterion to number")
    try:
        return {str(k): float(v) for k, v in value.items()}
    except (TypeError, ValueError):
        raise HumanSetError(f"{where}: scores must be numbers") from None


def _text(record: dict[str, Any], key: str, where: str) -> str:
    if key not in record:
        raise HumanSetError(f"{where}: no field {key!r} (record has {', '.join(record)})")
    return str(record[key])


def _id(hset: HumanSet, record: dict[str, Any], n: int) -> str:
    if hset.id_key and hset.id_key in record:
        return f"{hset.name}:{record[hset.id_key]}"
    return f"{hset.name}:{n}"


def load_items(hset: HumanSet) -> list[HumanItem]:
    """Every record of a pointwise set."""
    items = []
    for n, record in enumerate(read_records(hset.path)):
        where = f"{hset.path} record {n}"
        fields = {name: _text(record, key, where) for name, key in hset.fields.items()}
        human = _scores(record.get(hset.scores_key), where)
        doc = str(record[hset.doc_key]) if hset.doc_key and hset.doc_key in record else None
        system = str(record[hset.system_key]) if hset.system_key in record else None
        items.append(HumanItem(_id(hset, record, n), fields, human, doc, system))
    return items


def load_pairs(hset: HumanSet) -> list[HumanPair]:
    """Every record of a pairwise set (labels mapped to first/second/tie)."""
    pairs = []
    for n, record in enumerate(read_records(hset.path)):
        where = f"{hset.path} record {n}"
        fields = {name: _text(record, key, where) for name, key in hset.fields.items()}
        raw = record.get(hset.label_key)
        label = hset.labels.get(raw, hset.labels.get(str(raw)))
        if label is None:
            raise HumanSetError(
                f"{where}: label {raw!r} is not one of {list(hset.labels)} ({hset.label_key})"
            )
        group = str(record[hset.doc_key]) if hset.doc_key and hset.doc_key in record else None
        pairs.append(
            HumanPair(
                _id(hset, record, n),
                fields,
                _text(record, hset.first_key, where),
                _text(record, hset.second_key, where),
                label,
                group,
            )
        )
    return pairs


def _rank(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def sample_groups(keys: list[str | None], n: int | None, seed: int) -> list[int]:
    """Indices of a deterministic sample of about ``n`` records, taken as whole groups.

    Groups (documents, conversations) are ordered by a seeded hash and taken whole until
    ``n`` records are reached, so per-document correlations stay meaningful on a sample.
    Records without a group are groups of one. ``n=None``: everything, in file order.
    """
    if n is None or n >= len(keys):
        return list(range(len(keys)))
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k if k is not None else f"\x00{i}", []).append(i)
    chosen: list[int] = []
    for key in sorted(groups, key=lambda k: _rank(seed, k)):
        if len(chosen) >= n:
            break
        chosen.extend(groups[key])
    return sorted(chosen)


def sample_items(items: list[HumanItem], n: int | None, seed: int) -> list[HumanItem]:
    """A deterministic sample of pointwise items, whole documents at a time."""
    return [items[i] for i in sample_groups([it.doc for it in items], n, seed)]


def sample_pairs(pairs: list[HumanPair], n: int | None, seed: int) -> list[HumanPair]:
    """A deterministic sample of pairs, each on its own."""
    return [pairs[i] for i in sample_groups([None] * len(pairs), n, seed)]


def with_path(hset: HumanSet, path: Path) -> HumanSet:
    return replace(hset, path=path)
