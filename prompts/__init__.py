"""Prompt templates, one Markdown file per LLM task, judging criteria, generation profiles,
and their versions.

A template is a ``[system]`` part, then turns: ``[user]`` and ``[assistant]`` parts
alternating and ending with ``[user]`` (earlier turns are worked examples, which small
models follow far better than descriptions). ``$name`` placeholders are filled by
:meth:`Prompt.render` (``string.Template``, so JSON braces in seed text are safe). A
template may start with ``[format]`` and one word: how a structured answer is written,
``json`` (the default: JSON by schema) or ``lines`` (one ``Label: value`` line per field,
held to a regular expression: see :mod:`state.line_format`); its examples are written in
that form. A template's version is the first 12 hex digits of the sha256 of its file,
and goes into every sample's provenance.

Variants of a task's template live in subfolders (``small/respond.md``); a run picks
them with the ``prompt_variants`` setting, usually through a profile.

Judging criteria are TOML files in ``criteria/`` (see :mod:`state.criteria`);
:func:`criteria` loads a built-in set by name, or any file by path. Generation profiles
are TOML files in ``profiles/`` (see :mod:`state.profile`); :func:`profile` loads one.

This package may import ``state`` only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from string import Template
from typing import Literal

from state.criteria import CriteriaError, CriteriaSet, load_criteria_file
from state.named_toml import named_toml, toml_names
from state.profile import Profile, ProfileError, builtin_names, find_profile
from state.settings import RefedSettings

PROMPT_DIR = Path(__file__).resolve().parent
CRITERIA_DIR = PROMPT_DIR / "criteria"
MAX_FIELD_CHARS = 6000
"""Longest text put into a prompt from one field; longer text is cut with a marker."""
EMBEDDED_PROFILE = "smollm2"
"""The profile a run on the embedded server uses unless told otherwise."""
Format = Literal["json", "lines"]


@dataclass(frozen=True)
class Prompt:
    name: str
    system: Template
    turns: tuple[tuple[str, Template], ...]
    """(role, template) after the system part: user/assistant alternating, user last."""
    version: str
    format: Format = "json"

    @property
    def user(self) -> Template:
        """The last user turn (where the task's own material goes)."""
        return self.turns[-1][1]

    def render(self, **values: object) -> list[dict[str, str]]:
        """Chat messages with every placeholder filled (a missing one raises KeyError)."""
        filled = {k: clip(str(v)) for k, v in values.items()}
        return [
            {"role": "system", "content": self.system.substitute(filled)},
            *({"role": role, "content": t.substitute(filled)} for role, t in self.turns),
        ]


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + "\n[…cut]"


_MARK = re.compile(r"^\[(format|system|user|assistant)\]$", re.MULTILINE)


def _parse(name: str, text: str) -> tuple[Format, str, list[tuple[str, str]]]:
    """(format, system text, [(role, text), ...]) of a template file."""
    marks = list(_MARK.finditer(text))
    if not marks or text[: marks[0].start()].strip():
        raise ValueError(f"prompt {name}: expected [format] or [system] on the first line")
    parts = [
        (m.group(1), text[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(text)])
        for i, m in enumerate(marks)
    ]
    fmt: Format = "json"
    if parts[0][0] == "format":
        word = parts.pop(0)[1].strip()
        if word not in ("json", "lines"):
            raise ValueError(f"prompt {name}: [format] must be json or lines, not {word!r}")
        fmt = "lines" if word == "lines" else "json"
    roles = [role for role, _ in parts]
    if not roles or roles[0] != "system" or "format" in roles or roles.count("system") > 1:
        raise ValueError(f"prompt {name}: expected one [system] part before the turns")
    turns = [(role, body.strip()) for role, body in parts[1:]]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    if not turns or [r for r, _ in turns] != expected or turns[-1][0] != "user":
        raise ValueError(
            f"prompt {name}: after [system], [user] and [assistant] parts must alternate, "
            "starting and ending with [user]"
        )
    return fmt, parts[0][1].strip(), turns


@cache
def load(name: str) -> Prompt:
    """The template ``name`` (a path under prompts/ without ``.md``, e.g. ``small/respond``)."""
    path = PROMPT_DIR / f"{name}.md"
    if ".." in Path(name).parts or not path.is_file():
        raise FileNotFoundError(f"no prompt template {name!r} (prompts/{name}.md)")
    raw = path.read_bytes()
    fmt, system, turns = _parse(name, raw.decode("utf-8"))
    return Prompt(
        name=name,
        system=Template(system),
        turns=tuple((role, Template(body)) for role, body in turns),
        version=hashlib.sha256(raw).hexdigest()[:12],
        format=fmt,
    )


def for_task(task: str, variants: Mapping[str, str]) -> Prompt:
    """The template a run uses for ``task``: its variant if the run names one, else the default."""
    return load(variants.get(task, task))


def names() -> list[str]:
    """Every template, variants included (``small/respond``)."""
    return sorted(
        p.relative_to(PROMPT_DIR).with_suffix("").as_posix() for p in PROMPT_DIR.rglob("*.md")
    )


def criteria_names() -> list[str]:
    """The built-in criteria sets."""
    return toml_names(CRITERIA_DIR)


@cache
def criteria(name_or_path: str) -> CriteriaSet:
    """A built-in criteria set by name (``instruction``, ``summeval``, ...) or a TOML file."""
    path = named_toml(name_or_path, CRITERIA_DIR, "criteria set", CriteriaError)
    return load_criteria_file(path)


def profile_names() -> list[str]:
    """The built-in generation profiles."""
    return builtin_names()


@cache
def profile(name_or_path: str) -> Profile:
    """A built-in profile by name (``smollm2``) or a TOML file."""
    return find_profile(name_or_path)


def resolve_profile(settings: RefedSettings) -> RefedSettings:
    """``settings`` with its profile applied: the one it names, else the embedded model's
    when no endpoint is given (the embedded server will serve), else none. Every prompt
    variant it names must exist."""
    name = settings.profile
    if name is None and not settings.base_urls:
        name = EMBEDDED_PROFILE
    if name is not None:
        found = profile(name)
        settings = settings.apply_profile(found.settings, name)
    for task, variant in settings.prompt_variants.items():
        try:
            load(variant)
        except (FileNotFoundError, ValueError) as exc:
            raise ProfileError(f"prompt variant for {task!r}: {exc}") from None
    return settings


def versions() -> dict[str, str]:
    """Version of every template, built-in criteria set and profile, for provenance and
    run.json."""
    found = {name: load(name).version for name in names()}
    found.update({f"criteria/{n}": criteria(n).version for n in criteria_names()})
    found.update({f"profiles/{n}": profile(n).version for n in profile_names()})
    return found
