"""Typed building: a dataclass from a YAML mapping, every unknown, missing or mistyped field reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from .schema import ScenarioError

T = TypeVar("T")


def build_typed(cls: type[T], raw: Any, where: str) -> T:
    """A dataclass from a mapping: every unknown, missing or mistyped field is reported, not only the first."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: must be a mapping of {_field_list(cls)}, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    problems = unknown_keys(raw, {f.name for f in fields}, where)
    required = [f.name for f in fields if _is_required(f)]
    missing = [name for name in required if name not in raw]
    problems += [f"{where}.{name}: required field missing (required: {', '.join(required)})" for name in missing]
    values = {}
    for name, value in raw.items():
        if name in hints:
            try:
                values[name] = typed_value(value, hints[name], f"{where}.{name}")
            except ScenarioError as error:
                problems += error.problems
    if problems:
        raise ScenarioError(problems)
    return cls(**values)


def _is_required(spec: dataclasses.Field) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _field_list(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]


def type_name(hint: Any) -> str:
    """A type hint as a reader writes it in YAML: ``int``, ``float or null``, ``list of int``."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    names = []
    for option in options:
        if option is type(None):
            names.append("null")
        elif typing.get_origin(option) is tuple:
            names.append(f"list of {type_name(typing.get_args(option)[0])}")
        else:
            names.append(getattr(option, "__name__", str(option)))
    return " or ".join(names)


def typed_value(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against a simple type hint (str, int, float, bool, tuple[int, ...], unions, None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        converted = _convert(value, option)
        if converted is not _MISMATCH:
            return converted
    advice = ""
    if isinstance(value, str) and any(typing.get_origin(o) is tuple for o in options):
        advice = f" (write a list: [{value}])"
    elif isinstance(value, str) and float in options:
        advice = " (a string: write the number without quotes, e.g. 0.0005 or 5.0e-4)"
    raise ScenarioError(f"{where}: expected {type_name(hint)}, got {value!r}{advice}")


_MISMATCH = object()


def _convert(value: Any, option: Any) -> Any:
    if option is type(None):
        return None if value is None else _MISMATCH
    if option is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if option is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if option is float:
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else _MISMATCH
    if option is str:
        return value if isinstance(value, str) else _MISMATCH
    if typing.get_origin(option) is tuple:
        item = typing.get_args(option)[0]
        if isinstance(value, list | tuple) and all(_convert(v, item) is not _MISMATCH for v in value):
            return tuple(_convert(v, item) for v in value)
        return _MISMATCH
    return value


def unknown_keys(raw: dict[str, Any], allowed: set[str], where: str) -> list[str]:
    prefix = f"{where}." if where else ""
    return [
        f"{prefix}{name}: unknown field{did_you_mean(name, allowed)} (allowed: {', '.join(sorted(allowed))})"
        for name in sorted(set(raw) - allowed, key=str)
    ]


def did_you_mean(value: Any, allowed: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for a near miss or a prefix (``bbc`` -> ``bbc-news``), else nothing."""
    allowed, text = list(allowed), str(value)
    close = difflib.get_close_matches(text, allowed, n=1, cutoff=0.6)
    close = close or [name for name in allowed if text and name.lower().startswith(text.lower())][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""
