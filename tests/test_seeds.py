"""Seed reading: every format, every field layout, ids, and the errors users see."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import structlog

from dataset.seeds import SUPPORTED_FORMATS, SeedError, iter_seeds, read_seeds
from state.records import content_id

REPO = Path(__file__).resolve().parents[1]
SHARED_SEEDS = REPO / ".." / "shared" / "data" / "seeds"

PAIR = {"instruction": "Name a primary colour.", "response": "Red is a primary colour."}
PAIR_ID = content_id(PAIR["instruction"], PAIR["response"])
OTHER = {"instruction": "What is 2 + 2?", "response": "2 + 2 = 4."}


# ------------------------------------------------------------------------------ helpers


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_dataset(path: Path, rows: list[dict[str, Any]]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def error_of(source: str | Path, **kwargs: Any) -> SeedError:
    with pytest.raises(SeedError) as info:
        read_seeds(source, **kwargs)
    return info.value


def one(source: str | Path) -> tuple[str, str]:
    refs = read_seeds(source)
    assert len(refs) == 1
    return refs[0].instruction, refs[0].response


class Collect:
    """A ``log`` callable that remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, **fields: Any) -> None:
        self.calls.append((event, fields))


# ------------------------------------------------------------------------------ formats


def test_jsonl_reads_pairs_and_ignores_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_text(f"{json.dumps(PAIR)}\n\n   \n{json.dumps(OTHER)}\n", encoding="utf-8")
    refs = read_seeds(path)
    assert [(r.instruction, r.response) for r in refs] == [
        (PAIR["instruction"], PAIR["response"]),
        (OTHER["instruction"], OTHER["response"]),
    ]
    assert [r.source for r in refs] == ["seeds.jsonl#1", "seeds.jsonl#4"]
    assert refs[0].id == PAIR_ID


def test_ndjson_and_upper_case_extension(tmp_path: Path) -> None:
    assert one(write_jsonl(tmp_path / "a.ndjson", [PAIR])) == (
        PAIR["instruction"],
        PAIR["response"],
    )
    assert len(read_seeds(write_jsonl(tmp_path / "b.JSONL", [PAIR]))) == 1


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIR).encode())
    assert read_seeds(path)[0].id == PAIR_ID


def test_json_line_separator_inside_a_string_stays_one_record(tmp_path: Path) -> None:
    path = tmp_path / "sep.jsonl"
    row = {"instruction": "Join\u2028these", "response": "Done."}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert one(path) == ("Join\u2028these", "Done.")


def test_json_list(tmp_path: Path) -> None:
    refs = read_seeds(write_json(tmp_path / "seeds.json", [PAIR, OTHER]))
    assert [r.source for r in refs] == ["seeds.json#0", "seeds.json#1"]


@pytest.mark.parametrize("key", ["data", "records", "rows"])
def test_json_object_with_a_list(tmp_path: Path, key: str) -> None:
    refs = read_seeds(write_json(tmp_path / "seeds.json", {"version": 2, key: [PAIR, OTHER]}))
    assert len(refs) == 2


def test_csv_reads_rows_and_numbers_lines_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    # The first data row spans lines 2-4 (quoted newlines); line 5 is blank.
    path.write_text(
        'instruction,response\n"Write two\nlines.","One.\nTwo."\n\n,missing\n', encoding="utf-8"
    )
    refs = read_seeds(path, on_bad_record="skip", log=Collect())
    assert [(r.instruction, r.response, r.source) for r in refs] == [
        ("Write two\nlines.", "One.\nTwo.", "seeds.csv#2")
    ]
    err = error_of(path)
    assert str(err) == (
        f"{path} line 6: field 'instruction': missing or empty "
        "(record has keys: instruction, response)"
    )


