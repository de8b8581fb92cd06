"""Judge evaluation with no model: the agreement arithmetic, reports, export, and the
``judge score`` CLI against the fake server.

An oracle judge (the human scores, through the whole judge stack with log-probabilities)
must correlate perfectly; a constant one has no correlation (NaN, shown as n/a); a
shuffled one is near zero; small cases match scipy and hand-worked values.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage
from scipy import stats

import prompts
from judge.cli import main as judge_main
from judge.evaluate import (
    Compared,
    JudgedLog,
    Scored,
    correlation,
    document_level,
    mean_correlation,
    pairwise_agreement,
    pairwise_report,
    pointwise_report,
    score_items,
    system_level,
)
from judge.export import pair_records, pointwise_records, to_scale
from judge.report import pointwise_markdown, write_pairwise, write_pointwise
from judge.scoring import JudgeOptions
from judge.sets import (
    BUILTIN,
    HumanItem,
    HumanPair,
    HumanSet,
    HumanSetError,
    load_items,
    load_pairs,
    sample_groups,
    sample_items,
)
from llm.client import LLMClient, derive_seed
from state.judgements import CriterionScore, PairwiseVerdict, PointwiseResult
from tests.scripted import Script, ScriptedChatModel

from .conftest import REPO, FakeServerProc

SUMMEVAL = prompts.criteria("summeval")


def approx_nan(x: float) -> bool:
    return math.isnan(x)


# --- correlation arithmetic ------------------------------------------------------------------


def test_small_examples_match_scipy_and_hand_values() -> None:
    c = correlation([1, 2, 3], [1, 3, 2])
    assert c.spearman == pytest.approx(0.5)  # 1 - 6*2/(3*8)
    assert c.kendall == pytest.approx(1 / 3)  # (2 concordant - 1 discordant) / 3
    rng = random.Random(7)
    for _ in range(20):
        n = rng.randint(3, 30)
        x = [rng.choice([1, 1.5, 2, 3, 3.33, 4, 5]) for _ in range(n)]
        y = [rng.random() * 5 for _ in range(n)]
        if len(set(x)) < 2:
            continue
        c = correlation(x, y)
        assert c.spearman == pytest.approx(stats.spearmanr(x, y).statistic)
        assert c.kendall == pytest.approx(stats.kendalltau(x, y).statistic)  # tau-b, ties
        assert c.n == n


def test_perfect_reversed_and_undefined() -> None:
    assert correlation([1, 2, 3, 4], [10, 20, 30, 40]).spearman == pytest.approx(1.0)
    assert correlation([1, 2, 3, 4], [4, 3, 2, 1]).kendall == pytest.approx(-1.0)
    for judge, human in [([3, 3, 3], [1, 2, 3]), ([1, 2, 3], [2, 2, 2]), ([1], [1]), ([], [])]:
        c = correlation(judge, human)
        assert math.isnan(c.spearman) and math.isnan(c.kendall)
    with pytest.raises(ValueError, match="2 judge scores but 3 human"):
        correlation([1, 2], [1, 2, 3])


def test_document_level_averages_per_document_and_skips_constant_ones() -> None:
    docs = ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    human = [1, 2, 3, 1, 2, 3, 2, 2, 2]
    judge = [1, 2, 3, 3, 2, 1, 1, 2, 3]  # a: +1, b: -1, c: human constant
    c = document_level(judge, human, docs)
    assert (c.spearman, c.kendall, c.n, c.skipped) == (0.0, 0.0, 2, 1)
    judge2 = [1, 2, 3, 1, 3, 2, 1, 2, 3]  # a: +1, b: +0.5
    c2 = document_level(judge2, human, docs)
    assert c2.spearman == pytest.approx(0.75) and c2.kendall == pytest.approx((1 + 1 / 3) / 2)
    none = document_level([2] * 9, human, docs)
    assert math.isnan(none.spearman) and (none.n, none.skipped) == (0, 3)


def test_system_level_correlates_system_means() -> None:
    systems = ["s1", "s2", "s3"] * 2
    human = [1, 2, 3, 3, 4, 5]  # means: s1 2, s2 3, s3 4
    judge = [5, 1, 2, 1, 1, 4]  # means: s1 3, s2 1, s3 3
    expected = stats.spearmanr([3, 1, 3], [2, 3, 4]).statistic
    assert system_level(judge, human, systems).spearman == pytest.approx(expected)
    assert system_level(judge, human, systems).n == 3
    # Order of records does not matter, only the grouping.
    order = [5, 0, 3, 1, 4, 2]
    assert system_level(
        [judge[i] for i in order], [human[i] for i in order], [systems[i] for i in order]
    ).spearman == pytest.approx(expected)


def test_mean_over_criteria_skips_undefined() -> None:
    rows = [
        correlation([1, 2, 3], [1, 2, 3]),
        correlation([1, 2, 3], [1, 3, 2]),
        correlation([1, 1], [1, 2]),
    ]
    m = mean_correlation(rows)
    assert m.spearman == pytest.approx(0.75) and (m.n, m.skipped) == (2, 1)


# --- pairwise agreement ----------------------------------------------------------------------


def test_pairwise_agreement_with_and_without_ties() -> None:
    gold = ["first", "second", "tie", "first", "second", "tie"]
    pred = ["first", "first", "tie", "tie", "second", "first"]
    a = pairwise_agreement(pred, gold, [True, False, True, True, True, False])  # type: ignore[arg-type]
    assert a.with_ties == pytest.approx(3 / 6)
    assert a.n_without_ties == 4 and a.without_ties == pytest.approx(2 / 4)  # judge tie = miss
    assert a.n_decided == 3 and a.decided == pytest.approx(2 / 3)
    assert a.judge_ties == pytest.approx(2 / 6)
    assert a.consistent == pytest.approx(4 / 6)
    perfect = pairwise_agreement(gold, gold)  # type: ignore[arg-type]
    assert (perfect.with_ties, perfect.without_ties, perfect.decided) == (1.0, 1.0, 1.0)
    assert math.isnan(perfect.consistent)
    all_ties = pairwise_agreement(["first"], ["tie"])
    assert all_ties.with_ties == 0.0 and math.isnan(all_ties.without_ties)


# --- the oracle judge through the whole judge stack ---------------------------------------------


def logprob_answer(human: dict[str, float], props: list[str]) -> tuple[str, str, list[Any]]:
    """A JudgeOut answer whose log-probabilities put the expectation exactly on ``human``:
    probability (h - floor h) on ceil h and the rest on floor h."""
    value: dict[str, int] = {}
    tokens: list[dict[str, Any]] = [{"token": "{", "logprob": 0.0, "top_logprobs": []}]
    for name in props:
        h = human[name]
        lo, frac = math.floor(h), h - math.floor(h)
        dist = {str(lo): 1 - frac, str(lo + 1): frac} if frac > 1e-12 else {str(lo): 1.0}
        sampled = max(dist, key=lambda k: dist[k])
        value[name] = int(sampled)
        sep = "" if name == props[0] else ","
        tokens.append({"token": f'{sep}"{name}":', "logprob": 0.0, "top_logprobs": []})
        tokens.append(
            {
                "token": sampled,
                "logprob": math.log(dist[sampled]),
                "top_logprobs": [
                    {"token": t, "logprob": math.log(p)} for t, p in dist.items() if p > 0
                ],
            }
        )
    tokens.append({"token": "}", "logprob": 0.0, "top_logprobs": []})
    return json.dumps(value, separators=(",", ":")), "stop", tokens


def oracle(items: list[HumanItem], opts: JudgeOptions) -> Script:
    """Knows each record by its request seed (two records can show the same text)."""
    by_seed = {derive_seed(opts.seed, it.id, "judge"): it.human for it in items}
    assert len(by_seed) == len(items)

    def answer(messages: list[BaseMessage], kwargs: dict[str, Any]) -> Any:
        props = list(kwargs["response_format"]["json_schema"]["schema"]["properties"])
        human = by_seed[kwargs["seed"]]
        return logprob_answer(human, [p for p in props if p != "rationale"])

    return Script(answers={"JudgeOut": answer})


def synthetic_items(n_docs: int = 6, n_systems: int = 5, seed: int = 1) -> list[HumanItem]:
    rng = random.Random(seed)
    items = []
    for d in range(n_docs):
        for s in range(n_systems):
            human = {c: rng.choice([1, 1.33, 2, 2.67, 3, 3.5, 4, 4.67, 5]) for c in SUMMEVAL.names}
            items.append(
                HumanItem(
                    id=f"d{d}s{s}",
                    fields={"document": f"Document {d}.", "summary": f"Summary {d}-{s}."},
                    human=human,
                    doc=f"d{d}",
                    system=f"s{s}",
                )
            )
    return items


def report_for(items: list[HumanItem], scored: list[Scored]) -> Any:
    return pointwise_report(
        set_name="test",
        cset=SUMMEVAL,
        model="oracle",
        items=items,
        scored=scored,
        opts=JudgeOptions(rationale_chars=0),
        per_criterion=False,
        primary="document",
        seconds=1.0,
        concurrency=4,
        sample="all",
    )


async def run_oracle(items: list[HumanItem]) -> list[Scored]:
    opts = JudgeOptions(rationale_chars=0)
    client = LLMClient(ScriptedChatModel(oracle(items, opts)), concurrency=16, max_retries=0)
    return await score_items(client, SUMMEVAL, items, opts, per_criterion=False)


def assert_all_one(report: Any) -> None:
    for level, rows in report.levels.items():
        for name, c in rows.items():
            assert c.spearman == pytest.approx(1.0), (level, name)
            assert c.kendall == pytest.approx(1.0), (level, name)
        assert report.average[level].spearman == pytest.approx(1.0)


async def test_oracle_judge_correlates_perfectly_on_synthetic_data(tmp_path: Path) -> None:
    items = synthetic_items()
    scored = await run_oracle(items)
    assert all(s.result is not None and s.result.method == "logprob" for s in scored)
    report = report_for(items, scored)
    assert set(report.levels) == {"record", "document", "system"}
    assert report.method == {"logprob": len(items)} and report.failed == 0
    assert_all_one(report)
    write_pointwise(tmp_path, report, items, scored)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["average"]["document"]["spearman"] == pytest.approx(1.0)
    assert "| **average** | **1.000 / 1.000** |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


def fixed(items: list[HumanItem], values: list[dict[str, float]]) -> list[Scored]:
    return [
        Scored(
            it.id,
            PointwiseResult(
                criteria="summeval",
                scores={
                    k: CriterionScore(score=v, sampled=round(v), method="sampled")
                    for k, v in vals.items()
                },
                method="sampled",
            ),
        )
        for it, vals in zip(items, values, strict=True)
    ]


def test_constant_judge_has_no_correlation(tmp_path: Path) -> None:
    items = synthetic_items()
    report = report_for(items, fixed(items, [{c: 3.0 for c in SUMMEVAL.names} for _ in items]))
    for level, rows in report.levels.items():
        assert all(approx_nan(c.spearman) and approx_nan(c.kendall) for c in rows.values()), level
        assert approx_nan(report.average[level].spearman)
    assert report.average["document"].skipped == 4
    md = pointwise_markdown(report)
    assert "| coherence | n/a / n/a | 0 docs, 6 skipped |" in md
    write_pointwise(
        tmp_path, report, items, fixed(items, [{c: 3.0 for c in SUMMEVAL.names} for _ in items])
    )
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["average"]["record"]["spearman"] is None  # NaN is written as null


def test_failures_are_left_out_and_counted() -> None:
    items = synthetic_items()
    scored = fixed(items, [it.human for it in items])
    scored[0] = Scored(items[0].id, None, "parse: bad")
    report = report_for(items, scored)
    assert (report.records, report.judged, report.failed) == (30, 29, 1)
    assert report.errors == ["d0s0: parse: bad"]
    assert_all_one(report)


@pytest.fixture(scope="module")
def summeval_items(shared_data: Path) -> list[HumanItem]:
    return load_items(BUILTIN["summeval"])


async def test_oracle_on_real_summeval_human_scores(summeval_items: list[HumanItem]) -> None:
    items = sample_items(summeval_items, 320, seed=0)
    assert len(items) == 320 and len({it.doc for it in items}) == 20
    report = report_for(items, await run_oracle(items))
    assert report.judged == 320
    assert_all_one(report)
    assert report.levels["system"]["coherence"].n == 16


def test_shuffled_judge_is_near_zero(summeval_items: list[HumanItem]) -> None:
    rng = random.Random(0)
    values = [it.human for it in summeval_items]
    shuffled = values[:]
    rng.shuffle(shuffled)
    report = report_for(summeval_items, fixed(summeval_items, shuffled))
    for level in ("record", "document"):
        for name, c in report.levels[level].items():
            assert abs(c.spearman) < 0.1 and abs(c.kendall) < 0.1, (level, name, c)


# --- human-judgement sets ----------------------------------------------------------------------


def test_builtin_sets_read(shared_data: Path) -> None:
    tc = load_items(BUILTIN["topical_chat"])
    assert (
        len(tc) == 360 and len({it.doc for it in tc}) == 60 and len({it.system for it in tc}) == 6
    )
    assert set(tc[0].human) == set(prompts.criteria("topical_chat").names)
    assert set(tc[0].fields) == {"history", "fact", "response"}
    sfres = load_items(BUILTIN["sfres"])
    assert len(sfres) == 1181 and set(sfres[0].human) == {
        "informativeness",
        "naturalness",
        "overall",
    }
    pairs = load_pairs(BUILTIN["autoj"])
    assert len(pairs) == 1392
    assert {p.label for p in pairs} == {"first", "second", "tie"}
    assert sum(p.label == "tie" for p in pairs) == 373


def test_sample_groups_is_deterministic_and_whole() -> None:
    keys: list[str | None] = [f"d{i // 4}" for i in range(40)] + [None, None]
    a = sample_groups(keys, 10, seed=3)
    assert a == sample_groups(keys, 10, seed=3)
    assert a != sample_groups(keys, 10, seed=4)
    docs = {keys[i] for i in a if keys[i] is not None}
    assert all(sum(keys[i] == d for i in a) == 4 for d in docs)  # whole documents
    assert len(a) >= 10 and sample_groups(keys, None, 0) == list(range(42))


def test_custom_set_errors(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"doc": "D", "out": "S", "scores": "{\'coherence\': 2}"}\n{"doc": "D"}\n')
    hset = HumanSet(
        name="mine", path=path, criteria="summeval", fields={"document": "doc", "summary": "out"}
    )
    with pytest.raises(HumanSetError, match=r"mine.jsonl record 1: no field 'out'"):
        load_items(hset)
    path.write_text('{"doc": "D", "out": "S", "scores": "{\'coherence\': 2}"}\n')
    (item,) = load_items(hset)
    assert item.human == {"coherence": 2.0}  # a dict literal in a string is read
    with pytest.raises(HumanSetError, match="not found"):
        load_items(HumanSet(name="x", path=tmp_path / "none.jsonl", criteria="summeval", fields={}))


def test_pairwise_report_files(tmp_path: Path) -> None:
    pairs = [
        HumanPair(f"p{i}", {"instruction": "Q"}, "a", "b", label)  # type: ignore[arg-type]
        for i, label in enumerate(["first", "second", "tie", "first"])
    ]
    verdicts = [
        ("first", ("first", "first")),
        ("first", ("first", "tie")),
        ("tie", ("first", "second")),
    ]
    compared = [
        Compared(p.id, PairwiseVerdict(winner=w, votes=v))
        for p, (w, v) in zip(pairs, verdicts, strict=False)  # type: ignore[arg-type]
    ] + [Compared("p3", None, "http: boom")]
    report = pairwise_report(
        set_name="autoj",
        cset=prompts.criteria("instruction"),
        model="m",
        pairs=pairs,
        compared=compared,
        opts=JudgeOptions(),
        seconds=2.0,
        concurrency=1,
        sample="all",
    )
    assert (report.judged, report.failed) == (3, 1)
    assert report.agreement.with_ties == pytest.approx(2 / 3)
    assert report.agreement.without_ties == pytest.approx(1 / 2)
    assert report.agreement.consistent == pytest.approx(1 / 3)
    assert report.confusion["tie"]["tie"] == 1 and report.confusion["second"]["first"] == 1
    write_pairwise(tmp_path, report)
    assert "agreement with ties (3-way) | 0.667" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "plot.png").exists()


# --- HEAP-style export ---------------------------------------------------------------------------


def test_export_pointwise_and_pairs_on_synthetic_items() -> None:
    items = [
        HumanItem(
            "a", {"document": "D", "summary": "good"}, {"coherence": 4.67, "fluency": 2.5}, "d"
        ),
        HumanItem(
            "b", {"document": "D", "summary": "bad"}, {"coherence": 2.0, "fluency": 2.0}, "d"
        ),
        HumanItem(
            "c", {"document": "D", "summary": "mid"}, {"coherence": 3.33, "fluency": 2.2}, "d"
        ),
        HumanItem(
            "e", {"document": "OTHER", "summary": "x"}, {"coherence": 1.0, "fluency": 5.0}, "e"
        ),
    ]
    cset = SUMMEVAL.subset(["coherence", "fluency"])
    points = list(pointwise_records("s", cset, items))
    assert len(points) == 8
    first = points[0]
    assert (first["kind"], first["criterion"], first["target"], first["human"]) == (
        "pointwise",
        "coherence",
        5,
        4.67,
    )
    system, user, assistant = first["messages"]
    assert (system["role"], user["role"], assistant["role"]) == ("system", "user", "assistant")
    assert json.loads(assistant["content"]) == {"score": 5}
    assert "Criterion: coherence" in user["content"] and "good" in user["content"]
    assert "rationale" not in user["content"]  # score only, as the answer
    assert [p["target"] for p in points if p["criterion"] == "fluency"] == [3, 2, 2, 5]

    pairs = list(pair_records("s", cset, items, min_gap=1.0, seed=0))
    # coherence: a>b (2.67), a>c (1.34), c>b (1.33); fluency: no gap >= 1; e is alone.
    assert [(p["chosen"], p["rejected"], p["criterion"]) for p in pairs] == [
        ("good", "bad", "coherence"),
        ("good", "mid", "coherence"),
        ("mid", "bad", "coherence"),
    ]
    for p in pairs:
        winner = json.loads(p["messages"][-1]["content"])["winner"]
        a = re.search(r"<a>\n(.*?)\n</a>", p["messages"][1]["content"], re.S).group(1)  # type: ignore[union-attr]
        assert (a == p["chosen"]) is (winner == "A")
        assert p["gap"] >= 1.0
    assert len(list(pair_records("s", cset, items, min_gap=1.0, max_per_group=1))) == 1
    assert len(list(pair_records("s", cset, items, min_gap=0.3))) == 3 + 1  # fluency a>c? no: a>b


def test_to_scale_rounds_half_up_and_clamps() -> None:
    c = SUMMEVAL.get("coherence")
    assert [to_scale(v, c) for v in (1.0, 1.49, 1.5, 2.5, 4.67, 7.0, 0.2)] == [1, 1, 2, 3, 5, 5, 1]


def run_judge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "graph.judge", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_export_cli_on_shared_data(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "heap.jsonl"
    res = run_judge(
        "export", "--set", "summeval", "--set", "autoj", "--sample", "32", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = {(r["set"], r["kind"]) for r in rows}
    assert kinds == {("summeval", "pointwise"), ("summeval", "pair"), ("autoj", "pair")}
    assert sum(r["kind"] == "pointwise" for r in rows) == 32 * 4
    assert "summeval pointwise: 128" in res.stderr
    for r in rows:
        assert r["messages"][-1]["role"] == "assistant"
        if r["kind"] == "pair":
            assert r["chosen"] != r["rejected"]
            assert json.loads(r["messages"][-1]["content"])["winner"] in ("A", "B")


# --- judge score CLI (fake server) -------------------------------------------------------------


def test_score_cli_writes_scores_next_to_records(
    fake_server: FakeServerProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "answers.jsonl"
    rows = [
        {"id": i, "prompt": f"Question {i}?", "output": f"Answer {i}.", "draft": f"Draft {i}."}
        for i in range(5)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    endpoint = ["--base-url", fake_server.base_url, "--model", "fake"]
    mapping = ["--field", "instruction=prompt", "--field", "response=output"]
    code = judge_main(["score", str(src), *mapping, "--versus", "draft", *endpoint])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "answers.judged.jsonl"
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["id"] for g in got] == list(range(5))
    for row, g in zip(rows, got, strict=True):
        assert {k: g[k] for k in row} == row  # the record is kept as it was
        judge = g["judge"]
        assert set(judge["scores"]) == set(prompts.criteria("instruction").names)
        assert judge["method"] == "sampled"  # the fake server returns no log-probabilities
        assert judge["mean"] == 5.0 and judge["criteria"] == "instruction"
        assert g["judge_pairwise"]["votes"] == ["tie", "tie"]
    assert fake_server.stats()["requests"] == 5 * 3
    assert "5 records scored, 0 failed" in capsys.readouterr().err

    # Parquet out, one criterion. (Another --timeout: langchain-openai keeps one httpx
    # client per URL and timeout, bound to the event loop of the first run in this process.)
    pq_out = tmp_path / "scored.parquet"
    pq_args = ["--criterion", "clarity", "--out", str(pq_out), "--timeout", "61"]
    code = judge_main(["score", str(src), *mapping, *pq_args, *endpoint])
    assert code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(pq_out).to_pylist()
    assert len(table) == 5 and set(table[0]["judge"]["scores"]) == {"clarity"}


def test_score_cli_spreads_over_two_endpoints(fake_server: FakeServerProc, tmp_path: Path) -> None:
    """``python -m graph.judge score --base-url A,B``: both endpoints are called (through
    the same client factory and balancer as a run), every record is scored once."""
    src = tmp_path / "answers.jsonl"
    src.write_text(
        "".join(
            json.dumps({"instruction": f"Question {i}?", "response": f"Answer {i}."}) + "\n"
            for i in range(12)
        )
    )
    with FakeServerProc(latency=0.05) as other:
        both = f"{fake_server.base_url},{other.base_url}"
        res = run_judge("score", str(src), "--base-url", both, "--model", "fake")
        assert res.returncode == 0, res.stderr
        calls = [fake_server.stats()["requests"], other.stats()["requests"]]
    got = [
        json.loads(line) for line in (tmp_path / "answers.judged.jsonl").read_text().splitlines()
    ]
    assert len(got) == 12 and all(g["judge"]["mean"] == 5.0 for g in got)
    assert sum(calls) == 12 and min(calls) > 0, calls
    assert "12 records scored, 0 failed" in res.stderr


def test_judge_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.jsonl"
    src.write_text('{"prompt": "Q", "output": "A"}\n')
    nowhere = ["--base-url", "http://127.0.0.1:9/v1"]
    assert judge_main(["score", str(src), *nowhere]) == 2
    err = capsys.readouterr().err
    assert "record 0 has no field 'instruction' for 'instruction'" in err
    assert "--field instruction=KEY" in err
    assert judge_main(["score", str(src), "--criteria", "nope", *nowhere]) == 2
    assert "no built-in criteria set 'nope'" in capsys.readouterr().err
    assert judge_main(["eval", "--set", "nope", *nowhere]) == 2
    assert "no built-in human-judgement set 'nope'" in capsys.readouterr().err
    assert judge_main(["eval", "--set", "summeval", "--criterion", "nope", *nowhere]) == 2
    assert "has no criterion 'nope'" in capsys.readouterr().err
    assert judge_main(["export", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "give --set" in capsys.readouterr().err


# --- eval CLI on your own files (fake server: a constant judge), and resuming ---------------------


def test_eval_cli_on_own_files(
    fake_server: FakeServerProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = ["--base-url", fake_server.base_url, "--model", "fake"]
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text(
        "".join(
            json.dumps(
                {"q": f"Q{i // 3}", "a": f"A{i}", "qid": i // 3, "sys": f"s{i % 3}"}
                | {"scores": {"coherence": 1 + i % 5, "fluency": 5 - i % 4}}
            )
            + "\n"
            for i in range(12)
        )
    )
    out = tmp_path / "own"
    args = ["eval", "--file", str(ratings), "--criteria", "summeval", "--criterion", "coherence"]
    args += ["--criterion", "fluency", "--field", "document=q", "--field", "summary=a"]
    args += ["--doc-key", "qid", "--system-key", "sys", "--out", str(out), *endpoint]
    assert judge_main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["set"] == "ratings" and report["primary"] == "document"
    assert report["judged"] == 12 and report["method"] == {"sampled": 12}
    assert set(report["levels"]) == {"record", "document", "system"}
    # The fake server always answers the top of the scale: a constant judge, no correlation.
    assert report["average"]["record"]["spearman"] is None
    assert report["levels"]["document"]["coherence"]["skipped"] == 4

    prefs = tmp_path / "prefs.jsonl"
    labels = ["a", "b", "same", "a"]
    prefs.write_text(
        "".join(
            json.dumps({"prompt": f"P{i}", "x": f"X{i}", "y": f"Y{i}", "winner": w}) + "\n"
            for i, w in enumerate(labels)
        )
    )
    out = tmp_path / "prefs"
    args = ["eval", "--file", str(prefs), "--pairwise", "--criteria", "instruction"]
    args += ["--field", "instruction=prompt", "--first-key", "x", "--second-key", "y"]
    args += ["--label-key", "winner", "--label", "a=first", "--label", "b=second"]
    args += ["--label", "same=tie", "--out", str(out), *endpoint, "--timeout", "62"]
    assert judge_main(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    # The fake judge says "tie" in both orders: right only on the human tie.
    assert report["agreement"]["with_ties"] == pytest.approx(1 / 4)
    assert report["agreement"]["without_ties"] == 0.0
    assert report["confusion"]["first"]["tie"] == 2


async def test_judged_log_resumes_with_the_same_settings(tmp_path: Path) -> None:
    items = synthetic_items(n_docs=2, n_systems=3)
    opts = JudgeOptions(rationale_chars=0)
    config = {"set": "test", "options": {"rationale_chars": 0}}

    async def run(cfg: dict[str, Any], upto: int) -> tuple[list[Scored], Script]:
        script = oracle(items, opts)
        client = LLMClient(ScriptedChatModel(script), concurrency=4, max_retries=0)
        log = JudgedLog(tmp_path, cfg)
        try:
            scored = await score_items(
                client, SUMMEVAL, items[:upto], opts, per_criterion=False, log=log
            )
        finally:
            log.close()
        return scored, script

    _, first = await run(config, 4)  # "interrupted" after four records
    assert first.count("JudgeOut") == 4
    scored, again = await run(config, 6)
    assert again.count("JudgeOut") == 2  # only the two not yet judged
    assert [s.fresh for s in scored] == [False] * 4 + [True] * 2
    assert len((tmp_path / "judged.jsonl").read_text().splitlines()) == 6
    _, changed = await run({**config, "options": {"rationale_chars": 50}}, 6)
    assert changed.count("JudgeOut") == 6  # other settings: nothing reused
