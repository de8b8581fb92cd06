"""Does the filter keep junk out? Good and bad answers built from LIMA, and what catches them.

The labelled set (``build_set``, seeded): for each of N LIMA references picked at random,
a *good* item is its own instruction and response; *bad* items are the instruction with
another reference's response (a fluent answer to something else), with one sentence of
its response said over and over (a loop), and with a reply that asks back instead of
answering (our own phrasings, varied on purpose, not copied from the check's patterns).

Each item is judged the way the pipeline would judge a candidate: its anchor is another
LIMA pair (a candidate's reference is never the candidate itself). Measured per item:

- the LLM judge's mean score (criteria ``instruction``, scores by log-probabilities, no
  rationale: the smollm2 profile's judge), and the anchor pair's score;
- the validity checks (dataset/validity.py) and the relevance check at ``--relevance``.

Reported: the AUC of good against bad for the judge's score (fixed bar) and for score minus
anchor (anchored bar); each check's catch rate per kind; and for the chosen setting
(checks + relevance + the anchored bar at ``--margin``) the share of bad items rejected
and of good items passed.

    python -m bench.junk --base-url http://127.0.0.1:8391/v1 --out bench/results/junk.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, versions
from dataset.embeddings import sentence_embedder
from dataset.validity import answer_problem
from judge.scoring import JudgeOptions, score_record
from llm.client import LLMClient
from llm.transport import openai_transport
from nodes.metric_judge import pipeline_record
from prompts import criteria

LIMA = REPO.parent / "shared" / "data" / "seeds" / "lima.json"

ASK_BACKS = (
    "I'm ready to help. What's your request?",
    "Sure! What would you like me to write about?",
    "Could you tell me a bit more about what you need?",
    "Happy to assist. Which topic should I cover?",
    "Before I answer, can you clarify what you mean?",
    "What kind of answer are you looking for?",
    "I'd love to help with that! Can you give me more details first?",
    "Please provide the text you want me to work on.",
    "Okay. What should the poem be about?",
    "Let me know what you'd like to explore and I'll get started.",
    "Hi there! How can I assist you today?",
    "That depends. What exactly do you want to know?",
    "Could you share the details of your situation?",
    "I need a little more information to answer. What are you trying to do?",
    "Great question! What would you like me to focus on?",
)


@dataclass
class Item:
    kind: str  # good, other, loop, ask-back
    instruction: str
    response: str
    anchor_instruction: str
    anchor_response: str
    judge: float = 0.0
    """The judge's mean score of this item."""
    anchor: float = 0.0
    """The judge's mean score of its anchor pair."""
    check: str | None = None
    """The validity check it fails, if any."""
    relevance: float = 0.0
    """Cosine of the instruction's and the response's embeddings."""

    @property
    def good(self) -> bool:
        return self.kind == "good"


@dataclass(frozen=True)
class Setting:
    name: str
    checks: bool = False
    relevance: float | None = None
    margin: float | None = None
    bar: float | None = None

    def rejects(self, it: Item) -> bool:
        if self.checks and it.check is not None:
            return True
        if self.relevance is not None and it.relevance < self.relevance:
            return True
        if self.margin is not None and it.judge < it.anchor - self.margin:
            return True
        return self.bar is not None and it.judge < self.bar


def _first_sentence(text: str) -> str:
    found = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
    return found if len(found.split()) >= 4 else " ".join(text.split()[:12]) + "."


