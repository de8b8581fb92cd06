"""metric/: HEAP-style examples, source splits, pairs from ratings, caps, the input layout."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from metric.data import (
    GENERIC,
    TASKS,
    Caps,
    build_task,
    criterion_words,
    rating_pairs,
    select,
    split_of,
    task_file,
)
from metric.text import Field, pair_texts, share
from tests.metric_helpers import need_base, need_judge_data


@pytest.fixture(scope="module")
def built() -> dict[str, object]:
    need_judge_data()
    return {name: build_task(spec, seed=0) for name, spec in TASKS.items()}


def test_no_source_in_two_splits(built: dict[str, object]) -> None:
    from metric.data import TaskData

    for name, data in built.items():
        assert isinstance(data, TaskData)
        where: dict[str, set[str]] = defaultdict(set)
        for ex in data.examples.values():
            where[ex.group].add(data.splits[ex.group])
            # the split unit is the source: an item's texts never cross either
            where[f"item:{ex.item}"].add(data.splits[ex.group])
        assert all(len(s) == 1 for s in where.values()), name
        train = {e.group for e in data.split_examples("train")}
        test = {e.group for e in data.split_examples("test")}
        assert train and test and not (train & test), name
        for p in data.pairs:
            assert data.examples[p.first].group == data.examples[p.second].group == p.group


def test_pointwise_sources_are_documents_not_rows(built: dict[str, object]) -> None:
    from metric.data import TaskData

    data = built["summarization"]
    assert isinstance(data, TaskData)
    per_doc: dict[str, set[str]] = defaultdict(set)
    for ex in data.examples.values():
        per_doc[ex.group].add(ex.item)
    assert len(per_doc) == 100 and all(len(items) == 16 for items in per_doc.values())


def test_splits_are_seeded_and_about_the_fraction() -> None:
    groups = [f"doc{i}" for i in range(2000)]
    a = [split_of(g, 0, 0.3) for g in groups]
    assert a == [split_of(g, 0, 0.3) for g in groups]
    assert a != [split_of(g, 1, 0.3) for g in groups]
    assert 0.25 < a.count("test") / len(a) < 0.35


def test_instructions_name_the_right_criterion(built: dict[str, object]) -> None:
    from metric.data import TaskData, criteria_set

    for name, data in built.items():
        assert isinstance(data, TaskData)
        cset = criteria_set(TASKS[name].criteria)
        variants = set()
        for ex in data.examples.values():
            c = cset.get(ex.criterion)
            assert criterion_words(c) in ex.instruction, (name, ex.uid)
            assert c.definition.strip() in ex.instruction
            others = [o for o in cset.criteria if o.name != c.name]
            assert not any(o.definition.strip() in ex.instruction for o in others)
            variants.add(ex.variant)
            if data.splits[ex.group] == "test":
                assert ex.variant == 0  # the generic instruction, as served
        assert len(variants) == len(TASKS[name].paraphrases) >= 4, name


def test_context_fields_follow_the_criterion(built: dict[str, object]) -> None:
    from metric.data import TaskData

    data = built["summarization"]
    assert isinstance(data, TaskData)
    fluency = next(e for e in data.examples.values() if e.criterion == "fluency")
    coherence = next(e for e in data.examples.values() if e.criterion == "coherence")
    assert fluency.context == ()  # fluency looks at the summary only
    assert [f.label for f in coherence.context] == ["News article"]
    dialogue = built["dialogue"]
    assert isinstance(dialogue, TaskData)
    ex = next(e for e in dialogue.examples.values() if e.criterion == "overall")
    assert [(f.label, f.keep_end) for f in ex.context] == [
        ("Conversation so far", True),
        ("Fact the speaker may use", False),
    ]


def test_rating_pairs_prefer_the_better_rated(built: dict[str, object]) -> None:
    from metric.data import TaskData

    data = built["summarization"]
    assert isinstance(data, TaskData)
    exs = data.split_examples("train")[:800]
    pairs = rating_pairs(exs, 0.15)
    assert pairs
    for p in pairs:
        good, bad = data.examples[p.first], data.examples[p.second]
        assert good.group == bad.group and good.criterion == bad.criterion == p.criterion
        assert good.instruction == bad.instruction and good.context == bad.context
        assert good.norm is not None and bad.norm is not None
        assert good.norm - bad.norm >= 0.15 - 1e-9
        assert p.label == "first"


def test_autoj_pairs_carry_the_human_label(built: dict[str, object]) -> None:
    from metric.data import TaskData

    data = built["preference"]
    assert isinstance(data, TaskData)
    assert len(data.pairs) == 1392
    assert {p.label for p in data.pairs} == {"first", "second", "tie"}
    assert all(e.rating is None for e in data.examples.values())


def test_caps_take_whole_sources(built: dict[str, object]) -> None:
    from metric.data import TaskData

    data = built["dialogue"]
    assert isinstance(data, TaskData)
    pool = data.split_examples("test")
    chosen = select(pool, 20, None, 0, purpose="test")
    per_key: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in chosen:
        per_key[(e.set, e.criterion)].append(e.group)
    for groups in per_key.values():
        assert 20 <= len(groups) < 20 + 6
    # test: the same sources for every criterion
    assert len({frozenset(g) for g in per_key.values()}) == 1
    sizes = {
        g: sum(1 for e in pool if e.group == g and e.criterion == "overall")
        for g in per_key[("topical_chat", "overall")]
    }
    assert all(n == 6 for n in sizes.values())
    assert Caps() == Caps(None, None, None)  # all of the data unless capped
    assert len(select(pool, None, None, 0, purpose="test")) == len(pool)


def test_layout_fits_and_keeps_the_right_ends() -> None:
    from metric.encoder import load_tokenizer

    tok = load_tokenizer(need_base())
    history = " ".join(f"turn{i} says something about the weather ." for i in range(200))
    article = " ".join(f"sentence{i} of the news ." for i in range(300))
    first, second = pair_texts(
        tok,
        "Rate the reply for coherence.",
        [Field("Conversation so far", history, keep_end=True), Field("News", article)],
        "a short reply .",
        128,
    )
    n = len(tok(first, second)["input_ids"])
    assert 100 < n <= 128
    assert "turn199" in first and "turn0 " not in first
    assert "sentence0 " in first and "sentence299" not in first
    assert second == "a short reply ."
    assert first.startswith("Rate the reply for coherence.")
    short = pair_texts(tok, "Rate it.", [Field("Act", "inform(name=x)")], "X is here .", 128)
    assert short == ("Rate it.\nAct: inform(name=x)", "X is here .")
    # the judged text stays whole when it fits beside a quarter of the room for the context
    summary = " ".join(f"point{i} ." for i in range(20))
    first, second = pair_texts(tok, "Rate it.", [Field("News", article)], summary, 128)
    assert second == summary and "sentence0 " in first
    assert len(tok(first, second)["input_ids"]) <= 128
    # a judged text too long for that keeps its beginning and leaves the context its quarter
    essay = " ".join(f"word{i}" for i in range(400))
    first, second = pair_texts(tok, "Rate it.", [Field("News", article)], essay, 128)
    assert second.startswith("word0 ") and second.endswith("…") and "word399" not in second
    context_tokens = len(tok(first.split("News: ", 1)[1], add_special_tokens=False)["input_ids"])
    assert 20 <= context_tokens <= 40


def test_share_is_water_filling() -> None:
    assert share(100, [10, 200, 200]) == [10, 45, 45]
    assert share(10, [0, 50]) == [0, 10]
    assert sum(share(7, [5, 5, 5])) == 7


def test_user_task_file(tmp_path: Path) -> None:
    rows = [
        {"doc": "p1", "product": "kettle", "text": f"review {i}", "scores": {"overall": i}}
        for i in range(1, 5)
    ]
    (tmp_path / "reviews.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "crit.toml").write_text(
        'name = "reviews"\ntask = "Judge a product review."\ntarget = "review"\n'
        '[fields]\nproduct = "Product"\nreview = "Review"\n'
        '[[criteria]]\nname = "overall"\ndefinition = "How useful the review is."\n'
    )
    (tmp_path / "task.toml").write_text(
        f'name = "reviews"\ncriteria = "{tmp_path / "crit.toml"}"\n'
        'paraphrases = ["Rate this product review on {name}. {definition}"]\n'
        '[[sets]]\nname = "reviews"\npath = "reviews.jsonl"\ndoc_key = "doc"\n'
        'fields = { product = "product", review = "text" }\n'
    )
    spec = task_file(tmp_path / "task.toml")
    assert spec.paraphrases[0] == GENERIC
    data = build_task(spec)
    assert len(data.examples) == 4
    ex = next(iter(data.examples.values()))
    assert "overall" in ex.instruction and ex.context[0].text == "kettle"
    assert len(rating_pairs(list(data.examples.values()), 0.15)) == 6
