"""Tables of a ``metric run``: means over criteria per set, as mean ± spread over seeds.

The headline number of a set is the mean over its criteria of the Spearman correlation at
the set's primary level (SummEval: per article, then averaged, as ``judge eval`` reports it;
the others per text), or for Auto-J the pairwise accuracy on pairs people did not call a tie.
Each seed gives one such mean; a cell is their mean ± their standard deviation (the spread
over seeds; one seed: the value alone).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

TRAINED = ("single", "multi", "multi+neg", "loto", "untrained")
BASELINES = ("rouge_l", "cosine", "llm")
TITLES = {
    "single": "single",
    "multi": "multi",
    "multi+neg": "multi + negatives",
    "loto": "leave-one-out",
    "untrained": "untrained base",
    "rouge_l": "ROUGE-L",
    "cosine": "cosine",
    "llm": "LLM judge",
}


def headline(row: dict[str, Any]) -> float | None:
    v = row["pair_accuracy"] if row["level"] == "pair" else row["spearman"]
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def mean_spread(values: Iterable[float]) -> tuple[float, float | None]:
    vals = list(values)
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    m, s = mean_spread(values)
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def set_values(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], list[float]]:
    """(base, setting, task, set) -> one mean over criteria per seed."""
    per_seed: dict[tuple[str, str, str, str, Any], list[float]] = defaultdict(list)
    for r in rows:
        v = headline(r)
        if v is not None:
            per_seed[(r.get("base", ""), r["setting"], r["task"], r["set"], r.get("seed"))].append(
                v
            )
    out: dict[tuple[str, str, str, str], list[float]] = defaultdict(list)
    for (base, setting, task, set_name, _seed), vals in sorted(
        per_seed.items(), key=lambda kv: str(kv[0])
    ):
        out[(base, setting, task, set_name)].append(statistics.mean(vals))
    return out


def sizes(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(task, set) -> its test size: texts per criterion (Spearman) or pairs (Auto-J)."""
    out: dict[tuple[str, str], str] = {}
    for r in rows:
        if r["setting"] != "untrained":
            continue
        key = (r["task"], r["set"])
        if key in out:
            continue
        if r["level"] == "pair":
            out[key] = f"{r['n_pairs']} pairs"
        else:
            out[key] = f"{r['n']} texts" + (" (by article)" if r["level"] == "document" else "")
    return out


def main_tables(results: dict[str, Any]) -> list[str]:
    rows = results["rows"]
    values = set_values(rows)
    size = sizes(rows)
    keys = sorted({(r["task"], r["set"]) for r in rows})
    bases = list(dict.fromkeys(r["base"] for r in rows if r.get("base")))
    out = []
    for base in bases:
        methods = [m for m in TRAINED if any(k[0] == base and k[1] == m for k in values)]
        methods += [m for m in BASELINES if any(k[1] == m for k in values)]
        out.append(f"### Base: {base}\n")
        out.append("| set | test size | " + " | ".join(TITLES[m] for m in methods) + " |")
        out.append("|---|---|" + "---|" * len(methods))
        for task, set_name in keys:
            cells = []
            for m in methods:
                b = base if m in TRAINED else ""
                cells.append(fmt(values.get((b, m, task, set_name), [])))
            out.append(
                f"| {set_name} | {size.get((task, set_name), '')} | " + " | ".join(cells) + " |"
            )
        out.append("")
    return out


def junk_table(results: dict[str, Any]) -> list[str]:
    junk = results.get("junk") or []
    if not junk:
        return []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for j in junk:
        groups[(j["base"], j["setting"])].append(j)
    kinds = sorted({k for j in junk for k in j["auc_by_kind"]})
    shown = sorted({k for j in junk for k in j["mean_by_kind"]})
    out = [
        "| base | setting | AUC | "
        + " | ".join(f"AUC vs {k}" for k in kinds)
        + " | "
        + " | ".join(f"mean score: {k}" for k in shown)
        + " |",
        "|---|---|---|" + "---|" * (len(kinds) + len(shown)),
    ]
    for (base, setting), js in groups.items():
        cells = [fmt([j["auc"] for j in js])]
        cells += [fmt([j["auc_by_kind"][k] for j in js]) for k in kinds]
        cells += [fmt([j["mean_by_kind"][k] for j in js]) for k in shown]
        out.append(f"| {base} | {TITLES.get(setting, setting)} | " + " | ".join(cells) + " |")
    return out