def build_set(n_good: int = 30, seed: int = 0) -> list[Item]:
    """n_good good items, n_good mismatched, n_good/2 loops, n_good/2 ask-backs."""
    pairs = [
        (x["instruction"], x["output"])
        for x in json.loads(LIMA.read_text())
        if not x.get("history") and 40 <= len(x["output"]) <= 3000
    ]
    rng = random.Random(seed)
    picked = rng.sample(pairs, 2 * n_good)
    refs, anchors = picked[:n_good], picked[n_good:]
    items: list[Item] = []
    for i, (inst, resp) in enumerate(refs):
        a_inst, a_resp = anchors[i]
        items.append(Item("good", inst, resp, a_inst, a_resp))
        other = refs[(i + 1) % n_good][1]
        items.append(Item("other", inst, other, a_inst, a_resp))
        if i % 2 == 0:
            loop = " ".join([_first_sentence(resp)] * 12)
            items.append(Item("loop", inst, loop, a_inst, a_resp))
        else:
            ask = ASK_BACKS[(i // 2) % len(ASK_BACKS)]
            items.append(Item("ask-back", inst, ask, a_inst, a_resp))
    return items


def auc(good: list[float], bad: list[float]) -> float:
    """P(a good item scores above a bad one), ties half."""
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


async def judge_all(items: list[Item], base_url: str, model: str, concurrency: int) -> None:
    client = LLMClient(openai_transport(base_url, model, "EMPTY"), concurrency=concurrency)
    cset = criteria("instruction")
    opts = JudgeOptions(temperature=0.0, logprobs=5, rationale_chars=0)

    async def mean(inst: str, resp: str, tag: object) -> float:
        record = pipeline_record(cset, inst, resp, inst, resp)
        judged = await score_record(client, cset, record, opts, seed_parts=(tag,))
        return judged.value.mean

    keys = sorted({(it.anchor_instruction, it.anchor_response) for it in items})
    scores = await asyncio.gather(*(mean(i, r, "anchor") for i, r in keys))
    anchors = dict(zip(keys, scores, strict=True))
    found = await asyncio.gather(
        *(mean(it.instruction, it.response, n) for n, it in enumerate(items))
    )
    for it, score in zip(items, found, strict=True):
        it.judge = score
        it.anchor = anchors[(it.anchor_instruction, it.anchor_response)]
    await client.aclose()


KINDS = ("good", "other", "loop", "ask-back")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    items = build_set(args.n, args.seed)
    embed = sentence_embedder()
    vectors_i = embed([it.instruction for it in items])
    vectors_r = embed([it.response for it in items])
    for n, it in enumerate(items):
        problem = answer_problem(it.response, it.instruction)
        it.check = problem.name if problem else None
        it.relevance = float(vectors_i[n] @ vectors_r[n])
    asyncio.run(judge_all(items, args.base_url, args.model, args.concurrency))

    good = [it for it in items if it.good]
    bad = [it for it in items if not it.good]
    of_kind = {kind: [it for it in items if it.kind == kind] for kind in KINDS}
    rel, margin = args.relevance, args.margin
    settings = (
        Setting("fixed bar 3.0 alone", bar=3.0),
        Setting(f"anchored bar reference:{margin:g} alone", margin=margin),
        Setting("validity checks alone", checks=True),
        Setting(f"relevance {rel:g} alone", relevance=rel),
        Setting(f"checks + relevance {rel:g}", checks=True, relevance=rel),
        Setting(
            f"checks + relevance {rel:g} + bar reference:{margin:g} (smollm2 profile)",
            checks=True,
            relevance=rel,
            margin=margin,
        ),
    )
    rows = [
        {
            "setting": st.name,
            "good_passed": sum(not st.rejects(g) for g in good) / len(good),
            "bad_rejected": sum(st.rejects(b) for b in bad) / len(bad),
            "rejected_by_kind": {
                kind: sum(st.rejects(it) for it in of_kind[kind]) / len(of_kind[kind])
                for kind in KINDS[1:]
            },
        }
        for st in settings
    ]
    return {
        "set": {"good": len(good), "bad": len(bad), "seed": args.seed},
        "judge": {"model": args.model, "criteria": "instruction", "scores": "logprob"},
        "relevance_min": rel,
        "margin": margin,
        "auc_judge_fixed": auc([g.judge for g in good], [b.judge for b in bad]),
        "auc_judge_anchored": auc(
            [g.judge - g.anchor for g in good], [b.judge - b.anchor for b in bad]
        ),
        "auc_relevance": auc([g.relevance for g in good], [b.relevance for b in bad]),
        "judge_mean_by_kind": {k: sum(it.judge for it in v) / len(v) for k, v in of_kind.items()},
        "checks_by_kind": {k: dict(Counter(it.check for it in v)) for k, v in of_kind.items()},
        "settings": rows,
        "items": [asdict(it) for it in items],
        "machine": machine(),
        "versions": versions(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.junk", description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--n", type=int, default=30, help="good items (bad: twice as many)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relevance", type=float, default=0.3)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "junk.json")
    args = parser.parse_args(argv)
    result = measure(args)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"AUC judge fixed {result['auc_judge_fixed']:.3f}, anchored "
        f"{result['auc_judge_anchored']:.3f}, relevance {result['auc_relevance']:.3f}"
    )
    means = result["judge_mean_by_kind"]
    print("judge mean by kind: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    for row in result["settings"]:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in row["rejected_by_kind"].items())
        good, bad = row["good_passed"], row["bad_rejected"]
        print(f"{row['setting']}: good passed {good:.0%}, bad rejected {bad:.0%} ({kinds})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
