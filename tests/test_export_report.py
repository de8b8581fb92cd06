"""Export (Parquet, datasets folders, card, Hub push errors) and the run report, on a run
folder holding real seed texts (Self-Instruct seed tasks) as samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataset.export import export_run
from dataset.quality import QualityGate
from dataset.report import write_report
from dataset.stats import diversity, leading_word, outcome
from state.records import Sample

from .conftest import REPO, free_port
from .runfolders import CRITERIA, make_sample, self_instruct_pairs, write_run


@pytest.fixture
def run_dir(shared_data: Path, tmp_path: Path) -> Path:
    """175 real pairs: ~1/5 under the judge's bar, two planted for the gates."""
    pairs = self_instruct_pairs(shared_data)
    samples = [
        make_sample(
            i,
            instruction,
            response,
            mean=[2.2, 3.5, 4.0, 4.5, 4.8][i % 5],
            reference_instruction=pairs[(i + 1) % len(pairs)][0],
        )
        for i, (instruction, response) in enumerate(pairs)
    ]
    alpaca = json.loads(
        (shared_data / "benchmarks" / "alpaca_eval_instructions.jsonl").open().readline()
    )["instruction"]
    samples.append(make_sample(900, alpaca.lower(), "An answer.", mean=4.6))
    samples.append(make_sample(901, pairs[3][0] + " Be brief.", "Short.", mean=4.6))
    gate = QualityGate(
        decontaminate=[str(shared_data / "benchmarks" / "alpaca_eval_instructions.jsonl")]
    )
    gate.load([], [])
    screened = gate.screen(samples)
    accepted = [s for s in screened if s.status == "accepted"]
    rejected = [s for s in screened if s.status != "accepted"]
    return write_run(tmp_path / "run", accepted, rejected, quality=gate.summary())


EXPECTED_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("reference_id", pa.string()),
        ("feature", pa.string()),
        ("instruction", pa.string()),
        ("response", pa.string()),
        ("first_response", pa.string()),
        ("judge_mean", pa.float64()),
        ("judge_scores", pa.struct([(c, pa.float64()) for c in sorted(CRITERIA)])),
        ("revisions", pa.int32()),
    ]
)
MESSAGES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        (
            "messages",
            pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
        ),
    ]
)


def test_export_round_trip(run_dir: Path) -> None:
    import datasets

    accepted = [s for s in _read(run_dir / "samples.jsonl")]
    assert 130 < len(accepted) < 150
    out = export_run(run_dir)
    assert out == run_dir / "export"

    table = pq.read_table(out / "data" / "instruction_response" / "train-00000-of-00001.parquet")
    assert table.schema.equals(EXPECTED_SCHEMA), table.schema
    rows = table.to_pylist()
    assert [r["sample_id"] for r in rows] == [s.sample_id for s in accepted]
    for row, s in zip(rows, accepted, strict=True):
        assert s.judgement is not None
        assert row["instruction"] == s.instruction and row["response"] == s.response
        assert row["first_response"] == s.first_response
        assert row["judge_mean"] == pytest.approx(s.judgement.mean)
        assert row["judge_scores"] == s.judgement.scores
    msgs = pq.read_table(out / "data" / "messages" / "train-00000-of-00001.parquet")
    assert msgs.schema.equals(MESSAGES_SCHEMA), msgs.schema

    ir = datasets.load_from_disk(str(out / "datasets" / "instruction_response"))
    chat = datasets.load_from_disk(str(out / "datasets" / "messages"))
    assert ir.num_rows == chat.num_rows == len(accepted)
    assert ir.features["judge_scores"] == {c: datasets.Value("float64") for c in sorted(CRITERIA)}
    assert ir[0] == rows[0]
    assert chat[5]["messages"] == [
        {"role": "user", "content": accepted[5].instruction},
        {"role": "assistant", "content": accepted[5].response},
    ]
    # The export folder is also a dataset repository: its card declares both configs.
    cache = str(run_dir.parent / "hf-cache")
    by_config = datasets.load_dataset(str(out), "messages", split="train", cache_dir=cache)
    assert by_config.num_rows == len(accepted)
    default = datasets.load_dataset(str(out), split="train", cache_dir=cache)
    assert default.column_names == EXPECTED_SCHEMA.names
    # Another run's export folder, also named "export", is not served from the cache
    # entry of the first (datasets keys local folders by name + card YAML).
    other = write_run(run_dir.parent / "other", accepted[:7], [])
    again = datasets.load_dataset(
        str(export_run(other)), "messages", split="train", cache_dir=cache
    )
    assert again.num_rows == 7

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\n")
    assert "config_name: messages" in card and "path: data/messages/*.parquet" in card
    assert f"{len(accepted)} instruction/response pairs" in card
    assert "Self-Instruct seed tasks: Apache-2.0" in card
    assert "| alpaca_eval_instructions | 805 | 1 |" in card
    assert "| near-duplicate of a sample | 1 |" in card
    assert "| respond | `abc123` |" in card
    assert "Histogram of the mean score" in card


