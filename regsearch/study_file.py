"""Study files: YAML in, a frozen and fully validated `StudySpec` out.

Everything a study file can get wrong is caught here, before any data is loaded or any
database is touched, and every error names the file, the field path and what is allowed.
A flag or environment variable standing for a field is checked by the same rule
(`check_field`).
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast
from collections.abc import Callable, Mapping

import yaml

from regsearch.errors import SpecError
from regsearch.spec import (ACTIVATIONS, BUILTIN_DATASETS, ConfirmSpec, DEFAULT_STORAGE,
                            DEFAULT_TRACKING_URI, DIRECTIONS, DataSpec, EarlyStopping, METRICS,
                            MlflowSpec, ModelSpec, OPTIMIZERS, ObjectiveSpec, PACKED_OPTIMIZERS,
                            PRUNERS, REGULARIZERS, Range, SAMPLERS, SYNTHETIC_TASKS, SearchSpec,
                            SpaceSpec, StudySpec, SyntheticSpec, TASKS, TRAINERS, TrainSpec,
                            WorkersSpec, objective_problem)

# --------------------------------------------------------------------------- parsing

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_TOP_KEYS = ("name", "seed", "data", "model", "space", "train", "objective", "search",
             "confirm", "storage", "mlflow", "workers", "trainer")
_DATA_KEYS = ("builtin", "file", "target", "synthetic", "validation_fraction", "test_fraction",
              "folds", "repeats")
_SYNTHETIC_KEYS = ("task", "samples", "features", "classes", "informative", "noise")


class _Fields:
    """One mapping of a study file, read key by key so that leftovers are errors."""

    def __init__(self, raw: Any, path: str, source: str, keys: tuple[str, ...]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise SpecError(source, path or "(top level)",
                            f"expected a mapping of keys to values, got {_show(raw)}")
        self.raw = dict(raw)
        self.path = path
        self.source = source
        # Unknown keys first: a misspelled key must not surface as "x is required".
        unknown = sorted(set(map(str, self.raw)) - set(keys))
        if unknown:
            raise SpecError(source, self.where(unknown[0]),
                            f"unknown key; allowed keys here are: {', '.join(sorted(keys))}")

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(self.source, self.where(key), message)

    def has(self, key: str) -> bool:
        return key in self.raw and self.raw[key] is not None

    def get(self, key: str, convert: Callable[[Any, str], T], default: T) -> T:
        if not self.has(key):
            return default
        try:
            return convert(self.raw[key], key)
        except _Invalid as bad:
            raise self.error(key, str(bad)) from None

    def require(self, key: str, convert: Callable[[Any, str], T], hint: str) -> T:
        if not self.has(key):
            raise self.error(key, f"is required: {hint}")
        return cast(T, self.get(key, convert, None))

    def sub(self, key: str, keys: tuple[str, ...]) -> _Fields:
        return _Fields(self.raw.get(key), self.where(key), self.source, keys)


class _Invalid(ValueError):
    """A single value is wrong; `_Fields` adds the file and field path."""


def _show(value: Any) -> str:
    return repr(value) if not isinstance(value, (dict, list)) else type(value).__name__


def _integer(low: int | None = None, high: int | None = None) -> Callable[[Any, str], int]:
    def convert(value: Any, _key: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_show(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise _Invalid(f"must be an integer {bounds}, got {value}")
        return value
    return convert


def _number(value: Any, _key: str) -> float:
    # PyYAML reads `1e-4` (no dot) as a string; accept it as the number the user meant.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Invalid(f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"expected a number, got {_show(value)}")
    if isinstance(value, int) and abs(value) > 1e300:
        raise _Invalid("is too large to be a float")
    if not math.isfinite(value):
        raise _Invalid(f"must be a finite number, got {value}")
    return float(value)


def _positive(value: Any, key: str) -> float:
    number = _number(value, key)
    if number <= 0:
        raise _Invalid(f"must be > 0, got {number:g}")
    return number


def _fraction(low: float, high: float, *, high_open: bool) -> Callable[[Any, str], float]:
    def convert(value: Any, key: str) -> float:
        number = _number(value, key)
        too_high = number >= high if high_open else number > high
        if number < low or too_high:
            bracket = ")" if high_open else "]"
            raise _Invalid(f"must be in [{low:g}, {high:g}{bracket}, got {number:g}")
        return number
    return convert


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def convert(value: Any, _key: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid(f"got {_show(value)}; allowed values are: {', '.join(options)}")
        return value
    return convert


def _text(value: Any, _key: str) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or str(value) == "":
        raise _Invalid(f"expected a non-empty string, got {_show(value)}")
    return str(value)


def _name(value: Any, key: str) -> str:
    text = _text(value, key)
    if not _NAME.fullmatch(text):
        raise _Invalid(f"got {text!r}; use 1-100 letters, digits, '.', '_' or '-', "
                       "starting with a letter or digit")
    return text


def _storage_url(value: Any, key: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from regsearch.storage import expand_home

    text = _text(value, key)
    try:
        make_url(text)
    except ArgumentError:
        raise _Invalid(f"got {text!r}, which is not a SQLAlchemy URL; "
                       "use e.g. sqlite:///runs/regsearch.db or "
                       "postgresql+psycopg://user@host/db") from None
    return expand_home(text)


def _tracking_uri(value: Any, key: str) -> str:
    from regsearch.errors import StorageError
    from regsearch.storage import check_tracking_uri, expand_home

    uri = expand_home(_text(value, key))
    try:
        check_tracking_uri(uri, key)
    except StorageError as exc:
        raise _Invalid(str(exc).split(": ", 2)[-1]) from None
    return uri


#: Study-file fields that a command-line flag or an environment variable can set; their
#: values are checked by the same rules.
_OVERRIDABLE: dict[str, Callable[[Any, str], Any]] = {
    "search.n_trials": _integer(1, 10_000_000), "search.timeout": _positive,
    "storage": _storage_url, "mlflow.tracking_uri": _tracking_uri}


def check_field(path: str, value: Any) -> Any:
    """A flag's or environment variable's value, checked as the study-file field `path`
    is (a text is read as YAML reads a scalar: "5" is 5); raises ValueError with the rule."""
    if isinstance(value, str) and path.startswith("search."):
        value = yaml.safe_load(value) if value.strip() else value
    try:
        return _OVERRIDABLE[path](value, path.rsplit(".", 1)[-1])
    except _Invalid as bad:
        raise ValueError(str(bad)) from None


# --------------------------------------------------------------------------- sections

def _parse_range(f: _Fields, key: str, default: Range,
                 convert: Callable[[Any, str], float]) -> Range:
    if not f.has(key):
        return default
    sub = f.sub(key, ("low", "high"))
    low = sub.get("low", convert, default.low)
    high = sub.get("high", convert, default.high)
    if low > high:
        raise sub.error("low", f"must be <= {key}.high, got low={low:g} > high={high:g}")
    return Range(low, high)


def _parse_regularizers(value: Any, _key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty list drawn from: " + ", ".join(REGULARIZERS))
    check = _choice(REGULARIZERS)
    chosen = tuple(check(v, _key) for v in value)
    if len(set(chosen)) != len(chosen):
        raise _Invalid(f"lists a type twice: {list(chosen)}")
    return chosen


def _parse_units(value: Any, key: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Invalid("must be a non-empty list of layer sizes, e.g. [64, 64]")
    unit = _integer(1, 65536)
    return tuple(unit(v, key) for v in value)


def _parse_synthetic(f: _Fields) -> SyntheticSpec:
    task = f.require("task", _choice(SYNTHETIC_TASKS), "classification or regression")
    spec = SyntheticSpec(
        task=task,
        samples=f.get("samples", _integer(20, 10_000_000), 2000),
        features=f.get("features", _integer(1, 100_000), 20),
        classes=f.get("classes", _integer(2, 1000), 2),
        informative=f.get("informative", _integer(1, 100_000), None),
        noise=f.get("noise", _fraction(0.0, 1e6, high_open=False), 0.1),
    )
    if spec.informative is not None and spec.informative > spec.features:
        raise f.error("informative", f"must be <= features ({spec.features}), "
                                     f"got {spec.informative}")
    return spec


def _parse_data(f: _Fields, base: Path) -> DataSpec:
    builtin = f.get("builtin", _choice(BUILTIN_DATASETS), None)
    file = f.get("file", _text, None)
    synthetic = (_parse_synthetic(f.sub("synthetic", _SYNTHETIC_KEYS))
                 if f.has("synthetic") else None)
    given = [k for k, v in (("builtin", builtin), ("file", file), ("synthetic", synthetic)) if v]
    if len(given) != 1:
        problem = "none is given" if not given else f"got {', '.join(given)}"
        raise SpecError(f.source, f.path,
                        f"give exactly one of builtin, file, synthetic; {problem}")
    target = f.get("target", _text, None)
    if file is not None:
        path = Path(file).expanduser()
        file = str(path if path.is_absolute() else (base / path))
        if target is None and not file.endswith(".npz"):
            raise f.error("target", "is required with `file`: the name of the target column")
    elif target is not None:
        raise f.error("target", "is only used with `file`; remove it for built-in data")
    validation = f.get("validation_fraction", _fraction(0.0, 1.0, high_open=True), 0.2)
    test = f.get("test_fraction", _fraction(0.0, 1.0, high_open=True), 0.0)
    if validation <= 0:
        raise f.error("validation_fraction", "must be > 0: the objective is measured on it")
    if round(validation + test, 9) >= 0.9:
        raise f.error("test_fraction", f"validation_fraction + test_fraction must be < 0.9 "
                                       f"to leave data to train on, got {validation + test:g}")
    folds = f.get("folds", _integer(2, 20), None)
    repeats = f.get("repeats", _integer(2, 20), None)
    if folds and repeats:
        raise f.error("repeats", "give folds or repeats, not both: folds already score each "
                                 "trial with several models")
    if folds and f.has("validation_fraction"):
        raise f.error("validation_fraction", f"is not used with folds (each of the {folds} "
                                             "folds is in turn the validation rows); remove it")
    return DataSpec(builtin=builtin, file=file, target=target, synthetic=synthetic,
                    validation_fraction=validation, test_fraction=test, folds=folds,
                    repeats=repeats)


def _parse_model(f: _Fields) -> ModelSpec:
    spec = ModelSpec(
        hidden_units=f.get("hidden_units", _parse_units, ModelSpec.hidden_units),
        activation=f.get("activation", _choice(ACTIVATIONS), "relu"),
        task=f.get("task", _choice(TASKS), None),
    )
    return spec


def _parse_space(f: _Fields) -> SpaceSpec:
    default = SpaceSpec()
    spec = SpaceSpec(
        regularizers=f.get("regularizers", _parse_regularizers, default.regularizers),
        strength=_parse_range(f, "strength", default.strength, _positive),
        dropout=_parse_range(f, "dropout", default.dropout,
                             _fraction(0.0, 1.0, high_open=True)),
    )
    return spec


def _parse_train(f: _Fields) -> TrainSpec:
    early = None
    if f.has("early_stopping"):
        sub = f.sub("early_stopping", ("patience", "min_delta"))
        early = EarlyStopping(patience=sub.require("patience", _integer(1), "epochs to wait"),
                              min_delta=sub.get("min_delta", _fraction(0, 1e9, high_open=False),
                                                0.0))
    spec = TrainSpec(
        epochs=f.get("epochs", _integer(1, 100_000), 20),
        batch_size=f.get("batch_size", _integer(1, 1_000_000), 64),
        optimizer=f.get("optimizer", _choice(OPTIMIZERS), "adam"),
        learning_rate=f.get("learning_rate", _positive, 1e-3),
        early_stopping=early,
    )
    return spec


def _parse_objective(f: _Fields, task: str | None) -> ObjectiveSpec:
    metric = f.get("metric", _choice(tuple(METRICS)), None)
    direction = f.get("direction", _choice(DIRECTIONS), None)
    if metric is not None:
        # the direction first: in a study file it is the more specific mistake
        problem = (objective_problem(metric, direction, None, named=True)
                   or objective_problem(metric, None, task, named=True))
        if problem:
            raise f.error(*problem)
    return ObjectiveSpec(metric=metric, direction=direction)


def _boolean(value: Any, _key: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _parse_mlflow(f: _Fields, storage: str) -> MlflowSpec:
    spec = MlflowSpec(tracking_uri=f.get("tracking_uri", _tracking_uri, DEFAULT_TRACKING_URI),
                      enabled=f.get("enabled", _boolean, True))
    from regsearch.storage import same_database

    if spec.enabled and same_database(spec.tracking_uri, storage):
        raise f.error("tracking_uri", "must not be the study's storage URL: Optuna and MLflow "
                                      "both keep an `alembic_version` table; use a database "
                                      "of its own, e.g. sqlite:///runs/mlflow.db")
    return spec


def _parse_workers(f: _Fields) -> WorkersSpec:
    spec = WorkersSpec(
        heartbeat_interval=f.get("heartbeat_interval", _integer(1, 3600), 10),
        grace_period=f.get("grace_period", _integer(2, 86400), 120),
        max_retries=f.get("max_retries", _integer(0, 100), 2),
        recycle_after=f.get("recycle_after", _integer(1, 10_000_000), None),
    )
    if spec.grace_period < 2 * spec.heartbeat_interval:
        raise f.error("grace_period", f"must be at least twice heartbeat_interval "
                                      f"({spec.heartbeat_interval}), got {spec.grace_period}; "
                                      "a busy worker must not be declared dead")
    return spec


def _parse_confirm(top: _Fields) -> ConfirmSpec | None:
    """`confirm: {top: K, seeds: R}`; absent: the defaults; `confirm: null`: off."""
    if "confirm" in top.raw and top.raw["confirm"] is None:
        return None
    f = top.sub("confirm", ("top", "seeds"))
    return ConfirmSpec(top=f.get("top", _integer(1, 100), 5),
                       seeds=f.get("seeds", _integer(2, 100), 5))


def _parse_search(f: _Fields) -> SearchSpec:
    timeout = f.get("timeout", _positive, None)
    spec = SearchSpec(
        sampler=f.get("sampler", _choice(SAMPLERS), "tpe"),
        pruner=f.get("pruner", _choice(PRUNERS), "median"),
        n_trials=f.get("n_trials", _integer(1, 10_000_000), None),
        timeout=timeout,
        grid_size=f.get("grid_size", _integer(1, 100), 3),
        pack_size=f.get("pack_size", _integer(1, 4096), None),
    )
    return spec


def parse_spec(raw: Any, *, source: str = "<spec>", base: Path | None = None) -> StudySpec:
    """Validate an already-parsed study mapping (from YAML, JSON or code)."""
    top = _Fields(raw, "", source, _TOP_KEYS)
    name = top.require("name", _name, "a study name such as digits-quick")
    seed = top.get("seed", _integer(0, 2**31 - 1), 0)
    data = _parse_data(top.sub("data", _DATA_KEYS), base or Path.cwd()) if top.has("data") else None
    if data is None:
        raise top.error("data", "is required: e.g. `data: {builtin: digits}`")
    model = _parse_model(top.sub("model", ("hidden_units", "activation", "task")))
    storage = top.get("storage", _storage_url, DEFAULT_STORAGE)
    spec = StudySpec(
        name=name,
        seed=seed,
        data=data,
        model=model,
        space=_parse_space(top.sub("space", ("regularizers", "strength", "dropout"))),
        train=_parse_train(top.sub("train", ("epochs", "batch_size", "optimizer",
                                             "learning_rate", "early_stopping"))),
        objective=_parse_objective(top.sub("objective", ("metric", "direction")), model.task),
        search=_parse_search(top.sub("search", ("sampler", "pruner", "n_trials", "timeout",
                                                "grid_size", "pack_size"))),
        storage=storage,
        mlflow=_parse_mlflow(top.sub("mlflow", ("tracking_uri", "enabled")), storage),
        workers=_parse_workers(top.sub("workers", ("heartbeat_interval", "grace_period",
                                                   "max_retries", "recycle_after"))),
        trainer=top.get("trainer", _choice(TRAINERS), "default"),
        confirm=_parse_confirm(top),
        source=source,
    )
    if spec.trainer == "default":  # packed where it can: the same training, many times faster
        packable = spec.train.optimizer in PACKED_OPTIMIZERS
        spec = replace(spec, trainer="packed" if packable else "keras")
    if spec.trainer == "packed" and spec.train.optimizer not in PACKED_OPTIMIZERS:
        raise SpecError(source, "train.optimizer",
                        f"the packed trainer supports {', '.join(PACKED_OPTIMIZERS)}, got "
                        f"{spec.train.optimizer!r}; use one of them or `trainer: keras`")
    return spec


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
