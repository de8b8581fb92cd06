"""The house's layout: lines per package, the largest package's share, and import circles.

    python -m bench.layout                 # this checkout
    python -m bench.layout DIR             # another one (git archive <commit> | tar -x -C DIR)
    python -m bench.layout --json out.json

Lines are the non-blank lines of the ``.py`` files of each top-level package (a folder
with an ``__init__.py``). The product is every package but ``tests``, ``bench`` and the
test support (``testing``); the share is of the product's lines.

Imports are read with :mod:`ast` from every ``import`` statement wherever it stands: at
the top of a module, inside a function (a lazy import), or under ``TYPE_CHECKING``. A
circle is a set of modules that import each other in a loop (a strongly connected
component of the module graph); the same is done for the graph of packages, where
``a -> b`` when a module of ``a`` imports one of ``b``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_PRODUCT = ("tests", "bench", "testing")
"""Packages measured but not counted in the product's lines."""


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    lazy: bool
    """Inside a function (imported when called), or under ``if TYPE_CHECKING``."""


@dataclass
class House:
    root: Path
    modules: dict[str, Path] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def package(self, module: str) -> str:
        return module.split(".", 1)[0]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_house(root: Path) -> House:
    house = House(root)
    for init in sorted(root.glob("*/__init__.py")):
        top = init.parent
        if top.name.startswith("."):
            continue
        for path in sorted(top.rglob("*.py")):
            if any(p.startswith(".") or p == "__pycache__" for p in path.parts):
                continue
            name = _module_name(root, path)
            house.modules[name] = path
            text = path.read_text(encoding="utf-8")
            house.lines[name] = sum(1 for line in text.splitlines() if line.strip())
    for name, path in house.modules.items():
        house.edges.extend(_imports(house, name, path))
    return house


def _resolve(house: House, name: str) -> str | None:
    """The module of the house that ``name`` names, or its nearest enclosing one."""
    while name:
        if name in house.modules:
            return name
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return None


def _imports(house: House, name: str, path: Path) -> Iterable[Edge]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    seen: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, lazy: bool) -> Iterable[Edge]:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                inner = True
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name if is_package else name.rsplit(".", 1)[0]
                    for _ in range(child.level - 1):
                        package = package.rsplit(".", 1)[0]
                    base = f"{package}.{base}" if base else package
                targets = [f"{base}.{a.name}" for a in child.names] or [base]
            for target in targets:
                found = _resolve(house, target)
                if found is not None and found != name and (found, inner) not in seen:
                    seen.add((found, inner))
                    yield Edge(name, found, inner)
            yield from visit(child, inner)

    yield from visit(tree, False)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def circles(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        if a != b:
            graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(nodes):
        if start in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def measure(root: Path) -> dict[str, Any]:
    house = read_house(root)
    per_package: dict[str, dict[str, int]] = defaultdict(lambda: {"files": 0, "lines": 0})
    for name, count in house.lines.items():
        row = per_package[house.package(name)]
        row["files"] += 1
        row["lines"] += count
    product = {p: r for p, r in per_package.items() if p not in NOT_PRODUCT}
    total = sum(r["lines"] for r in product.values())
    largest = max(product, key=lambda p: product[p]["lines"])
    module_circles = circles(house.modules, ((e.source, e.target) for e in house.edges))
    package_edges = {
        (house.package(e.source), house.package(e.target))
        for e in house.edges
        if house.package(e.source) != house.package(e.target)
    }
    uses: dict[str, list[str]] = defaultdict(list)
    for a, b in sorted(package_edges):
        uses[a].append(b)
    return {
        "packages": {
            p: {**r, "share": round(r["lines"] / total, 3) if p in product else None}
            for p, r in sorted(per_package.items(), key=lambda kv: -kv[1]["lines"])
        },
        "product_lines": total,
        "largest": {"package": largest, "share": round(product[largest]["lines"] / total, 3)},
        "module_circles": [
            {
                "modules": c,
                "imports": sorted(
                    f"{e.source} -> {e.target}" + (" (lazy)" if e.lazy else "")
                    for e in house.edges
                    if e.source in c and e.target in c
                ),
            }
            for c in module_circles
        ],
        "package_circles": circles(per_package, package_edges),
        "package_imports": dict(sorted(uses.items())),
        "lazy_imports": len([e for e in house.edges if e.lazy]),
    }


def report(m: dict[str, Any]) -> str:
    lines = ["| package | files | lines | share of the product |", "|---|---|---|---|"]
    for name, r in m["packages"].items():
        share = "-" if r["share"] is None else f"{100 * r['share']:.1f} %"
        lines.append(f"| {name}/ | {r['files']} | {r['lines']} | {share} |")
    largest = m["largest"]
    lines += [
        "",
        f"product: {m['product_lines']} lines; largest package: {largest['package']}/ "
        f"({100 * largest['share']:.1f} %)",
        f"module circles: {len(m['module_circles'])}; package circles: "
        f"{len(m['package_circles'])} (imports inside functions and under TYPE_CHECKING "
        f"included: {m['lazy_imports']} of them)",
    ]
    for c in m["module_circles"]:
        lines.append("  circle: " + ", ".join(c["modules"]))
        lines += [f"    {imp}" for imp in c["imports"]]
    for c in m["package_circles"]:
        lines.append("  package circle: " + ", ".join(c))
    lines += ["", "what each package imports:"]
    lines += [f"  {p}/ -> {', '.join(u)}" for p, u in m["package_imports"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.layout", description=__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).parents[1])
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = measure(args.root.resolve())
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
