"""Typed configuration: dataclasses filled from ``configs/*.toml``.

No hidden globals: every component takes its config object explicitly; this
module only knows how to read a TOML section into a dataclass and complains,
by name, about keys it does not know (a typo should not silently fall back to
a default).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

def _config_dir() -> Path:
    """The shipped ``configs/`` folder (package data ``scorestream.configs`` when installed)."""
    from importlib.resources import files

    return Path(str(files("scorestream.configs")))


CONFIG_DIR = _config_dir()


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        with p.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise ConfigError."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, f"{where}.{key}" if where else key)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_section(cls: type[T], path: str | Path, section: str) -> T:
    """Dataclass ``cls`` from table ``[section]`` of TOML file ``path`` (missing table = defaults)."""
    data = read_toml(path)
    node: Any = data
    for part in section.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return from_dict(cls, node, f"{Path(path).name}[{section}]")


def default_path(name: str) -> Path:
    """Path of a shipped config file, e.g. ``default_path("corpus")``."""
    return CONFIG_DIR / f"{name}.toml"
