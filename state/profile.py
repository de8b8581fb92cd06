"""A generation profile: settings and prompt variants tuned for one model.

A profile is a TOML file (built-in ones live in ``prompts/profiles/``)::

    name = "smollm2"
    description = "what it is tuned for"

    [settings]            # any RefedSettings field
    temperature = 0.3
    repetition_penalty = 1.15

    [settings.prompt_variants]
    respond = "small/respond"

Its settings sit under everything the user gave (flags, environment, config file) and
over the defaults: :meth:`state.settings.RefedSettings.apply_profile`.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from state.named_toml import named_toml, toml_names
from state.settings import RefedSettings, settings_error_text


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the key."""


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    version: str = Field(default="", description="First 12 hex digits of the file's sha256.")


BUILTIN_DIR = Path(__file__).resolve().parents[1] / "prompts" / "profiles"
"""Where the built-in profiles live (with the prompts they name)."""


def builtin_names() -> list[str]:
    return toml_names(BUILTIN_DIR)


def find_profile(name_or_path: str) -> Profile:
    """A built-in profile by name (``smollm2``) or a TOML file."""
    return load_profile_file(named_toml(name_or_path, BUILTIN_DIR, "profile", ProfileError))


def with_named_profile(settings: RefedSettings) -> RefedSettings:
    """``settings`` with the profile it names applied (unchanged when it names none)."""
    if settings.profile is None:
        return settings
    return settings.apply_profile(find_profile(settings.profile).settings, settings.profile)


NOT_IN_PROFILE = frozenset({"profile", "base_url", "base_urls_file", "api_key", "out", "seeds"})
"""Settings a profile may not set: where to run, what on, and secrets are the user's."""


def load_profile_file(path: Path) -> Profile:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"profile {path}: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProfileError(f"profile {path}: {exc}") from exc
    unknown_top = sorted(set(data) - {"name", "description", "settings"})
    if unknown_top:
        raise ProfileError(
            f"profile {path}: unknown keys {', '.join(unknown_top)} "
            "(expected name, description, [settings])"
        )
    values = data.get("settings", {})
    if not isinstance(values, dict):
        raise ProfileError(f"profile {path}: [settings] must be a table")
    fields = RefedSettings.model_fields
    for key in values:
        if key not in fields:
            raise ProfileError(f"profile {path}: [settings] key {key!r} is not a setting")
        if key in NOT_IN_PROFILE:
            raise ProfileError(f"profile {path}: [settings] key {key!r} cannot be set by a profile")
    try:  # every value must be one the settings accept
        RefedSettings.model_validate(values)
    except ValidationError as exc:
        raise ProfileError(f"profile {path}: {settings_error_text(exc)}") from None
    try:
        return Profile(
            name=str(data.get("name") or path.stem),
            description=str(data.get("description", "")),
            settings=values,
            version=hashlib.sha256(raw).hexdigest()[:12],
        )
    except ValidationError as exc:
        raise ProfileError(f"profile {path}: {exc.errors()[0]['msg']}") from None
