"""The ``refed`` command: each subcommand runs its package's command with the same
arguments, and the console script is declared."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from refed.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parent.parent


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"refed": "refed.cli:main"}
    assert set(COMMANDS) == {"run", "serve", "judge", "metric", "export", "report", "embedded"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_is_its_module_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``refed NAME --help`` prints the help of ``python -m MODULE`` (same parser)."""
    module = COMMANDS[name][0].removeprefix("python -m ")
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    ours = capsys.readouterr().out
    theirs = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    assert ours == theirs and "usage:" in ours


def test_arguments_reach_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong argument gets the command's own error, naming the file."""
    missing = tmp_path / "no-such-run"
    code = main(["report", str(missing)])
    assert code != 0
    assert str(missing) in capsys.readouterr().err


def test_unknown_or_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "run" in err and "embedded" in err
    assert main([]) == 2
    assert "usage: refed <command>" in capsys.readouterr().out
    done = subprocess.run(
        [sys.executable, "-m", "refed", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0 and "judge" in done.stdout
