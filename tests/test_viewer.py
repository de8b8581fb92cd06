"""The run viewer (report/index.html) in a real browser: Debian's headless Chromium over
the DevTools pipe (testing/browser.py). Without Chromium these tests skip, except under
CI=true, where they fail (.ci/run installs it).

The main run is a fake-server run (graph.run against testing.fake_server) with injected
server errors (failed candidates) and a benchmark file holding two of its instructions
(rejected by the decontamination gate); one instruction, with markup in it, is planted.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataset.ledger import Ledger
from dataset.quality import QualityGate
from dataset.report import write_report
from dataset.runfolder import Manifest
from dataset.stats import RunFolderError, load_run
from dataset.viewer import write_viewer
from dataset.viewer.data import pack, read_jsonl, viewer_data
from state.records import Sample
from testing.browser import Chromium, Tab, find_chromium
from testing.servers import FakeServer

from .conftest import REPO
from .pgcluster import on_ci
from .runfolders import make_sample, self_instruct_pairs, write_run

EXAMPLES = REPO / "examples" / "seeds.jsonl"
PLANTED = 'Planted: why do <b>tide pools</b> & rock pools differ? <img src="http://127.0.0.1:9/x">'
PLANTED_WORDS = "tide pools</b> & rock"


def require_chromium() -> str:
    """Chromium's path; without it the test skips, or fails under CI=true."""
    found = find_chromium()
    if found is None:
        reason = "Chromium not found (apt-get install chromium, or set REFED_CHROMIUM)"
        if on_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    with Chromium(require_chromium()) as chromium:
        yield chromium


def test_without_chromium_skip_or_fail_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFED_CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="Chromium not found"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but Chromium not found"):
        require_chromium()


def _fake_run(out: Path, *extra: str) -> None:
    """A run against a fresh fake server, one request at a time: the same flags give the
    same instructions (the server's answers follow its request count)."""
    with FakeServer(0.005, fault_rate=0.1, faults=["500"], fault_seed=3) as server:
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "graph.run",
                "--seeds",
                str(EXAMPLES),
                "--base-url",
                server.base_url,
                "--model",
                "fake",
                "--out",
                str(out),
                "--per-reference",
                "3",
                "--concurrency",
                "1",
                "--max-retries",
                "0",
                *extra,
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    assert res.returncode == 0, res.stderr


def _read(path: Path) -> list[Sample]:
    return list(Ledger(path).read(Sample)) if path.exists() else []


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("viewer")
    _fake_run(root / "first")
    picked = [s.instruction for s in _read(root / "first" / "samples.jsonl")][1:3]
    bench = root / "bench.jsonl"
    bench.write_text("".join(json.dumps({"instruction": text}) + "\n" for text in picked))
    run = root / "run"
    _fake_run(run, "--decontaminate", str(bench))
    # Plant one instruction (with markup in it) in an accepted sample.
    accepted = _read(run / "samples.jsonl")
    accepted[0] = accepted[0].model_copy(update={"instruction": PLANTED})
    (run / "samples.jsonl").write_text("".join(s.model_dump_json() + "\n" for s in accepted))
    write_report(run)
    return run


def _open(browser: Chromium, page: Path) -> Tab:
    tab = browser.new_tab()
    tab.open(page.as_uri())
    tab.wait_for("window.refedViewer && (window.refedViewer.ready || window.refedViewer.error)")
    assert tab.evaluate("window.refedViewer.error") is None
    _settle(tab)
    return tab


def _settle(tab: Tab) -> None:
    tab.wait_for("!window.refedViewer.busy")


def _choose(tab: Tab, select: str, label: str) -> None:
    """Pick the option of ``select`` whose text starts with ``label``, as a user would."""
    found = tab.evaluate(
        f"""(() => {{
        const s = document.getElementById({json.dumps(select)});
        const o = [...s.options].find(o => o.text.startsWith({json.dumps(label)}));
        if (!o) return null;
        s.value = o.value; s.dispatchEvent(new Event('change'));
        return o.text; }})()"""
    )
    assert found, f"no option {label!r} in #{select}"
    _settle(tab)


def _type(tab: Tab, field: str, text: str, event: str = "input") -> None:
    tab.evaluate(
        f"""(() => {{ const e = document.getElementById({json.dumps(field)});
        e.value = {json.dumps(text)}; e.dispatchEvent(new Event({json.dumps(event)})); }})()"""
    )
    _settle(tab)


