"""Typed configs: nested dataclasses read from YAML (safe loader) with one-line validation errors.

Every config class is a plain dataclass whose fields carry a one-line `doc` in their metadata.
`from_dict` checks unknown keys (suggesting the closest name), types and ranges, and names the
offending field by its dotted path, so a typo in a YAML file is answered by one clear line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from deliberate.errors import DeliberateError

T = TypeVar("T")


def field(
    default: Any,
    doc: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
) -> Any:
    """A dataclass field with a doc line and optional range/choice checks."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if isinstance(default, (list, dict, tuple)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(
            default_factory=lambda: dataclasses.replace(default), metadata=meta
        )
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting only the safe cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except DeliberateError as e:
                errors.append(str(e))
        raise DeliberateError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise DeliberateError(
                f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}"
            )
        return from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise DeliberateError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise DeliberateError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise DeliberateError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise DeliberateError(
            f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"
        )
    return value


def _check_range(f: dataclasses.Field, value: Any, where: str) -> None:
    m = f.metadata
    if value is None:
        return
    if m.get("choices") and value not in m["choices"]:
        raise DeliberateError(
            f"{where}: {value!r} is not one of {', '.join(map(repr, m['choices']))}"
        )
    for key, ok, word in (
        ("ge", lambda v, b: v >= b, ">="),
        ("gt", lambda v, b: v > b, ">"),
        ("le", lambda v, b: v <= b, "<="),
        ("lt", lambda v, b: v < b, "<"),
    ):
        bound = m.get(key)
        if bound is not None and not ok(value, bound):
            raise DeliberateError(f"{where}: {value!r} is out of range (must be {word} {bound})")


def check_fields(obj: Any, where: str = "") -> None:
    """Check every field of a config object against its declared range and choices, then its
    cross-field `validate()`: for objects built in code (CLI flags) rather than by `from_dict`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{where}{f.name}.")
        else:
            _check_range(f, value, f"{where}{f.name}")
    check = getattr(obj, "validate", None)
    if check is not None:
        check()


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, with one-line errors naming the dotted field path."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = (
                f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            )
            raise DeliberateError(f"unknown config key '{where}{key}'{hint}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}{name}"
        tp = hints[name]
        sub = f"{path}." if dataclasses.is_dataclass(tp) else path
        kwargs[name] = _coerce(value, tp, sub if dataclasses.is_dataclass(tp) else path)
        _check_range(fields[name], kwargs[name], path)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def to_dict(obj: Any) -> dict:
    """The plain (YAML/JSON-ready) form of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


MAX_VALUES = 100_000  # a config has hundreds; an alias "billion laughs" expands to billions


class _Loader(yaml.SafeLoader):
    """The safe loader, with dates and binary left as the strings they are written as."""


def _check_size(data, where: str) -> None:
    """Refuse YAML whose aliases expand past MAX_VALUES values (it would exhaust memory later)."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise DeliberateError(
                f"{where} expands to more than {MAX_VALUES:,} values (YAML aliases?); "
                "write the config out plainly"
            )
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


# A date, time or !!binary is never a config value: read them as the strings they are written as.
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:timestamp"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_constructor("tag:yaml.org,2002:timestamp", yaml.SafeLoader.construct_yaml_str)
_Loader.add_constructor("tag:yaml.org,2002:binary", yaml.SafeLoader.construct_yaml_str)
# A !!set is read as the mapping it is written as (`{a, b}` is `{a: null, b: null}`), so a key
# given one is refused by its type like any other mapping, never passed on as a Python set.
_Loader.add_constructor("tag:yaml.org,2002:set", yaml.SafeLoader.construct_yaml_map)


def _load(text: str):
    """yaml.load with `_Loader`; a scalar its tag cannot build (`!!int x`, `!!float ''`,
    `!!bool x`: ValueError, IndexError, KeyError inside PyYAML) is a yaml.YAMLError too."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except (ValueError, IndexError, KeyError) as e:
        raise yaml.constructor.ConstructorError(
            problem=f"a tagged value cannot be read ({type(e).__name__}: {e})"
        ) from None


def load_yaml(text: str, where: str):
    """YAML text -> Python values with `_Loader`, refusing alias bombs (one line naming `where`);
    a syntax error is raised as yaml.YAMLError, for the caller to word (see `parse_yaml`)."""
    data = _load(text)
    _check_size(data, where)
    return data


def parse_yaml(text: str, where: str):
    """YAML text -> Python values with `_Loader`; errors are one line naming `where`."""
    try:
        data = _load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        why = getattr(e, "problem", None) or str(e)
        raise DeliberateError(f"{where} is not valid YAML{at} ({why}); fix the syntax") from None
    _check_size(data, where)
    return data


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DeliberateError(f"cannot read config {path}: {e.strerror}; check the path") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DeliberateError(
            f"{path} must hold a mapping of config keys, not {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML scalars) to a nested mapping."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise DeliberateError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise DeliberateError(f"override '{item}': '{p}' is not a section")
        node[leaf] = parse_yaml(raw, f"override '{item}'")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Load a YAML preset (or the defaults when path is None) into `cls`, with CLI overrides."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, apply_overrides(data, list(overrides)))


def describe(cls: type) -> str:
    """A one-line-per-field description of a config class, for --help and docs."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{f.name} = {default!r}: {f.metadata.get('doc', '')}")
    return "\n".join(lines)
