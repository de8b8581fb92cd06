"""metric/encoder.py, metric/decoder.py, metric/trunk.py: a head reading the stored output of
the frozen layers gives the whole model's score; the decoder's segments tokenize as the whole
prompt; a store saved to disk is reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metric.data import TASKS, Example, build_task
from metric.features import Features
from metric.trunk import trunk
from tests.metric_helpers import need_base, need_decoder, need_judge_data


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    need_judge_data()
    out: list[Example] = []
    sf = build_task(TASKS["data2text"], seed=0)
    out += list(sf.examples.values())[:6]
    pref = build_task(TASKS["preference"], seed=0)
    short = sorted(pref.examples.values(), key=lambda e: len(e.target) + len(e.context[0].text))
    out += short[:4]
    return out


def _whole_model_logits(base: object, head: torch.nn.Module, exs: list[Example]) -> list[float]:
    model = head.into(base.model)  # type: ignore[operator, attr-defined]
    out = []
    with torch.no_grad():
        for e in exs:
            if base.kind == "decoder":  # type: ignore[attr-defined]
                text = "".join(base.segments(e))  # type: ignore[attr-defined]
                enc = base.tokenizer(text, add_special_tokens=False, return_tensors="pt")  # type: ignore[attr-defined]
            else:
                a, b = base.texts(e)  # type: ignore[attr-defined]
                enc = base.tokenizer(a, b, return_tensors="pt")  # type: ignore[attr-defined]
            out.append(float(model(**enc).logits.squeeze()))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("layers", [1, 2])
def test_encoder_head_equals_the_whole_model(examples: list[Example], layers: int) -> None:
    need_base()
    from metric.encoder import EncoderBase

    base = EncoderBase(max_len=128, train_layers=layers)
    inputs = base.inputs(examples)
    feats = trunk(base, {"t": inputs}, [base.frozen], cache_dir=None, log=lambda _: None)
    head = base.head(7).eval()
    with torch.no_grad():
        got = head([inputs.chains[e.uid] for e in examples], feats[base.frozen]).tolist()
    want = _whole_model_logits(base, head, examples)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 2e-3
    assert len({round(v, 4) for v in want}) > 1


@pytest.mark.slow
@pytest.mark.parametrize("layers", [1, 2])
def test_decoder_head_equals_the_whole_model(examples: list[Example], layers: int) -> None:
    need_decoder()
    from metric.decoder import DecoderBase

    base = DecoderBase(max_len=512, train_layers=layers)
    inputs = base.inputs(examples)
    # the same context is one node: 6 SF texts on 3 criteria share a handful of roots
    assert len({c[0] for c in inputs.chains.values()}) < len(examples)
    feats = trunk(base, {"t": inputs}, [base.frozen], cache_dir=None, log=lambda _: None)
    head = base.head(7).eval()
    with torch.no_grad():
        got = head([inputs.chains[e.uid] for e in examples], feats[base.frozen]).tolist()
    want = _whole_model_logits(base, head, examples)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 5e-3
    assert len({round(v, 4) for v in want}) > 1


def test_decoder_segments_tokenize_as_the_whole_prompt(examples: list[Example]) -> None:
    need_decoder()
    from metric.decoder import DecoderBase

    base = DecoderBase(max_len=256)
    for e in examples:
        segs = base.segments(e)
        assert segs[0].startswith(base.frame.before) and segs[2].endswith(base.frame.after)
        assert e.instruction in segs[2] and segs[1].startswith(f"{e.target_label}: ")
        whole = base.tokenizer("".join(segs), add_special_tokens=False)["input_ids"]
        parts = [i for s in segs for i in base.tokenizer(s, add_special_tokens=False)["input_ids"]]
        assert whole == parts
        assert len(whole) <= 256 + 4


@pytest.mark.slow
def test_stores_are_saved_and_reused(examples: list[Example], tmp_path: Path) -> None:
    need_base()
    from metric.encoder import EncoderBase

    base = EncoderBase(max_len=64)
    inputs = base.inputs(examples)
    said: list[str] = []
    first = trunk(base, {"t": inputs}, [5, 4], cache_dir=tmp_path, log=said.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm-4of6-t.pt", "minilm-5of6-t.pt"]
    assert any("computing" in s for s in said)
    said.clear()
    again = trunk(base, {"t": inputs}, [5, 4], cache_dir=tmp_path, log=said.append)
    assert said == []  # nothing computed the second time
    for n in (5, 4):
        for key in inputs.nodes:
            assert torch.equal(first[n].get(key), again[n].get(key))
    assert isinstance(again[5], Features)
    # a store of other weights or depth is not taken for this one
    more = base.inputs(examples + examples[:0])
    trunk(base, {"t": more}, [3], cache_dir=tmp_path, log=said.append)
    assert any("computing" in s for s in said)


class _StopsAfterOneBatch:
    """The encoder base, stopped (as by Ctrl-C) once its first small batch is done."""

    def __init__(self, base: object) -> None:
        self.base = base
        self.name, self.folder = base.name, base.folder  # type: ignore[attr-defined]
        self.dim, self.layers = base.dim, base.layers  # type: ignore[attr-defined]

    def compute(self, inputs: object, stores: object, *, progress: object = None) -> None:
        def stop(n: int) -> None:
            progress(n)  # type: ignore[operator]
            raise KeyboardInterrupt

        self.base.compute(inputs, stores, batch_tokens=128, progress=stop)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_stopped_computation_keeps_what_it_computed(
    examples: list[Example], tmp_path: Path
) -> None:
    need_base()
    from metric.encoder import EncoderBase

    base = EncoderBase(max_len=64)
    inputs = base.inputs(examples)
    with pytest.raises(KeyboardInterrupt):
        trunk(
            _StopsAfterOneBatch(base),  # type: ignore[arg-type]
            {"t": inputs},
            [5],
            cache_dir=tmp_path,
            log=lambda _: None,
            save_every=0,
        )
    said: list[str] = []
    resumed = trunk(base, {"t": inputs}, [5], cache_dir=tmp_path, log=said.append)
    computing = next(s for s in said if "computing" in s)
    assert "(the rest from an earlier run)" in computing
    assert f"for {len(inputs.nodes) - 2:,} segments" in computing  # one batch of 2 was kept
    fresh = trunk(base, {"t": inputs}, [5], cache_dir=None, log=lambda _: None)
    for key in inputs.nodes:  # the same numbers, up to batching's rounding in float16
        a, b = resumed[5].get(key).float(), fresh[5].get(key).float()
        assert torch.allclose(a, b, atol=1e-2, rtol=1e-2)
