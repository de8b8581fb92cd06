"""``python -m dataset.report RUN_DIR``: a one-page report on what a run produced.

Writes ``RUN_DIR/report/`` (or ``--out``): ``report.md`` (the page), ``report.json``
(every number in it) and PNG plots:

- ``outcomes.png``: samples per outcome (accepted, judge under the bar, near-duplicate,
  benchmark contamination, failed ...);
- ``judge_scores.png``: the judge's mean score of accepted and of judge-rejected samples,
  and each criterion's scores of the accepted ones;
- ``lengths.png``: instruction and response lengths (tokens) of accepted samples, and
  each instruction's ROUGE-L with its own seed instruction;
- ``words.png``: the most common first words and leading words of the instructions;
- ``index.html``: the run viewer (dataset/viewer), one self-contained page to browse every
  candidate with its reference, filter, sort and search them; it opens from disk and
  makes no request.

Diversity: distinct-1/2 are corpus-level (unique n-grams over all n-grams of the
accepted instructions). "Leading word" is the first word after lead-ins such as
"please" or "can you" (a cheap stand-in for the main verb: no part-of-speech tagger).
Needs matplotlib (the ``report`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dataset.quality.gate import with_ledger_counts
from dataset.quality.text import tokens
from dataset.stats import (
    RunData,
    RunFolderError,
    diversity,
    load_run,
    outcome,
    outcomes,
    quantiles,
    reference_similarity,
    score_stats,
)
from dataset.viewer import write_viewer

__all__ = ["build_report", "main", "write_report"]

SHOWN_SAMPLES = 3
"""Accepted samples the report shows verbatim: the first ones by sample id."""


def build_report(run: RunData) -> dict[str, Any]:
    """Every number the report shows."""
    everything = [*run.accepted, *run.rejected]
    judged_out = [s for s in run.rejected if outcome(s).startswith("judge:")]
    counts = outcomes(everything)
    total = len(everything)
    return {
        "run_id": run.manifest.run_id,
        "model": run.manifest.model,
        "status": run.manifest.status,
        "seeds": run.manifest.seeds,
        "samples": total,
        "accepted": len(run.accepted),
        "acceptance_rate": len(run.accepted) / total if total else None,
        "outcomes": dict(counts.most_common()),
        "references_done": run.manifest.stats.references_done,
        "usage": run.manifest.stats.model_dump(),
        "scores_accepted": score_stats(run.accepted),
        "scores_judge_rejected": score_stats(judged_out),
        "diversity": diversity([s.instruction for s in run.accepted]),
        "response_length_tokens": quantiles(
            [float(len(tokens(s.response or ""))) for s in run.accepted]
        ),
        "rouge_l_with_own_seed": quantiles(reference_similarity(run.accepted)),
        "quality": (  # the ledgers' final numbers, whenever quality.json was written
            with_ledger_counts(run.quality, run.accepted, run.rejected) if run.quality else None
        ),
        "profile": run.manifest.fingerprint.get("profile"),
        "judge_bar": run.manifest.fingerprint.get("judge_bar"),
        "first_accepted": [
            {
                "sample_id": s.sample_id,
                "instruction": s.instruction,
                "response": s.response,
                "judge_mean": s.judgement.mean if s.judgement else None,
            }
            for s in sorted(run.accepted, key=lambda s: s.sample_id)[:SHOWN_SAMPLES]
        ],
    }


# ---------------------------------------------------------------------------- plots


def _plots(run: RunData, report: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append(name)

    # outcomes
    items = list(report["outcomes"].items())
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(items) + 1.2))
    bars = ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="#4c72b0")
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("samples")
    ax.set_title("Outcome of every candidate")
    save(fig, "outcomes.png")

    # judge scores
    accepted = [s.judgement.mean for s in run.accepted if s.judgement]
    rejected = [
        s.judgement.mean for s in run.rejected if s.judgement and outcome(s).startswith("judge:")
    ]
    criteria: dict[str, list[float]] = {}
    for s in run.accepted:
        if s.judgement:
            for name, value in s.judgement.scores.items():
                criteria.setdefault(name, []).append(value)
    lo, hi = report["scores_accepted"]["scale"]
    bins = [lo + 0.25 * i for i in range(int((hi - lo) * 4) + 1)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].hist(
        [accepted, rejected],
        bins=bins,
        label=["accepted", "judge-rejected"],
        color=["#55a868", "#c44e52"],
        stacked=True,
    )
    axes[0].set_xlabel(f"judge mean score ({lo}-{hi})")
    axes[0].set_ylabel("samples")
    axes[0].legend()
    axes[0].set_title("Judge mean score")
    if criteria:
        names = sorted(criteria)
        # "orientation" replaced "vert" in matplotlib 3.10.
        new_api = tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
        flat = {"orientation": "horizontal"} if new_api else {"vert": False}
        axes[1].boxplot([criteria[n] for n in names], **flat)
        axes[1].set_yticks(range(1, len(names) + 1), names)
        axes[1].set_xlim(lo - 0.2, hi + 0.2)
    axes[1].set_title("Per criterion (accepted)")
    save(fig, "judge_scores.png")

    # lengths and similarity to the seed
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].hist([len(tokens(s.instruction)) for s in run.accepted], bins=30, color="#4c72b0")
    axes[0].set_title("Instruction length (tokens)")
    axes[1].hist([len(tokens(s.response or "")) for s in run.accepted], bins=30, color="#8172b2")
    axes[1].set_title("Response length (tokens)")
    axes[2].hist(
        reference_similarity(run.accepted), bins=[i / 20 for i in range(21)], color="#ccb974"
    )
    axes[2].set_title("ROUGE-L with its own seed instruction")
    axes[0].set_ylabel("accepted samples")
    save(fig, "lengths.png")

    # words
    div = report["diversity"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in (
        (axes[0], "first_words", "Most common first words"),
        (axes[1], "leading_words", "Most common leading words"),
    ):
        pairs = div[key]
        ax.barh([w for w, _ in pairs][::-1], [c for _, c in pairs][::-1], color="#64b5cd")
        ax.set_title(title)
    save(fig, "words.png")
    return made


# --------------------------------------------------------------------------- markdown


def _f(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(_f(c) for c in cells) + " |"


def markdown(report: dict[str, Any], plots: list[str]) -> str:
    div = report["diversity"]
    length = div["length_tokens"]
    resp = report["response_length_tokens"]
    sim = report["rouge_l_with_own_seed"]
    rate = report["acceptance_rate"]
    profile = f", profile `{report['profile']}`" if report.get("profile") else ""
    lines = [
        f"# Run {report['run_id']}: what it produced",
        "",
        f"Model `{report['model']}`{profile}, judge bar `{report.get('judge_bar')}`, seeds "
        f"`{report['seeds']}`, status {report['status']}; "
        f"{report['references_done']} references done, {report['samples']} candidates, "
        f"**{report['accepted']} accepted**"
        + (f" ({100 * rate:.1f}%)." if rate is not None else "."),
        "",
        "## Outcomes",
        "",
        "| outcome | samples | share |",
        "|---|---|---|",
        *[
            _row([k, v, f"{100 * v / report['samples']:.1f}%"])
            for k, v in report["outcomes"].items()
        ],
        "",
    ]
    if "outcomes.png" in plots:
        lines += ["![outcomes](outcomes.png)", ""]
    q = report["quality"]
    if q:
        dc = q["decontamination"]
        lines += [
            f"Quality gates: {q['checked']} checked, {q['passed']} kept; near-duplicates "
            f"dropped {q['near_duplicate']['dropped']} (of a seed "
            f"{q['near_duplicate']['of_seed']}, of a kept sample "
            f"{q['near_duplicate']['of_sample']}); benchmark contamination dropped "
            f"{dc['dropped']}.",
            "",
        ]
        if dc["benchmarks"]:
            lines += [
                "| benchmark | prompts | dropped | by test | by field |",
                "|---|---|---|---|---|",
            ]
            for name, b in dc["benchmarks"].items():
                tests = ", ".join(f"{k} {v}" for k, v in b["by_test"].items()) or "–"
                fields = ", ".join(f"{k} {v}" for k, v in b["by_field"].items()) or "–"
                lines.append(_row([name, b["prompts"], b["dropped"], tests, fields]))
            lines.append("")
    acc = report["scores_accepted"]
    lines += [
        "## Judge scores",
        "",
        "| accepted samples | mean | std | p10 | median | p90 |",
        "|---|---|---|---|---|---|",
    ]
    for name, st in [("mean of criteria", acc["mean"]), *acc["criteria"].items()]:
        lines.append(
            _row(
                [
                    name,
                    st.get("mean"),
                    st.get("std"),
                    st.get("p10"),
                    st.get("median"),
                    st.get("p90"),
                ]
            )
        )
    rej = report["scores_judge_rejected"]["mean"]
    if rej:
        lines += [
            "",
            f"Judge-rejected samples: mean score {_f(rej.get('mean'))} "
            f"(median {_f(rej.get('median'))}).",
        ]
    lines.append("")
    if "judge_scores.png" in plots:
        lines += ["![judge scores](judge_scores.png)", ""]
    lines += [
        "## Diversity of the accepted instructions",
        "",
        f"- distinct-1 {_f(div['distinct_1'], 3)}, distinct-2 {_f(div['distinct_2'], 3)}; "
        f"{div['unique_instructions']} unique of {div['instructions']} (after normalising)",
        f"- instruction length (tokens): median {_f(length.get('median'), 0)}, "
        f"p10–p90 {_f(length.get('p10'), 0)}–{_f(length.get('p90'), 0)}, "
        f"min–max {_f(length.get('min'), 0)}–{_f(length.get('max'), 0)}, "
        f"std {_f(length.get('std'), 1)}",
        f"- response length (tokens): median {_f(resp.get('median'), 0)}, "
        f"p10–p90 {_f(resp.get('p10'), 0)}–{_f(resp.get('p90'), 0)}",
        f"- ROUGE-L with its own seed instruction: median {_f(sim.get('median'))}, "
        f"p90 {_f(sim.get('p90'))}, max {_f(sim.get('max'))}",
        "- first words: " + ", ".join(f"{w} ({c})" for w, c in div["first_words"][:10]),
        "- leading words (after please / can you …): "
        + ", ".join(f"{w} ({c})" for w, c in div["leading_words"][:10]),
        "",
    ]
    for name, alt in (("lengths.png", "lengths"), ("words.png", "words")):
        if name in plots:
            lines += [f"![{alt}]({name})", ""]
    if report.get("first_accepted"):
        lines += [f"## The first {len(report['first_accepted'])} accepted samples (by id)", ""]
        for sample in report["first_accepted"]:
            lines += [
                f"**{sample['sample_id']}** (judge mean {_f(sample['judge_mean'])})",
                "",
                *(f"> {line}" for line in sample["instruction"].splitlines()),
                "",
                "~~~text",
                sample["response"] or "",
                "~~~",
                "",
            ]
    return "\n".join(lines)


def write_report(run_dir: Path, out: Path | None = None, *, plots: bool = True) -> Path:
    run = load_run(run_dir)
    out = out or run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(run)
    made = _plots(run, report, out) if plots and run.accepted else []
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (out / "report.md").write_text(markdown(report, made), encoding="utf-8")
    write_viewer(run, out, report=report, plots=made)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.report", description="A one-page report on a run's output."
    )
    parser.add_argument("run_dir", type=Path, help="The run folder (--out of graph.run).")
    parser.add_argument("--out", type=Path, default=None, help="Default: RUN_DIR/report.")
    parser.add_argument("--no-plots", action="store_true", help="Markdown and JSON only.")
    args = parser.parse_args(argv)
    try:
        out = write_report(args.run_dir, args.out, plots=not args.no_plots)
    except RunFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(
            f"error: {exc}; install the report extra (pip install 'refed[report]') "
            "or use --no-plots",
            file=sys.stderr,
        )
        return 2
    print(
        f"report written to {out / 'report.md'}; browse the samples: {out / 'index.html'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