LISTED = """(async () => {
  const out = [];
  for (;;) {
    for (const c of document.querySelectorAll('#list .card')) {
      const r = c.querySelector('.reason');
      out.push([c.dataset.id, c.dataset.status, r ? r.textContent : null,
                c.querySelector('.judge').textContent]);
    }
    const next = document.getElementById('next');
    if (next.disabled) break;
    next.click();
    while (window.refedViewer.busy) await new Promise(r => setTimeout(r, 10));
  }
  return out;
})()"""


def _listed(tab: Tab) -> list[list[Any]]:
    return list(tab.evaluate(LISTED))


def test_counts_equal_run_json(browser: Chromium, fake_run: Path) -> None:
    manifest = Manifest.model_validate_json((fake_run / "run.json").read_text())
    rejected = _read(fake_run / "rejected.jsonl")
    statuses = [s.status for s in rejected]
    assert statuses.count("rejected") == 2 and statuses.count("failed") >= 1  # both kinds
    tab = _open(browser, fake_run / "report" / "index.html")
    shown = tab.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[data-count]')]"
        ".map(e => [e.dataset.count, e.textContent]))"
    )
    numbers = {k: int(v.replace(",", "")) for k, v in shown.items()}
    stats = manifest.stats
    assert numbers["accepted"] == stats.accepted == len(_read(fake_run / "samples.jsonl"))
    assert numbers["not-accepted"] == stats.rejected
    assert numbers["rejected"] + numbers["failed"] == stats.rejected
    assert numbers["rejected"] == 2 and numbers["failed"] == statuses.count("failed")
    assert numbers["references"] == stats.references_done
    assert numbers["candidates"] == stats.accepted + stats.rejected
    assert tab.evaluate("document.querySelector('#counts [data-mismatch]')") is None
    usage = tab.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[data-usage]')]"
        ".map(e => [e.dataset.usage, e.textContent]))"
    )
    assert stats.llm_calls_per_accepted is not None
    assert usage["calls per accepted"] == f"{stats.llm_calls_per_accepted:.2f}"
    assert usage["LLM calls"] == f"{stats.usage.calls:,}"
    facts = tab.evaluate(
        "Object.fromEntries([...document.querySelectorAll('[data-fact]')]"
        ".map(e => [e.dataset.fact, e.textContent]))"
    )
    assert facts["model"] == "fake" and facts["mode"] == "reference"
    assert facts["judge bar"].startswith("mean ≥ 3")
    assert tab.evaluate("document.querySelectorAll('#plots img').length") == 4
    report = json.loads((fake_run / "report" / "report.json").read_text())
    rate = tab.evaluate("document.querySelector('[data-stat=\"acceptance rate\"]').textContent")
    assert rate == f"{100 * report['accepted'] / report['samples']:.1f}%"
    assert report["accepted"] == stats.accepted
    assert tab.errors() == []


def test_filter_rejected_lists_exactly_the_rejected(browser: Chromium, fake_run: Path) -> None:
    want = {s.sample_id: s.reason for s in _read(fake_run / "rejected.jsonl")}
    rejected = {i: r for i, r in want.items() if i in _status(fake_run, "rejected")}
    tab = _open(browser, fake_run / "report" / "index.html")
    _choose(tab, "f-status", "rejected")
    listed = _listed(tab)
    assert {row[0]: row[2] for row in listed} == rejected
    assert len(listed) == len(rejected) == 2
    assert all(row[1] == "rejected" for row in listed)
    for reason in rejected.values():
        assert reason and reason.startswith("benchmark contamination")
    # The failed ones, and all: ids equal the ledgers'.
    _choose(tab, "f-status", "failed")
    assert {row[0] for row in _listed(tab)} == _status(fake_run, "failed")
    _choose(tab, "f-status", "all")
    everything = {s.sample_id for s in _read(fake_run / "samples.jsonl")} | set(want)
    assert {row[0] for row in _listed(tab)} == everything
    # The quality-gate filter finds the same two, with what they matched.
    _choose(tab, "f-filter", "decontamination")
    gated = tab.evaluate(
        "[...document.querySelectorAll('#list .card .gate')].map(g => g.textContent)"
    )
    assert len(gated) == 2 and all("bench#" in g for g in gated)


def _status(run: Path, status: str) -> set[str]:
    return {s.sample_id for s in _read(run / "rejected.jsonl") if s.status == status}


