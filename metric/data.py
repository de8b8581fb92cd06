"""HEAP-style training and test examples built from human-judgement sets.

Each example is one judged text under one criterion: a plain-language instruction naming the
task and the criterion (one of several paraphrases per task, all written for this project),
the context fields the criterion looks at, the judged text, and the averaged human rating
(pointwise sets) or nothing (pairwise sets, whose examples come in preferred/other pairs).
Good-vs-bad pairs are built from averaged ratings within one source (same article, same
conversation, same dialogue act) and one criterion, as HEAP builds its comparisons.

Splits are by source, never by row: every record of one document, conversation, dialogue
act or Auto-J prompt falls in the same split, decided by a seeded hash of the source, so no
source is seen in training and in test. Caps take whole sources in a seeded hash order.

The human-judgement files are read where they are (``../shared/data/judge/`` or a user
file described by :class:`graph.judge_sets.HumanSet`); nothing from them is copied here.
"""

from __future__ import annotations

import hashlib
import itertools
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import prompts
from judge.sets import BUILTIN, HumanSet, load_items, load_pairs
from metric.text import Field
from state.criteria import CriteriaSet, Criterion, parse_criteria
from state.judgements import Vote

Split = Literal["train", "test"]

GENERIC = "{task} Criterion: {name}. {definition}"
"""The paraphrase every task shares, built from its criteria set's own task sentence; also
the form used for a criteria set the model was never trained on (the pipeline's default)."""


@dataclass(frozen=True)
class TaskSpec:
    """A task: its human-judgement sets, the criteria they are rated on, and how to ask."""

    name: str
    sets: tuple[HumanSet, ...]
    criteria: str
    """Criteria set: a built-in name, a TOML path, or ``preference`` (defined here)."""
    paraphrases: tuple[str, ...]
    """Instruction templates with ``{task}``, ``{name}`` and ``{definition}`` placeholders."""
    keep_end: tuple[str, ...] = ()
    """Context fields whose end is kept when cut (a conversation so far)."""


PREFERENCE = parse_criteria(
    {
        "name": "preference",
        "task": "Judge an AI assistant's answer to a user's request, as a person choosing "
        "between answers would.",
        "target": "response",
        "fields": {"instruction": "The user's request", "response": "The assistant's answer"},
        "criteria": [
            {
                "name": "overall_quality",
                "definition": "How good the answer is, all things considered, for the person "
                "who asked: useful, correct, doing what was asked, and clearly put.",
                "low": "Of no use, wrong or off the request.",
                "high": "The answer a person would pick.",
            }
        ],
    },
    source="metric.data.PREFERENCE",
)
"""Auto-J's people chose the better of two answers overall; this set names that judgement."""


TASKS: dict[str, TaskSpec] = {
    "summarization": TaskSpec(
        name="summarization",
        sets=(BUILTIN["summeval"],),
        criteria="summeval",
        paraphrases=(
            GENERIC,
            "A news article was summarized. Rate the summary on {name}: {definition}",
            "How good is this summary of a news story when judged by {name}? {definition}",
            "Summarization. Given the article and a summary of it, score the summary's {name}. "
            "{definition}",
        ),
    ),
    "dialogue": TaskSpec(
        name="dialogue",
        sets=(BUILTIN["topical_chat"],),
        criteria="topical_chat",
        paraphrases=(
            GENERIC,
            "A chat between two people about a topic: rate the next reply for {name}. {definition}",
            "Here is a conversation and one candidate next turn. How does the reply do on "
            "{name}? {definition}",
            "Dialogue response evaluation, criterion {name}: {definition}",
        ),
        keep_end=("history",),
    ),
    "data2text": TaskSpec(
        name="data2text",
        sets=(BUILTIN["sfres"], BUILTIN["sfhot"]),
        criteria="data2text",
        paraphrases=(
            GENERIC,
            "A dialogue system turned a dialogue act into a sentence. Rate the sentence for "
            "{name}: {definition}",
            "Data-to-text generation for restaurant and hotel dialogues: judge the {name} of "
            "the generated utterance. {definition}",
            "Given a structured dialogue act and the text produced from it, how good is the "
            "text in {name}? {definition}",
        ),
    ),
    "preference": TaskSpec(
        name="preference",
        sets=(BUILTIN["autoj"],),
        criteria="preference",
        paraphrases=(
            GENERIC,
            "Someone asked an AI assistant for help. Rate the answer's {name}: {definition}",
            "Instruction following: how good is this response to the request, judged by "
            "{name}? {definition}",
            "A user's request and an assistant's reply. Score the reply on {name}. {definition}",
        ),
    ),
}
"""The four tasks. SF restaurant and SF hotel are one task (data-to-text, two domains rated on
the same criteria); they are reported separately."""


def criteria_set(name: str) -> CriteriaSet:
    return PREFERENCE if name == "preference" else prompts.criteria(name)


def criterion_words(c: Criterion) -> str:
    """A criterion's name as words (``instruction_following`` -> ``instruction following``)."""
    return c.name.replace("_", " ")


