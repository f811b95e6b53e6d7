"""Study files: YAML in, a frozen and fully validated `StudySpec` out.

Everything a study file can get wrong is caught here, before any data is loaded or any
database is touched. The rules live on the spec's fields (`spec`, `spec_rules`); this module
reads the YAML, runs them and words every problem at once, one line each naming the file,
the field path and what is allowed. A flag or environment variable standing for a field is
checked by the same rule (`check_field`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from regsearch.errors import SpecError
from regsearch.spec import StudySpec
from regsearch.spec_rules import RULE_ERROR, Invalid, Rule, show

#: The key whose `null` means "off" rather than "the default" (`confirm: null`).
_NULL_MEANS_OFF = ("confirm",)
_MAPPING = "expected a mapping of keys to values"


@functools.cache
def _validator() -> TypeAdapter[StudySpec]:
    return TypeAdapter(StudySpec)


def parse_spec(raw: Any, *, source: str = "<spec>", base: Path | None = None) -> StudySpec:
    """Validate an already-parsed study mapping (from YAML, JSON or code); relative data
    paths are taken from `base` (default: the working directory)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(source, "(top level)", f"{_MAPPING}, got {show(raw)}")
    context = {"base": base or Path.cwd(), "source": source}
    try:
        return _validator().validate_python(_without_nulls(raw), context=context)
    except ValidationError as exc:
        problems = sorted((_problem(error) for error in exc.errors()),
                          key=lambda problem: not problem[1].startswith("unknown key"))
        raise SpecError(source, *problems[0], more=problems[1:]) from None


def _without_nulls(raw: Mapping[Any, Any], top: bool = True) -> dict[Any, Any]:
    """`key: null` is the key left out (the default), except where null means "off"."""
    return {key: _without_nulls(value, False) if isinstance(value, Mapping) else value
            for key, value in raw.items()
            if value is not None or (top and key in _NULL_MEANS_OFF)}


def _problem(error: Any) -> tuple[str, str]:
    """(field path, message) of one pydantic error, in the words of the rules."""
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    kind = error["type"]
    if kind == RULE_ERROR:
        extra = error.get("ctx", {}).get("field", "")
        return ".".join(loc + extra.split(".") if extra else loc), error["msg"]
    if kind == "unexpected_keyword_argument":
        allowed = ", ".join(sorted(_file_keys(_section_at(loc[:-1]))))
        return ".".join(loc), f"unknown key; allowed keys here are: {allowed}"
    if kind == "missing":
        hint = _field_at(loc).description
        return ".".join(loc), "is required" + (f": {hint}" if hint else "")
    if kind == "dataclass_type":
        return ".".join(loc) or "(top level)", f"{_MAPPING}, got {show(error['input'])}"
    return ".".join(loc), error["msg"]


def _section_at(loc: list[str]) -> type:
    """The spec class a field path leads to."""
    section: type = StudySpec
    for key in loc:
        section = _section_of(_field_at([key], section).annotation)
    return section


def _section_of(annotation: Any) -> type:
    """The dataclass inside `X | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.cast(type, annotation)


def _field_at(loc: list[str], section: type = StudySpec) -> Any:
    """pydantic's FieldInfo of the field at `loc` below `section`."""
    parent = _section_at(loc[:-1]) if section is StudySpec else section
    return parent.__pydantic_fields__[loc[-1]]  # type: ignore[attr-defined]


def _file_keys(section: type) -> list[str]:
    return [f.name for f in dataclasses.fields(section) if f.name != "source"]


def check_field(path: str, value: Any) -> Any:
    """A flag's or environment variable's value, checked as the study-file field `path`
    is (a text is read as YAML reads a scalar: "5" is 5); raises ValueError with the rule."""
    if isinstance(value, str) and path.startswith("search."):
        value = yaml.safe_load(value) if value.strip() else value
    rule = next(m for m in _field_at(path.split(".")).metadata if isinstance(m, Rule))
    try:
        return rule.check(value)
    except Invalid as bad:
        raise ValueError(str(bad)) from None


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a study file, for editors (`regsearch schema`)."""
    schema = _validator().json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "regsearch study file", **{k: v for k, v in schema.items()
                                                 if k != "title"}}


def json_schema_text() -> str:
    """The schema as shipped in studies/regsearch.schema.json."""
    return json.dumps(json_schema(), indent=2) + "\n"


class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names a key twice: YAML would silently keep the last value."""

    def __init__(self, key: Any, first: int, again: int) -> None:
        super().__init__(f"key {key!r} is given twice (lines {first} and {again}); "
                         "keep one of them")
        self.line = again


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicated keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise DuplicateKeyError(key, seen[key], line)
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a study file; raises `SpecError` naming the file and field."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(source, "", "no such study file; check the path "
                                    "(ready-made studies are in studies/)") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise SpecError(source, "", f"cannot be read as a UTF-8 text file ({exc})") from None
    return parse_spec_text(text, source=source, base=path.resolve().parent)


def parse_spec_text(text: str, *, source: str = "<study text>",
                    base: Path | None = None) -> StudySpec:
    """A study given as YAML text; relative data paths are taken from `base`."""
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as exc:
        raise SpecError(source, f"line {exc.line}", str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(source, line, f"invalid YAML: {problem}") from None
    return parse_spec(raw, source=source, base=base)