def test_search_finds_the_planted_instruction(browser: Chromium, fake_run: Path) -> None:
    planted = next(s for s in _read(fake_run / "samples.jsonl") if s.instruction == PLANTED)
    tab = _open(browser, fake_run / "report" / "index.html")
    _type(tab, "q", PLANTED_WORDS.upper())  # case does not matter
    assert [row[0] for row in _listed(tab)] == [planted.sample_id]
    card = "document.querySelector('#list .card')"
    # The markup is shown as text, not made into elements.
    assert tab.evaluate(f"{card}.querySelector('[data-field=instruction]').textContent") == PLANTED
    assert tab.evaluate(f"{card}.querySelectorAll('[data-field=instruction] b, img').length") == 0
    assert tab.evaluate(f"{card}.querySelector('mark').textContent") == PLANTED_WORDS
    _type(tab, "q", "no sample says this 8f1c")
    assert _listed(tab) == []
    _type(tab, "q", "")
    assert len(_listed(tab)) > 10


def test_sample_and_reference_link_both_ways(browser: Chromium, fake_run: Path) -> None:
    samples = _read(fake_run / "samples.jsonl") + _read(fake_run / "rejected.jsonl")
    sample = samples[3]
    siblings = {s.sample_id for s in samples if s.reference_id == sample.reference_id}
    tab = _open(browser, fake_run / "report" / "index.html")
    card = f"document.querySelector('#list .card[data-id={json.dumps(sample.sample_id)}]')"
    # The card holds its reference too, read when opened.
    tab.evaluate(f"{card}.querySelector('details.ref-box').open = true")
    shown = tab.wait_for(
        f"{card}.querySelector('.ref-box [data-field=ref_instruction]')?.textContent"
    )
    assert shown == sample.provenance.reference_instruction
    tab.evaluate(f"{card}.querySelector('.ref-link').click()")
    _settle(tab)
    assert tab.evaluate("location.hash") == f"#ref={sample.reference_id}"
    view = "document.getElementById('detail')"
    assert tab.evaluate(f"{view}.querySelector('[data-field=ref_instruction]').textContent") == (
        sample.provenance.reference_instruction
    )
    feedback = read_jsonl(fake_run / "feedback.jsonl")
    guidance = next(f for f in feedback if f["reference_id"] == sample.reference_id)
    text = tab.evaluate(f"{view}.textContent")
    assert guidance["instruction_guidance"][0] in text
    listed = tab.evaluate(f"[...{view}.querySelectorAll('tr[data-id]')].map(r => r.dataset.id)")
    assert set(listed) == siblings
    tab.evaluate(f"{view}.querySelector('a[href=\"#sample={sample.sample_id}\"]').click()")
    _settle(tab)
    assert tab.evaluate(f"{view}.querySelector('.card').dataset.id") == sample.sample_id
    # A reference that failed before any sample still has its page, with the error.
    failed = [r for r in read_jsonl(fake_run / "references.jsonl") if r.get("error")]
    assert failed
    tab.evaluate(f"location.hash = 'ref={failed[0]['reference_id']}'")
    _settle(tab)
    assert failed[0]["error"] in tab.evaluate(f"{view}.textContent")
    tab.evaluate("document.querySelector('a.back').click()")
    _settle(tab)
    assert tab.evaluate("document.getElementById('browse').hidden") is False


def test_the_page_makes_no_request(browser: Chromium, fake_run: Path) -> None:
    page = fake_run / "report" / "index.html"
    html = page.read_text()
    assert "default-src 'none'" in html.replace("&#x27;", "'")
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    tab = _open(browser, page)
    # Use it: search, filter, sort, open a sample and a reference, switch a diff view.
    _type(tab, "q", "fake")
    _choose(tab, "f-status", "accepted")
    _choose(tab, "sort", "judge mean, low first")
    tab.evaluate("document.querySelector('#list .card .tabs button:nth-child(2)').click()")
    tab.evaluate("document.querySelector('#list .card .ref-link').click()")
    _settle(tab)
    tab.evaluate("document.querySelector('#detail a.sid').click()")
    _settle(tab)
    tab.evaluate("history.back()")
    _settle(tab)
    loaded = tab.requests()
    assert loaded[0] == page.as_uri()
    others = [u for u in loaded if u != page.as_uri() and not u.startswith("data:image/png")]
    assert others == []
    assert tab.errors() == []

    # The same watch sees a page that does load something.
    control = page.with_name("control.html")
    control.write_text('<!doctype html><img src="http://127.0.0.1:9/probe.png">')
    other = browser.new_tab()
    other.open(control.as_uri())
    assert "http://127.0.0.1:9/probe.png" in other.requests()


