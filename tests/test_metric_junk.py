"""metric/junk.py and metric/instruct.py: the labelled junk set, its AUC, the negatives made
for training, and their examples under the pipeline's criteria."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from metric.junk import (
    ASK_BACKS,
    TRAIN_ASK_BACKS,
    auc,
    junk_set,
    make_loop,
    negatives,
    sentences,
)


def test_auc_on_a_planted_set() -> None:
    # every good above every bad: 1; reversed: 0; all equal: one half
    assert auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert auc([0.5, 0.5, 0.5], [1, 0, 0]) == 0.5
    # 2 good x 3 bad = 6 pairs: good 0.7 beats 0.6 and 0.2, loses to 0.8; good 0.9 beats all;
    # one tie (0.6 vs 0.6) counts a half
    scores = [0.7, 0.9, 0.6, 0.2, 0.8]
    assert auc(scores, [1, 1, 0, 0, 0]) == pytest.approx(5 / 6)
    assert auc([0.6, 0.6, 0.2], [1, 0, 0]) == pytest.approx(1.5 / 2)
    with pytest.raises(ValueError):
        auc([0.1, 0.2], [1, 1])


def test_loops_repeat_one_sentence_of_the_answer() -> None:
    answer = "The sea is blue. Waves come and go. Fish swim below. Birds fly above."
    for seed in range(20):
        loop = make_loop(answer, random.Random(seed))
        parts = sentences(loop)
        top = max(set(parts), key=parts.count)
        assert parts.count(top) >= 8 and top in sentences(answer)
        assert loop.startswith(sentences(answer)[0]) or loop.startswith(top)


def _lima(tmp_path: Path, n: int) -> Path:
    rows = [
        {
            "instruction": f"Question number {i}: why is thing {i} the way it is?",
            "input": "",
            "output": f"Thing {i} is so for a reason. Reason {i} explains it. That is all.",
            "history": [],
        }
        for i in range(n)
    ]
    path = tmp_path / "lima.json"
    path.write_text(json.dumps(rows))
    return path


def test_junk_set_composition_and_determinism(tmp_path: Path) -> None:
    path = _lima(tmp_path, 40)
    items = junk_set(path, n=10, seed=3)
    assert items == junk_set(path, n=10, seed=3)
    assert items != junk_set(path, n=10, seed=4)
    kinds = [it.kind for it in items]
    assert len(items) == 30
    assert kinds.count("reference") == 10 and kinds.count("mismatched") == 10
    assert kinds.count("loop") == 5 and kinds.count("ask_back") == 5
    good = {it.source: it for it in items if it.kind == "reference"}
    for it in items:
        assert it.label == (1 if it.kind == "reference" else 0)
        assert it.instruction == good[it.source].instruction
        if it.kind == "mismatched":
            assert it.donor in good and it.donor != it.source
            assert it.response == good[it.donor].response
        if it.kind == "ask_back":
            assert any(it.response.startswith(p.split("{")[0]) for p in ASK_BACKS)
    with pytest.raises(ValueError, match="between 2 and"):
        junk_set(path, n=41)


def test_negatives_use_their_own_phrasings() -> None:
    assert not set(ASK_BACKS) & set(TRAIN_ASK_BACKS)
    pairs = [(f"Request {i}.", f"Answer {i} is here. It is long enough.") for i in range(5)]
    made = negatives(pairs, seed=1)
    assert [k for _, _, k in made] == ["mismatched", "loop", "ask_back"] * 5
    for i, text, kind in made:
        if kind == "mismatched":
            assert text != pairs[i][1] and text in {a for _, a in pairs}
        if kind == "ask_back":
            assert any(text.startswith(p.split("{")[0]) for p in TRAIN_ASK_BACKS)


def test_lima_junk_set_from_shared_data() -> None:
    from metric.junk import LIMA

    if not LIMA.is_file():
        pytest.skip(f"{LIMA} not found")
    items = junk_set(n=30, seed=0)
    assert len(items) == 90 and sum(it.label for it in items) == 30
    assert all(it.source.startswith("lima.json#") for it in items)


def test_instruction_examples_pair_good_over_bad() -> None:
    from metric.data import TASKS, build_task, rating_pairs
    from metric.instruct import BAD, GOOD, junk_examples, negatives_examples
    from tests.metric_helpers import need_judge_data

    need_judge_data()
    pref = build_task(TASKS["preference"], seed=0)
    exs = negatives_examples(pref, 12, seed=0)
    assert len({e.item for e in exs}) == 12 * 4 and len(exs) == 12 * 4 * 4
    assert {e.criterion for e in exs} == {
        "helpfulness",
        "instruction_following",
        "correctness",
        "clarity",
    }
    train_groups = {g for g, s in pref.splits.items() if s == "train"}
    assert all(e.group.removeprefix("negatives:") in train_groups for e in exs)
    assert {e.rating for e in exs} == {GOOD, BAD}
    pairs = rating_pairs(exs, 0.15)
    by_uid = {e.uid: e for e in exs}
    assert len(pairs) == 12 * 3 * 4
    assert all(by_uid[p.first].rating == GOOD and by_uid[p.second].rating == BAD for p in pairs)
    from metric.junk import LIMA

    if LIMA.is_file():
        items = junk_set(n=4, seed=0)
        jx = junk_examples(items)
        assert len(jx) == len(items) * 4 and all(e.rating is None for e in jx)
        assert jx[0].context[0].text == items[0].instruction
