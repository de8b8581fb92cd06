"""The code's layout as docs/ARCHITECTURE.md states it: no import circle (imports inside
functions included), no package over a quarter of the code, dependencies one way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

ORDER = [
    "refed",
    "serve",
    "graph",
    "nodes",
    "metric",
    "judge",
    "llm",
    "dataset",
    "embedded",
    "prompts",
    "state",
]
"""A package may import only those after it (as docs/ARCHITECTURE.md lists them)."""


def _layout(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "layout.json"
    subprocess.run(
        [sys.executable, "-m", "bench.layout", "--json", str(out), str(ROOT)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    layout: dict[str, Any] = json.loads(out.read_text())
    return layout


def test_no_circles_and_no_package_over_a_quarter(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    assert layout["module_circles"] == [] and layout["package_circles"] == []
    assert layout["largest"]["share"] < 0.25, layout["largest"]


def test_dependencies_point_one_way(tmp_path: Path) -> None:
    imports = _layout(tmp_path)["package_imports"]
    assert set(imports) - {"bench", "tests", "testing"} <= set(ORDER)
    assert not imports.get("testing"), "test support imports no package of Refed"
    for pkg, used in imports.items():
        if pkg in ("bench", "tests"):
            continue
        below = ORDER[ORDER.index(pkg) + 1 :]
        upward = [u for u in used if u not in below]
        assert not upward, f"{pkg} imports {upward}, not below it in {ORDER}"