# ------------------------------------------------------------------- a larger run


@pytest.fixture(scope="module")
def real_text_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """175 Self-Instruct pairs as samples: varied judge scores, features, two gate drops."""
    pairs = self_instruct_pairs(shared_data)
    samples = []
    for i, (instruction, response) in enumerate(pairs):
        s = make_sample(i, instruction, response, mean=[2.2, 3.5, 4.0, 4.5, 4.8][i % 5])
        samples.append(s.model_copy(update={"feature": ["writing", "math", "code"][i % 3]}))
    samples.append(make_sample(901, pairs[3][0] + " Be brief.", "Short.", mean=4.6))
    gate = QualityGate()
    gate.load([], [])
    screened = gate.screen(samples)
    run = write_run(
        tmp_path_factory.mktemp("real") / "run",
        [s for s in screened if s.status == "accepted"],
        [s for s in screened if s.status != "accepted"],
        quality=gate.summary(),
    )
    write_report(run, plots=False)
    return run


def test_sort_and_filters_on_real_text(browser: Chromium, real_text_run: Path) -> None:
    samples = _read(real_text_run / "samples.jsonl") + _read(real_text_run / "rejected.jsonl")
    tab = _open(browser, real_text_run / "report" / "index.html")
    _choose(tab, "page-size", "20")
    _choose(tab, "sort", "judge mean, high first")
    means = [float(row[3].split()[1]) for row in _listed(tab)]
    want = sorted((s.judgement.mean for s in samples if s.judgement), reverse=True)
    assert means == pytest.approx(want, abs=0.0051)  # shown with two decimals
    assert len(means) == len(samples) > 170  # every page was visited

    _choose(tab, "sort", "helpfulness, low first")
    lowest = tab.evaluate(
        "[...document.querySelectorAll('#list .card')[0].querySelectorAll('.scores tr')]"
        ".find(r => r.cells[0].textContent === 'helpfulness').cells[1].textContent"
    )
    helpfulness = [s.judgement.scores["helpfulness"] for s in samples if s.judgement]
    assert float(lowest) == pytest.approx(min(helpfulness), abs=0.0051)
    _choose(tab, "sort", "by reference")

    _choose(tab, "f-feature", "math")
    assert {row[0] for row in _listed(tab)} == {s.sample_id for s in samples if s.feature == "math"}
    _choose(tab, "f-feature", "all")
    _choose(tab, "f-outcome", "judge: under the bar")
    under = {s.sample_id for s in samples if s.reason and s.reason.startswith("judge mean")}
    assert {row[0] for row in _listed(tab)} == under and len(under) == 35
    _choose(tab, "f-outcome", "all")
    _choose(tab, "f-filter", "near-duplicate")
    dup = [s for s in samples if s.filter is not None]
    assert [row[0] for row in _listed(tab)] == [s.sample_id for s in dup] and len(dup) == 1
    # The matched sample is a link to it.
    match = dup[0].filter.match_id if dup[0].filter else ""
    tab.evaluate("document.querySelector('#list .card .gate a').click()")
    _settle(tab)
    assert tab.evaluate("document.querySelector('#detail .card').dataset.id") == match
    tab.evaluate("history.back()")
    _settle(tab)
    _choose(tab, "f-filter", "all")
    ref = samples[10].reference_id
    _type(tab, "f-ref", ref, event="change")
    assert {row[0] for row in _listed(tab)} == {
        s.sample_id for s in samples if s.reference_id == ref
    }
    # The first and improved responses differ by " (first draft)": the diff marks it.
    card = "document.querySelector('#list .card')"
    assert tab.evaluate(f"{card}.querySelector('.diff del').textContent").strip() == (
        "(first draft)"
    )
    assert tab.evaluate(f"{card}.querySelectorAll('.diff ins').length") == 0
    assert tab.errors() == []