def test_csv_row_with_wrong_field_count(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    path.write_text("instruction,response\nHello,Hi,extra\n", encoding="utf-8")
    assert str(error_of(path)) == f"{path} line 2: has 3 fields but the header has 2"


def test_parquet(tmp_path: Path) -> None:
    refs = read_seeds(write_parquet(tmp_path / "seeds.parquet", [PAIR, OTHER]))
    assert [r.source for r in refs] == ["seeds.parquet#0", "seeds.parquet#1"]
    assert refs[0].id == PAIR_ID


def test_parquet_that_is_not_parquet(tmp_path: Path) -> None:
    path = tmp_path / "seeds.parquet"
    path.write_text("not parquet", encoding="utf-8")
    err = error_of(path)
    assert err.record is None
    assert str(err).startswith(f"{path}: not a readable Parquet file (")


def test_dataset_folder(tmp_path: Path) -> None:
    refs = read_seeds(write_dataset(tmp_path / "ds", [PAIR, OTHER]))
    assert [r.source for r in refs] == ["ds#0", "ds#1"]
    assert refs[1].instruction == OTHER["instruction"]


def test_dataset_dict_folder_uses_train_split(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list([PAIR]), test=datasets.Dataset.from_list([OTHER])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert one(tmp_path / "dd") == (PAIR["instruction"], PAIR["response"])


def test_dataset_dict_without_train_split(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict(test=datasets.Dataset.from_list([PAIR]))
    dd.save_to_disk(str(tmp_path / "dd"))
    path = tmp_path / "dd"
    assert str(error_of(path)) == f"{path}: no 'train' split in this DatasetDict (splits: test)"


def test_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    assert str(error_of(tmp_path)) == (
        f"{tmp_path}: not a folder written by datasets' save_to_disk; "
        f"supported: {SUPPORTED_FORMATS}"
    )


def test_hub_dataset_with_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls: list[tuple[str, str]] = []

    def fake_load(name: str, split: str) -> datasets.Dataset:
        calls.append((name, split))
        return datasets.Dataset.from_list([PAIR, OTHER])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    refs = read_seeds("hf:someone/seeds:train[:2]")
    assert calls == [("someone/seeds", "train[:2]")]
    assert [r.source for r in refs] == [
        "hf:someone/seeds:train[:2]#0",
        "hf:someone/seeds:train[:2]#1",
    ]
    read_seeds("hf:someone/seeds")
    assert calls[-1] == ("someone/seeds", "train")


def test_hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(name: str, split: str) -> None:
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert str(error_of("hf:someone/seeds")) == (
        "hf:someone/seeds: the Hugging Face Hub could not be reached (Couldn't reach "
        "'someone/seeds' on the Hub (LocalEntryNotFoundError)); check the network, or save "
        "the dataset to a local file or folder and read that"
    )


def test_hub_other_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def bad_split(name: str, split: str) -> None:
        raise ValueError(f'Unknown split "{split}"')

    monkeypatch.setattr(datasets, "load_dataset", bad_split)
    assert str(error_of("hf:someone/seeds:dev")) == (
        'hf:someone/seeds:dev: could not load the dataset: ValueError: Unknown split "dev"'
    )


def test_same_content_has_the_same_id_in_every_format(tmp_path: Path) -> None:
    rows = [PAIR, OTHER]
    sources: list[str | Path] = [
        write_jsonl(tmp_path / "s.jsonl", rows),
        write_json(tmp_path / "s.json", rows),
        write_csv(tmp_path / "s.csv", rows),
        write_parquet(tmp_path / "s.parquet", rows),
        write_dataset(tmp_path / "s_ds", rows),
    ]
    expected = [PAIR_ID, content_id(OTHER["instruction"], OTHER["response"])]
    for source in sources:
        assert [r.id for r in read_seeds(source)] == expected, source


# ------------------------------------------------------------------------ field mapping


def test_instruction_response_wins_over_other_layouts(tmp_path: Path) -> None:
    row = {**PAIR, "output": "ignored", "messages": [], "prompt": "ignored"}
    assert one(write_jsonl(tmp_path / "s.jsonl", [row])) == (PAIR["instruction"], PAIR["response"])


def test_fields_are_stripped(tmp_path: Path) -> None:
    row = {"instruction": "  Say hi.\n", "response": "\nHi!  "}
    ref = read_seeds(write_jsonl(tmp_path / "s.jsonl", [row]))[0]
    assert (ref.instruction, ref.response) == ("Say hi.", "Hi!")
    assert ref.id == content_id("Say hi.", "Hi!")


def test_alpaca_with_and_without_input(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a fruit.", "input": "  ", "output": "Apple"},
        {"instruction": "Name a tree.", "output": "Oak"},
    ]
    refs = read_seeds(write_jsonl(tmp_path / "alpaca.jsonl", rows))
    assert [(r.instruction, r.response) for r in refs] == [
        ("Translate to French.\n\nGood morning", "Bonjour"),
        ("Name a fruit.", "Apple"),
        ("Name a tree.", "Oak"),
    ]


def test_lima_single_turn_record(tmp_path: Path) -> None:
    row = {"instruction": "Why is the sky blue?", "input": "", "output": "Rayleigh.", "history": []}
    assert one(write_json(tmp_path / "lima.json", [row])) == ("Why is the sky blue?", "Rayleigh.")


def test_lima_multi_turn_record_is_refused(tmp_path: Path) -> None:
    rows = [
        {"instruction": "Hi", "input": "", "output": "Hello!", "history": []},
        {"instruction": "And?", "input": "", "output": "More.", "history": [["Q", "A"]]},
    ]
    path = write_json(tmp_path / "lima.json", rows)
    err = error_of(path)
    assert str(err) == f"{path} record 1: field 'history': multi-turn records are not supported"
    assert (err.path, err.record, err.field) == (str(path), "record 1", "history")
    assert err.reason == "multi-turn records are not supported"


def test_chat_messages_skip_system_turn(tmp_path: Path) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And Spain?"},
            {"role": "assistant", "content": "Madrid."},
        ]
    }
    assert one(write_jsonl(tmp_path / "chat.jsonl", [row])) == ("Capital of France?", "Paris.")


def test_sharegpt_conversations(tmp_path: Path) -> None:
    row = {
        "id": "conv-1",
        "conversations": [
            {"from": "human", "value": "Tell me a joke."},
            {"from": "gpt", "value": "Why did the chicken cross the road?"},
        ],
    }
    ref = read_seeds(write_jsonl(tmp_path / "sharegpt.jsonl", [row]))[0]
    assert (ref.id, ref.instruction, ref.response) == (
        "conv-1",
        "Tell me a joke.",
        "Why did the chicken cross the road?",
    )


def test_chat_messages_from_a_dataset_folder(tmp_path: Path) -> None:
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}
    assert one(write_dataset(tmp_path / "chat_ds", [row])) == ("Hi", "Hey")