def _read(path: Path) -> list[Sample]:
    from dataset.ledger import Ledger

    return list(Ledger(path).read(Sample))


def _export_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dataset.export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_push_to_hub_needs_a_token_and_says_why_it_failed(run_dir: Path, tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    base["HF_HOME"] = str(tmp_path / "hf-home")  # no saved login
    # No push unless asked: a plain export never touches the Hub.
    plain = _export_cli(str(run_dir), env=base)
    assert plain.returncode == 0, plain.stderr
    assert "pushed" not in plain.stderr

    no_token = _export_cli(str(run_dir), "--push-to-hub", "someone/refed-test", env=base)
    assert no_token.returncode == 1
    assert "no Hugging Face token: set HF_TOKEN" in no_token.stderr
    assert (run_dir / "export" / "README.md").exists()  # the export itself was written

    # A token but no reachable Hub (a closed port on this machine): a clear message.
    closed = f"http://127.0.0.1:{free_port()}"
    offline = _export_cli(
        str(run_dir),
        "--push-to-hub",
        "someone/refed-test",
        env={**base, "HF_TOKEN": "hf_test_not_a_real_token", "HF_ENDPOINT": closed},
    )
    assert offline.returncode == 1
    assert "could not push to the Hugging Face Hub" in offline.stderr
    assert "can be pushed later" in offline.stderr
    assert "Traceback" not in offline.stderr


def test_report(run_dir: Path) -> None:
    out = write_report(run_dir)
    for name in ("outcomes.png", "judge_scores.png", "lengths.png", "words.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    page = (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    accepted = report["accepted"]
    assert report["outcomes"]["accepted"] == accepted
    assert report["outcomes"]["judge: under the bar"] == 35  # every 5th of 175 at mean ~2.2
    assert report["outcomes"]["benchmark contamination (alpaca_eval_instructions)"] == 1
    assert report["outcomes"]["near-duplicate of a sample"] == 1
    assert f"**{accepted} accepted**" in page
    assert "![judge scores](judge_scores.png)" in page
    assert "distinct-1" in page and "leading words" in page
    div = report["diversity"]
    assert 0 < div["distinct_1"] < div["distinct_2"] <= 1
    assert dict(div["first_words"])["write"] >= 5
    assert report["scores_accepted"]["mean"]["min"] >= 3.0
    assert report["scores_judge_rejected"]["mean"]["max"] < 3.0


def test_diversity_by_hand() -> None:
    d = diversity(["Write a poem.", "Write a song.", "Please write a poem!"])
    # unigrams: write a poem | write a song | please write a poem -> 10 tokens,
    # distinct {write, a, poem, song, please} = 5
    assert d["distinct_1"] == pytest.approx(5 / 10)
    # bigrams: (write a)(a poem) | (write a)(a song) | (please write)(write a)(a poem)
    # -> 7, distinct {write a, a poem, a song, please write} = 4
    assert d["distinct_2"] == pytest.approx(4 / 7)
    assert d["first_words"][0] == ("write", 2)
    assert d["leading_words"][0] == ("write", 3)
    assert d["length_tokens"]["median"] == 3
    assert leading_word("Can you please explain gravity?") == "explain"
    assert leading_word("How do tides work?") == "how?"


def test_outcome_categories() -> None:
    s = make_sample(0, "x", "y", mean=2.0)
    assert outcome(s) == "judge: under the bar"
    f = make_sample(1, "x", "y", status="failed", reason="LLM error: HTTP 500 after 4 retries")
    assert outcome(f) == "failed: LLM error"