def instruction(template: str, cset: CriteriaSet, c: Criterion) -> str:
    """One instruction: the task and the criterion in plain words."""
    return template.format(
        task=cset.task.strip(), name=criterion_words(c), definition=c.definition.strip()
    )


def context_fields(
    cset: CriteriaSet, c: Criterion, record: dict[str, str], keep_end: Iterable[str] = ()
) -> tuple[Field, ...]:
    """The fields criterion ``c`` looks at, other than the judged one, in the set's order."""
    ends = set(keep_end)
    return tuple(
        Field(cset.fields[name], record[name], name in ends)
        for name in cset.fields_for([c])
        if name != cset.target
    )


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).hexdigest()


def unit(seed: int, *parts: object) -> float:
    """A seeded number in [0, 1) for ``parts`` (splits, paraphrase choice, caps)."""
    return int(_hash(seed, *parts)[:13], 16) / 16**13


def split_of(group: str, seed: int, test_fraction: float) -> Split:
    """Which split a source (document, conversation, act, prompt) belongs to."""
    return "test" if unit(seed, "split", group) < test_fraction else "train"


@dataclass(frozen=True)
class Example:
    """One judged text under one criterion, in the form the model reads."""

    uid: str
    task: str
    set: str
    criterion: str
    group: str
    """The source it belongs to (split unit, and within which pairs are made)."""
    item: str
    instruction: str
    context: tuple[Field, ...]
    target: str
    scale: tuple[int, int]
    target_label: str = "Text"
    """How the judged text is named (its criteria set's field label)."""
    rating: float | None = None
    """Averaged human rating on the criterion's scale (None: a pairwise set)."""
    doc: str | None = None
    system: str | None = None
    variant: int = 0

    @property
    def norm(self) -> float | None:
        """The rating mapped to [0, 1]."""
        if self.rating is None:
            return None
        lo, hi = self.scale
        return min(1.0, max(0.0, (self.rating - lo) / (hi - lo)))


@dataclass(frozen=True)
class Pair:
    """Two examples with the same instruction and context; ``label`` says which people preferred
    (``tie`` only in test sets)."""

    first: str
    second: str
    label: Vote
    task: str
    set: str
    criterion: str
    group: str
    gap: float = 1.0


@dataclass
class TaskData:
    """Every example and human pair of a task, with the split of each source."""

    spec: TaskSpec
    cset: CriteriaSet
    examples: dict[str, Example] = field(default_factory=dict)
    pairs: list[Pair] = field(default_factory=list)
    """Pairs from pairwise sets (with ties)."""
    splits: dict[str, Split] = field(default_factory=dict)

    def split_examples(self, split: Split) -> list[Example]:
        return [e for e in self.examples.values() if self.splits[e.group] == split]

    def split_pairs(self, split: Split) -> list[Pair]:
        return [p for p in self.pairs if self.splits[p.group] == split]


def _variant(spec: TaskSpec, seed: int, group: str, criterion: str, split: Split) -> int:
    """The paraphrase for one (source, criterion): in training a seeded choice, the same for
    every text of the source (texts compared with each other share their instruction); in
    test the generic one (``GENERIC``), which is what serving asks with."""
    if split == "test":
        return 0
    return int(unit(seed, "paraphrase", group, criterion) * len(spec.paraphrases))


def build_task(spec: TaskSpec, *, seed: int = 0, test_fraction: float = 0.3) -> TaskData:
    """Read a task's sets and build its examples, human pairs and source splits."""
    cset = criteria_set(spec.criteria)
    data = TaskData(spec=spec, cset=cset)
    for hset in spec.sets:
        if hset.kind == "pointwise":
            for item in load_items(hset):
                group = f"{hset.name}:{item.doc if item.doc is not None else item.id}"
                split = data.splits.setdefault(group, split_of(group, seed, test_fraction))
                for c in cset.criteria:
                    if c.name not in item.human:
                        continue
                    v = _variant(spec, seed, group, c.name, split)
                    ex = Example(
                        uid=f"{item.id}|{c.name}",
                        task=spec.name,
                        set=hset.name,
                        criterion=c.name,
                        group=group,
                        item=item.id,
                        instruction=instruction(spec.paraphrases[v], cset, c),
                        context=context_fields(cset, c, item.fields, spec.keep_end),
                        target=item.fields[cset.target],
                        scale=c.scale,
                        target_label=cset.fields[cset.target],
                        rating=item.human[c.name],
                        doc=item.doc,
                        system=item.system,
                        variant=v,
                    )
                    data.examples[ex.uid] = ex
        else:
            for hp in load_pairs(hset):
                record = dict(hp.fields)
                # Pairs are split by their context (the prompt): one prompt, one split.
                group = f"{hset.name}:{_hash(sorted(record.items()))[:16]}"
                split = data.splits.setdefault(group, split_of(group, seed, test_fraction))
                for c in cset.criteria:
                    v = _variant(spec, seed, group, c.name, split)
                    uids = []
                    for side, text in (("1", hp.first), ("2", hp.second)):
                        ex = Example(
                            uid=f"{hp.id}|{side}|{c.name}",
                            task=spec.name,
                            set=hset.name,
                            criterion=c.name,
                            group=group,
                            item=f"{hp.id}|{side}",
                            instruction=instruction(spec.paraphrases[v], cset, c),
                            context=context_fields(cset, c, record, spec.keep_end),
                            target=text,
                            scale=c.scale,
                            target_label=cset.fields[cset.target],
                            variant=v,
                        )
                        data.examples[ex.uid] = ex
                        uids.append(ex.uid)
                    data.pairs.append(
                        Pair(uids[0], uids[1], hp.label, spec.name, hset.name, c.name, group)
                    )
    return data


