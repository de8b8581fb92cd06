"""Benchmark decontamination on real data: planted copies of benchmark prompts among clean
instructions are all caught, and no clean instruction or response is dropped.

The benchmark files are read from ../shared/data/benchmarks at test time; no benchmark
text is in this repository. Planted copies are made here from those files:

- ``exact``: the prompt as is;
- ``case_punct``: upper-cased, punctuation turned into spaces, "!!" appended;
- ``word_changed``: one middle word replaced (prompts of 6+ tokens: with fewer, one new
  word makes a different question, e.g. "What is Atlantis?" -> "What is Lemuria?");
- ``word_added``: one word inserted (3+ tokens); ``word_dropped``: one removed (4+ tokens);
- ``embedded``: the prompt inside a longer instruction (8+ tokens);
- ``in_response``: the prompt quoted inside a response to a clean instruction (8+ tokens).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from dataset.quality import QualityGate
from dataset.quality.benchmarks import BenchmarkError, load_benchmark, load_benchmarks
from dataset.quality.decontam import Decontaminator
from dataset.quality.text import normalise, tokens
from state.records import Sample

from .runfolders import make_sample, self_instruct_pairs

SETS = (
    "alpaca_eval_instructions.jsonl",
    "mt_bench_questions.jsonl",
    "arena_hard_v0.1_questions.jsonl",
    "ifeval_prompts.jsonl",
)


def _middle_word(words: list[str]) -> int | None:
    """A whitespace word that is one token (letters only), near the middle."""
    spots = [i for i, w in enumerate(words) if w.isalpha() and len(tokens(w)) == 1]
    return spots[len(spots) // 2] if spots else None


def variants(text: str) -> dict[str, str]:
    words = text.split()
    k = len(tokens(text))
    out = {"exact": text, "case_punct": re.sub(r"[^\w\s]", " ", text).upper() + "!!"}
    i = _middle_word(words)
    if i is not None:
        if k >= 6:
            new = "zebra" if words[i].lower() != "zebra" else "lion"
            out["word_changed"] = " ".join([*words[:i], new, *words[i + 1 :]])
        if k >= 3:
            out["word_added"] = " ".join([*words[:i], "really", *words[i:]])
        if k >= 4:
            out["word_dropped"] = " ".join([*words[:i], *words[i + 1 :]])
    if k >= 8:
        out["embedded"] = f"Read this first. {text} Answer in full sentences, please."
    return out


@pytest.fixture(scope="module")
def bench_files(shared_data: Path) -> list[str]:
    return [str(shared_data / "benchmarks" / name) for name in SETS]


@pytest.fixture(scope="module")
def decontaminator(bench_files: list[str]) -> Decontaminator:
    return Decontaminator(load_benchmarks(bench_files))


def test_benchmark_fields_are_found(bench_files: list[str]) -> None:
    benches = {b.name: b for b in load_benchmarks(bench_files)}
    assert len(benches["alpaca_eval_instructions"].prompts) == 805  # instruction
    assert len(benches["mt_bench_questions"].prompts) == 160  # turns: 80 x 2 strings
    assert benches["mt_bench_questions"].prompts[1].id == "mt_bench_questions#0.turn2"
    assert len(benches["arena_hard_v0.1_questions"].prompts) == 500  # turns[{content}]
    assert len(benches["ifeval_prompts"].prompts) == 541  # prompt
    assert all(b.skipped == 0 for b in benches.values())


def _clean(shared_data: Path) -> list[tuple[str, str]]:
    """Real instructions and responses from the seed sets: Self-Instruct's 175 seed tasks
    and LIMA's 1,000 single-turn pairs."""
    pairs = self_instruct_pairs(shared_data)
    lima = json.loads((shared_data / "seeds" / "lima.json").read_text())
    pairs += [(r["instruction"], r["output"]) for r in lima if not r.get("history")]
    return pairs


def test_planted_copies_are_all_caught(shared_data: Path, decontaminator: Decontaminator) -> None:
    caught: Counter[str] = Counter()
    planted: Counter[str] = Counter()
    missed: list[tuple[str, str]] = []
    filler = "Here is a question people often ask: {} My answer follows below in detail."
    for bench in decontaminator.benchmarks:
        for prompt in bench.prompts:
            k = len(tokens(prompt.text))
            cases = variants(prompt.text)
            for kind, text in cases.items():
                planted[kind] += 1
                hit = decontaminator.check(text, fuzzy=True)
                if hit is None:
                    missed.append((kind, text))
                    continue
                caught[kind] += 1
                if kind in ("exact", "case_punct"):
                    assert hit.method == "exact"
                    assert normalise(hit.prompt_text) == normalise(prompt.text)
            if k >= 8:
                planted["in_response"] += 1
                hit = decontaminator.check(filler.format(prompt.text), fuzzy=False)
                if hit is None:
                    missed.append(("in_response", prompt.text))
                else:
                    caught["in_response"] += 1
                    assert hit.method in ("13-gram", "whole prompt")
    assert not missed, missed[:5]
    assert caught == planted
    assert planted["exact"] == 805 + 160 + 500 + 541
    assert planted["word_changed"] > 1500


