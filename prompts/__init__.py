"""Prompt templates, one Markdown file per LLM task, judging criteria, and their versions.

A template has a ``[system]`` part and a ``[user]`` part; ``$name`` placeholders
are filled by :meth:`Prompt.render` (``string.Template``, so JSON braces in seed
text are safe). A template's version is the first 12 hex digits of the sha256 of
its file, and goes into every sample's provenance.

Judging criteria are TOML files in ``criteria/`` (see :mod:`state.criteria`);
:func:`criteria` loads a built-in set by name, or any file by path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template

from state.criteria import CriteriaError, CriteriaSet, load_criteria_file

PROMPT_DIR = Path(__file__).resolve().parent
CRITERIA_DIR = PROMPT_DIR / "criteria"
MAX_FIELD_CHARS = 6000
"""Longest text put into a prompt from one field; longer text is cut with a marker."""


@dataclass(frozen=True)
class Prompt:
    name: str
    system: Template
    user: Template
    version: str

    def render(self, **values: object) -> list[dict[str, str]]:
        """Chat messages with every placeholder filled (a missing one raises KeyError)."""
        filled = {k: clip(str(v)) for k, v in values.items()}
        return [
            {"role": "system", "content": self.system.substitute(filled)},
            {"role": "user", "content": self.user.substitute(filled)},
        ]


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + "\n[…cut]"


def _parse(name: str, text: str) -> tuple[str, str]:
    if not text.startswith("[system]\n") or "\n[user]\n" not in text:
        raise ValueError(f"prompt {name}: expected a [system] part then a [user] part")
    system, user = text[len("[system]\n") :].split("\n[user]\n", 1)
    return system.strip(), user.strip()


@cache
def load(name: str) -> Prompt:
    path = PROMPT_DIR / f"{name}.md"
    raw = path.read_bytes()
    system, user = _parse(name, raw.decode("utf-8"))
    return Prompt(
        name=name,
        system=Template(system),
        user=Template(user),
        version=hashlib.sha256(raw).hexdigest()[:12],
    )


def names() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.md"))


def criteria_names() -> list[str]:
    """The built-in criteria sets."""
    return sorted(p.stem for p in CRITERIA_DIR.glob("*.toml"))


@cache
def criteria(name_or_path: str) -> CriteriaSet:
    """A built-in criteria set by name (``instruction``, ``summeval``, ...) or a TOML file."""
    builtin = CRITERIA_DIR / f"{name_or_path}.toml"
    if "/" not in name_or_path and not name_or_path.endswith(".toml"):
        if not builtin.is_file():
            raise CriteriaError(
                f"no built-in criteria set {name_or_path!r} (built-in: "
                f"{', '.join(criteria_names())}; or give a path to a .toml file)"
            )
        return load_criteria_file(builtin)
    return load_criteria_file(Path(name_or_path))


def versions() -> dict[str, str]:
    """Version of every template and built-in criteria set, for provenance and run.json."""
    found = {name: load(name).version for name in names()}
    found.update({f"criteria/{n}": criteria(n).version for n in criteria_names()})
    return found