def criterion_table(results: dict[str, Any]) -> list[str]:
    """Per criterion, each method's headline averaged over seeds."""
    rows = results["rows"]
    cell: dict[tuple[str, str, str, str, str], list[float]] = defaultdict(list)
    n: dict[tuple[str, str, str], int] = {}
    for r in rows:
        v = headline(r)
        if v is None:
            continue
        cell[(r.get("base", ""), r["setting"], r["task"], r["set"], r["criterion"])].append(v)
        if r["setting"] == "untrained":
            n[(r["task"], r["set"], r["criterion"])] = (
                r["n_pairs"] if r["level"] == "pair" else r["n"]
            )
    cols = sorted({(k[0], k[1]) for k in cell}, key=lambda c: (c[0] == "", c[0], c[1]))
    out = [
        "| set | criterion | n | "
        + " | ".join(f"{b + ' ' if b else ''}{TITLES.get(s, s)}" for b, s in cols)
        + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for task, set_name, crit in sorted(n):
        cells = []
        for b, s in cols:
            vals = cell.get((b, s, task, set_name, crit), [])
            cells.append(f"{statistics.mean(vals):.3f}" if vals else "–")
        out.append(
            f"| {set_name} | {crit} | {n[(task, set_name, crit)]} | " + " | ".join(cells) + " |"
        )
    return out


def _row_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["task"], row["set"], row["criterion"])


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's results from runs of the same tasks and splits on other seeds (or bases): the
    trained rows and junk entries of every part, each seed-free baseline row (ROUGE-L, cosine,
    the LLM judge) once, from the first part that has it, the training records and timings
    side by side (keys prefixed by the part's index when two parts share one). A (base,
    setting, seed) two parts both hold is kept once when their numbers agree (the untrained
    base of one seed is the same in every run) and refused when they differ. Raises
    ValueError when the parts' data differ (other tasks, splits or caps)."""
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    same = ("tasks", "split_seed", "caps", "test_fraction")
    rows: list[dict[str, Any]] = []
    junk: list[dict[str, Any]] = []
    held: dict[tuple[Any, ...], list[float | None]] = {}
    baselines: set[tuple[Any, ...]] = set()
    train: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    for i, part in enumerate(parts):
        cfg, ref = part.get("config", {}), first.get("config", {})
        differ = [k for k in same if cfg.get(k) != ref.get(k)]
        if differ:
            raise ValueError(f"part {i + 1} differs from part 1 in {', '.join(differ)}")
        trained: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for r in part["rows"]:
            if r.get("base"):
                trained[(r["base"], r["setting"], r.get("seed"))].append(r)
                continue
            key = (r["setting"], r["task"], r["set"], r["criterion"], r["level"])
            if key not in baselines:
                baselines.add(key)
                rows.append(r)
        for key, mine in trained.items():
            values = [headline(r) for r in sorted(mine, key=_row_key)]
            if key in held and held[key] != values:
                raise ValueError(
                    f"part {i + 1} repeats {key} (base, setting, seed) with other numbers"
                )
            if key not in held:
                held[key] = values
                rows += mine
        seen_junk = {(j["base"], j["setting"], j["seed"]) for j in junk}
        junk += [
            j
            for j in part.get("junk") or []
            if (j["base"], j["setting"], j["seed"]) not in seen_junk
        ]
        for key, value in (part.get("train") or {}).items():
            train[key if key not in train else f"{i + 1}:{key}"] = value
        for key, value in (part.get("timings") or {}).items():
            timings[key if key not in timings else f"{i + 1}:{key}"] = value
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    bases = list(dict.fromkeys(r["base"] for r in rows if r.get("base")))
    config = {**first.get("config", {}), "seeds": seeds, "bases": bases}
    notes: dict[str, str] = {}
    errors: list[Any] = []
    for part in parts:
        notes.update(part.get("llm_notes") or {})
        errors += part.get("llm_errors") or []
    return {
        **first,
        "rows": rows,
        "junk": junk,
        "train": train,
        "timings": timings,
        "config": config,
        "llm_notes": notes,
        "llm_errors": errors,
        "merged_from": len(parts),
    }


