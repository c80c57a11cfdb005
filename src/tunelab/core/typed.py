"""Typed values from YAML and the command line: nested config dataclasses built from
mappings (unknown keys refused by name, values coerced to each field's annotation with
a message naming the key), dotted keys set, layers of settings merged."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

from tunelab.core.errors import ConfigError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert a YAML or command-line value to the annotated type, or say why not."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(key, v, inner) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}={value!r} must be true or false")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a whole number")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} must be a whole number")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(number):
            raise ConfigError(f"{key}={value!r} must be a finite number")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}={value!r} must be text")
    return value


def from_dict(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build a (nested) config dataclass, rejecting unknown keys by name."""
    if values is None:
        values = {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in values if k not in names]
    if unknown:
        import difflib

        wrong = str(unknown[0])
        close = [n for n in names if n.lower() == wrong.lower()] or \
            difflib.get_close_matches(wrong.lower(), names, n=1, cutoff=0.6)
        raise ConfigError(
            f"unknown setting '{prefix}{wrong}'" + (f"; did you mean {prefix}{close[0]}?" if close else "")
            + "; known settings here: " + ", ".join(prefix + n for n in names)
        )
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        if _is_dataclass_type(hints[field.name]) and isinstance(value, dict) \
                and field.default_factory is not dataclasses.MISSING:
            # Keys given for a nested group update that group's own defaults.
            value = merge_settings(hints[field.name], to_dict(field.default_factory()), value)
        kwargs[field.name] = _coerce(prefix + field.name, value, hints[field.name])
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_settings(cls: type, base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base`` for the config class ``cls``, nested groups key by key.
    Where a class declares fields that exclude each other (``EXCLUSIVE``, e.g. a schedule
    given in epochs or in steps), a layer that sets one clears the others in ``base``:
    the later layer wins, whether it is a preset, a YAML file, a flag or a study step."""
    merged = dict(base)
    hints = typing.get_type_hints(cls) if _is_dataclass_type(cls) else {}
    for group in getattr(cls, "EXCLUSIVE", ()):
        if any(layer.get(name) is not None for name in group):
            for name in group:
                if name not in layer:
                    merged[name] = None
    for key, value in layer.items():
        inner = hints.get(key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(inner, merged[key], value) if _is_dataclass_type(inner) \
                else deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_dotted(target: dict[str, Any], dotted_key: str, value: Any) -> None:
    """``set_dotted(d, "data.dataset", "x")`` sets ``d["data"]["dataset"]``."""
    *parents, leaf = dotted_key.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted_key}': '{part}' is not a group of settings")
    node[leaf] = value
