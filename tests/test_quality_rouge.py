"""ROUGE-L, the pruned index and near-duplicate control: known pairs, brute force, real data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataset.quality import QualityGate
from dataset.quality.minhash import MinHashIndex
from dataset.quality.rouge import RougeIndex, lcs_length, rouge_l
from dataset.quality.text import Vocab, normalise, tokens
from state.records import Reference

from .runfolders import make_sample

# (a, b, LCS, ROUGE-L F1), worked out by hand: F1 = 2 * LCS / (|a| + |b|) in tokens.
KNOWN = [
    # the cat [sat|lay] on the mat: 6 and 6 tokens, LCS "the cat on the mat" = 5 -> 10/12
    ("The cat sat on the mat.", "The cat lay on the mat.", 5, 10 / 12),
    # 6 and 7 tokens, all 6 in order -> 12/13
    ("Write a poem about the sea.", "Write a short poem about the sea!", 6, 12 / 13),
    # explain how photosynthesis works / how does photosynthesis work explain:
    # "how photosynthesis" (2) beats "explain" (1) -> 4/9
    ("Explain how photosynthesis works.", "How does photosynthesis work? Explain.", 2, 4 / 9),
    # repeated tokens: a a b / a b a -> "a b" or "a a" = 2 -> 4/6
    ("a a b", "a b a", 2, 4 / 6),
    # Self-Instruct's threshold: 6 and 8 tokens, 5 in order -> 10/14 = 0.714 (> 0.7)
    (
        "Give three tips for staying healthy.",
        "Give three tips for staying productive at work.",
        5,
        10 / 14,
    ),
    # 3 and 3, LCS 2 -> 4/6 = 0.667 (< 0.7)
    ("List five fruits.", "List five vegetables.", 2, 4 / 6),
    # case and punctuation do not count
    ("HELLO, world!!", "hello world", 2, 1.0),
    ("", "anything", 0, 0.0),
    ("nothing shared", "at all here", 0, 0.0),
]


@pytest.mark.parametrize(("a", "b", "lcs", "f1"), KNOWN)
def test_known_pairs(a: str, b: str, lcs: int, f1: float) -> None:
    ta, tb = tokens(a), tokens(b)
    assert lcs_length(ta, tb) == lcs
    assert rouge_l(ta, tb) == pytest.approx(f1, abs=1e-12)
    assert rouge_l(tb, ta) == pytest.approx(f1, abs=1e-12)


def test_tokens() -> None:
    assert tokens("Don't stop: re-use x_y, 3.5!") == [
        "don",
        "t",
        "stop",
        "re",
        "use",
        "x",
        "y",
        "3",
        "5",
    ]
    assert tokens("Café AU lait") == ["café", "au", "lait"]
    assert tokens("我喜欢猫 ok") == ["我", "喜", "欢", "猫", "ok"]
    assert tokens("ﬁne") == ["fine"]  # NFKC
    assert normalise("  What IS   Atlantis?? ") == "what is atlantis"


def _dp(a: list[int], b: list[int]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=90), st.lists(st.integers(0, 4), max_size=90))
def test_bit_parallel_lcs_equals_dynamic_programming(a: list[int], b: list[int]) -> None:
    assert lcs_length(a, b) == _dp(a, b)


def test_agrees_with_google_rouge_score(shared_data: Path) -> None:
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seeds = [
        json.loads(line)["instruction"]
        for line in (shared_data / "seeds" / "self_instruct_seed_tasks.jsonl").open()
    ]
    alpaca = [
        json.loads(line)["instruction"]
        for line in (shared_data / "benchmarks" / "alpaca_eval_instructions.jsonl").open()
    ]
    rng = random.Random(7)
    pairs = [(rng.choice(seeds), rng.choice(alpaca)) for _ in range(1500)]
    pairs += [(a, b) for a in seeds[:20] for b in seeds[:20]]
    checked = 0
    for a, b in pairs:
        if not (a.isascii() and b.isascii()):  # rouge-score drops non-ASCII letters
            continue
        want = scorer.score(a, b)["rougeL"].fmeasure
        assert rouge_l(tokens(a), tokens(b)) == pytest.approx(want, abs=1e-9), (a, b)
        checked += 1
    assert checked > 1500


def _brute(docs: list[tuple[int, ...]], query: tuple[int, ...], t: float) -> tuple[int, float]:
    best, at = 0.0, -1
    for i, d in enumerate(docs):
        s = rouge_l(query, d)
        if s > best:
            best, at = s, i
    return (at, best) if best > t else (-1, 0.0)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
def test_index_finds_exactly_what_brute_force_finds(threshold: float) -> None:
    """The pruned index (positional filter, reorders, batch and one-by-one LCS) is exact."""
    rng = random.Random(threshold)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "the",
        "a",
        "of",
        "write",
        "explain",
        "list",
        "eps",
        "zeta",
        "eta",
        "theta",
    ]
    vocab = Vocab()
    index = RougeIndex(threshold, vocab, reorder_from=16)  # re-orders at 16, 32, 64 ...
    checked = 0
    for n in range(2600):
        length = rng.choice([1, 3, 6, 10, 15, 25, 70])  # 70 > 62: the one-by-one path
        text = " ".join(rng.choice(words) for _ in range(length))
        ids = vocab.encode(tokens(text))
        match = index.best(ids)
        if n % 7 == 0 or match is not None:  # brute force is slow: check a share
            at, score = _brute(index.docs, ids, threshold)
            checked += 1
            if at < 0:
                assert match is None
            else:
                assert match is not None
                assert match.score == pytest.approx(score, abs=1e-12)
                assert match.index == at  # earliest of the best
        if match is None:
            index.add(ids)
    assert index.reorders >= 1 and checked > 300


def test_index_query_with_unknown_tokens() -> None:
    vocab = Vocab()
    index = RougeIndex(0.5, vocab)
    index.add(vocab.encode(tokens("plant a tree in the garden today")))
    query = vocab.lookup(tokens("plant a tree in the zorblax garden today"))
    assert -1 in query
    match = index.best(query)
    assert match is not None and match.score == pytest.approx(14 / 15)
    assert index.best(vocab.lookup(tokens("zorblax quux"))) is None


def test_minhash_index_reports_exact_rouge_l() -> None:
    pytest.importorskip("datasketch")
    vocab = Vocab()
    index = MinHashIndex(0.7, vocab, jaccard=0.5, num_perm=128)
    kept = [
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
        "Explain the difference between weather and climate to a ten year old.",
        "List the main causes of the French Revolution and rank them by importance.",
    ]
    for text in kept:
        index.add(vocab.encode(tokens(text)))
    near = "Write a short story about a lighthouse keeper who finds a letter in a bottle."
    match = index.best(vocab.encode(tokens(near)))
    assert match is not None and match.index == 0
    assert match.score == pytest.approx(rouge_l(tokens(near), tokens(kept[0])))
    exact = index.best(vocab.encode(tokens(kept[1].upper())))
    assert exact is not None and exact.index == 1 and exact.score == 1.0
    assert index.best(vocab.encode(tokens("Translate good morning into Swahili."))) is None


def _ref(rid: str, instruction: str) -> Reference:
    return Reference(id=rid, instruction=instruction, response="A seed answer.")


@pytest.mark.parametrize("method", ["rouge-l", "minhash"])
def test_gate_drops_known_near_duplicates(method: str) -> None:
    if method == "minhash":
        pytest.importorskip("datasketch")
    gate = QualityGate(near_dup=method, threshold=0.7)
    gate.load([], [_ref("r1", "Give three tips for staying healthy.")])
    texts = [
        "Give three tips for staying productive at work.",  # 0.714 with the seed: drop
        "List five fruits.",  # kept
        "List five vegetables.",  # 0.667 with the one above: kept
        "LIST FIVE FRUITS!!",  # 1.0 with "List five fruits.": drop
        "Write a poem about the sea.",  # kept
        "Write a short poem about the sea!",  # 0.923: drop
        "The cat sat on the mat.",  # kept
        "The cat lay on the mat.",  # 0.833: drop
    ]
    samples = [make_sample(i, t, "An answer.") for i, t in enumerate(texts)]
    out = gate.screen(samples)
    assert [s.sample_id for s in out] == [s.sample_id for s in samples]
    verdict = {s.instruction: s for s in out}
    dropped = {
        texts[0]: ("seed:r1", 10 / 14),
        texts[3]: (samples[1].sample_id, 1.0),
        texts[5]: (samples[4].sample_id, 12 / 13),
        texts[7]: (samples[6].sample_id, 10 / 12),
    }
    for text in texts:
        s = verdict[text]
        if text in dropped:
            match_id, score = dropped[text]
            assert s.status == "rejected"
            assert s.filter is not None and s.filter.name == "near-duplicate"
            assert s.filter.match_id == match_id
            assert s.filter.score == pytest.approx(score, abs=1e-4)
            assert s.reason == f"near-duplicate (rouge-l {score:.2f}) of {match_id}"
            assert s.filter.source == ("seed" if match_id.startswith("seed:") else "sample")
        else:
            assert s.status == "accepted" and s.filter is None, text
    summary = gate.summary()
    assert summary["passed"] == 4 and summary["dropped"]["near-duplicate"] == 4
    assert summary["near_duplicate"]["of_seed"] == 1


def test_gate_decision_is_stable_and_rebuilt_from_ledgers() -> None:
    """A kept sample screened again stays kept; a new gate loaded from the kept samples
    and the seeds decides a newcomer as the first gate would have."""
    refs = [_ref("r1", "Describe the water cycle in simple words.")]
    first = QualityGate()
    first.load([], refs)
    kept = first.screen([make_sample(0, "Name three famous bridges in Europe.", "x")])
    assert kept[0].status == "accepted"
    assert first.screen(kept)[0].status == "accepted"  # a retried write: same decision
    newcomer = make_sample(1, "Name three famous bridges in Asia.", "y")
    again = QualityGate()
    again.load(kept, refs)  # as after a restart: samples.jsonl + seeds
    for gate in (first, again):
        verdict = gate.check(newcomer)
        assert verdict is not None and verdict.filter.match_id == kept[0].sample_id
    seedlike = make_sample(2, "Describe the water cycle in simple terms.", "z")
    verdict = again.check(seedlike)
    assert verdict is not None and verdict.filter.match_id == "seed:r1"


def test_gate_off_and_judge_rejected_untouched() -> None:
    from state.settings import RefedSettings

    assert QualityGate.from_settings(RefedSettings(near_dup="off")) is None
    gate = QualityGate()
    gate.load([], [])
    a = make_sample(0, "Plan a picnic for six people.", "x")
    b = make_sample(1, "Plan a picnic for six people.", "x", mean=1.5)  # judge-rejected
    out = gate.screen([a, b])
    assert out[0].status == "accepted"
    assert out[1].status == "rejected" and out[1].filter is None
    assert out[1].reason is not None and out[1].reason.startswith("judge mean")