def results_markdown(results: dict[str, Any]) -> str:
    out = [
        "## Means over criteria (Spearman at the set's primary level; Auto-J: pairwise "
        "accuracy), mean ± spread over seeds\n"
    ]
    out += main_tables(results)
    junk = junk_table(results)
    if junk:
        out += ["## Junk set (LIMA): AUC of the mean score on the pipeline's criteria\n", *junk, ""]
    out += ["## Per criterion (mean over seeds)\n", *criterion_table(results), ""]
    notes = [
        f"- LLM judge on {set_name}: {note}"
        for set_name, note in sorted((results.get("llm_notes") or {}).items())
    ]
    if notes:
        out += ["\n".join(notes), ""]
    return "\n".join(out)


def model_card(
    results: dict[str, Any],
    *,
    base: str,
    description: str,
    card_base: str,
    kind: str,
    max_len: int,
    train: dict[str, Any],
    calibrated: bool = False,
) -> str:
    route = "`/classify` (the whole prompt)" if kind == "decoder" else "`/score` (text_1, text_2)"
    layout = (
        "one chat turn: the context fields, `Label: judged text`, then the instruction (task and "
        "criterion in plain words); the score is read at the last token"
        if kind == "decoder"
        else "a sentence pair: `text_1` = the instruction (task and criterion in plain words) then "
        "the context fields, `text_2` = the judged text"
    )
    calibration = (
        "\n- Calibration: an increasing affine map of the logit, fitted on the made-up answers'"
        "\n  ratings (preferred 4, bad 1 of 5), folded into the last layer; rankings unchanged."
        if calibrated
        else ""
    )
    mine = {
        "rows": [r for r in results["rows"] if r.get("base") in (base, "")],
        "junk": [j for j in results.get("junk", []) if j["base"] == base],
    }
    return f"""---
library_name: transformers
pipeline_tag: text-classification
base_model: {card_base}
tags: [learned-metric, evaluation, reward-model]
---

# Refed metric judge ({base}), instruction-tuned on human judgements

A learned evaluation metric in the HEAP manner: told the task and the criterion in plain
words, it reads the context and the text being judged and outputs one score. This folder is
the multi-task model of seed {train["seed"]}, trained on every task of the run together with
made-up bad answers to Auto-J's training requests under Refed's `instruction` criteria.

- Architecture: {description}. Input: {layout}; at most {max_len} tokens (the judged text
  whole, the context cut to fit; a conversation keeps its latest turns). Output: a logit;
  its sigmoid in [0, 1] is the score, placed on a criterion's scale as `lo + (hi - lo) * p`.
  vLLM serves this folder with its pooling runner (`--dtype float32 --enforce-eager`) through
  {route}, which applies the sigmoid.
- Training: the lower layers frozen; the top {train["train_layers"]} layer(s) and a new
  one-output layer trained for {train["epochs"]} epochs (batch {train["batch_size"]}, AdamW,
  lr {train["lr"]} / new layer {train["head_lr"]}, float32 on CPU). Loss: pairwise logistic on
  good-vs-bad pairs (same source and criterion, averaged ratings at least {train["min_gap"]}
  of the scale apart; Auto-J: the human preference) + {train["regression_weight"]} x binary
  cross-entropy to the rating mapped to [0, 1].{calibration}
- Data: human judgements (SummEval, Topical-Chat, SF restaurant and hotel, Auto-J pairs)
  read from their files, split by source; not included here.

## Results (test splits)

{results_markdown(mine)}
"""
