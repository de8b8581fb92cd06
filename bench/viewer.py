"""The run viewer (report/index.html) at 10,000 and 100,000 samples: file size, build time,
and how fast headless Chromium shows it.

    python -m bench.viewer                        # 10,000 and 100,000 samples (~5 minutes)
    python -m bench.viewer --sizes 2000           # a quicker look
    python -m bench.viewer --screenshot out.png RUN_DIR [--view ref=ID] [--full-page]

The synthetic run folder is written with real text: each reference is a LIMA pair
(``../shared/data/seeds/lima.json``, 1,000 single-turn pairs, reused in turn), four
candidates per reference; a candidate's instruction is another LIMA instruction, its
first response another LIMA answer cut at 2,000 characters (about Refed's 512-token
cap), its improved response that text with about one word in twelve changed and a
sentence added. 75% are accepted, 15% rejected by the judge, 5% dropped as
near-duplicates, 5% failed. Every reference has its feedback record and done marker.

Measured for each size, in one fresh Chromium per repeat (the median of ``--repeats``):

- *load*: from navigation to the load event (the browser has read and parsed the file);
- *first page*: from navigation until the first page of candidates is on screen (the
  page's own clock: a frame after the list is in the DOM);
- *all read*: until every text chunk is decoded (search needs them all);
- *filter*: choosing "rejected" and sorting by judge score, until the new page shows;
- *search*: scanning every candidate's texts for a word (after the typing pause);
- the JS heap once everything is read.

``--screenshot`` loads RUN_DIR's ``report/index.html`` (written by ``python -m
dataset.report RUN_DIR``; built here without plots if absent) and saves a PNG of it;
``--view ref=ID`` or ``--view sample=ID`` shows that page of it instead of the list.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, table, versions
from testing.browser import Chromium, Tab, chromium_version

LIMA = REPO.parent / "shared" / "data" / "seeds" / "lima.json"
RESULTS = REPO / "bench" / "results" / "viewer.json"
CRITERIA = ("helpfulness", "correctness", "clarity", "instruction_following")
FIRST_CAP = 2000


def lima_pairs() -> list[tuple[str, str]]:
    if not LIMA.exists():
        raise SystemExit(f"{LIMA} not found: the benchmark reads real text from ../shared/data")
    records = json.loads(LIMA.read_text(encoding="utf-8"))
    return [
        (r["instruction"], r["output"])
        for r in records
        if not r.get("history") and r.get("instruction") and r.get("output")
    ]


def _edit(text: str, rng: random.Random, words: list[str]) -> str:
    out = [rng.choice(words) if rng.random() < 1 / 12 else w for w in text.split(" ")]
    return " ".join(out) + " " + rng.choice(words).capitalize() + " matters here as well."


def write_synthetic_run(path: Path, n: int, *, seed: int = 0) -> Path:
    """A run folder of ``n`` candidates (4 per reference) written straight to the ledgers."""
    from dataset.ledger import Ledger
    from dataset.runfolder import Manifest
    from state.records import (
        InstructionAnalysis,
        Judgement,
        Provenance,
        QualityFilter,
        ReferenceDone,
        ReferenceFeedback,
        ResponseAnalysis,
        RunStats,
        Sample,
        Usage,
    )

    pairs = lima_pairs()
    vocab = sorted({w for _, out in pairs[:50] for w in out.split() if w.isalpha()})
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    ledgers = {
        name: Ledger(path / f"{name}.jsonl")
        for name in ("samples", "rejected", "feedback", "references")
    }
    prompt_versions = {"respond": "abc123", "refine": "def456", "judge_pointwise": "0a1b2c"}
    counts = {"accepted": 0, "rejected": 0}
    total = Usage()
    per_reference = 4
    for r in range((n + per_reference - 1) // per_reference):
        ref_id = f"bench-{r:06d}"
        ref_instruction, ref_response = pairs[r % len(pairs)]
        provenance = Provenance(
            run_id="bench0001",
            model="bench-model",
            feedback_mode="reference",
            prompt_versions=prompt_versions,
            reference_instruction=ref_instruction,
            reference_response=ref_response,
        )
        accepted: list[Sample] = []
        rejected: list[Sample] = []
        for k in range(min(per_reference, n - r * per_reference)):
            i = r * per_reference + k
            instruction = pairs[(i * 7 + 3) % len(pairs)][0]
            first = pairs[(i * 13 + 5) % len(pairs)][1][:FIRST_CAP]
            improved = _edit(first, rng, vocab)
            draw = rng.random()
            kind = (
                "accepted"
                if draw < 0.75
                else "judge"
                if draw < 0.9
                else "near-dup"
                if draw < 0.95
                else "failed"
            )
            usage = Usage(calls=3, prompt_tokens=rng.randint(800, 2400), completion_tokens=600)
            judgement = None
            if kind != "failed":
                base = 2.3 if kind == "judge" else 4.2
                scores = {c: round(min(5, max(1, rng.gauss(base, 0.5))), 2) for c in CRITERIA}
                mean = sum(scores.values()) / len(scores)
                judgement = Judgement(
                    scores=scores,
                    mean=mean,
                    passed=kind != "judge",
                    rationale=pairs[(i * 3 + 1) % len(pairs)][1][:240],
                    criteria="instruction",
                )
            status, reason, flt = "accepted", None, None
            if kind == "judge" and judgement is not None:
                status, reason = "rejected", f"judge mean {judgement.mean:.2f} under the bar 3.0"
            elif kind == "near-dup":
                status = "rejected"
                match = f"bench-{max(0, r - 1):06d}-0000"
                reason = f"near-duplicate (rouge-l 0.74) of {match}"
                flt = QualityFilter(
                    name="near-duplicate",
                    method="rouge-l",
                    score=0.74,
                    match_id=match,
                    match_text=pairs[(i * 7 + 10) % len(pairs)][0][:500],
                    source="sample",
                )
            elif kind == "failed":
                status, reason = "failed", "refine: http: InternalServerError: HTTP 500"
            sample = Sample(
                sample_id=f"{ref_id}-{k:04d}",
                reference_id=ref_id,
                index=k,
                feature=["writing", "reasoning", "coding", "history", "science"][i % 5],
                instruction=instruction,
                first_response=first,
                response=None if kind == "failed" else improved,
                judgement=judgement,
                revisions=int(rng.random() < 0.2),
                status=status,  # type: ignore[arg-type]
                reason=reason,
                usage=usage,
                provenance=provenance,
                filter=flt,
            )
            (accepted if status == "accepted" else rejected).append(sample)
            total += usage
        ledgers["samples"].append(accepted)
        ledgers["rejected"].append(rejected)
        counts["accepted"] += len(accepted)
        counts["rejected"] += len(rejected)
        feedback = ReferenceFeedback(
            reference_id=ref_id,
            instruction=InstructionAnalysis(
                subject_areas=["writing", "reasoning"],
                skills=["explaining", "structuring an answer"],
                clarity=ref_instruction[:160],
            ),
            response=ResponseAnalysis(
                content=ref_response[:200],
                communication=ref_response[200:360],
                alignment="It answers what was asked.",
                improvements=[ref_response[360:440], ref_response[440:520]],
            ),
            instruction_guidance=["Ask for one concrete outcome.", "Name the audience."],
            response_guidance=["Lead with the answer.", "Give a worked example."],
            usage=Usage(calls=3, feedback_calls=3, prompt_tokens=900, completion_tokens=300),
        )
        ledgers["feedback"].append([feedback])
        ledgers["references"].append(
            [
                ReferenceDone(
                    reference_id=ref_id,
                    accepted=len(accepted),
                    rejected=len(rejected),
                    usage=feedback.usage,
                )
            ]
        )
        total += feedback.usage
    for ledger in ledgers.values():
        ledger.close()
    stats = RunStats(
        references_done=(n + per_reference - 1) // per_reference,
        accepted=counts["accepted"],
        rejected=counts["rejected"],
        usage=total,
    ).finish()
    manifest = Manifest(
        run_id="bench0001",
        created="2026-01-01T00:00:00+00:00",
        updated="2026-01-01T01:00:00+00:00",
        status="finished",
        seeds=str(LIMA),
        model="bench-model",
        base_url=None,
        fingerprint={},
        prompt_versions=prompt_versions,
        settings={"feedback_mode": "reference", "judge_bar": 3.0, "per_reference": 4},
        stats=stats,
    )
    (path / "run.json").write_text(manifest.model_dump_json(indent=2))
    return path


# ------------------------------------------------------------------------ measuring


def _timed(tab: Tab, action: str) -> float:
    """Seconds from running ``action`` in the page until the viewer is idle and painted."""
    ms = tab.evaluate(
        f"""(async () => {{
        const t0 = performance.now();
        {action};
        await new Promise(r => setTimeout(r, 0));
        while (window.refedViewer.busy) await new Promise(r => setTimeout(r, 2));
        await new Promise(r => requestAnimationFrame(() => r()));
        return performance.now() - t0; }})()""",
        timeout=600,
    )
    return float(ms) / 1000


def measure_page(page: Path, *, query: str) -> dict[str, Any]:
    with Chromium() as browser:
        tab = browser.new_tab()
        load = tab.open(page.as_uri(), timeout=600)
        first = tab.wait_for("window.refedViewer && window.refedViewer.firstPage", timeout=600)
        ready = tab.wait_for("window.refedViewer.ready", timeout=600)
        if tab.evaluate("window.refedViewer.error"):
            raise RuntimeError(tab.evaluate("window.refedViewer.error"))
        heap = tab.heap_mb()
        filtered = _timed(
            tab,
            "const s = document.getElementById('f-status'); s.value = '1';"
            "s.dispatchEvent(new Event('change'));"
            "const o = document.getElementById('sort'); o.value = 'mean|desc';"
            "o.dispatchEvent(new Event('change'))",
        )
        shown = tab.evaluate("document.getElementById('page-info').dataset.total")
        tab.evaluate("document.getElementById('reset').click()")
        tab.wait_for("!window.refedViewer.busy")
        next_page = _timed(tab, "document.getElementById('next').click()")
        searched = _timed(
            tab,
            f"const q = document.getElementById('q'); q.value = {json.dumps(query)};"
            "q.dispatchEvent(new Event('input'))",
        )
        hits = tab.evaluate("document.getElementById('page-info').dataset.total")
        errors = tab.errors()
        requests = [u for u in tab.requests() if u != page.as_uri()]
        return {
            "load_s": load,
            "first_page_s": float(first) / 1000,
            "all_read_s": float(ready) / 1000,
            "filter_sort_s": filtered,
            "rejected_listed": int(shown),
            "next_page_s": next_page,
            "search_scan_s": tab.evaluate("window.refedViewer.searchMs") / 1000,
            "search_total_s": searched,
            "search_hits": int(hits),
            "heap_mb": heap,
            "errors": errors,
            "requests": [u[:40] for u in requests],
            "chromium": browser.version,
        }


def measure(n: int, *, repeats: int, workdir: Path) -> dict[str, Any]:
    from dataset.stats import load_run
    from dataset.viewer import write_viewer

    run_dir = workdir / f"run-{n}"
    started = time.perf_counter()
    write_synthetic_run(run_dir, n)
    written = time.perf_counter() - started
    ledger_mb = sum((run_dir / f).stat().st_size for f in ("samples.jsonl", "rejected.jsonl"))
    ledger_mb += sum((run_dir / f).stat().st_size for f in ("feedback.jsonl", "references.jsonl"))
    started = time.perf_counter()
    run = load_run(run_dir)
    loaded = time.perf_counter() - started
    started = time.perf_counter()
    page = write_viewer(run, run_dir / "report")
    built = time.perf_counter() - started
    print(f"{n}: run written in {written:.1f} s, page built in {built:.1f} s", file=sys.stderr)
    runs = []
    for k in range(repeats):
        result = measure_page(page, query="sourdough")
        print(f"  repeat {k + 1}: {json.dumps(result)}", file=sys.stderr)
        runs.append(result)
    median = {
        key: statistics.median(r[key] for r in runs)
        for key in runs[0]
        if isinstance(runs[0][key], float)
    }
    return {
        "samples": n,
        "ledgers_mb": ledger_mb / 1e6,
        "page_mb": page.stat().st_size / 1e6,
        "load_run_s": loaded,
        "build_s": built,
        **median,
        "rejected_listed": runs[0]["rejected_listed"],
        "search_hits": runs[0]["search_hits"],
        "errors": sorted({e for r in runs for e in r["errors"]}),
        "requests_beyond_the_page": sorted({u for r in runs for u in r["requests"]}),
        "repeats": runs,
    }


def screenshot(run_dir: Path, out: Path, *, view: str | None, full_page: bool) -> Path:
    page = (run_dir / "report" / "index.html").resolve()
    if not page.exists():
        from dataset.report import write_report

        write_report(run_dir, plots=False)
    with Chromium() as browser:
        tab = browser.new_tab(width=1280, height=1000)
        tab.open(page.as_uri() + (f"#{view}" if view else ""), timeout=600)
        tab.wait_for("window.refedViewer && window.refedViewer.firstPage", timeout=600)
        tab.wait_for("!window.refedViewer.busy")
        return tab.screenshot(out, full_page=full_page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.viewer", description=__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="Candidates per run, by commas.")
    parser.add_argument("--repeats", type=int, default=3, help="Page loads per size.")
    parser.add_argument("--json", type=Path, default=RESULTS, help="Where to keep every number.")
    parser.add_argument("--screenshot", type=Path, help="Save a PNG of RUN_DIR's viewer here.")
    parser.add_argument("--view", help="With --screenshot: ref=ID or sample=ID.")
    parser.add_argument("--full-page", action="store_true", help="With --screenshot.")
    parser.add_argument("run_dir", nargs="?", type=Path, help="With --screenshot: a run folder.")
    args = parser.parse_args(argv)
    if args.screenshot:
        if args.run_dir is None:
            parser.error("--screenshot needs a RUN_DIR")
        out = screenshot(args.run_dir, args.screenshot, view=args.view, full_page=args.full_page)
        print(f"screenshot written to {out}", file=sys.stderr)
        return 0
    env = {**machine(), "versions": versions(), "chromium": chromium_version()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="refed-viewer-") as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(measure(n, repeats=args.repeats, workdir=Path(tmp)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    print(
        table(
            [
                "samples",
                "ledgers MB",
                "page MB",
                "build s",
                "load s",
                "first page s",
                "all read s",
                "filter+sort s",
                "next page s",
                "search s",
                "JS heap MB",
            ],
            [
                [
                    f"{r['samples']:,}",
                    f"{r['ledgers_mb']:.0f}",
                    f"{r['page_mb']:.1f}",
                    f"{r['build_s']:.1f}",
                    f"{r['load_s']:.2f}",
                    f"{r['first_page_s']:.2f}",
                    f"{r['all_read_s']:.2f}",
                    f"{r['filter_sort_s']:.2f}",
                    f"{r['next_page_s']:.2f}",
                    f"{r['search_scan_s']:.2f}",
                    f"{r['heap_mb']:.0f}",
                ]
                for r in rows
            ],
        )
    )
    print(json.dumps(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
