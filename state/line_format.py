"""Structured answers as labelled lines, for models too small to write JSON.

A schema (a pydantic model of the answers the LLM gives, :mod:`state.llm_outputs`) becomes
one ``Label: value`` line per field, in field order::

    Topics: laundry; stain removal
    Skills: step-by-step advice
    Clarity: It names the stain, the fabric and the goal.

:func:`line_regex` writes the regular expression the server holds the answer to (vLLM's
``structured_outputs.regex``): a value never holds a line break, a list's items are
separated by ``; `` and bounded in number and length, a ``Literal`` is one of its values.
A field may give its own value pattern in ``json_schema_extra={"line_pattern": ...}``, a
list its items' in ``{"item_pattern": ...}`` (neither may hold ``;`` or a line break).
:func:`parse_lines` reads such an answer back into the schema.
"""

from __future__ import annotations

import re
import types
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

T = TypeVar("T", bound=BaseModel)

ITEM_SEPARATOR = "; "
DEFAULT_MAX = 200


class LineFormatError(ValueError):
    """An answer that is not in the schema's line form; the message says where."""


def _escape(text: str) -> str:
    """``re.escape`` without escaping spaces (not every grammar engine reads ``\\ ``)."""
    return re.escape(text).replace("\\ ", " ")


def label(name: str, info: FieldInfo) -> str:
    return info.title or name.replace("_", " ").capitalize()


def _bounds(info: FieldInfo) -> tuple[int | None, int | None]:
    lo = hi = None
    for meta in info.metadata:
        lo = getattr(meta, "min_length", lo)
        hi = getattr(meta, "max_length", hi)
    return lo, hi


def _text(lo: int | None, hi: int | None, *, in_list: bool) -> str:
    """A value: starts with a visible character, no line break (nor ``;`` in a list)."""
    lo, hi = max(1, lo or 1), max(1, hi or DEFAULT_MAX)
    body = "[^\\n;]" if in_list else "[^\\n]"
    first = "[^\\s;]" if in_list else "[^\\s]"
    return f"{first}{body}{{{lo - 1},{hi - 1}}}"


def _item_info(annotation: Any) -> tuple[Any, FieldInfo | None]:
    """An ``Annotated[str, Field(...)]`` list item's type and its field info."""
    metadata = getattr(annotation, "__metadata__", ())
    info = next((m for m in metadata if isinstance(m, FieldInfo)), None)
    return getattr(annotation, "__origin__", annotation), info


def _value_regex(info: FieldInfo, cap: int | None) -> str:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "line_pattern" in extra:
        return f"({extra['line_pattern']})"
    annotation = info.annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        raise TypeError("line format: optional fields are not supported")
    if origin is Literal:
        return "(" + "|".join(_escape(str(v)) for v in get_args(annotation)) + ")"
    if origin is list:
        item_type, item_info = _item_info(get_args(annotation)[0])
        if item_type is not str:
            raise TypeError("line format: lists of strings only")
        ilo, ihi = _bounds(item_info) if item_info is not None else (None, None)
        item = _text(ilo, _capped(ihi, cap), in_list=True)
        if "item_pattern" in extra:
            item = f"({extra['item_pattern']})"
        lo, hi = _bounds(info)
        lo, hi = max(1, lo or 1), max(1, hi or 5)
        sep = _escape(ITEM_SEPARATOR)
        return f"{item}({sep}{item}){{{lo - 1},{hi - 1}}}"
    if annotation is str:
        lo, hi = _bounds(info)
        return _text(lo, _capped(hi, cap), in_list=False)
    raise TypeError(f"line format: unsupported field type {annotation!r}")


def _capped(limit: int | None, cap: int | None) -> int | None:
    if cap is None:
        return limit
    return cap if limit is None else min(limit, cap)


@cache
def line_regex(schema: type[BaseModel], max_chars: int | None = None) -> str:
    """The regular expression a whole answer in ``schema``'s line form matches; with
    ``max_chars`` no value (or list item) is longer than that, whatever the schema allows."""
    lines = [
        _escape(label(name, info)) + ": " + _value_regex(info, max_chars)
        for name, info in schema.model_fields.items()
    ]
    return "\\n".join(lines)


def parse_lines(schema: type[T], text: str) -> T:
    """``text`` (one ``Label: value`` line per field, in order) as ``schema``."""
    lines = [line.rstrip() for line in text.strip().split("\n") if line.strip()]
    fields = list(schema.model_fields.items())
    if len(lines) != len(fields):
        raise LineFormatError(f"expected {len(fields)} lines, got {len(lines)}")
    values: dict[str, Any] = {}
    for (name, info), line in zip(fields, lines, strict=True):
        head = label(name, info) + ":"
        if not line.startswith(head):
            raise LineFormatError(f"expected a line starting {head!r}, got {line[:60]!r}")
        value = line[len(head) :].strip()
        if get_origin(info.annotation) is list:
            values[name] = [v.strip() for v in value.split(ITEM_SEPARATOR.strip()) if v.strip()]
        elif get_origin(info.annotation) is Literal:
            choices = {str(v): v for v in get_args(info.annotation)}
            values[name] = choices.get(value, value)
        else:
            values[name] = value
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise LineFormatError(f"{where}: {first['msg']}") from None


def render_lines(value: BaseModel) -> str:
    """``value`` in its line form (for worked examples and tests)."""
    out = []
    for name, info in type(value).model_fields.items():
        item = getattr(value, name)
        shown = ITEM_SEPARATOR.join(item) if isinstance(item, list) else str(item)
        out.append(f"{label(name, info)}: {shown}")
    return "\n".join(out)