def test_chat_without_an_assistant_reply(tmp_path: Path) -> None:
    row = {"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Q"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    assert str(error_of(path)) == (
        f"{path} line 1: field 'messages': no assistant turn after the first user turn"
    )


def test_chat_with_an_empty_turn(tmp_path: Path) -> None:
    row = {"conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "A"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [row])
    assert str(error_of(path)) == (
        f"{path} line 1: field 'conversations[0].value': missing or empty"
    )


def test_self_instruct_seed_task(tmp_path: Path) -> None:
    rows = [
        {
            "id": "seed_task_1",
            "instruction": "What is the relation between the given pairs?",
            "instances": [{"input": "Night : Day", "output": "They are opposites."}],
            "is_classification": False,
        },
        {
            "id": "seed_task_2",
            "instruction": "Suggest a name for a cat.",
            "instances": [{"input": "", "output": "Biscuit"}, {"input": "", "output": "Miso"}],
        },
    ]
    refs = read_seeds(write_jsonl(tmp_path / "tasks.jsonl", rows))
    assert [(r.id, r.instruction, r.response) for r in refs] == [
        (
            "seed_task_1",
            "What is the relation between the given pairs?\n\nNight : Day",
            "They are opposites.",
        ),
        ("seed_task_2", "Suggest a name for a cat.", "Biscuit"),
    ]


def test_self_instruct_without_instances(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "tasks.jsonl", [{"instruction": "Do it.", "instances": []}])
    assert str(error_of(path)) == (
        f"{path} line 1: field 'instances': expected a non-empty list of {{input, output}}"
    )


def test_prompt_completion(tmp_path: Path) -> None:
    row = {"prompt": "Complete: roses are", "completion": "red."}
    assert one(write_jsonl(tmp_path / "pc.jsonl", [row])) == ("Complete: roses are", "red.")


def test_record_with_no_known_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"question": "Q", "answer": "A"}])
    assert str(error_of(path)) == (
        f"{path} line 1: no known seed fields (record has keys: question, answer); expected "
        "instruction+response, instruction+output (Alpaca/LIMA), messages or conversations "
        "(chat), instruction+instances (Self-Instruct) or prompt+completion"
    )


def test_non_string_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "Count.", "response": 3}])
    assert str(error_of(path)) == f"{path} line 1: field 'response': expected a string, got int"


# ---------------------------------------------------------------------------------- ids


