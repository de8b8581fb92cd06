"""Invalid settings end with a message naming each setting, its flag and env variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from graph.run import parse_args
from state.settings import SettingsError

REPO = Path(__file__).resolve().parents[1]


def test_out_of_range_flags_are_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_args(["--seeds", "x.jsonl", "--per-reference", "-3", "--temperature", "9"])
    text = str(caught.value)
    assert "per_reference (--per-reference / REFED_PER_REFERENCE) (got -3)" in text
    assert "temperature (--temperature / REFED_TEMPERATURE) (got 9.0)" in text
    assert "Traceback" not in text


def test_bad_env_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFED_CONCURRENCY", "many")
    with pytest.raises(SettingsError, match=r"concurrency .*REFED_CONCURRENCY.*'many'"):
        parse_args(["--seeds", "x.jsonl"])


def test_base_url_without_scheme() -> None:
    with pytest.raises(SettingsError, match="'localhost:8000' is not an http"):
        parse_args(["--seeds", "x.jsonl", "--base-url", "localhost:8000"])


def test_base_urls_file_names_the_line(tmp_path: Path) -> None:
    urls = tmp_path / "endpoints.txt"
    urls.write_text("# replicas\nhttp://10.0.0.1:8000/v1\n\nnot a url  # typo\n")
    with pytest.raises(SettingsError) as caught:
        parse_args(["--seeds", "x.jsonl", "--base-urls-file", str(urls)])
    assert f"{urls}, line 4: 'not a url' is not an http(s) URL" in str(caught.value)


def test_cli_exits_with_the_message_not_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "graph.run", "--seeds", "x.jsonl", "--max-tokens", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "max_tokens (--max-tokens / REFED_MAX_TOKENS) (got 0)" in done.stderr
    assert "Traceback" not in done.stderr
