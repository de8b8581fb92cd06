"""Good and bad instruction-response pairs for telling a judge's sense from its habits.

``junk_set()`` builds a labelled set from the LIMA seeds (``../shared/data/seeds/lima.json``),
deterministic for a seed. From ``n`` references taken in a seeded order:

- ``reference`` (good): the reference's own response;
- ``mismatched`` (bad): the response of another of the ``n`` references, under this one's
  request;
- ``loop`` (bad, for ``n // 2`` of them): a degenerate answer that starts like the
  reference's response and then repeats one of its sentences, as a small model looping to
  its token cap does;
- ``ask_back`` (bad, for the other ``n // 2``): an answer that asks back or restates the
  request instead of answering.

So ``junk_set(n=30)`` is 90 items: 30 good, 30 mismatched, 15 loops, 15 ask-backs. Each
item carries its request, its answer, ``label`` (1 good, 0 bad), ``kind`` and the reference it
was built on. ``auc(scores, labels)`` is the area under the ROC curve (the chance that a
good item outscores a bad one, ties counting one half).

``negatives()`` makes the same kinds of bad answers from other pairs (training material);
its ask-backs come from a separate list of phrasings, so a model trained on them has not
seen the evaluation's wording.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from judge.sets import SHARED_DATA

LIMA = SHARED_DATA / "seeds" / "lima.json"

Kind = Literal["reference", "mismatched", "loop", "ask_back"]
BAD_KINDS: tuple[Kind, ...] = ("mismatched", "loop", "ask_back")

ASK_BACKS = (
    "I'm ready to help. What's your request?",
    "Sure! What would you like me to do?",
    "I'd be happy to help with that. Could you tell me a bit more about what you need?",
    "Of course. Before I start, what exactly are you looking for?",
    'You asked: "{request}" Could you clarify what you mean so I can help?',
    "Great question! What topic would you like to explore?",
    "I understand you want help with this: {request} Please provide more details.",
    "Happy to assist. Please share your request and I will do my best.",
)
"""Ask-backs of the evaluation set ({request}: the start of the request)."""

TRAIN_ASK_BACKS = (
    "How can I help you today?",
    "Certainly. Can you give me more information first?",
    "What do you want me to write about?",
    "Let me know what you need and I will get started.",
    "Your request was: {request} What should I do with it?",
    "I can help! Which part would you like me to focus on?",
    "Could you rephrase the question? I want to make sure I get it right.",
    "Thanks for reaching out. Tell me more about your task.",
)
"""Ask-backs for training negatives: none is in ``ASK_BACKS``."""


@dataclass(frozen=True)
class JunkItem:
    """One labelled pair."""

    instruction: str
    response: str
    label: int
    """1: good (the reference's own answer); 0: bad."""
    kind: Kind
    source: str
    """The reference whose request this is (``lima.json#N``)."""
    donor: str | None = None
    """``mismatched``: the reference whose answer was put here."""


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)")


def sentences(text: str) -> list[str]:
    """``text`` split after ``.``, ``!`` or ``?`` followed by white space."""
    return [s.strip() for s in _SENTENCE.split(text.strip()) if s.strip()]


def make_loop(response: str, rng: random.Random) -> str:
    """The first 0-2 sentences of ``response``, then one of its sentences 8-20 times."""
    parts = sentences(response) or [response.strip()]
    lead = parts[: rng.randint(0, min(2, len(parts) - 1))]
    repeated = parts[rng.randrange(min(len(parts), 4))]
    joiner = rng.choice((" ", "\n"))
    return joiner.join([*lead, *([repeated] * rng.randint(8, 20))])


def make_ask_back(instruction: str, rng: random.Random, phrasings: Sequence[str]) -> str:
    """An answer that asks back (or restates the request) instead of answering."""
    words = instruction.split()
    request = " ".join(words[:25]) + (" …" if len(words) > 25 else "")
    return rng.choice(phrasings).format(request=request)


def lima_pairs(path: Path = LIMA) -> list[tuple[str, str, str]]:
    """(request, answer, source) for every single-turn record of a LIMA-style file."""
    from dataset.seeds import read_seeds

    refs = read_seeds(path, on_bad_record="skip", log=lambda *a, **k: None)
    return [(r.instruction, r.response, r.source or r.id) for r in refs]


def junk_set(path: Path = LIMA, *, n: int = 30, seed: int = 0) -> list[JunkItem]:
    """The labelled set: ``n`` good items and ``2 n`` bad ones (see the module's text)."""
    pairs = lima_pairs(path)
    if n < 2 or n > len(pairs):
        raise ValueError(f"{path}: n must be between 2 and {len(pairs)} (got {n})")
    rng = random.Random(seed)
    chosen = rng.sample(pairs, n)
    donors = list(range(n))
    while any(i == d for i, d in enumerate(donors)):  # a seeded derangement
        rng.shuffle(donors)
    items: list[JunkItem] = []
    for i, (inst, resp, src) in enumerate(chosen):
        items.append(JunkItem(inst, resp, 1, "reference", src))
        _, d_resp, d_src = chosen[donors[i]]
        items.append(JunkItem(inst, d_resp, 0, "mismatched", src, d_src))
        if i < n // 2:
            items.append(JunkItem(inst, make_loop(resp, rng), 0, "loop", src))
        else:
            items.append(JunkItem(inst, make_ask_back(inst, rng, ASK_BACKS), 0, "ask_back", src))
    return items


def negatives(
    pairs: Sequence[tuple[str, str]], *, seed: int = 0, phrasings: Sequence[str] = TRAIN_ASK_BACKS
) -> list[tuple[int, str, Kind]]:
    """Bad answers made from ``pairs`` (request, good answer): for pair ``i`` one of each kind,
    as ``(i, answer, kind)``; a mismatched answer is another pair's good answer."""
    if len(pairs) < 2:
        raise ValueError("negatives need at least two pairs")
    rng = random.Random(seed)
    out: list[tuple[int, str, Kind]] = []
    for i, (inst, resp) in enumerate(pairs):
        other = rng.randrange(len(pairs) - 1)
        other += other >= i
        out.append((i, pairs[other][1], "mismatched"))
        out.append((i, make_loop(resp, rng), "loop"))
        out.append((i, make_ask_back(inst, rng, phrasings), "ask_back"))
    return out


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve: the share of (good, bad) pairs where the good item scores
    higher, ties counting one half."""
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    good = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    bad = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if not good or not bad:
        raise ValueError("auc needs at least one good and one bad item")
    wins = sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad)
    return wins / (len(good) * len(bad))
