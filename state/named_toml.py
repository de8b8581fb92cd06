"""Built-in TOML files chosen by name, or any TOML file by path (profiles, criteria sets)."""

from __future__ import annotations

from pathlib import Path


def toml_names(folder: Path) -> list[str]:
    """The names of the built-in files in ``folder`` (file stems, sorted)."""
    return sorted(p.stem for p in folder.glob("*.toml"))


def named_toml(name_or_path: str, folder: Path, what: str, error: type[Exception]) -> Path:
    """``folder/NAME.toml`` for a bare name, else the path as given. A bare name with no
    built-in file raises ``error`` naming ``what`` and the built-in names."""
    if "/" in name_or_path or name_or_path.endswith(".toml"):
        return Path(name_or_path)
    builtin = folder / f"{name_or_path}.toml"
    if not builtin.is_file():
        raise error(
            f"no built-in {what} {name_or_path!r} (built-in: "
            f"{', '.join(toml_names(folder))}; or give a path to a .toml file)"
        )
    return builtin
