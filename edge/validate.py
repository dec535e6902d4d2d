"""One validation layer for what arrives from outside: config files and flags, built into checked dataclasses.

Every value is checked against its type hint before use; numbers must be finite (a ``.nan`` or
``.inf`` in a config would silently turn off a comparison); each refusal is one :class:`UserError`
line that names the key. The device's and the trainer's configurations are built by the same
:func:`build`, so both refuse mistakes the same way.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path

import yaml

from edge.errors import UserError

MAX_CONFIG_BYTES = 1 << 20
"""A configuration file is a few KB; anything larger is not one (a model or an image passed by mistake)."""


def read_file(path: Path) -> dict:
    """A YAML (or ``.toml``) configuration file as a mapping; anything else is one line naming the problem."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"config {path} is a directory, not a file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config {path} is {path.stat().st_size} bytes: not a configuration file")
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UserError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"config {path} is not a text file (YAML or TOML)") from None
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise UserError(f"config {path} is not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: "
                        f"{' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config {path} must be a mapping of sections")
    return data


def build(cls, data: dict, where: str = ""):
    """A dataclass from a nested mapping: unknown keys refused, each value checked against its type hint.

    The trainer's configuration is built by the same function, so both refuse mistakes the same way.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown config key {where + str(unknown[0])!r}; known keys here: {', '.join(sorted(known))}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        hint, key = hints[name], f"{where}{name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"config key {key} must be a mapping")
            values[name] = build(hint, value, f"{key}.")
        else:
            values[name] = _coerce(hint, value, key)
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:  # a dataclass's own __post_init__ checks
        raise UserError(f"bad config {where.rstrip('.') or 'value'}: {exc}") from None


def _coerce(hint, value, key: str):
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list):
            return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        raise UserError(f"config key {key} must be a list of {_type_name(item)} values, got {value!r}")
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is float and isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise UserError(f"config key {key} must be a finite number, got {value!r}")
            return float(value)
        if kind is int and isinstance(value, (int, float)) and math.isfinite(value) and value == int(value):
            return int(value)
        if kind is str and isinstance(value, (str, int)):
            return str(value)  # camera indices and protocol versions are often written as numbers
    raise UserError(f"config key {key} must be {_type_name(hint)}, got {value!r}")


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def positive(section, *names: str) -> None:
    for name in names:
        if not getattr(section, name) > 0:
            raise UserError(f"config {key_of(section, name)} must be > 0, got {getattr(section, name)!r}")


def fraction(section, *names: str) -> None:
    for name in names:
        if not 0 < getattr(section, name) <= 1:
            raise UserError(f"config {key_of(section, name)} must be in (0, 1], got {getattr(section, name)!r}")


def choice(section, name: str, choices: tuple[str, ...]) -> None:
    if getattr(section, name) not in choices:
        raise UserError(f"config {key_of(section, name)} must be one of {', '.join(choices)}, got {getattr(section, name)!r}")


def key_of(section, name: str) -> str:
    """``source.fps`` for a section's field, ``log_level`` for a top-level one."""
    where = type(section).__name__.removesuffix("Config").lower()
    return f"{where}.{name}" if where else name
