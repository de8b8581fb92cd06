"""``refed <command> [args]``: each command is the ``main`` of one package's command
module, given the rest of the arguments unchanged (``refed run --help`` is
``python -m graph.run --help``). A command's module is imported only when it is run."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

Main = Callable[[list[str]], int]


def _run(argv: list[str]) -> int:
    from graph.run import main

    return main(argv)


def _serve(argv: list[str]) -> int:
    from serve.__main__ import main

    return main(argv)


def _judge(argv: list[str]) -> int:
    from judge.cli import main

    return main(argv)


def _metric(argv: list[str]) -> int:
    from metric.__main__ import main

    return main(argv)


def _export(argv: list[str]) -> int:
    from dataset.export import main

    return main(argv)


def _report(argv: list[str]) -> int:
    from dataset.report import main

    return main(argv)


def _embedded(argv: list[str]) -> int:
    from embedded.__main__ import main

    return main(argv)


COMMANDS: dict[str, tuple[str, Main]] = {
    "run": ("python -m graph.run", _run),
    "serve": ("python -m serve", _serve),
    "judge": ("python -m judge", _judge),
    "metric": ("python -m metric", _metric),
    "export": ("python -m dataset.export", _export),
    "report": ("python -m dataset.report", _report),
    "embedded": ("python -m embedded", _embedded),
}
"""Each command: the module command it runs, and how."""

SUMMARIES = {
    "run": "make a judged dataset from seed pairs (the batch run)",
    "serve": "the HTTP service: on-demand synthesis",
    "judge": "score records with the LLM judge; evaluate it against human judgements",
    "metric": "train, evaluate and serve the trained metric",
    "export": "export a run's samples (JSONL, Parquet, Hugging Face datasets)",
    "report": "a one-page report on a run's output",
    "embedded": "the embedded vLLM CPU server: prepare its weights, or serve",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: refed <command> [args]   (refed <command> --help for its flags)", ""]
    for name, (module, _) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {SUMMARIES[name]}  ({module})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"refed: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return COMMANDS[name][1](rest)
