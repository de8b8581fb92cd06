"""The paper's three settings, trained and evaluated from scratch, per base and per seed.

- single-task: one model per task, trained and tested on that task;
- multi-task: one model trained on every task together, tested on each;
- multi-task + negatives: the same with made-up bad answers to Auto-J's training requests
  under the pipeline's criteria (``metric.instruct``), the model the pipeline is served;
- leave-one-task-out: per task, a model trained on the other tasks, tested zero-shot on it.

Every setting of every base and seed reads the same data, splits (by source, one split seed)
and stored frozen-layer features, and is scored on the same test examples as the baselines
(ROUGE-L, embedding cosine, the untrained base, the LLM judge). Each trained model and the
untrained base are also scored on the LIMA junk set (``metric.junk``) under the pipeline's
criteria: the AUC of their mean score, good against bad. The first seed's multi-task model
(with negatives, when there are any, its logit then calibrated on their ratings by
``metric.calibrate``) of each base is saved as a Hugging Face folder with its model card.
Results go to ``OUT/results.json`` and ``OUT/results.md`` (``metric.report``).
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dataset.embeddings import mean_pooled_embedder
from metric.bases import DEFAULT_BASE, Base, open_base
from metric.calibrate import calibrate
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
from metric.features import Features, Inputs
from metric.instruct import BAD, GOOD, junk_examples, negatives_examples
from metric.instruct import TASK as INSTRUCTION_TASK
from metric.junk import JunkItem, auc, junk_set
from metric.llm_baseline import LLMConfig, LLMResult, make_llm_client, run_pairs, run_pointwise
from metric.report import headline, model_card, results_markdown
from metric.text import sigmoid, to_scale
from metric.train import LAYOUT_VERSION, TrainConfig, predict, save, train_head
from metric.trunk import default_cache_dir, trunk

SETTINGS = ("single", "multi", "loto")


@dataclass
class Prepared:
    """One task's data, split and capped."""

    data: TaskData
    train: list[Example]
    test: list[Example]
    train_pairs: list[Pair]
    """Good-vs-bad pairs from ratings, plus the human pairs of pairwise sets (no ties)."""
    test_pairs: list[Pair]
    """Human pairs of pairwise sets in the test split that people did not call a tie."""


def prepare(
    spec: TaskSpec, caps: Caps, *, min_gap: float, split_seed: int = 0, test_fraction: float = 0.3
) -> Prepared:
    data = build_task(spec, seed=split_seed, test_fraction=test_fraction)
    # Texts of a pairwise set carry no rating: only those in a pair people decided are used,
    # in training and in test (the headline is the accuracy on pairs that are not a tie).
    decided = {u for p in data.pairs if p.label != "tie" for u in (p.first, p.second)}
    test = select(
        [e for e in data.split_examples("test") if e.rating is not None or e.uid in decided],
        caps.test_per_criterion,
        None,
        split_seed,
        purpose="test",
    )
    candidates = [
        e for e in data.split_examples("train") if e.rating is not None or e.uid in decided
    ]
    train = select(
        candidates, caps.train_per_criterion, caps.max_members, split_seed, purpose="train"
    )
    human_train = [p for p in selected_pairs(data.split_pairs("train"), train) if p.label != "tie"]
    return Prepared(
        data=data,
        train=train,
        test=test,
        train_pairs=rating_pairs(train, min_gap) + human_train,
        test_pairs=[p for p in selected_pairs(data.split_pairs("test"), test) if p.label != "tie"],
    )


