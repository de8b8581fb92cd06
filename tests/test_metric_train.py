"""metric/: a tiny training run beats the untrained encoder; the saved folder loads and scores;
the metric-judge node scores through it (scripted context, no LLM); vLLM serves it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from langgraph.runtime import Runtime

from metric.evaluate import pointwise_rows
from metric.text import sigmoid
from state.context import RefedContext
from state.graph_state import CandidateState
from state.records import NewInstruction, Reference
from tests.conftest import free_port
from tests.metric_helpers import Tiny, need_base, need_judge_data, tiny_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    need_base()
    need_judge_data()
    return tiny_run(tmp_path_factory.mktemp("metric"))


def _mean_spearman(tiny: Tiny, logits: dict[str, float]) -> float:
    rows = pointwise_rows("x", tiny.test, {k: sigmoid(v) for k, v in logits.items()})
    values = [r.spearman for r in rows if not math.isnan(r.spearman)]
    return sum(values) / len(values)


@pytest.mark.slow
def test_tiny_training_beats_the_untrained_encoder(tiny: Tiny) -> None:
    trained = _mean_spearman(tiny, tiny.trained)
    untrained = _mean_spearman(tiny, tiny.untrained)
    assert trained > untrained + 0.05, (trained, untrained)
    assert trained > 0.1, trained


@pytest.mark.slow
def test_saved_folder_is_a_standard_classifier_and_scores(tiny: Tiny) -> None:
    from scipy.stats import spearmanr
    from transformers import AutoModelForSequenceClassification

    from metric.serving import InProcessScorer, MetricJudge
    from metric.train import META_FILE

    assert (tiny.folder / "model.safetensors").is_file()
    assert (tiny.folder / "README.md").is_file() and (tiny.folder / META_FILE).is_file()
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny.folder))
    assert model.config.num_labels == 1 and model.config.architectures == [
        "BertForSequenceClassification"
    ]
    judge = MetricJudge.open(str(tiny.folder))
    assert isinstance(judge.scorer, InProcessScorer)
    assert judge.backend.startswith("in-process transformers")
    assert judge.max_len == 128
    # the saved float32 model agrees with the cached bfloat16 path it was trained through
    sample = [e for e in tiny.test if e.criterion == "naturalness"][:40]
    from metric.text import pair_texts

    pairs = [pair_texts(judge.tokenizer, e.instruction, e.context, e.target, 128) for e in sample]
    probs = judge.scorer.score(pairs)
    assert all(0.0 < p < 1.0 for p in probs)
    cached = [tiny.trunk_logits[e.uid] for e in sample]
    assert spearmanr(probs, cached).statistic > 0.97
    assert max(abs(p - sigmoid(c)) for p, c in zip(probs, cached, strict=True)) < 0.05


def _state(response: str, first: str | None = None) -> CandidateState:
    ref = Reference.from_pair(
        "Write one sentence saying a restaurant is cheap.",
        "Tasty Bites is a cheap restaurant.",
        id="ref-1",
    )
    new = NewInstruction(index=0, text="Say that a hotel allows dogs.", feature="data")
    return CandidateState(
        reference=ref, instruction=new, response=response, first_response=first or response
    )


@pytest.mark.slow
async def test_metric_judge_node_scores_through_the_encoder(tiny: Tiny) -> None:
    from nodes.metric_judge import metric_judge

    ctx = RefedContext(
        judge_backend="encoder",
        judge_encoder=str(tiny.folder),
        judge_bar=1.0,
        base_url="http://127.0.0.1:9/v1",  # never called: no LLM in this path
        client_key="no-such-client",
    )
    update = await metric_judge(_state("The hotel allows dogs."), Runtime(context=ctx))
    assert "error" not in update, update
    j = update["judgement"]
    assert j.method == "encoder" and j.criteria == "instruction"
    assert set(j.scores) == {"helpfulness", "instruction_following", "correctness", "clarity"}
    assert all(1.0 <= v <= 5.0 for v in j.scores.values())
    assert j.mean == pytest.approx(sum(j.scores.values()) / 4)
    assert j.passed is True and "in-process transformers" in j.rationale
    assert "usage" not in update or update["usage"].calls == 0

    strict = RefedContext(judge_backend="encoder", judge_encoder=str(tiny.folder), judge_bar=5.1)
    update = await metric_judge(_state("The hotel allows dogs."), Runtime(context=strict))
    assert update["judgement"].passed is False


@pytest.mark.slow
async def test_metric_judge_node_pairwise_filter_with_the_encoder(tiny: Tiny) -> None:
    from nodes.metric_judge import metric_judge

    ctx = RefedContext(
        judge_backend="encoder",
        judge_encoder=str(tiny.folder),
        judge_bar=0.0,
        pairwise_filter=True,
    )
    state = _state("The hotel allows dogs.", first="hotel dogs dogs the the")
    update = await metric_judge(state, Runtime(context=ctx))
    verdict = update["judgement"].pairwise
    assert verdict is not None and verdict.rationale.startswith("metric encoder")
    assert update["judgement"].passed is (verdict.winner == "second")


@pytest.mark.slow
async def test_metric_judge_node_candidates_at_once(tiny: Tiny) -> None:
    """The fan-out judges several candidates together: the model loads once, and scoring
    from several threads neither fails nor raises through the graph."""
    import asyncio

    from nodes.metric_judge import metric_judge

    target = f"{tiny.folder}/."  # a new cache key: the first calls race to load it
    ctx = RefedContext(judge_backend="encoder", judge_encoder=target, judge_bar=1.0)
    states = [_state(f"The hotel allows dogs, {i} of them.") for i in range(6)]
    updates = await asyncio.gather(*(metric_judge(s, Runtime(context=ctx)) for s in states))
    assert all("error" not in u for u in updates), updates
    assert len({u["judgement"].mean for u in updates}) > 1


async def test_metric_judge_node_reports_a_missing_model(tmp_path: Path) -> None:
    from nodes.metric_judge import metric_judge

    ctx = RefedContext(judge_backend="encoder", judge_encoder=str(tmp_path / "nothing"))
    update = await metric_judge(_state("x"), Runtime(context=ctx))
    assert update["error"].startswith("metric_judge: encoder")
    assert "judgement" not in update


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_the_folder_with_the_same_scores(tiny: Tiny, tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    import prompts
    from metric.serving import MetricJudge, VLLMScorer, encoder_server

    cset = prompts.criteria("data2text")
    records = [
        {"act": "inform(name='tasty bites';price_range='cheap')", "utterance": u}
        for u in ("Tasty Bites is a cheap restaurant.", "cheap cheap the is tasty", "Hello.")
    ]
    local = MetricJudge.open(str(tiny.folder))
    with encoder_server(tiny.folder, free_port(), log_file=tmp_path / "vllm.log") as url:
        served = MetricJudge(VLLMScorer(url), local.tokenizer, local.max_len)
        assert served.backend.startswith("vLLM /score")
        remote = served.score_records(cset, records)
    mine = local.score_records(cset, records)
    for a, b in zip(mine, remote, strict=True):
        for name in a.scores:
            assert a.scores[name].score == pytest.approx(b.scores[name].score, abs=0.02)
