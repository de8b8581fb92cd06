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
from nodes.judging import JudgeOptions, score_record
from nodes.llm import LLMClient, openai_transport
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

    @property
    def good(self) -> bool:
        return self.kind == "good"


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

    anchors: dict[tuple[str, str], float] = {}
    keys = sorted({(it.anchor_instruction, it.anchor_response) for it in items})
    scores = await asyncio.gather(*(mean(i, r, "anchor") for i, r in keys))
    anchors.update(zip(keys, scores, strict=True))
    found = await asyncio.gather(
        *(mean(it.instruction, it.response, n) for n, it in enumerate(items))
    )
    for it, score in zip(items, found, strict=True):
        setattr(it, "judge", score)  # noqa: B010
        setattr(it, "anchor", anchors[(it.anchor_instruction, it.anchor_response)])  # noqa: B010
    await client.aclose()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    items = build_set(args.n, args.seed)
    embed = sentence_embedder()
    vectors_i = embed([it.instruction for it in items])
    vectors_r = embed([it.response for it in items])
    for n, it in enumerate(items):
        problem = answer_problem(it.response, it.instruction)
        setattr(it, "check", problem.name if problem else None)  # noqa: B010
        setattr(it, "relevance", float(vectors_i[n] @ vectors_r[n]))  # noqa: B010
    asyncio.run(judge_all(items, args.base_url, args.model, args.concurrency))

    good = [it for it in items if it.good]
    bad = [it for it in items if not it.good]
    v: dict[str, Any] = {}
    v["auc_judge_fixed"] = auc([g.judge for g in good], [b.judge for b in bad])  # type: ignore[attr-defined]
    v["auc_judge_anchored"] = auc(
        [g.judge - g.anchor for g in good],  # type: ignore[attr-defined]
        [b.judge - b.anchor for b in bad],  # type: ignore[attr-defined]
    )
    v["auc_relevance"] = auc([g.relevance for g in good], [b.relevance for b in bad])  # type: ignore[attr-defined]
    judge_means = {
        kind: sum(it.judge for it in items if it.kind == kind)  # type: ignore[attr-defined]
        / sum(1 for it in items if it.kind == kind)
        for kind in ("good", "other", "loop", "ask-back")
    }

    def rejected(
        it: Item, *, relevance: float | None, margin: float | None, bar: float | None
    ) -> bool:
        if it.check is not None:  # type: ignore[attr-defined]
            return True
        if relevance is not None and it.relevance < relevance:  # type: ignore[attr-defined]
            return True
        if margin is not None and it.judge < it.anchor - margin:  # type: ignore[attr-defined]
            return True
        return bar is not None and it.judge < bar  # type: ignore[attr-defined]

    settings = {
        "fixed bar 3.0 alone": {"relevance": None, "margin": None, "bar": 3.0, "checks": False},
        f"anchored bar reference:{args.margin:g} alone": {
            "relevance": None,
            "margin": args.margin,
            "bar": None,
            "checks": False,
        },
        "validity checks alone": {"relevance": None, "margin": None, "bar": None, "checks": True},
        f"checks + relevance {args.relevance:g}": {
            "relevance": args.relevance,
            "margin": None,
            "bar": None,
            "checks": True,
        },
        f"checks + relevance {args.relevance:g} + anchored bar reference:{args.margin:g} (smollm2 profile)": {
            "relevance": args.relevance,
            "margin": args.margin,
            "bar": None,
            "checks": True,
        },
    }
    rows = []
    for name, s in settings.items():

        def rej(it: Item) -> bool:
            if not s["checks"] and it.check is not None:  # type: ignore[attr-defined]
                saved, it.check = it.check, None  # type: ignore[attr-defined]
                try:
                    return rejected(it, relevance=s["relevance"], margin=s["margin"], bar=s["bar"])
                finally:
                    it.check = saved  # type: ignore[attr-defined]
            return rejected(it, relevance=s["relevance"], margin=s["margin"], bar=s["bar"])

        per_kind = {
            kind: sum(rej(it) for it in items if it.kind == kind)
            / sum(1 for it in items if it.kind == kind)
            for kind in ("other", "loop", "ask-back")
        }
        rows.append(
            {
                "setting": name,
                "good_passed": sum(not rej(g) for g in good) / len(good),
                "bad_rejected": sum(rej(b) for b in bad) / len(bad),
                "rejected_by_kind": per_kind,
            }
        )
    checks_by_kind = {
        kind: dict(Counter(it.check for it in items if it.kind == kind))  # type: ignore[attr-defined]
        for kind in ("good", "other", "loop", "ask-back")
    }
    return {
        "set": {
            "good": len(good),
            "bad": len(bad),
            "kinds": dict(Counter(it.kind for it in items)),
            "seed": args.seed,
        },
        "judge": {
            "model": args.model,
            "criteria": "instruction",
            "scores": "logprob expectation",
            "rationale": 0,
        },
        "relevance_min": args.relevance,
        "margin": args.margin,
        **v,
        "judge_mean_by_kind": judge_means,
        "checks_by_kind": checks_by_kind,
        "settings": rows,
        "items": [
            {
                **asdict(it),
                "judge": it.judge,
                "anchor": it.anchor,
                "check": it.check,
                "relevance": it.relevance,
            }  # type: ignore[attr-defined]
            for it in items
        ],
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
    print(
        "judge mean by kind: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["judge_mean_by_kind"].items())
    )
    for row in result["settings"]:
        kinds = ", ".join(f"{k} {v:.0%}" for k, v in row["rejected_by_kind"].items())
        print(
            f"{row['setting']}: good passed {row['good_passed']:.0%}, bad rejected {row['bad_rejected']:.0%} ({kinds})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
