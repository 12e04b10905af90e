"""Decoding loaded YAML (or JSON) into the section dataclasses: every key known, every
value of its declared type, unit and bounds, or a one-line ConfigError naming the key."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from ..errors import ConfigError, brief
from ..units import UnitError, in_unit
from .yamlload import BadKey

def _num(bound: float) -> str:
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _describe(tp: Any, meta: Mapping[str, Any]) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(str, typing.get_args(tp)))
    if tp in (int, float):
        kind = "a whole number" if tp is int else "a number"
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is None or hi is None:
            return kind
        return f"{kind} from {_num(lo)} to {_num(hi)}"
    return getattr(tp, "__name__", str(tp))


def _type_name(value: Any) -> str:
    if isinstance(value, BadKey):
        value = value.value
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number", type(None): "null"}.get(type(value),
                                                                           type(value).__name__)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _key(key: Any) -> str:
    """A mapping key as a part of a key path: as is if it is a short plain word."""
    text = str(key) if isinstance(key, str | int) and not isinstance(key, bool) else ""
    return text if _PLAIN_KEY.fullmatch(text) else brief(key, 40)


def _join(path: str, key: Any) -> str:
    return f"{path}.{_key(key)}" if path else _key(key)


class Decoder:
    def __init__(self, source: str, *, json_keys: bool = False) -> None:
        self.source = source
        self.json_keys = json_keys  # JSON object keys are strings: "1" is node 1

    def fail(self, path: str, problem: str) -> ConfigError:
        return ConfigError(self.source, path, problem)

    def dataclass(self, cls: type[Any], data: Any, path: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise self.fail(path or "<document>", f"expected a mapping, got {_type_name(data)}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if not isinstance(key, str):
                raise self.fail(path or "<document>", f"keys must be strings, got "
                                                      f"{_type_name(key)} {brief(key, 40)}")
            if key not in fields:
                known = ", ".join(fields)
                raise self.fail(_join(path, key), f"unknown key (known here: {known})")
        values = {}
        for name, f in fields.items():
            if name in data:
                values[name] = self.value(hints[name], data[name], _join(path, name), f.metadata)
        return cls(**values)

    def value(self, tp: Any, raw: Any, path: str, meta: Mapping[str, Any]) -> Any:
        origin = typing.get_origin(tp)
        if origin in (typing.Union, types.UnionType):
            wants = []
            for arm in typing.get_args(tp):
                try:
                    return self.value(arm, raw, path, meta)
                except ConfigError:
                    wants.append(_describe(arm, meta))
            raise self.fail(path, f"must be {' or '.join(wants)}, got {brief(raw)}")
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            return self.dataclass(tp, raw, path)
        if origin is Literal:
            choices = typing.get_args(tp)
            if raw is False and "off" in choices:
                return "off"  # YAML reads a bare `off` as false
            if not isinstance(raw, str | int | float | type(None)) or raw not in choices:
                raise self.fail(path, f"must be one of {', '.join(map(str, choices))}, "
                                      f"got {brief(raw)}")
            return raw
        if tp is bool:
            if not isinstance(raw, bool):
                raise self.fail(path, f"expected true or false, got {_type_name(raw)}")
            return raw
        if tp in (int, float):
            return self.number(tp, raw, path, meta)
        if tp is str:
            if not isinstance(raw, str):
                raise self.fail(path, f"expected a string, got {_type_name(raw)}")
            if "\0" in raw:
                raise self.fail(path, "must not contain a NUL character")
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError:  # "\ud800" is a valid YAML escape
                raise self.fail(path, f"not UTF-8 text: {brief(raw)}") from None
            return raw
        if origin is tuple:
            args = typing.get_args(tp)
            if not isinstance(raw, list):
                raise self.fail(path, f"expected a list, got {_type_name(raw)}")
            return tuple(self.value(args[0], item, f"{path}[{i}]", meta)
                         for i, item in enumerate(raw))
        if origin is Mapping:
            ktp, vtp = typing.get_args(tp)
            if not isinstance(raw, dict):
                raise self.fail(path, f"expected a mapping, got {_type_name(raw)}")
            out = {}
            for k, v in raw.items():
                if isinstance(k, BadKey):
                    raise self.fail(path, f"keys must be {_describe(ktp, meta)}, "
                                          f"got {_type_name(k)} {brief(k, 40)}")
                if self.json_keys and isinstance(k, str) and re.fullmatch(r"-?[0-9]{1,9}", k):
                    k = int(k)
                where = _join(path, k)
                out[self.value(ktp, k, where, meta)] = self.value(vtp, v, where, meta)
            return types.MappingProxyType(out)
        raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug, not input

    def number(self, tp: type, raw: Any, path: str, meta: Mapping[str, Any]) -> int | float:
        unit = meta.get("unit")
        try:
            if unit is not None:
                value: int | float = in_unit(raw, unit)
            elif isinstance(raw, bool) or not isinstance(raw, int | float):
                raise UnitError(f"expected a number, got {_type_name(raw)}")
            else:
                value = raw
        except UnitError as exc:
            raise self.fail(path, str(exc)) from None
        # Ints are compared exactly, never through float(): float(10**400) overflows.
        if isinstance(value, float):
            if math.isnan(value):
                raise self.fail(path, f"must be a number, got {brief(raw)}")
            if tp is int and math.isfinite(value) and not value.is_integer():
                raise self.fail(path, f"must be a whole number{' of ' + unit if unit else ''}, "
                                      f"got {brief(raw)}")
        lo, hi = meta.get("lo"), meta.get("hi")
        suffix = f" {unit}" if unit else ""
        if lo is not None and value < lo:
            raise self.fail(path, f"must be >= {_num(lo)}{suffix}, got {brief(raw)}")
        if hi is not None and value > hi:
            raise self.fail(path, f"must be <= {_num(hi)}{suffix}, got {brief(raw)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.fail(path, f"must be a finite number, got {brief(raw)}")
        return int(value) if tp is int else float(value)