def test_clean_instructions_and_responses_are_not_flagged(
    shared_data: Path, decontaminator: Decontaminator
) -> None:
    pairs = _clean(shared_data)
    assert len(pairs) >= 1175
    flagged = []
    for instruction, response in pairs:
        for text, fuzzy in ((instruction, True), (response, False)):
            hit = decontaminator.check(text, fuzzy=fuzzy)
            if hit is not None:
                flagged.append((text[:80], hit.prompt_id, hit.method, hit.score))
    assert flagged == []


def test_gate_catches_every_plant_and_drops_nothing_clean(
    shared_data: Path, bench_files: list[str]
) -> None:
    """The whole gate, as the runner calls it, on Sample records: AlpacaEval and MT-Bench
    copies mixed into clean Self-Instruct data; per-benchmark counts in the summary."""
    gate = QualityGate(near_dup="off", decontaminate=bench_files)
    gate.load([], [])
    clean = self_instruct_pairs(shared_data)
    samples: list[Sample] = []
    expected: dict[str, str] = {}  # sample_id -> benchmark it copies
    i = 0
    for name in ("alpaca_eval_instructions", "mt_bench_questions"):
        bench = load_benchmark(str(shared_data / "benchmarks" / f"{name}.jsonl"))
        for n, prompt in enumerate(bench.prompts):
            if n % 3:  # a third of each set, every kind of copy
                continue
            for text in variants(prompt.text).values():
                instruction, response = clean[i % len(clean)]
                s = make_sample(10_000 + i, text, response)
                samples.append(s)
                expected[s.sample_id] = name
                i += 1
    for j, (instruction, response) in enumerate(clean):
        samples.append(make_sample(j, instruction, response))
    out = gate.screen(samples)
    for s in out:
        if s.sample_id in expected:
            assert s.status == "rejected" and s.filter is not None, s.instruction
            assert s.filter.name == "decontamination"
            assert s.reason is not None and s.reason.startswith("benchmark contamination")
        else:
            assert s.status == "accepted", (s.instruction, s.reason)
    summary = gate.summary()["decontamination"]
    assert summary["dropped"] == len(expected)
    by_bench = Counter(expected.values())
    for name, b in summary["benchmarks"].items():
        # A few prompts are in two sets; a copy is counted for the first set it matches.
        assert abs(b["dropped"] - by_bench.get(name, 0)) <= 0.02 * len(expected), name
    assert gate.summary()["passed"] == len(clean)


def test_reading_formats_and_fields(tmp_path: Path) -> None:
    """Field heuristics and formats, on made-up prompts (no benchmark text)."""
    jl = tmp_path / "qa.jsonl"
    jl.write_text(
        json.dumps({"question": "How many legs has a spider?"})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Name a blue fruit."}]})
        + "\n"
        + json.dumps({"other": 1})
        + "\n"
    )
    b = load_benchmark(str(jl))
    assert [p.text for p in b.prompts] == ["How many legs has a spider?", "Name a blue fruit."]
    assert b.skipped == 1 and b.name == "qa"
    js = tmp_path / "set.json"
    js.write_text(json.dumps({"data": [{"prompt": "Count to ten.", "query": "ignored"}]}))
    assert [p.text for p in load_benchmark(str(js)).prompts] == ["Count to ten."]
    csv = tmp_path / "set.csv"
    csv.write_text("id,text\n1,Spell banana backwards.\n")
    assert [p.text for p in load_benchmark(str(csv)).prompts] == ["Spell banana backwards."]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(
        pa.table({"body": ["Say hi."], "instruction": ["Say hello."]}), tmp_path / "p.parquet"
    )
    assert [p.text for p in load_benchmark(f"{tmp_path / 'p.parquet'}#body").prompts] == ["Say hi."]
    with pytest.raises(BenchmarkError, match="not found"):
        load_benchmark(str(tmp_path / "missing.jsonl"))
    with pytest.raises(BenchmarkError, match="no prompts found"):
        load_benchmark(f"{jl}#nothing")
    two = load_benchmarks([str(jl), f"{jl}#question"])
    assert [x.name for x in two] == ["qa", "qa_2"] and two[1].prompts[0].id == "qa_2#0"