@dataclass
class RunConfig:
    out: Path = Path("runs/metric")
    tasks: tuple[str, ...] = tuple(TASKS)
    bases: tuple[str, ...] = (DEFAULT_BASE,)
    seeds: tuple[int, ...] = (0, 1, 2)
    split_seed: int = 0
    caps: Caps = field(default_factory=Caps)
    train: TrainConfig = field(default_factory=TrainConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    test_fraction: float = 0.3
    settings: tuple[str, ...] = SETTINGS
    negatives: int = 200
    """Auto-J training requests made into negatives (0: none, and no multi+neg setting)."""
    junk: int = 30
    """References in the LIMA junk set (0: not scored)."""
    max_len: dict[str, int] = field(default_factory=dict)
    """Input budget per base (default: the base's own)."""
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    keep_lower: bool = False
    """Also store the output one layer lower (a later run can then train one more layer)."""
    threads: int | None = None
    extra_tasks: tuple[TaskSpec, ...] = ()


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


def _scaled(logits: dict[str, float], examples: dict[str, Example]) -> dict[str, float]:
    """The model's scores on each criterion's scale (sigmoid, then the scale)."""
    return {k: to_scale(sigmoid(v), examples[k].scale) for k, v in logits.items()}


def _rows_for(
    setting: str, p: Prepared, logits: dict[str, float], *, base: str = "", seed: int | None = None
) -> list[Row]:
    scores = _scaled(logits, p.data.examples)
    rows: list[Row] = []
    for hset in p.data.spec.sets:
        exs = [e for e in p.test if e.set == hset.name]
        if hset.kind == "pointwise":
            rows += pointwise_rows(setting, exs, scores, primary=hset.primary)
        else:
            ps = [q for q in p.test_pairs if q.set == hset.name]
            rows += pair_rows(setting, ps, scores)
    for r in rows:
        r.base, r.seed = base, seed
    return rows


def junk_scores(
    items: Sequence[JunkItem], examples: Sequence[Example], logits: dict[str, float]
) -> dict[str, Any]:
    """AUC of the mean score over the criteria (as the pipeline's bar reads it), overall and
    against each bad kind, and the mean score of each kind."""
    per_item: dict[str, list[float]] = defaultdict(list)
    for ex in examples:
        per_item[ex.item].append(to_scale(sigmoid(logits[ex.uid]), ex.scale))
    means = [statistics.mean(per_item[f"junk:{n}"]) for n in range(len(items))]
    labels = [it.label for it in items]
    by_kind = {
        kind: auc(
            [m for m, it in zip(means, items, strict=True) if it.kind in ("reference", kind)],
            [it.label for it in items if it.kind in ("reference", kind)],
        )
        for kind in sorted({it.kind for it in items if it.label == 0})
    }
    kinds = sorted({it.kind for it in items})
    mean_of = {
        k: statistics.mean(m for m, it in zip(means, items, strict=True) if it.kind == k)
        for k in kinds
    }
    return {"auc": auc(means, labels), "auc_by_kind": by_kind, "mean_by_kind": mean_of}


def _llm_thread(
    prepared: dict[str, Prepared], cfg: LLMConfig, result: LLMResult, log: Callable[[str], None]
) -> threading.Thread:
    async def every_set() -> None:
        client = make_llm_client(cfg)
        try:
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
        finally:
            if client is not None:
                await client.aclose()

    def work() -> None:
        asyncio.run(every_set())

    thread = threading.Thread(target=work, name="llm-baseline", daemon=True)
    thread.start()
    return thread


def merge_inputs(parts: Sequence[Inputs]) -> Inputs:
    """Several tasks' inputs as one."""
    chains: dict[str, tuple[str, ...]] = {}
    nodes = {}
    for p in parts:
        chains.update(p.chains)
        nodes.update(p.nodes)
    return Inputs(chains, nodes)


@dataclass
class BaseRun:
    rows: list[Row] = field(default_factory=list)
    junk: list[dict[str, Any]] = field(default_factory=list)
    train: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    served: Any = None
    """The head to save (the first seed's multi-task model, with negatives when any)."""
    base: Any = None


def run_base(
    name: str,
    prepared: dict[str, Prepared],
    negatives: list[Example],
    items: list[JunkItem],
    cfg: RunConfig,
    say: Callable[[str], None],
    specs: Sequence[TaskSpec],
) -> BaseRun:
    """Every setting and seed of one base (and its saved model)."""
    result = BaseRun()
    t = time.monotonic()
    base: Base = open_base(name, max_len=cfg.max_len.get(name), train_layers=cfg.train.train_layers)
    junk_exs = junk_examples(items)
    groups: dict[str, list[Example]] = {n: [*p.train, *p.test] for n, p in prepared.items()}
    if negatives:
        groups[INSTRUCTION_TASK] = negatives
    if junk_exs:
        groups["junk"] = junk_exs
    inputs = {task: base.inputs(exs) for task, exs in groups.items()}
    result.timings["inputs"] = time.monotonic() - t
    t = time.monotonic()
    depths = [base.frozen] + ([base.frozen - 1] if cfg.keep_lower and base.frozen > 1 else [])
    feats: Features = trunk(base, inputs, depths, cache_dir=cfg.cache_dir, log=say)[base.frozen]
    result.timings["frozen_layers"] = time.monotonic() - t
    everything = merge_inputs(list(inputs.values()))
    neg_pairs = rating_pairs(negatives, cfg.train.min_gap) if negatives else []
    names = list(prepared)
    served: Any = None

    def evaluate(setting: str, head: Any, tasks: Sequence[str], seed: int) -> None:
        for n in tasks:
            ids = [e.uid for e in prepared[n].test]
            rows = _rows_for(
                setting, prepared[n], predict(head, feats, everything, ids), base=name, seed=seed
            )
            result.rows.extend(rows)
            by_set: dict[str, list[float]] = defaultdict(list)
            for r in rows:
                v = headline(r.as_dict())
                if v is not None:
                    by_set[r.set].append(v)
            means = ", ".join(f"{k} {statistics.mean(v):.3f}" for k, v in by_set.items())
            say(f"{name} seed {seed} {setting}: {means}")

    def junk(setting: str, head: Any, seed: int) -> None:
        if not junk_exs:
            return
        logits = predict(head, feats, everything, [e.uid for e in junk_exs])
        scored = junk_scores(items, junk_exs, logits)
        result.junk.append({"base": name, "seed": seed, "setting": setting, **scored})
        say(f"{name} seed {seed} {setting}: junk AUC {scored['auc']:.3f}")

    def fit(
        seed: int,
        label: str,
        tasks: Sequence[str],
        extra: Sequence[Example] = (),
        extra_pairs: Sequence[Pair] = (),
    ) -> Any:
        head = base.head(seed)
        exs = [e for n in tasks for e in prepared[n].train] + list(extra)
        pairs = [q for n in tasks for q in prepared[n].train_pairs] + list(extra_pairs)
        tc = replace(cfg.train, seed=seed)
        desc = f"{name} seed {seed} {label}"
        stats = train_head(head, feats, everything, exs, pairs, tc, desc=desc, log=say)
        result.train[f"{name}:{seed}:{label}"] = asdict(stats)
        return head

    def calibrated(head: Any, seed: int) -> None:
        """Fold the affine map that puts the negatives' scores on their ratings into ``head``."""
        uids = [e.uid for e in negatives]
        before = predict(head, feats, everything, uids)
        affine = calibrate(
            head, [before[u] for u in uids], [float(e.norm or 0.0) for e in negatives]
        )
        after = predict(head, feats, everything, uids)
        mean = {
            label: statistics.mean(
                to_scale(sigmoid(after[e.uid]), e.scale) for e in negatives if e.rating == rating
            )
            for label, rating in (("good", GOOD), ("bad", BAD))
        }
        result.train[f"{name}:{seed}:multi+neg"]["calibration"] = {"a": affine.a, "c": affine.c}
        say(
            f"{name} seed {seed} multi+neg: calibrated (logit x {affine.a:.2f} + {affine.c:.2f}); "
            f"training negatives now average {mean['good']:.2f} (good) and {mean['bad']:.2f} (bad)"
        )

    for seed in cfg.seeds:
        t = time.monotonic()

        untrained = base.head(seed)
        evaluate("untrained", untrained, names, seed)
        junk("untrained", untrained, seed)
        if "single" in cfg.settings:
            for n in names:
                evaluate("single", fit(seed, f"single:{n}", [n]), [n], seed)
        if "multi" in cfg.settings:
            head = fit(seed, "multi", names)
            evaluate("multi", head, names, seed)
            junk("multi", head, seed)
            served = served if served is not None else head
            if negatives:
                head = fit(seed, "multi+neg", names, negatives, neg_pairs)
                calibrated(head, seed)
                evaluate("multi+neg", head, names, seed)
                junk("multi+neg", head, seed)
                if seed == cfg.seeds[0]:
                    served = head
        if "loto" in cfg.settings and len(names) > 1:
            for n in names:
                evaluate("loto", fit(seed, f"loto:-{n}", [m for m in names if m != n]), [n], seed)
        result.timings[f"seed_{seed}"] = time.monotonic() - t

    result.served, result.base = served, base
    return result


def run(cfg: RunConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and evaluate every setting of every base and seed from scratch."""
    started = time.monotonic()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    say = log or Log(out / "run.log")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    specs = [TASKS[t] for t in cfg.tasks] + list(cfg.extra_tasks)
    timings: dict[str, float] = {}

    t = time.monotonic()
    prepared = {
        s.name: prepare(
            s,
            cfg.caps,
            min_gap=cfg.train.min_gap,
            split_seed=cfg.split_seed,
            test_fraction=cfg.test_fraction,
        )
        for s in specs
    }
    for name, p in prepared.items():
        groups = {e.group for e in p.train}, {e.group for e in p.test}
        say(
            f"{name}: train {len(p.train)} texts ({len(groups[0])} sources, "
            f"{len(p.train_pairs)} pairs); test {len(p.test)} texts ({len(groups[1])} sources, "
            f"{len(p.test_pairs)} human pairs)"
        )
    negatives: list[Example] = []
    if cfg.negatives and "preference" in prepared:
        negatives = negatives_examples(
            prepared["preference"].data, cfg.negatives, seed=cfg.split_seed
        )
        say(
            f"negatives: {len({e.group for e in negatives})} Auto-J training requests, "
            f"{len({e.item for e in negatives})} texts"
        )
    items = junk_set(n=cfg.junk, seed=cfg.split_seed) if cfg.junk else []
    timings["data"] = time.monotonic() - t

    llm_result = LLMResult()
    llm = _llm_thread(prepared, cfg.llm, llm_result, say) if cfg.llm.base_url else None

    rows: list[Row] = []
    junk_rows: list[dict[str, Any]] = []
    train_stats: dict[str, Any] = {}
    runs: dict[str, BaseRun] = {}
    for name in cfg.bases:
        t = time.monotonic()
        br = runs[name] = run_base(name, prepared, negatives, items, cfg, say, specs)
        rows += br.rows
        junk_rows += br.junk
        train_stats.update(br.train)
        timings.update({f"{name}:{k}": v for k, v in br.timings.items()})
        timings[f"{name}:total"] = time.monotonic() - t

    # --- reference baselines (no base) -----------------------------------------------------
    t = time.monotonic()
    from transformers import AutoModel

    from dataset.embeddings import base_folder
    from metric.encoder import load_tokenizer

    folder = base_folder()
    embed = mean_pooled_embedder(
        AutoModel.from_pretrained(str(folder)).eval(), load_tokenizer(folder)
    )
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
    timings["reference_baselines"] = time.monotonic() - t

    # --- the LLM judge baseline ---------------------------------------------------------------
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
        "junk": junk_rows,
        "train": train_stats,
        "timings": timings,
        "config": {
            "tasks": {s.name: [h.name for h in s.sets] for s in specs},
            "bases": list(cfg.bases),
            "seeds": list(cfg.seeds),
            "split_seed": cfg.split_seed,
            "caps": asdict(cfg.caps),
            "train": asdict(cfg.train),
            "max_len": cfg.max_len,
            "negatives": cfg.negatives,
            "junk": cfg.junk,
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
    (out / "results.md").write_text(results_markdown(results))
    for name, br in runs.items():
        if br.served is not None:
            folder = save_model(name, br, results, cfg, specs, len({e.group for e in negatives}))
            say(f"saved the {name} model: {folder}")
    say(f"done in {timings['total']:.0f} s; results: {out / 'results.md'}")
    return results


def save_model(
    name: str,
    br: BaseRun,
    results: dict[str, Any],
    cfg: RunConfig,
    specs: Sequence[TaskSpec],
    negatives: int,
) -> Path:
    base = br.base
    folder = cfg.out / ("model" if name == cfg.bases[0] else f"model-{name}")
    tc = replace(cfg.train, seed=cfg.seeds[0])
    meta = {
        "kind": base.kind,
        "base": name,
        "max_len": base.max_len,
        "tasks": {
            s.name: {
                "criteria": s.criteria,
                "sets": [h.name for h in s.sets],
                "paraphrases": list(s.paraphrases),
                "keep_end": list(s.keep_end),
            }
            for s in specs
        },
        "negatives": negatives,
    }
    card = model_card(
        results,
        base=name,
        description=base.description,
        card_base=base.card_base,
        kind=base.kind,
        max_len=base.max_len,
        train=asdict(tc),
        calibrated=negatives > 0,
    )
    return save(base, br.served, folder, cfg=tc, meta=meta, card=card)


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(type(value))
