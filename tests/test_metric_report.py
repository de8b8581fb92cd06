"""Merging runs of other seeds into one table (``python -m metric merge``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from metric.__main__ import main
from metric.report import merge_results, results_markdown


def _row(setting: str, seed: int | None, spearman: float, base: str = "minilm") -> dict[str, Any]:
    return {
        "setting": setting,
        "task": "data2text",
        "set": "sfres",
        "criterion": "informativeness",
        "level": "text",
        "spearman": spearman,
        "kendall": spearman,
        "pair_accuracy": 0.5,
        "n": 300,
        "n_pairs": 0,
        "note": "",
        "base": base if seed is not None else "",
        "seed": seed,
    }


def _run(seed: int, single: float, tasks: Any = None) -> dict[str, Any]:
    return {
        "rows": [
            _row("untrained", seed, 0.0),
            _row("single", seed, single),
            _row("rouge_l", None, 0.1),
        ],
        "junk": [
            {
                "base": "minilm",
                "seed": seed,
                "setting": "multi",
                "auc": 0.6 + seed / 10,
                "auc_by_kind": {"loop": 0.9},
                "mean_by_kind": {"loop": 1.0},
            }
        ],
        "train": {f"minilm:{seed}:single:data2text": {"steps": 3}},
        "timings": {"total": 10.0},
        "config": {
            "tasks": tasks or {"data2text": ["sfres"]},
            "split_seed": 0,
            "caps": {"train_per_criterion": None},
            "test_fraction": 0.3,
            "seeds": [seed],
        },
        "data": {},
        "llm_notes": {},
        "llm_errors": [],
    }


def test_merged_seeds_give_mean_and_spread_and_the_baselines_once() -> None:
    merged = merge_results([_run(0, 0.2), _run(1, 0.4), _run(2, 0.3)])
    assert merged["config"]["seeds"] == [0, 1, 2]
    assert sum(1 for r in merged["rows"] if r["setting"] == "rouge_l") == 1
    assert len(merged["junk"]) == 3 and len(merged["train"]) == 3
    md = results_markdown(merged)
    # single: mean 0.300, sample standard deviation 0.100; junk AUC 0.7 ± 0.1
    assert "| sfres | 300 texts | 0.300 ± 0.100 | 0.000 ± 0.000 | 0.100 |" in md
    assert "| minilm | multi | 0.700 ± 0.100 |" in md


def test_merge_refuses_other_data_or_a_seed_with_other_numbers() -> None:
    with pytest.raises(ValueError, match="part 2 differs from part 1 in tasks"):
        merge_results([_run(0, 0.2), _run(1, 0.4, tasks={"dialogue": ["topical_chat"]})])
    with pytest.raises(ValueError, match=r"part 2 repeats .* with other numbers"):
        merge_results([_run(0, 0.2), _run(0, 0.4)])


def test_merge_keeps_a_repeated_result_once_and_baselines_of_a_later_part() -> None:
    """A run made only for the LLM judge repeats seed 0's untrained base: kept once; its LLM
    rows (seed-free, absent from the first part) are kept."""
    llm_only = _run(0, 0.2)
    llm_only["rows"] = [_row("untrained", 0, 0.0), _row("llm", None, 0.25)]
    merged = merge_results([_run(0, 0.2), _run(1, 0.4), llm_only])
    settings = [(r["setting"], r["seed"]) for r in merged["rows"]]
    assert settings.count(("untrained", 0)) == 1 and ("llm", None) in settings
    assert sum(1 for j in merged["junk"] if j["seed"] == 0) == 1
    assert "| 0.100 | 0.250 |" in results_markdown(merged)


def test_merge_command_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in (0, 1):
        (tmp_path / f"s{seed}").mkdir()
        (tmp_path / f"s{seed}" / "results.json").write_text(json.dumps(_run(seed, 0.2 + seed)))
    assert main(["merge", str(tmp_path / "all"), str(tmp_path / "s0"), str(tmp_path / "s1")]) == 0
    assert "0.700 ± 0.707" in (tmp_path / "all" / "results.md").read_text()
    assert main(["merge", str(tmp_path / "bad"), str(tmp_path / "s0"), str(tmp_path / "none")]) == 2
    assert f"cannot read {tmp_path / 'none' / 'results.json'}" in capsys.readouterr().err
