"""Write an evaluation report: ``report.json``, ``report.md`` and ``plot.png``.

The plot shows, per criterion, the judge's score against the human score: a box of
judge scores for each (rounded) human score with the points over it, so both the
trend and the spread are visible. For pairwise sets it shows the confusion of the
judge's verdicts against the human labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from judge.evaluate import Scored
from judge.sets import HumanItem
from state.judgements import Correlation, PairwiseReport, PointwiseReport

LEVEL_TITLES = {
    "record": "record (turn) level",
    "document": "document level: within each source (article, conversation), averaged",
    "system": "system level",
}


def fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _corr_cell(c: Correlation) -> str:
    return f"{fmt(c.spearman)} / {fmt(c.kendall)}"


def pointwise_markdown(report: PointwiseReport) -> str:
    how = "one call per criterion" if report.per_criterion else "one call for all criteria"
    rationale = (
        f"rationale up to {report.rationale_chars} characters"
        if report.rationale_chars
        else "score only"
    )
    methods = ", ".join(f"{k}: {v}" for k, v in sorted(report.method.items())) or "none"
    lines = [
        f"# Judge agreement with people: {report.set}",
        "",
        f"- judge model: `{report.model}`; criteria `{report.criteria}` "
        f"(version {report.criteria_version}); {how}; {rationale}; "
        f"top log-probabilities asked: {report.logprobs}",
        f"- records: {report.records} ({report.sample}); judged {report.judged}, "
        f"failed {report.failed}; scores read by method: {methods}",
        f"- time: {report.seconds:.0f} s, {report.seconds_per_record:.2f} s per record at "
        f"concurrency {report.concurrency}"
        + (f" ({report.resumed} records taken from an earlier run)" if report.resumed else ""),
        "",
        "Spearman / Kendall tau-b between the judge's and the human scores "
        "(n/a: undefined, a constant side).",
        "",
    ]
    order = [report.primary, *(lv for lv in report.levels if lv != report.primary)]
    for level in order:
        rows = report.levels[level]
        title = LEVEL_TITLES.get(level, level)
        lines += [
            f"## {title}" + (" (primary)" if level == report.primary else ""),
            "",
            "| criterion | Spearman / Kendall | n |",
            "|---|---|---|",
        ]
        for name, c in rows.items():
            n = f"{c.n} docs" + (f", {c.skipped} skipped" if c.skipped else "")
            lines.append(f"| {name} | {_corr_cell(c)} | {n if level == 'document' else c.n} |")
        avg = report.average[level]
        lines += [f"| **average** | **{_corr_cell(avg)}** | |", ""]
    if report.errors:
        lines += ["## First failures", "", *[f"- {e}" for e in report.errors], ""]
    return "\n".join(lines)


def pairwise_markdown(report: PairwiseReport) -> str:
    a = report.agreement
    lines = [
        f"# Judge agreement with people: {report.set} (pairwise)",
        "",
        f"- judge model: `{report.model}`; criteria `{report.criteria}` (all criteria together); "
        "each pair asked in both orders",
        f"- pairs: {report.records} ({report.sample}); judged {report.judged}, "
        f"failed {report.failed}",
        f"- time: {report.seconds:.0f} s, {report.seconds_per_record:.2f} s per pair at "
        f"concurrency {report.concurrency}",
        "",
        "| measure | value | over |",
        "|---|---|---|",
        f"| agreement with ties (3-way) | {fmt(a.with_ties)} | {a.n} pairs |",
        f"| agreement without ties (human ties left out; judge tie = miss) | "
        f"{fmt(a.without_ties)} | {a.n_without_ties} pairs |",
        f"| agreement where both decided | {fmt(a.decided)} | {a.n_decided} pairs |",
        f"| judge said tie | {fmt(a.judge_ties)} | {a.n} pairs |",
        f"| both orders gave the same vote | {fmt(a.consistent)} | {a.n} pairs |",
        "",
        "Confusion (rows: people; columns: judge):",
        "",
        "| | first | second | tie |",
        "|---|---|---|---|",
    ]
    for gold, row in report.confusion.items():
        lines.append(f"| {gold} | {row['first']} | {row['second']} | {row['tie']} |")
    if report.errors:
        lines += ["", "## First failures", "", *[f"- {e}" for e in report.errors]]
    return "\n".join(lines) + "\n"


def pointwise_plot(
    path: Path, report: PointwiseReport, items: Sequence[HumanItem], scored: Sequence[Scored]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.levels["record"])
    ok = [(it, s.result) for it, s in zip(items, scored, strict=True) if s.result is not None]
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        human = [it.human[name] for it, _ in ok]
        judge = [r.scores[name].score for _, r in ok]
        bins = sorted({round(h) for h in human})
        groups = [[j for h, j in zip(human, judge, strict=True) if round(h) == b] for b in bins]
        if bins:
            ax.boxplot(groups, positions=bins, widths=0.5, showfliers=False)
        jitter = [h + (((i * 7919) % 100) / 100 - 0.5) * 0.3 for i, h in enumerate(human)]
        ax.scatter(jitter, judge, s=6, alpha=0.35)
        c = report.levels["record"][name]
        ax.set_title(f"{name}\nSpearman {fmt(c.spearman)}", fontsize=10)
        ax.set_xlabel("human score (mean of annotators)")
        ax.set_ylabel("judge score")
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{report.set}: judge ({report.model}) vs people, {report.judged} records")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pairwise_plot(path: Path, report: PairwiseReport) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["first", "second", "tie"]
    grid = [[report.confusion[g][p] for p in labels] for g in labels]
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(grid, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(grid[i][j]), ha="center", va="center")
    ax.set_xticks(range(3), labels)
    ax.set_yticks(range(3), labels)
    ax.set_xlabel("judge")
    ax.set_ylabel("people")
    ax.set_title(f"{report.set}: agreement {fmt(report.agreement.with_ties)} (with ties)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_pointwise(
    folder: Path, report: PointwiseReport, items: Sequence[HumanItem], scored: Sequence[Scored]
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    (folder / "report.md").write_text(pointwise_markdown(report))
    pointwise_plot(folder / "plot.png", report, items, scored)


def write_pairwise(folder: Path, report: PairwiseReport) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    (folder / "report.md").write_text(pairwise_markdown(report))
    pairwise_plot(folder / "plot.png", report)
