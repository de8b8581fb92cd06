"""Judging criteria as data: what a judge is told about the task and each criterion.

A criteria file (TOML) names a task, the fields a record shows the judge (in the
order they are shown), the field being judged (``target``), and the criteria::

    name = "summeval"
    task = "Judge a summary written for a news article."
    target = "summary"

    [fields]
    document = "News article"
    summary = "Summary"

    [[criteria]]
    name = "fluency"
    definition = "How well written each sentence of the summary is."
    fields = ["summary"]          # what this criterion looks at (default: all fields)
    scale = [1, 3]                # integers lo..hi, single digits (default 1..5)
    low = "Hard to read."         # optional: what the lowest and highest scores mean
    high = "Reads naturally."

Scales are single digits (0-9) so that each score is one token and the judge's
log-probabilities over the scale can be read off at the score's position.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED = frozenset({"rationale"})
"""Names a criterion cannot take (the judge's answer uses them for other keys)."""


class CriteriaError(ValueError):
    """A criteria file that cannot be used; the message names the file and the key."""


class Criterion(BaseModel):
    """One quality a judge scores, in plain words, on an integer scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME.pattern, description="Identifier (lowercase, _).")
    definition: str = Field(min_length=1, description="What the criterion means, in plain words.")
    fields: tuple[str, ...] = Field(default=(), description="Fields it looks at (empty: all).")
    scale: tuple[int, int] = Field(default=(1, 5), description="Lowest and highest score.")
    low: str | None = Field(default=None, description="What the lowest score means.")
    high: str | None = Field(default=None, description="What the highest score means.")

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, scale: tuple[int, int]) -> tuple[int, int]:
        lo, hi = scale
        if not (0 <= lo < hi <= 9):
            raise ValueError(f"must be two single-digit integers lo < hi, got [{lo}, {hi}]")
        return scale

    @property
    def points(self) -> tuple[int, ...]:
        lo, hi = self.scale
        return tuple(range(lo, hi + 1))

    @property
    def midpoint(self) -> float:
        return (self.scale[0] + self.scale[1]) / 2


class CriteriaSet(BaseModel):
    """A task, the fields a record shows, the field being judged, and the criteria."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME.pattern)
    task: str = Field(min_length=1, description="The task, told to the judge in plain words.")
    target: str = Field(description="The field being judged (what pairwise compares).")
    fields: dict[str, str] = Field(min_length=1, description="Field name -> label, in order.")
    criteria: tuple[Criterion, ...] = Field(min_length=1)
    version: str = Field(default="", description="Content hash of the file it came from.")

    @model_validator(mode="after")
    def _check_refs(self) -> CriteriaSet:
        for field_name in self.fields:
            if not NAME.match(field_name):
                raise ValueError(f"fields.{field_name}: not a valid field name (lowercase, _)")
        if self.target not in self.fields:
            raise ValueError(f"target: {self.target!r} is not one of fields {list(self.fields)}")
        seen: set[str] = set()
        for i, c in enumerate(self.criteria):
            if c.name in seen:
                raise ValueError(f"criteria[{i}].name: {c.name!r} appears twice")
            if c.name in RESERVED:
                raise ValueError(f"criteria[{i}].name: {c.name!r} is reserved")
            seen.add(c.name)
            unknown = [f for f in c.fields if f not in self.fields]
            if unknown:
                raise ValueError(
                    f"criteria[{i}].fields: {unknown} not among fields {list(self.fields)}"
                )
            if c.fields and self.target not in c.fields:
                raise ValueError(f"criteria[{i}].fields: must include the target {self.target!r}")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.criteria)

    def get(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise KeyError(f"criteria set {self.name!r} has no criterion {name!r} (has {self.names})")

    def fields_for(self, criteria: tuple[Criterion, ...] | list[Criterion]) -> list[str]:
        """The fields the given criteria look at, in the set's order."""
        wanted = {f for c in criteria for f in (c.fields or tuple(self.fields))}
        return [f for f in self.fields if f in wanted]

    def subset(self, names: list[str] | tuple[str, ...]) -> CriteriaSet:
        """The same set with only the named criteria (in the order given)."""
        return self.model_copy(update={"criteria": tuple(self.get(n) for n in names)})


def _where(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    return ".".join(parts) or "(top level)"


def parse_criteria(data: dict[str, Any], *, source: str, version: str = "") -> CriteriaSet:
    """Validate a parsed criteria table; errors name ``source`` and the offending key."""
    if "name" not in data:
        data = {"name": Path(source).stem.replace("-", "_").lower(), **data}
    try:
        return CriteriaSet.model_validate({**data, "version": version})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        key = _where(loc)
        if key == "(top level)" and ":" in msg:
            key, msg = (s.strip() for s in msg.split(":", 1))
        raise CriteriaError(f"criteria file {source}: {key}: {msg}") from None


def load_criteria_file(path: str | Path) -> CriteriaSet:
    """Read and check one criteria TOML file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CriteriaError(f"criteria file not found: {path}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CriteriaError(f"criteria file {path}: not valid TOML: {exc}") from None
    return parse_criteria(data, source=str(path), version=hashlib.sha256(raw).hexdigest()[:12])
