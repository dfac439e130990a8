"""Typed configs from plain data: build dataclasses from YAML/JSON-shaped dicts with every key and value
checked against the field annotations.

One checker for every config in medvl3d (experiment sections, model configs, task and augmentation
parameters): an unknown key or a value of the wrong type raises the caller's exception type with a
message naming the key, so nothing is ever silently ignored or silently converted. Lists become tuples
where a field is a tuple, ints become floats where a field is a float; nothing else is converted.

A field annotated with a union of dataclasses that share a ``Literal`` field (e.g. ``arch``) is a tagged
union: a dict picks its member by that field.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from typing import Any, Literal, Union

__all__ = ["build_dataclass", "replace_config", "coerce", "to_plain", "type_name"]


def type_name(tp: Any) -> str:
    """A readable name of a type annotation (``float``, ``tuple[int, int, int] | None``)."""
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _tag_field(members: list[type]) -> str | None:
    """The Literal-typed field every dataclass member of a union has (its tag), if there is one."""
    if not members or not all(dataclasses.is_dataclass(m) for m in members):
        return None
    common = None
    for m in members:
        hints = typing.get_type_hints(m)
        lits = {n for n, h in hints.items() if typing.get_origin(h) is Literal}
        common = lits if common is None else common & lits
    return sorted(common)[0] if common else None


def _tagged_member(members: list[type], tag: str, value: dict) -> type:
    """The union member a dict names by its tag field (the first member when the tag is absent)."""
    choices = {typing.get_args(typing.get_type_hints(m)[tag])[0]: m for m in members}
    if tag not in value:
        return members[0]
    if value[tag] not in choices:
        # A wrong value rather than a wrong key: ValueError whatever the caller's exception type.
        raise ValueError(f"{tag} must be one of {sorted(choices)}, got {value[tag]!r}")
    return choices[value[tag]]


def coerce(value: Any, hint: Any, where: str, exc: type[Exception] = ValueError) -> Any:
    """Check ``value`` against the annotation ``hint``; return it (lists -> tuples, ints -> floats).

    Raises:
        exc: with a message naming ``where`` and what was expected.
    """
    if hint is Any:
        return value
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise exc(f"{where} expects {type_name(hint)}, got None")
        inner = [a for a in args if a is not type(None)]
        tag = _tag_field(inner)
        if tag is not None and isinstance(value, dict):
            return coerce(value, _tagged_member(inner, tag, value), where, exc)
        if len(inner) == 1:
            return coerce(value, inner[0], where, exc)
        for arg in inner:
            try:
                return coerce(value, arg, where, exc)
            except exc:
                continue
        raise exc(f"{where}: {value!r} is not a valid {type_name(hint)}")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise exc(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise exc(f"{where} expects a mapping of {hint.__name__} fields, got {value!r}")
        return build_dataclass(hint, value, where, exc)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise exc(f"{where} expects a sequence, got {value!r}")
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]", exc) for i, v in enumerate(value))
        if len(value) != len(args):
            raise exc(f"{where} expects {len(args)} values, got {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]", exc) for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise exc(f"{where} expects a list, got {value!r}")
        return (
            [coerce(v, args[0], f"{where}[{i}]", exc) for i, v in enumerate(value)] if args else list(value)
        )
    if origin in (dict, collections.abc.Mapping) or hint is dict:
        if not isinstance(value, dict):
            raise exc(f"{where} expects a mapping, got {value!r}")
        if not args:
            return dict(value)
        return {
            coerce(k, args[0], where, exc): coerce(v, args[1], f"{where}.{k}", exc) for k, v in value.items()
        }
    if hint is type(None):
        if value is not None:
            raise exc(f"{where} expects null, got {value!r}")
        return None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise exc(f"{where} expects a float, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise exc(f"{where} expects an int, got {value!r}")
        return value
    if hint in (str, bool):
        if type(value) is not hint:
            raise exc(f"{where} expects a {hint.__name__}, got {value!r}")
        return value
    raise exc(f"{where}: unsupported field type {type_name(hint)}")


def _check_keys(cls: type, values: Any, where: str, exc: type[Exception]) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise exc(f"{where} expects a mapping of {cls.__name__} fields, got {values!r}")
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise exc(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(names)}")
    return typing.get_type_hints(cls)


def build_dataclass(
    cls: type, values: dict[str, Any] | None, where: str, exc: type[Exception] = ValueError
) -> Any:
    """Dataclass ``cls`` from ``values`` (missing fields take their defaults), type-checked.

    A ``__post_init__`` check of ``cls`` itself raises its ValueError prefixed with ``where``.
    """
    values = {} if values is None else values
    hints = _check_keys(cls, values, where, exc)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}", exc) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def replace_config(cfg: Any, values: dict[str, Any], where: str, exc: type[Exception] = TypeError) -> Any:
    """A copy of dataclass ``cfg`` with ``values`` set, type-checked; nested dataclass fields merge dicts.

    A dict for a tagged-union field whose tag names another member builds that member from its defaults.
    """
    hints = _check_keys(type(cfg), values, where, exc)
    updates = {}
    for key, value in values.items():
        current = getattr(cfg, key)
        sub = f"{where}.{key}"
        if dataclasses.is_dataclass(current) and isinstance(value, dict) and not _changes_tag(current, value):
            updates[key] = replace_config(current, value, sub, exc)
        else:
            updates[key] = coerce(value, hints[key], sub, exc)
    return dataclasses.replace(cfg, **updates)  # __post_init__ checks raise their own ValueError


def _changes_tag(current: Any, value: dict) -> bool:
    """Whether ``value`` sets a Literal (tag) field of ``current`` to something else (another member)."""
    hints = typing.get_type_hints(type(current))
    return any(
        typing.get_origin(hints[name]) is Literal and value[name] != getattr(current, name)
        for name in value
        if name in hints
    )


def to_plain(value: Any) -> Any:
    """JSON/YAML-ready data: dataclasses become dicts, tuples lists (``build_dataclass`` inverts it)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value
