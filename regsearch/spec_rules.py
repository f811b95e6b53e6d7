"""The rules a study file's values follow, each written once.

A rule is pydantic metadata on a field of the spec (`Annotated[int, IntegerIn(1, 100)]`):
`check` converts a value or raises `Invalid` with the words users read, and the rule adds
the same limits to the JSON Schema that editors check study files against. Command-line
flags standing for a field are checked by its rule too (`study_file.check_field`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

#: The pydantic error type of every rule; `study_file` turns it into a `SpecError` line.
RULE_ERROR = "regsearch"


class Invalid(ValueError):
    """A single value is wrong; the message is the rule, the caller adds file and field."""


def show(value: Any) -> str:
    """A value as an error message quotes it: containers by their type only."""
    return repr(value) if not isinstance(value, (dict, list, tuple)) else type(value).__name__


def broken(message: str, field: str = "") -> PydanticCustomError:
    """A rule error for a validator; `field` is the offending key below the one validated."""
    return PydanticCustomError(RULE_ERROR, message, {"field": field})


class Rule:
    """Base of the rules: runs `check` before pydantic's own type check (which it makes
    redundant) and adds `schema_keywords` to the field's JSON Schema."""

    def check(self, value: Any) -> Any:
        raise NotImplementedError

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema,
                                     handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = dict(handler(schema))
        if {"type": "null"} in out.get("anyOf", ()):  # an optional field: limit the value
            out["anyOf"] = [branch if branch == {"type": "null"} else
                            self.schema_keywords(dict(branch)) for branch in out["anyOf"]]
            return out
        return self.schema_keywords(out)

    def _validate(self, value: Any) -> Any:
        if value is None:  # "not set", for the fields that allow it; pydantic decides
            return value
        try:
            return self.check(value)
        except Invalid as bad:
            raise broken(str(bad)) from None


@dataclass(frozen=True)
class IntegerIn(Rule):
    low: int
    high: int | None = None

    def check(self, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"expected an integer, got {show(value)}")
        if value < self.low or (self.high is not None and value > self.high):
            bounds = f">= {self.low}" if self.high is None else f"in [{self.low}, {self.high}]"
            raise Invalid(f"must be an integer {bounds}, got {value}")
        return value

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        limits = {"minimum": self.low, "maximum": self.high}
        return schema | {k: v for k, v in limits.items() if v is not None}


def number(value: Any) -> float:
    """A finite float; PyYAML reads `1e-4` (no dot) as a string, taken as the number meant."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise Invalid(f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Invalid(f"expected a number, got {show(value)}")
    if isinstance(value, int) and abs(value) > 1e300:
        raise Invalid("is too large to be a float")
    if not math.isfinite(value):
        raise Invalid(f"must be a finite number, got {value}")
    return float(value)


@dataclass(frozen=True)
class Number(Rule):
    def check(self, value: Any) -> float:
        return number(value)


@dataclass(frozen=True)
class Positive(Rule):
    def check(self, value: Any) -> float:
        result = number(value)
        if result <= 0:
            raise Invalid(f"must be > 0, got {result:g}")
        return result

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema | {"exclusiveMinimum": 0}


@dataclass(frozen=True)
class FractionIn(Rule):
    """A number in [low, high], or [low, high) when `high_open`."""

    low: float
    high: float
    high_open: bool = False

    def check(self, value: Any) -> float:
        result = number(value)
        too_high = result >= self.high if self.high_open else result > self.high
        if result < self.low or too_high:
            bracket = ")" if self.high_open else "]"
            raise Invalid(f"must be in [{self.low:g}, {self.high:g}{bracket}, got {result:g}")
        return result

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        top = "exclusiveMaximum" if self.high_open else "maximum"
        return schema | {"minimum": self.low, top: self.high}


@dataclass(frozen=True)
class OneOf(Rule):
    options: tuple[str, ...]

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or value not in self.options:
            raise Invalid(f"got {show(value)}; allowed values are: {', '.join(self.options)}")
        return value

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema | {"enum": list(self.options)}


def text(value: Any) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise Invalid(f"expected a non-empty string, got {show(value)}")
    return str(value)


@dataclass(frozen=True)
class Text(Rule):
    """A non-empty string (a number is read as its text: a column may be named 3)."""

    def check(self, value: Any) -> str:
        return text(value)

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema | {"type": ["string", "integer"], "minLength": 1}


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Name(Rule):
    def check(self, value: Any) -> str:
        result = text(value)
        if not NAME.fullmatch(result):
            raise Invalid(f"got {result!r}; use 1-100 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
        return result

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema | {"type": ["string", "integer"], "pattern": f"^{NAME.pattern}$"}


@dataclass(frozen=True)
class Boolean(Rule):
    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Invalid(f"expected true or false, got {show(value)}")
        return value


@dataclass(frozen=True)
class StorageUrl(Rule):
    """A SQLAlchemy URL, `~` expanded."""

    def check(self, value: Any) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        from regsearch.storage import expand_home

        url = text(value)
        try:
            make_url(url)
        except ArgumentError:
            raise Invalid(f"got {url!r}, which is not a SQLAlchemy URL; use e.g. "
                          "sqlite:///runs/regsearch.db or "
                          "postgresql+psycopg://user@host/db") from None
        return expand_home(url)

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema | {"minLength": 1}


@dataclass(frozen=True)
class TrackingUri(Rule):
    """A URI MLflow can record to, `~` expanded."""

    def check(self, value: Any) -> str:
        from regsearch.errors import StorageError
        from regsearch.storage import check_tracking_uri, expand_home

        uri = expand_home(text(value))
        try:
            check_tracking_uri(uri)
        except StorageError as exc:
            raise Invalid(str(exc).split(": ", 2)[-1]) from None
        return uri

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        return schema | {"minLength": 1}


@dataclass(frozen=True)
class Choices(Rule):
    """A non-empty list of distinct options (one option alone may be written bare)."""

    options: tuple[str, ...]

    def check(self, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise Invalid("must be a non-empty list drawn from: " + ", ".join(self.options))
        chosen = tuple(OneOf(self.options).check(v) for v in value)
        if len(set(chosen)) != len(chosen):
            raise Invalid(f"lists a type twice: {list(chosen)}")
        return chosen

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        one = {"type": "string", "enum": list(self.options)}
        many = {"type": "array", "items": one, "minItems": 1, "uniqueItems": True}
        return {k: v for k, v in schema.items() if k not in ("type", "items")} | {
            "anyOf": [one, many]}


@dataclass(frozen=True)
class LayerSizes(Rule):
    """Hidden layer widths: a non-empty list (one layer may be written bare)."""

    low: int = 1
    high: int = 65536

    def check(self, value: Any) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise Invalid("must be a non-empty list of layer sizes, e.g. [64, 64]")
        unit = IntegerIn(self.low, self.high)
        return tuple(unit.check(v) for v in value)

    def schema_keywords(self, schema: dict[str, Any]) -> dict[str, Any]:
        one = {"type": "integer", "minimum": self.low, "maximum": self.high}
        many = {"type": "array", "items": one, "minItems": 1}
        return {k: v for k, v in schema.items() if k not in ("type", "items")} | {
            "anyOf": [one, many]}