def _lcs(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def test_word_diff_is_a_shortest_edit(browser: Chromium, real_text_run: Path) -> None:
    tab = _open(browser, real_text_run / "report" / "index.html")
    rng = random.Random(7)
    vocab = ["the", "a", "tide", "pool", "rock", "sea", "is", "not", "and"]
    cases = [([], []), (["x"], []), ([], ["y"]), (["a", "b"], ["a", "b"])]
    for _ in range(60):
        a = [rng.choice(vocab) for _ in range(rng.randint(0, 25))]
        b = list(a)
        for _ in range(rng.randint(0, 8)):
            op = rng.random()
            if op < 0.4 and b:
                del b[rng.randrange(len(b))]
            elif op < 0.8:
                b.insert(rng.randint(0, len(b)), rng.choice(vocab))
            elif b:
                b[rng.randrange(len(b))] = rng.choice(vocab)
        cases.append((a, b))
    results = tab.evaluate(f"{json.dumps(cases)}.map(([a, b]) => window.refedViewer.diff(a, b))")
    for (a, b), ops in zip(cases, results, strict=True):
        # Replaying the script gives both texts, and it keeps as many words as the LCS.
        assert [a[i] for k, i, _ in ops if k <= 0] == a
        assert [b[j] for k, _, j in ops if k >= 0] == b
        assert all(a[i] == b[j] for k, i, j in ops if k == 0)
        assert sum(1 for k, _, _ in ops if k == 0) == _lcs(a, b), (a, b)


# ------------------------------------------------------------------- no browser


def test_blobs_decode_to_the_run(fake_run: Path) -> None:
    run = load_run(fake_run)
    data = viewer_data(run)
    packed = pack(data)
    meta = json.loads(gzip.decompress(base64.b64decode(packed.meta)))
    assert meta["n"] == len(run.accepted) + len(run.rejected) == len(meta["cols"]["id"])
    assert all(len(v) == meta["n"] for k, v in meta["cols"].items() if k != "scores")
    assert meta["run"]["stats"]["accepted"] == len(run.accepted)
    rows = [r for b in packed.samples for r in json.loads(gzip.decompress(base64.b64decode(b)))]
    by_id = {s.sample_id: s for s in [*run.accepted, *run.rejected]}
    for sample_id, row in zip(meta["cols"]["id"], rows, strict=True):
        s = by_id[sample_id]
        assert row[:3] == [s.instruction, s.first_response, s.response]
        assert row[5] == s.reason
    # Fields the viewer does not know (here: one added to run.json) are kept and shown.
    raw = json.loads((fake_run / "run.json").read_text())
    raw["profile"] = {"name": "short-answers", "temperature": 0.3}
    copy = fake_run.parent / "with-profile"
    copy.mkdir(exist_ok=True)
    for name in ("samples.jsonl", "rejected.jsonl", "feedback.jsonl", "references.jsonl"):
        (copy / name).write_bytes((fake_run / name).read_bytes())
    (copy / "run.json").write_text(json.dumps(raw))
    assert viewer_data(load_run(copy)).meta["run"]["profile"]["name"] == "short-answers"


def test_fields_added_to_run_json_are_shown(browser: Chromium, fake_run: Path) -> None:
    """run.json fields the viewer has no place for (a generation profile, sampling
    settings of newer versions) are shown, not dropped; a profile by its name."""
    raw = json.loads((fake_run / "run.json").read_text())
    raw["profile"] = {"name": "short-answers", "temperature": 0.3}
    raw["sampling"] = {"top_p": 0.95}
    copy = fake_run.parent / "with-fields"
    copy.mkdir(exist_ok=True)
    for name in ("samples.jsonl", "rejected.jsonl", "feedback.jsonl", "references.jsonl"):
        (copy / name).write_bytes((fake_run / name).read_bytes())
    (copy / "run.json").write_text(json.dumps(raw))
    write_viewer(load_run(copy), copy / "report")
    tab = _open(browser, copy / "report" / "index.html")
    assert tab.evaluate("document.querySelector('[data-fact=profile]').textContent") == (
        "short-answers"
    )
    settings = tab.evaluate("document.getElementById('settings').textContent")
    assert "top_p" in settings and "0.95" in settings and "temperature" in settings


def test_a_bad_feedback_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"reference_id": "a"}\nnot json\n{"reference_id": "b"}\n')
    with pytest.raises(RunFolderError, match=r"feedback.jsonl line 2: not JSON"):
        read_jsonl(path)
    path.write_text('{"reference_id": "a"}\n{"reference_id": "b", "instr')  # torn by a crash
    assert [r["reference_id"] for r in read_jsonl(path)] == ["a"]


def test_an_empty_run_opens(browser: Chromium, tmp_path: Path) -> None:
    run = write_run(tmp_path / "empty", [], [])
    write_viewer(load_run(run), run / "report")
    tab = _open(browser, run / "report" / "index.html")
    assert tab.evaluate("document.querySelector('[data-count=candidates]').textContent") == "0"
    assert tab.evaluate("document.getElementById('list').textContent") == "No candidate matches."
    assert tab.errors() == []