def test_given_ids(tmp_path: Path) -> None:
    rows = [
        {**PAIR, "id": "  ref-a "},
        {**OTHER, "id": 7},
        {"instruction": "X?", "response": "Y.", "reference_id": "ref-c"},
        {"instruction": "Z?", "response": "W.", "id": ""},
        {"instruction": "V?", "response": "U.", "id": True},
    ]
    refs = read_seeds(write_jsonl(tmp_path / "s.jsonl", rows))
    assert [r.id for r in refs] == [
        "ref-a",
        "7",
        "ref-c",
        content_id("Z?", "W."),
        content_id("V?", "U."),
    ]


def test_identical_records_are_read_once(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "s.jsonl",
        [PAIR, OTHER, PAIR, {**PAIR, "response": " Red is a primary colour. "}],
    )
    assert [r.source for r in read_seeds(path)] == ["s.jsonl#1", "s.jsonl#2"]


def test_same_given_id_on_different_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{**PAIR, "id": "a"}, {**OTHER, "id": "a"}])
    assert str(error_of(path)) == (
        f"{path} line 2: field 'id': duplicate id 'a': line 1 has the same id "
        "with different content"
    )
    refs = read_seeds(path, on_bad_record="skip", log=Collect())
    assert [r.instruction for r in refs] == [PAIR["instruction"]]


# ------------------------------------------------------------------------ file problems


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert str(error_of(path)) == f"{path}: file not found"


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("\n  \n" if name.endswith("jsonl") else "", encoding="utf-8")
    err = error_of(path, on_bad_record="skip")
    assert str(err) == f"{path}: no records"
    assert (err.record, err.field, err.reason) == (None, None, "no records")


def test_zero_records(tmp_path: Path) -> None:
    for path in (write_json(tmp_path / "a.json", []), tmp_path / "b.csv"):
        if path.suffix == ".csv":
            path.write_text("instruction,response\n", encoding="utf-8")
        assert str(error_of(path)) == f"{path}: no records"


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    second = json.dumps({"instruction": "Café?", "response": "Oui."}, ensure_ascii=False)
    path.write_bytes(json.dumps(PAIR).encode() + b"\n" + second.encode("latin-1") + b"\n")
    column = second.encode("latin-1").index(b"\xe9") + 1
    err = error_of(path)
    assert str(err) == (
        f"{path} line 2: not valid UTF-8 (byte 0xe9 at column {column}); convert the file to UTF-8"
    )
    assert err.record == "line 2"
    # A mixed-encoding file: only the bad line is a bad record, so skip keeps the rest.
    logged: list[dict[str, object]] = []
    refs = read_seeds(path, on_bad_record="skip", log=lambda event, **kw: logged.append(kw))
    assert [r.instruction for r in refs] == [PAIR["instruction"]]
    assert logged and logged[0]["record"] == "line 2"


def test_malformed_json_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(PAIR) + '\n{"instruction": "Hi" "response": "Yo"}\n')
    err = error_of(path)
    assert str(err) == f"{path} line 2: invalid JSON: Expecting ',' delimiter (column 22)"
    assert (err.record, err.field) == ("line 2", None)


def test_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [PAIR, ["a", "list"]])
    assert str(error_of(path)) == f"{path} line 2: expected a JSON object, got list"


def test_malformed_json_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text('[\n  {"instruction": "Hi",}\n]', encoding="utf-8")
    assert str(error_of(path, on_bad_record="skip")) == (
        f"{path} line 2: invalid JSON: Expecting property name enclosed in double quotes "
        "(column 24)"
    )


def test_json_file_of_the_wrong_shape(tmp_path: Path) -> None:
    path = write_json(tmp_path / "s.json", {"items": [PAIR]})
    assert str(error_of(path)) == (
        f'{path}: expected a JSON list of records, or an object with a list under "data", '
        '"records" or "rows" (found keys: items)'
    )
    path = write_json(tmp_path / "t.json", "just text")
    assert str(error_of(path)) == f"{path}: expected a JSON list of records, got str"
    path = write_json(tmp_path / "u.json", [PAIR, "text"])
    assert str(error_of(path)) == f"{path} record 1: expected a JSON object, got str"


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "seeds.txt"
    path.write_text("hello", encoding="utf-8")
    assert str(error_of(path)) == (
        f"{path}: unsupported seed format '.txt'; supported: .jsonl, .ndjson, .json, .csv, "
        ".parquet, a datasets.save_to_disk folder or hf:NAME[:split]"
    )
    bare = tmp_path / "seeds"
    bare.write_text("hello", encoding="utf-8")
    assert str(error_of(bare)) == f"{bare}: no file extension; supported: {SUPPORTED_FORMATS}"


