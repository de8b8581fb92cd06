"""``python -m dataset.export RUN_DIR``: a run's accepted samples as a Hugging Face dataset.

Writes, under ``RUN_DIR/export`` (or ``--out``):

    README.md                          dataset card (YAML header: configs, licence, size)
    data/instruction_response/train-00000-of-00001.parquet
    data/messages/train-00000-of-00001.parquet
    datasets/instruction_response/     datasets.save_to_disk folders:
    datasets/messages/                 datasets.load_from_disk(...) opens them

Two forms of the same rows (accepted samples, in ledger order):

- ``instruction_response`` (the ``default`` config): ``sample_id``, ``reference_id``,
  ``feature``, ``instruction``, ``response`` (the refined one), ``first_response``,
  ``judge_mean``, ``judge_scores`` (one float per criterion), ``revisions``;
- ``messages``: ``sample_id`` and ``messages`` (a user turn, then the assistant's),
  the conversational form TRL's ``SFTTrainer`` takes as is.

The export folder is itself a loadable dataset repository
(``datasets.load_dataset("RUN_DIR/export", "messages")``) and is what
``--push-to-hub NAME`` uploads (README.md and data/), only when asked and only with
a token (``HF_TOKEN`` or a saved ``hf auth login``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dataset.stats import RunData, RunFolderError, load_run, outcomes, score_stats
from state.records import Sample

__all__ = ["FORMS", "export_run", "instruction_response_table", "main", "messages_table"]

FORMS = ("instruction_response", "messages")
SHARD = "train-00000-of-00001.parquet"

MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

# Seed sets whose licence we know, by a word in the seed path (a hint for the card only).
KNOWN_SEED_LICENCES = {
    "lima": "LIMA (GAIR): CC BY-NC-SA 4.0, non-commercial use only",
    "self_instruct": "Self-Instruct seed tasks: Apache-2.0",
    "seed_tasks": "Self-Instruct seed tasks: Apache-2.0",
    "alpaca": "Stanford Alpaca data: CC BY-NC 4.0, non-commercial use only",
    "dolly": "databricks-dolly-15k: CC BY-SA 3.0",
    "oasst": "OpenAssistant oasst1: Apache-2.0",
}


class ExportError(RuntimeError):
    pass


def _criteria(samples: list[Sample]) -> list[str]:
    names: set[str] = set()
    for s in samples:
        if s.judgement is not None:
            names.update(s.judgement.scores)
    return sorted(names)


def instruction_response_table(samples: list[Sample]) -> pa.Table:
    criteria = _criteria(samples)
    scores_type = pa.struct([(c, pa.float64()) for c in criteria]) if criteria else pa.null()
    schema = pa.schema(
        [
            ("sample_id", pa.string()),
            ("reference_id", pa.string()),
            ("feature", pa.string()),
            ("instruction", pa.string()),
            ("response", pa.string()),
            ("first_response", pa.string()),
            ("judge_mean", pa.float64()),
            ("judge_scores", scores_type),
            ("revisions", pa.int32()),
        ]
    )
    rows: dict[str, list[Any]] = {name: [] for name in schema.names}
    for s in samples:
        j = s.judgement
        rows["sample_id"].append(s.sample_id)
        rows["reference_id"].append(s.reference_id)
        rows["feature"].append(s.feature)
        rows["instruction"].append(s.instruction)
        rows["response"].append(s.response)
        rows["first_response"].append(s.first_response)
        rows["judge_mean"].append(j.mean if j else None)
        rows["judge_scores"].append(
            {c: j.scores.get(c) for c in criteria} if j and criteria else None
        )
        rows["revisions"].append(s.revisions)
    return pa.table(rows, schema=schema)


def messages_table(samples: list[Sample]) -> pa.Table:
    schema = pa.schema([("sample_id", pa.string()), ("messages", MESSAGES_TYPE)])
    return pa.table(
        {
            "sample_id": [s.sample_id for s in samples],
            "messages": [
                [
                    {"role": "user", "content": s.instruction},
                    {"role": "assistant", "content": s.response or ""},
                ]
                for s in samples
            ],
        },
        schema=schema,
    )


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M" if n < 1_000_000 else "n>1M"


def _seed_licence(seeds: str | None) -> str:
    if not seeds:
        return "unknown"
    low = seeds.lower()
    for key, text in KNOWN_SEED_LICENCES.items():
        if key in low:
            return text
    return "not known to Refed: check the licence of the seed file"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def dataset_card(
    run: RunData,
    licence: str,
    sizes: dict[str, tuple[int, int]] | None = None,
    name: str | None = None,
) -> str:
    """The README.md; ``sizes``: per form, (rows, Parquet bytes) for ``dataset_info``.

    ``dataset_info`` is standard Hub metadata, and it matters locally too: ``datasets``
    keys its cache for a folder by the folder's name and a hash of this YAML, so two
    export folders with identical YAML would share a cache entry."""
    m = run.manifest
    n = len(run.accepted)
    counts = outcomes([*run.accepted, *run.rejected])
    scores = score_stats(run.accepted)
    title = name or f"Refed run {m.run_id}"
    yaml = [
        "---",
        f"license: {licence}",
        "language:",
        "- en",
        "task_categories:",
        "- text-generation",
        "tags:",
        "- synthetic",
        "- instruction-tuning",
        "- refed",
        "size_categories:",
        f"- {_size_category(n)}",
        *_dataset_info(sizes or {}),
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/instruction_response/*.parquet",
        "- config_name: messages",
        "  data_files:",
        "  - split: train",
        "    path: data/messages/*.parquet",
        "---",
        "",
    ]
    judge_model = m.fingerprint.get("judge_model") or m.model
    lines = [
        f"# {title}",
        "",
        f"{n} instruction/response pairs synthesized by Refed with "
        "reference-level feedback (Mehri et al., arXiv 2502.04511): feedback on what makes "
        "each seed pair good is collected once per seed, then guides new instructions, their "
        "answers and a refinement of each answer; a metric judge scores every answer, and "
        "only samples above the bar that also pass the quality gates are here.",
        "",
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset, load_from_disk",
        'ds = load_dataset("parquet", data_files="data/instruction_response/*.parquet")',
        'chat = load_from_disk("datasets/messages")   # column `messages`: TRL SFTTrainer',
        "```",
        "",
        "Configs: `default` (instruction_response: `instruction`, `response`, "
        "`first_response`, judge scores, provenance ids) and `messages` (chat turns).",
        "",
        "## How it was made",
        "",
        *_table(
            [
                ("run id", m.run_id),
                ("generator model", f"`{m.model}`"),
                ("judge model", f"`{judge_model}`"),
                ("feedback mode", str(m.fingerprint.get("feedback_mode"))),
                ("seeds", f"`{m.seeds}`"),
                ("created / updated", f"{m.created} / {m.updated}"),
                ("run status", m.status),
            ],
            ("", ""),
        ),
        "",
        "Settings that shape the output:",
        "",
        *_table(
            [(k, f"`{v}`") for k, v in sorted(m.fingerprint.items())],
            ("setting", "value"),
        ),
        "",
        "Prompt versions (content hashes of Refed's prompt files):",
        "",
        *_table(
            [(k, f"`{v}`") for k, v in sorted(m.prompt_versions.items())], ("prompt", "version")
        ),
        "",
        "## Counts",
        "",
        *_table(
            [(k, str(v)) for k, v in counts.most_common()],
            ("outcome", "samples"),
        ),
        "",
    ]
    q = run.quality
    if q:
        nd = q["near_duplicate"]
        dc = q["decontamination"]
        lines += [
            f"Quality gates: {q['checked']} judge-accepted samples checked, {q['passed']} kept. "
            f"Near-duplicates ({nd['method']}, ROUGE-L > {nd['threshold']} against kept "
            f"instructions and {nd['seeds_indexed']} seeds): {nd['dropped']} dropped. "
            f"Benchmark decontamination ({dc['ngram']}-gram overlap, normalised exact match, "
            f"ROUGE-L > {dc['rouge']} for instructions): {dc['dropped']} dropped.",
            "",
        ]
        if dc["benchmarks"]:
            lines += _table(
                [
                    (name, str(b["prompts"]), str(b["dropped"]), f"`{b['sha256'][:12]}`")
                    for name, b in dc["benchmarks"].items()
                ],
                ("benchmark", "prompts", "samples dropped", "file sha256"),
            )
            lines.append("")
    lo, hi = scores["scale"]
    mean = scores["mean"]
    lines += [
        "## Judge scores (kept samples)",
        "",
        f"Scale {lo}–{hi}; the bar was {m.fingerprint.get('judge_bar')}.",
        "",
        *_table(
            [
                (
                    name,
                    _fmt(st.get("mean")),
                    _fmt(st.get("std")),
                    _fmt(st.get("min")),
                    _fmt(st.get("median")),
                    _fmt(st.get("max")),
                )
                for name, st in [("mean of criteria", mean), *scores["criteria"].items()]
            ],
            ("score", "mean", "std", "min", "median", "max"),
        ),
        "",
        "Histogram of the mean score:",
        "",
        *_table([(k, str(v)) for k, v in mean.get("histogram", {}).items()], ("bin", "samples")),
        "",
        "## Licence",
        "",
        f"Seeds: {_seed_licence(m.seeds)}. Every sample derives from a seed pair (its "
        "`reference_id`, and the seed text in the run's ledgers), so the seed licence "
        "applies to this data; so do the terms of use of the generator and judge models. "
        f"The card's licence field says `{licence}`: set it with `--license` once you know.",
        "",
    ]
    return "\n".join(yaml + lines)


def _dataset_info(sizes: dict[str, tuple[int, int]]) -> list[str]:
    if not sizes:
        return []
    lines = ["dataset_info:"]
    for form, (rows, size) in sizes.items():
        lines += [
            f"- config_name: {'default' if form == 'instruction_response' else form}",
            "  splits:",
            "  - name: train",
            f"    num_bytes: {size}",
            f"    num_examples: {rows}",
            f"  download_size: {size}",
            f"  dataset_size: {size}",
        ]
    return lines


def export_run(run_dir: Path, out: Path | None = None, *, licence: str = "other") -> Path:
    """Write the export folder of ``run_dir``; returns it."""
    import datasets

    run = load_run(run_dir)
    if not run.accepted:
        raise ExportError(f"{run_dir} has no accepted samples to export")
    out = out or run_dir / "export"
    tables = {
        "instruction_response": instruction_response_table(run.accepted),
        "messages": messages_table(run.accepted),
    }
    datasets.disable_progress_bars()
    sizes: dict[str, tuple[int, int]] = {}
    for form, table in tables.items():
        data_dir = out / "data" / form
        if data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True)
        pq.write_table(table, data_dir / SHARD)
        sizes[form] = (table.num_rows, (data_dir / SHARD).stat().st_size)
        ds_dir = out / "datasets" / form
        if ds_dir.exists():
            shutil.rmtree(ds_dir)
        datasets.Dataset(table).save_to_disk(str(ds_dir))
    (out / "README.md").write_text(dataset_card(run, licence, sizes), encoding="utf-8")
    return out


def push_to_hub(folder: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload README.md and data/ to a dataset repository; returns its URL."""
    from huggingface_hub import HfApi, get_token

    token = os.environ.get("HF_TOKEN") or get_token()
    if not token:
        raise ExportError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login`, then retry "
            "(the export folder is written and can be uploaded later)"
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=str(folder),
            allow_patterns=["README.md", "data/**"],
            commit_message="Upload dataset exported by Refed",
        )
    except Exception as exc:  # network, auth, permissions: say which, keep the folder
        raise ExportError(
            f"could not push to the Hugging Face Hub ({type(exc).__name__}: {exc}); "
            f"the export folder {folder} is complete and can be pushed later"
        ) from exc
    return f"https://huggingface.co/datasets/{repo_id}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dataset.export",
        description="Export a run's accepted samples as Parquet and a datasets folder, "
        "with a dataset card.",
    )
    parser.add_argument("run_dir", type=Path, help="The run folder (--out of graph.run).")
    parser.add_argument("--out", type=Path, default=None, help="Default: RUN_DIR/export.")
    parser.add_argument(
        "--license", default="other", help="Licence id for the card (default: other)."
    )
    parser.add_argument(
        "--push-to-hub", metavar="NAME", default=None, help="Also upload to this Hub dataset."
    )
    parser.add_argument("--private", action="store_true", help="With --push-to-hub.")
    args = parser.parse_args(argv)
    try:
        folder = export_run(args.run_dir, args.out, licence=args.license)
    except (RunFolderError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"exported to {folder}", file=sys.stderr)
    if args.push_to_hub:
        try:
            url = push_to_hub(folder, args.push_to_hub, private=args.private)
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"pushed to {url}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