def rating_pairs(examples: Sequence[Example], min_gap: float) -> list[Pair]:
    """Good-vs-bad pairs within each (source, criterion) whose ratings differ by at least
    ``min_gap`` of the scale's range; the better one first."""
    groups: dict[tuple[str, str], list[Example]] = defaultdict(list)
    for ex in examples:
        if ex.rating is not None:
            groups[(ex.group, ex.criterion)].append(ex)
    out = []
    for (group, criterion), members in groups.items():
        for a, b in itertools.combinations(members, 2):
            assert a.norm is not None and b.norm is not None
            gap = a.norm - b.norm
            if abs(gap) < min_gap or abs(gap) == 0 or a.target == b.target:
                continue
            good, bad = (a, b) if gap > 0 else (b, a)
            out.append(
                Pair(good.uid, bad.uid, "first", good.task, good.set, criterion, group, abs(gap))
            )
    return out


@dataclass(frozen=True)
class Caps:
    """How much of each set is used (whole sources, in a seeded order); None: all of it."""

    train_per_criterion: int | None = None
    """Training texts per (set, criterion); pairwise sets: pairs (two texts each)."""
    test_per_criterion: int | None = None
    """Test texts per (set, criterion); pairwise sets: pairs."""
    max_members: int | None = None
    """Training texts per source and criterion (SummEval has 16 summaries of each article)."""


def select(
    examples: Sequence[Example],
    cap: int | None,
    max_members: int | None,
    seed: int,
    *,
    purpose: str,
) -> list[Example]:
    """Whole sources per (set, criterion) in a seeded order until ``cap`` examples, at most
    ``max_members`` texts of each source (chosen by a seeded order, the same for every
    criterion, so a source's texts are rated on every criterion where possible)."""
    by_key: dict[tuple[str, str], dict[str, list[Example]]] = defaultdict(lambda: defaultdict(list))
    for ex in examples:
        by_key[(ex.set, ex.criterion)][ex.group].append(ex)
    chosen: list[Example] = []
    for (_set, criterion), groups in sorted(by_key.items()):
        taken = 0
        # A pairwise set's texts come two per pair: its cap counts pairs.
        pairwise = all(e.rating is None for g in groups.values() for e in g)
        limit = None if cap is None else cap * (2 if pairwise else 1)
        # Test: the same sources for every criterion (per-record correlations stay whole);
        # train: each criterion its own sources, for variety.
        salt = criterion if purpose == "train" else ""
        for group in sorted(groups, key=lambda g: unit(seed, purpose, salt, g)):
            if limit is not None and taken >= limit:
                break
            members = sorted(groups[group], key=lambda e: unit(seed, "member", e.item))
            if max_members is not None:
                members = members[:max_members]
            chosen.extend(members)
            taken += len(members)
    return chosen


def selected_pairs(pairs: Sequence[Pair], chosen: Iterable[Example]) -> list[Pair]:
    """The human pairs whose both texts were selected."""
    ids = {e.uid for e in chosen}
    return [p for p in pairs if p.first in ids and p.second in ids]


def task_file(path: str | Path) -> TaskSpec:
    """A user task from a TOML file: a name, a criteria set, one or more human-judgement files
    described as :class:`HumanSet` fields, and optionally paraphrases::

        name = "reviews"
        criteria = "my_criteria.toml"     # or a built-in criteria set
        paraphrases = ["Rate this product review's {name}. {definition}"]
        keep_end = []
        [[sets]]
        name = "reviews"
        path = "data/reviews.jsonl"
        fields = { product = "product", review = "text" }
        doc_key = "product_id"
    """
    path = Path(path)
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"task file {path}: {exc}") from None
    for key in ("name", "criteria", "sets"):
        if key not in data:
            raise ValueError(f"task file {path}: missing {key!r}")
    sets = []
    for i, raw in enumerate(data["sets"]):
        raw = dict(raw)
        raw.setdefault("criteria", data["criteria"])
        raw["path"] = (path.parent / raw["path"]).resolve()
        try:
            sets.append(HumanSet(**raw))
        except TypeError as exc:
            raise ValueError(f"task file {path}: sets[{i}]: {exc}") from None
    own = tuple(data.get("paraphrases", ()))
    return TaskSpec(
        name=str(data["name"]),
        sets=tuple(sets),
        criteria=str(data["criteria"]),
        paraphrases=(GENERIC, *own),
        keep_end=tuple(data.get("keep_end", ())),
    )