def test_missing_field_message(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [PAIR, OTHER, {"instruction": "Hi", "foo": 1}])
    err = error_of(path)
    assert str(err) == (
        f"{path} line 3: field 'response': missing or empty (record has keys: instruction, foo)"
    )
    assert (err.path, err.record, err.field) == (str(path), "line 3", "response")
    assert err.reason == "missing or empty (record has keys: instruction, foo)"


def test_relative_path_is_named_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    write_jsonl(tmp_path / "examples" / "bad.jsonl", [PAIR, PAIR, {"instruction": "x", "foo": 1}])
    assert str(error_of("examples/bad.jsonl")) == (
        "examples/bad.jsonl line 3: field 'response': missing or empty "
        "(record has keys: instruction, foo)"
    )


# ------------------------------------------------------------------- modes and limits


def test_fail_mode_checks_every_record_before_returning(tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [
        {"instruction": f"Q{i}?", "response": f"A{i}."} for i in range(50)
    ]
    rows.append({"instruction": "Last?", "response": ""})
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    assert str(error_of(path)) == (
        f"{path} line 51: field 'response': missing or empty (record has keys: instruction, "
        "response)"
    )


def test_skip_mode_logs_and_continues(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps(PAIR),
                "{broken",
                json.dumps({"instruction": "Hi"}),
                json.dumps(OTHER),
            ]
        ),
        encoding="utf-8",
    )
    log = Collect()
    refs = read_seeds(path, on_bad_record="skip", log=log)
    assert [r.source for r in refs] == ["s.jsonl#1", "s.jsonl#4"]
    assert log.calls == [
        (
            "seed_skipped",
            {
                "file": str(path),
                "record": "line 2",
                "field": None,
                "reason": "invalid JSON: Expecting property name enclosed in double quotes "
                "(column 2)",
            },
        ),
        (
            "seed_skipped",
            {
                "file": str(path),
                "record": "line 3",
                "field": "response",
                "reason": "missing or empty (record has keys: instruction)",
            },
        ),
    ]


def test_skip_mode_logs_to_structlog_by_default(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [PAIR, {"prompt": "P"}])
    with structlog.testing.capture_logs() as logs:
        refs = read_seeds(path, on_bad_record="skip")
    assert len(refs) == 1
    assert logs == [
        {
            "event": "seed_skipped",
            "log_level": "warning",
            "file": str(path),
            "record": "line 2",
            "field": "completion",
            "reason": "missing or empty (record has keys: prompt)",
        }
    ]


def test_skip_mode_with_no_valid_record_left(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"a": 1}, {"instruction": "x"}])
    assert str(error_of(path, on_bad_record="skip", log=Collect())) == (
        f"{path}: no valid records (2 of 2 skipped)"
    )


def test_limit(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [PAIR, PAIR, OTHER, {"broken": True}])
    refs = read_seeds(path, limit=2)
    assert [r.source for r in refs] == ["s.jsonl#1", "s.jsonl#3"]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        read_seeds(path, limit=0)


def test_iter_seeds_is_lazy(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [PAIR, {"broken": True}])
    seeds = iter_seeds(path)
    assert next(seeds).id == PAIR_ID
    with pytest.raises(SeedError):
        next(seeds)


# -------------------------------------------------------------------------- real files


def test_example_seeds() -> None:
    refs = read_seeds(REPO / "examples" / "seeds.jsonl")
    assert len(refs) == 6
    assert len({r.id for r in refs}) == 6
    for ref in refs:
        assert 80 <= len(ref.response.split()) <= 200, ref.instruction


def _shared(name: str) -> Path:
    path = SHARED_SEEDS / name
    if not path.exists():
        pytest.skip(f"shared seed data not found at {path.resolve()}")
    return path


def test_lima_from_shared_data() -> None:
    path = _shared("lima.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert len(raw) == 1029
    log = Collect()
    refs = read_seeds(path, on_bad_record="skip", log=log)
    assert len(refs) == 1000  # the 29 multi-turn records are left out
    assert len(log.calls) == 29
    assert {call[1]["field"] for call in log.calls} == {"history"}
    assert refs[0].source == "lima.json#0"
    assert str(error_of(path)) == (
        f"{path} record 1000: field 'history': multi-turn records are not supported"
    )


def test_self_instruct_from_shared_data() -> None:
    refs = read_seeds(_shared("self_instruct_seed_tasks.jsonl"))
    assert len(refs) == 175
    assert refs[0].id == "seed_task_0"
    assert refs[-1].id == "seed_task_174"
