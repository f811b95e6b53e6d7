"""Tests for `regsearch.spec`: study files in, a validated `StudySpec` (or a `SpecError`) out.

Every error must name the file, the dotted field path and what is allowed, so the bad-value
tests check all three: the message starts with "<file>: <field.path>: " and contains the rule.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from regsearch.errors import RegsearchError, SpecError
from regsearch.objective import Objective, resolve_objective
from regsearch.spec import (DEFAULT_STORAGE, REGULARIZERS, DataSpec, EarlyStopping, ModelSpec,
                            ObjectiveSpec, Range, SearchSpec, SpaceSpec, StudySpec, SyntheticSpec,
                            TrainSpec)
from regsearch.study_file import load_spec, parse_spec

# --------------------------------------------------------------------------- helpers

BASE: dict[str, Any] = {"name": "demo", "data": {"builtin": "digits"}}
DELETE = object()  # a value for `with_fields` that removes the key instead of setting it


def with_fields(changes: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A deep copy of `base` (default BASE) with each dotted path set (or deleted)."""
    out = copy.deepcopy(BASE if base is None else base)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return out


def write_yaml(tmp_path: Path, content: Any, name: str = "study.yaml") -> Path:
    """Write a mapping (dumped as YAML) or raw YAML text to tmp_path/name."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_mapping(tmp_path: Path, mapping: Any, name: str = "study.yaml") -> StudySpec:
    return load_spec(write_yaml(tmp_path, mapping, name))


def assert_spec_error(tmp_path: Path, mapping: Any, field: str, rule: str) -> SpecError:
    """Loading `mapping` from a file fails with "<file>: <field>: ...<rule>..."."""
    path = write_yaml(tmp_path, mapping, "bad-study.yaml")
    prefix = f"{path}: {field}: "
    with pytest.raises(SpecError, match="^" + re.escape(prefix)) as info:
        load_spec(path)
    message = str(info.value)
    assert "bad-study.yaml" in message
    assert rule in message, f"rule {rule!r} missing from {message!r}"
    assert info.value.source == str(path)
    assert info.value.field == field
    return info.value


# --------------------------------------------------------------------------- valid files


def test_minimal_file_loads_with_documented_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "name: demo\ndata:\n  builtin: digits\n")
    spec = load_spec(path)

    assert isinstance(spec, StudySpec)
    assert spec.name == "demo"
    assert spec.source == str(path)
    assert spec.seed == 0
    assert spec.data == DataSpec(builtin="digits", validation_fraction=0.2, test_fraction=0.0)
    assert spec.data.file is None and spec.data.target is None and spec.data.synthetic is None
    assert spec.model == ModelSpec(hidden_units=(64, 64), activation="relu", task=None)
    assert spec.space == SpaceSpec(regularizers=("none", "l1", "l2", "l1_l2"),
                                   strength=Range(1e-6, 1e-1), dropout=Range(0.0, 0.5))
    assert spec.train == TrainSpec(epochs=20, batch_size=64, optimizer="adam",
                                   learning_rate=1e-3, early_stopping=None)
    assert spec.objective == ObjectiveSpec(metric=None, direction=None)
    assert spec.search == SearchSpec(sampler="tpe", pruner="median", n_trials=None,
                                     timeout=None, grid_size=3)
    assert spec.storage == DEFAULT_STORAGE == "sqlite:///runs/regsearch.db"
    assert spec.trainer == "packed"


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    text = ("name: demo\ndata:\n  builtin: digits\nmodel:\nspace:\ntrain:\n"
            "objective:\nsearch:\nseed:\nstorage:\ntrainer:\n")
    spec = load_spec(write_yaml(tmp_path, text))
    assert spec == parse_spec(BASE)
    assert spec.storage == DEFAULT_STORAGE and spec.seed == 0


FULL_TEXT = """\
name: wine.full_1
seed: 42
data:
  builtin: wine
  validation_fraction: 0.25
  test_fraction: 0.15
model:
  hidden_units: [128, 32, 8]
  activation: gelu
  task: multiclass
space:
  regularizers: [l1, l1_l2]
  strength: {low: 1.0e-5, high: 0.01}
  dropout: {low: 0.1, high: 0.3}
train:
  epochs: 7
  batch_size: 16
  optimizer: sgd
  learning_rate: 0.05
  early_stopping: {patience: 3, min_delta: 0.001}
objective:
  metric: cross_entropy
  direction: minimize
search:
  sampler: random
  pruner: hyperband
  n_trials: 50
  timeout: 90
  grid_size: 4
storage: postgresql+psycopg://user@host/db
trainer: keras
"""


def test_full_file_loads_every_field(tmp_path: Path) -> None:
    spec = load_spec(write_yaml(tmp_path, FULL_TEXT))
    assert spec.name == "wine.full_1"
    assert spec.seed == 42
    assert spec.data == DataSpec(builtin="wine", validation_fraction=0.25, test_fraction=0.15)
    assert spec.model == ModelSpec(hidden_units=(128, 32, 8), activation="gelu",
                                   task="multiclass")
    assert spec.space == SpaceSpec(regularizers=("l1", "l1_l2"), strength=Range(1e-5, 0.01),
                                   dropout=Range(0.1, 0.3))
    assert spec.train == TrainSpec(epochs=7, batch_size=16, optimizer="sgd", learning_rate=0.05,
                                   early_stopping=EarlyStopping(patience=3, min_delta=0.001))
    assert spec.objective == ObjectiveSpec(metric="cross_entropy", direction="minimize")
    assert spec.search == SearchSpec(sampler="random", pruner="hyperband", n_trials=50,
                                     timeout=90.0, grid_size=4)
    assert isinstance(spec.search.timeout, float)
    assert spec.storage == "postgresql+psycopg://user@host/db"
    assert spec.trainer == "keras"


def test_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    text = ("name: demo\ndata: {builtin: digits}\n"
            "space:\n  strength: {low: 1e-8, high: 1e-2}\n"
            "train:\n  learning_rate: 1e-4\n")
    # The point of the test: PyYAML itself reads these as strings.
    assert yaml.safe_load(text)["train"]["learning_rate"] == "1e-4"
    spec = load_spec(write_yaml(tmp_path, text))
    assert spec.train.learning_rate == 1e-4
    assert isinstance(spec.train.learning_rate, float)
    assert spec.space.strength == Range(1e-8, 1e-2)
    assert all(isinstance(v, float) for v in (spec.space.strength.low, spec.space.strength.high))


def test_integers_in_float_fields_become_floats(tmp_path: Path) -> None:
    spec = load_mapping(tmp_path, with_fields({"space.dropout": {"low": 0, "high": 0},
                                               "train.learning_rate": 1}))
    assert spec.space.dropout == Range(0.0, 0.0)
    assert isinstance(spec.space.dropout.low, float)
    assert spec.train.learning_rate == 1.0 and isinstance(spec.train.learning_rate, float)


def test_relative_data_file_resolves_against_study_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    study_dir = tmp_path / "studies" / "nested"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # must not matter
    path = write_yaml(study_dir, with_fields({"data": {"file": "data/train.csv", "target": "y"}}))
    spec = load_spec(path)
    expected = study_dir.resolve() / "data" / "train.csv"
    assert spec.data.file == str(expected)
    assert Path(spec.data.file).is_absolute()
    assert spec.data.target == "y"
    assert spec.data.builtin is None and spec.data.synthetic is None


def test_relative_study_path_still_resolves_data_next_to_study(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_yaml(tmp_path / "studies", with_fields({"data": {"file": "x.csv", "target": "y"}}))
    monkeypatch.chdir(tmp_path)
    spec = load_spec("studies/study.yaml")
    assert spec.data.file == str(tmp_path.resolve() / "studies" / "x.csv")
    assert spec.source == str(Path("studies/study.yaml"))


def test_absolute_data_file_is_kept(tmp_path: Path) -> None:
    absolute = tmp_path / "somewhere" / "data.csv"
    spec = load_mapping(tmp_path / "other",
                        with_fields({"data": {"file": str(absolute), "target": "label"}}))
    assert spec.data.file == str(absolute)


def test_npz_file_needs_no_target(tmp_path: Path) -> None:
    spec = load_mapping(tmp_path, with_fields({"data": {"file": "arrays.npz"}}))
    assert spec.data.file == str(tmp_path.resolve() / "arrays.npz")
    assert spec.data.target is None


def test_parse_spec_resolves_against_base_or_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mapping = with_fields({"data": {"file": "d.csv", "target": "t"}})
    assert parse_spec(mapping, base=tmp_path / "b").data.file == str(tmp_path / "b" / "d.csv")
    monkeypatch.chdir(tmp_path)
    assert parse_spec(mapping).data.file == str(Path.cwd() / "d.csv")


def test_parse_spec_reports_given_source() -> None:
    with pytest.raises(SpecError, match=r"^inline\.yaml: name: is required"):
        parse_spec({"data": {"builtin": "digits"}}, source="inline.yaml")
    with pytest.raises(SpecError, match=r"^<spec>: name: is required"):
        parse_spec({"data": {"builtin": "digits"}})


def test_synthetic_data_loads(tmp_path: Path) -> None:
    spec = load_mapping(tmp_path, with_fields({"data": {"synthetic": {
        "task": "classification", "samples": 500, "features": 8, "classes": 3,
        "informative": 8, "noise": 0.5}}}))
    assert spec.data.synthetic == SyntheticSpec(task="classification", samples=500, features=8,
                                                classes=3, informative=8, noise=0.5)
    assert spec.data.describe() == "synthetic:classification(samples=500, features=8)"
    defaults = load_mapping(tmp_path, with_fields({"data": {"synthetic": {"task": "regression"}}}),
                            "s2.yaml")
    assert defaults.data.synthetic == SyntheticSpec(task="regression", samples=2000, features=20,
                                                    classes=2, informative=None, noise=0.1)


ACCEPTED: list[tuple[dict[str, Any], tuple[str, ...], Any]] = [
    ({"space.regularizers": "l2"}, ("space", "regularizers"), ("l2",)),
    ({"space.regularizers": ["none"]}, ("space", "regularizers"), ("none",)),
    ({"space.regularizers": list(REGULARIZERS)}, ("space", "regularizers"), REGULARIZERS),
    ({"model.hidden_units": 32}, ("model", "hidden_units"), (32,)),
    ({"model.hidden_units": [1, 65536]}, ("model", "hidden_units"), (1, 65536)),
    ({"space.dropout": {"low": 0.0, "high": 0.99}}, ("space", "dropout"), Range(0.0, 0.99)),
    ({"space.dropout": {"low": 0.3, "high": 0.3}}, ("space", "dropout"), Range(0.3, 0.3)),
    ({"space.dropout": {"high": 0.2}}, ("space", "dropout"), Range(0.0, 0.2)),
    ({"space.strength": {"low": 0.001}}, ("space", "strength"), Range(0.001, 0.1)),
    ({"data.validation_fraction": 0.5, "data.test_fraction": 0.39},
     ("data", "test_fraction"), 0.39),
    ({"seed": 2**31 - 1}, ("seed",), 2**31 - 1),
    ({"name": 123}, ("name",), "123"),
    ({"name": "a" * 100}, ("name",), "a" * 100),
    ({"name": "Z9.a_b-c"}, ("name",), "Z9.a_b-c"),
    ({"objective.metric": "r2", "model.task": "regression"}, ("objective", "metric"), "r2"),
    ({"objective.direction": "maximize"}, ("objective", "direction"), "maximize"),
    ({"train.early_stopping": None}, ("train", "early_stopping"), None),
    ({"train.early_stopping": {"patience": 1}}, ("train", "early_stopping"),
     EarlyStopping(patience=1, min_delta=0.0)),
    ({"storage": "sqlite:///:memory:"}, ("storage",), "sqlite:///:memory:"),
]


@pytest.mark.parametrize(("changes", "attribute", "expected"), ACCEPTED)
def test_accepted_values(tmp_path: Path, changes: dict[str, Any], attribute: tuple[str, ...],
                         expected: Any) -> None:
    value: Any = load_mapping(tmp_path, with_fields(changes))
    for part in attribute:
        value = getattr(value, part)
    assert value == expected


def test_spec_is_frozen_and_to_dict_has_no_source(tmp_path: Path) -> None:
    spec = load_mapping(tmp_path, BASE)
    with pytest.raises(AttributeError):
        spec.seed = 3  # type: ignore[misc]
    out = spec.to_dict()
    assert "source" not in out
    assert out["data"]["builtin"] == "digits"
    assert out["space"]["dropout"] == {"low": 0.0, "high": 0.5}


@pytest.mark.parametrize(("n_trials", "sampler", "grid_points", "budget"), [
    (None, "tpe", 27, 20),
    (None, "random", 8, 20),
    (None, "grid", 27, 27),
    (None, "grid", 4, 4),
    (5, "grid", 27, 5),
    (7, "tpe", 27, 7),
])
def test_search_budget(tmp_path: Path, n_trials: int | None, sampler: str, grid_points: int,
                       budget: int) -> None:
    changes: dict[str, Any] = {"search.sampler": sampler}
    if n_trials is not None:
        changes["search.n_trials"] = n_trials
    spec = load_mapping(tmp_path, with_fields(changes))
    assert spec.search.n_trials == n_trials
    assert spec.search.budget(grid_points) == budget


@pytest.mark.parametrize(("changes", "task", "expected"), [
    ({}, "regression", Objective("rmse", "minimize")),
    ({}, "binary", Objective("accuracy", "maximize")),
    ({}, "multiclass", Objective("accuracy", "maximize")),
    ({"objective.metric": "auc"}, "binary", Objective("auc", "maximize")),
    ({"objective.metric": "cross_entropy"}, "multiclass", Objective("cross_entropy", "minimize")),
    ({"objective.metric": "r2"}, "regression", Objective("r2", "maximize")),
    ({"objective.metric": "mae", "objective.direction": "minimize"}, "regression",
     Objective("mae", "minimize")),
])
def test_resolve_objective(changes: dict[str, Any], task: str, expected: Objective) -> None:
    assert resolve_objective(parse_spec(with_fields(changes)), task) == expected


@pytest.mark.parametrize(("metric", "task", "allowed"), [
    ("rmse", "multiclass", "accuracy, auc, cross_entropy"),
    ("mse", "binary", "accuracy, auc, cross_entropy"),
    ("accuracy", "regression", "rmse, mae, mse, r2"),
    ("auc", "regression", "rmse, mae, mse, r2"),
])
def test_resolve_objective_rejects_metric_for_data_task(tmp_path: Path, metric: str, task: str,
                                                        allowed: str) -> None:
    path = write_yaml(tmp_path, with_fields({"objective.metric": metric}))
    spec = load_spec(path)  # no model.task: only the data can tell
    with pytest.raises(SpecError, match="^" + re.escape(
            f"{path}: objective.metric: {metric!r} does not apply to the data's {task} task; "
            f"use one of: {allowed}")):
        resolve_objective(spec, task)


def test_spec_error_is_a_regsearch_error() -> None:
    err = SpecError("f.yaml", "a.b", "bad")
    assert isinstance(err, RegsearchError)
    assert str(err) == "f.yaml: a.b: bad"
    assert str(SpecError("f.yaml", "", "gone")) == "f.yaml: gone"


# --------------------------------------------------------------------------- bad values

REG_ALLOWED = "allowed values are: none, l1, l2, l1_l2"
TOP_KEYS = ("allowed keys here are: confirm, data, mlflow, model, name, objective, search, seed, "
            "space, storage, train, trainer, workers")
MAPPING = "expected a mapping of keys to values"

# (changes applied to BASE, field path in the message, text the message must contain)
BAD_VALUES: list[tuple[dict[str, Any], str, str]] = [
    # ---- space.regularizers
    ({"space.regularizers": ["l3"]}, "space.regularizers", "got 'l3'; " + REG_ALLOWED),
    ({"space.regularizers": ["l2", "L1"]}, "space.regularizers", "got 'L1'; " + REG_ALLOWED),
    ({"space.regularizers": "l3"}, "space.regularizers", "got 'l3'; " + REG_ALLOWED),
    ({"space.regularizers": [7]}, "space.regularizers", "got 7; " + REG_ALLOWED),
    ({"space.regularizers": []}, "space.regularizers",
     "must be a non-empty list drawn from: none, l1, l2, l1_l2"),
    ({"space.regularizers": {"l2": 1}}, "space.regularizers",
     "must be a non-empty list drawn from: none, l1, l2, l1_l2"),
    ({"space.regularizers": ["l2", "l1", "l2"]}, "space.regularizers",
     "lists a type twice: ['l2', 'l1', 'l2']"),
    # ---- space.strength
    ({"space.strength.low": -1e-3}, "space.strength.low", "must be > 0, got -0.001"),
    ({"space.strength.low": 0}, "space.strength.low", "must be > 0, got 0"),
    ({"space.strength.high": 0.0}, "space.strength.high", "must be > 0, got 0"),
    ({"space.strength.high": float("nan")}, "space.strength.high", "must be a finite number, got nan"),
    ({"space.strength.high": float("inf")}, "space.strength.high", "must be a finite number, got inf"),
    ({"space.strength.low": float("-inf")}, "space.strength.low", "must be a finite number, got -inf"),
    ({"space.strength.low": "nan"}, "space.strength.low", "must be a finite number, got nan"),
    ({"space.strength.low": "small"}, "space.strength.low", "expected a number, got 'small'"),
    ({"space.strength.low": [1]}, "space.strength.low", "expected a number, got list"),
    ({"space.strength.low": True}, "space.strength.low", "expected a number, got True"),
    ({"space.strength": {"low": 0.1, "high": 0.01}}, "space.strength.low",
     "must be <= strength.high, got low=0.1 > high=0.01"),
    ({"space.strength": {"low": 0.5}}, "space.strength.low",
     "must be <= strength.high, got low=0.5 > high=0.1"),
    ({"space.strength": 0.01}, "space.strength", MAPPING + ", got 0.01"),
    ({"space.strength.mid": 0.01}, "space.strength.mid", "unknown key; allowed keys here are: high, low"),
    # ---- space.dropout
    ({"space.dropout.high": 1.0}, "space.dropout.high", "must be in [0, 1), got 1"),
    ({"space.dropout.low": -0.1}, "space.dropout.low", "must be in [0, 1), got -0.1"),
    ({"space.dropout.high": 1.5}, "space.dropout.high", "must be in [0, 1), got 1.5"),
    ({"space.dropout.low": 1}, "space.dropout.low", "must be in [0, 1), got 1"),
    ({"space.dropout.high": float("nan")}, "space.dropout.high", "must be a finite number, got nan"),
    ({"space.dropout.high": "half"}, "space.dropout.high", "expected a number, got 'half'"),
    ({"space.dropout": {"low": 0.4, "high": 0.2}}, "space.dropout.low",
     "must be <= dropout.high, got low=0.4 > high=0.2"),
    ({"space.dropout": [0.1, 0.2]}, "space.dropout", MAPPING + ", got list"),
    ({"space.dropout.max": 0.2}, "space.dropout.max", "unknown key; allowed keys here are: high, low"),
    ({"space.dropuot": {"high": 0.2}}, "space.dropuot",
     "unknown key; allowed keys here are: dropout, regularizers, strength"),
    ({"space": "l2"}, "space", MAPPING + ", got 'l2'"),
    # ---- top level
    ({"regularizers": ["l2"]}, "regularizers", "unknown key; " + TOP_KEYS),
    ({"nmae": "x"}, "nmae", "unknown key; " + TOP_KEYS),
    ({"name": DELETE}, "name", "is required: a study name such as digits-quick"),
    ({"name": None}, "name", "is required"),
    ({"name": "my study"}, "name",
     "got 'my study'; use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"),
    ({"name": "-demo"}, "name", "got '-demo'; use 1-100 letters"),
    ({"name": ".hidden"}, "name", "starting with a letter or digit"),
    ({"name": "a/b"}, "name", "got 'a/b'; use 1-100 letters"),
    ({"name": "naïve"}, "name", "use 1-100 letters, digits"),
    ({"name": "a" * 101}, "name", "use 1-100 letters"),
    ({"name": ""}, "name", "expected a non-empty string, got ''"),
    ({"name": True}, "name", "expected a non-empty string, got True"),
    ({"name": ["a"]}, "name", "expected a non-empty string, got list"),
    ({"data": DELETE}, "data", "is required: e.g. `data: {builtin: digits}`"),
    ({"data": None}, "data", "is required"),
    ({"seed": -1}, "seed", "must be an integer in [0, 2147483647], got -1"),
    ({"seed": 2**31}, "seed", "must be an integer in [0, 2147483647], got 2147483648"),
    ({"seed": 1.5}, "seed", "expected an integer, got 1.5"),
    ({"seed": "7"}, "seed", "expected an integer, got '7'"),
    ({"seed": True}, "seed", "expected an integer, got True"),
    ({"storage": "not a url"}, "storage",
     "got 'not a url', which is not a SQLAlchemy URL; use e.g. sqlite:///runs/regsearch.db"),
    ({"storage": "runs/regsearch.db"}, "storage", "which is not a SQLAlchemy URL"),
    ({"storage": ""}, "storage", "expected a non-empty string, got ''"),
    ({"storage": ["sqlite://"]}, "storage", "expected a non-empty string, got list"),
    ({"trainer": "torch"}, "trainer", "got 'torch'; allowed values are: keras"),
    ({"trainer": 1}, "trainer", "got 1; allowed values are: keras"),
    # ---- data
    ({"data": {"builtin": "digits", "synthetic": {"task": "regression"}}}, "data",
     "give exactly one of builtin, file, synthetic; got builtin, synthetic"),
    ({"data": {"builtin": "digits", "file": "x.csv", "target": "y"}}, "data",
     "give exactly one of builtin, file, synthetic; got builtin, file"),
    ({"data": {"file": "x.csv", "target": "y", "synthetic": {"task": "regression"}}}, "data",
     "got file, synthetic"),
    ({"data": {}}, "data", "give exactly one of builtin, file, synthetic; none is given"),
    ({"data": {"validation_fraction": 0.3}}, "data", "none is given"),
    ({"data": {"builtin": "mnist"}}, "data.builtin",
     "got 'mnist'; allowed values are: digits, breast_cancer, wine, iris, diabetes"),
    ({"data": {"builtin": ["digits"]}}, "data.builtin", "got list; allowed values are: digits"),
    ({"data": {"builtin": "digits", "target": "label"}}, "data.target",
     "is only used with `file`; remove it for built-in data"),
    ({"data": {"synthetic": {"task": "regression"}, "target": "y"}}, "data.target",
     "is only used with `file`"),
    ({"data": {"file": "x.csv"}}, "data.target",
     "is required with `file`: the name of the target column"),
    ({"data": {"file": ""}}, "data.file", "expected a non-empty string, got ''"),
    ({"data": {"file": "x.csv", "target": ["a"]}}, "data.target", "expected a non-empty string"),
    ({"data.validation_fraction": 0}, "data.validation_fraction",
     "must be > 0: the objective is measured on it"),
    ({"data.validation_fraction": 1}, "data.validation_fraction", "must be in [0, 1), got 1"),
    ({"data.validation_fraction": 1.5}, "data.validation_fraction", "must be in [0, 1), got 1.5"),
    ({"data.validation_fraction": -0.2}, "data.validation_fraction", "must be in [0, 1), got -0.2"),
    ({"data.validation_fraction": "some"}, "data.validation_fraction", "expected a number"),
    ({"data.test_fraction": 1.0}, "data.test_fraction", "must be in [0, 1), got 1"),
    ({"data.test_fraction": -0.1}, "data.test_fraction", "must be in [0, 1), got -0.1"),
    ({"data.validation_fraction": 0.5, "data.test_fraction": 0.4}, "data.test_fraction",
     "validation_fraction + test_fraction must be < 0.9 to leave data to train on, got 0.9"),
    ({"data.validation_fraction": 0.3, "data.test_fraction": 0.65}, "data.test_fraction",
     "must be < 0.9 to leave data to train on, got 0.95"),
    ({"data.test_fraction": 0.75}, "data.test_fraction", "must be < 0.9"),
    ({"data": "digits"}, "data", MAPPING + ", got 'digits'"),
    ({"data": ["digits"]}, "data", MAPPING + ", got list"),
    ({"data.split": 0.2}, "data.split",
     "unknown key; allowed keys here are: builtin, file, folds, repeats, synthetic, target, "
     "test_fraction, validation_fraction"),
    # ---- data.synthetic
    ({"data": {"synthetic": {}}}, "data.synthetic.task",
     "is required: classification or regression"),
    ({"data": {"synthetic": {"task": "ranking"}}}, "data.synthetic.task",
     "got 'ranking'; allowed values are: classification, regression"),
    ({"data": {"synthetic": {"task": "regression", "samples": 10}}}, "data.synthetic.samples",
     "must be an integer in [20, 10000000], got 10"),
    ({"data": {"synthetic": {"task": "regression", "features": 0}}}, "data.synthetic.features",
     "must be an integer in [1, 100000], got 0"),
    ({"data": {"synthetic": {"task": "classification", "classes": 1}}}, "data.synthetic.classes",
     "must be an integer in [2, 1000], got 1"),
    ({"data": {"synthetic": {"task": "regression", "noise": -1}}}, "data.synthetic.noise",
     "must be in [0, 1e+06], got -1"),
    ({"data": {"synthetic": {"task": "regression", "features": 4, "informative": 5}}},
     "data.synthetic.informative", "must be <= features (4), got 5"),
    ({"data": {"synthetic": {"task": "regression", "rows": 5}}}, "data.synthetic.rows",
     "unknown key; allowed keys here are: classes, features, informative, noise, samples, task"),
    ({"data": {"synthetic": "classification"}}, "data.synthetic",
     MAPPING + ", got 'classification'"),
    # ---- model
    ({"model.hidden_units": []}, "model.hidden_units",
     "must be a non-empty list of layer sizes, e.g. [64, 64]"),
    ({"model.hidden_units": [64, 0]}, "model.hidden_units",
     "must be an integer in [1, 65536], got 0"),
    ({"model.hidden_units": 0}, "model.hidden_units", "must be an integer in [1, 65536], got 0"),
    ({"model.hidden_units": [-8]}, "model.hidden_units", "must be an integer in [1, 65536], got -8"),
    ({"model.hidden_units": [65537]}, "model.hidden_units",
     "must be an integer in [1, 65536], got 65537"),
    ({"model.hidden_units": [32.5]}, "model.hidden_units", "expected an integer, got 32.5"),
    ({"model.hidden_units": [64.0]}, "model.hidden_units", "expected an integer, got 64.0"),
    ({"model.hidden_units": ["64"]}, "model.hidden_units", "expected an integer, got '64'"),
    ({"model.hidden_units": [True]}, "model.hidden_units", "expected an integer, got True"),
    ({"model.hidden_units": True}, "model.hidden_units", "must be a non-empty list of layer sizes"),
    ({"model.hidden_units": "64,64"}, "model.hidden_units", "must be a non-empty list of layer sizes"),
    ({"model.activation": "relu6"}, "model.activation",
     "got 'relu6'; allowed values are: relu, gelu, elu, selu, tanh, sigmoid, swish, leaky_relu"),
    ({"model.activation": "ReLU"}, "model.activation", "allowed values are: relu, gelu"),
    ({"model.task": "ranking"}, "model.task",
     "got 'ranking'; allowed values are: binary, multiclass, regression"),
    ({"model.task": "classification"}, "model.task",
     "allowed values are: binary, multiclass, regression"),
    ({"model.layers": [64]}, "model.layers",
     "unknown key; allowed keys here are: activation, hidden_units, task"),
    ({"model": 64}, "model", MAPPING + ", got 64"),
    # ---- train
    ({"train.epochs": 0}, "train.epochs", "must be an integer in [1, 100000], got 0"),
    ({"train.epochs": 2.5}, "train.epochs", "expected an integer, got 2.5"),
    ({"train.batch_size": -32}, "train.batch_size", "must be an integer in [1, 1000000], got -32"),
    ({"train.batch_size": 0}, "train.batch_size", "must be an integer in [1, 1000000], got 0"),
    ({"train.learning_rate": 0}, "train.learning_rate", "must be > 0, got 0"),
    ({"train.learning_rate": -0.01}, "train.learning_rate", "must be > 0, got -0.01"),
    ({"train.learning_rate": float("inf")}, "train.learning_rate", "must be a finite number"),
    ({"train.learning_rate": "fast"}, "train.learning_rate", "expected a number, got 'fast'"),
    ({"train.optimizer": "adagrad"}, "train.optimizer",
     "got 'adagrad'; allowed values are: adam, adamw, sgd, rmsprop"),
    ({"train.early_stopping": {}}, "train.early_stopping.patience",
     "is required: epochs to wait"),
    ({"train.early_stopping": {"min_delta": 0.01}}, "train.early_stopping.patience",
     "is required: epochs to wait"),
    ({"train.early_stopping": {"patience": 0}}, "train.early_stopping.patience",
     "must be an integer >= 1, got 0"),
    ({"train.early_stopping": {"patience": 2, "min_delta": -0.1}},
     "train.early_stopping.min_delta", "must be in [0, 1e+09], got -0.1"),
    ({"train.early_stopping": {"patience": 2, "monitor": "loss"}},
     "train.early_stopping.monitor", "unknown key; allowed keys here are: min_delta, patience"),
    ({"train.early_stopping": 5}, "train.early_stopping", MAPPING + ", got 5"),
    ({"train.early_stopping": True}, "train.early_stopping", MAPPING + ", got True"),
    ({"train.lr": 0.1}, "train.lr",
     "unknown key; allowed keys here are: batch_size, early_stopping, epochs, learning_rate, "
     "optimizer"),
    ({"train": [1]}, "train", MAPPING + ", got list"),
    # ---- objective
    ({"objective.metric": "f1"}, "objective.metric",
     "got 'f1'; allowed values are: accuracy, auc, cross_entropy, rmse, mae, mse, r2"),
    ({"objective.direction": "up"}, "objective.direction",
     "got 'up'; allowed values are: maximize, minimize"),
    ({"objective": {"metric": "accuracy", "direction": "minimize"}}, "objective.direction",
     "'minimize' would search for the worst accuracy; use 'maximize' or leave it out"),
    ({"objective": {"metric": "auc", "direction": "minimize"}}, "objective.direction",
     "would search for the worst auc; use 'maximize'"),
    ({"objective": {"metric": "rmse", "direction": "maximize"}}, "objective.direction",
     "'maximize' would search for the worst rmse; use 'minimize' or leave it out"),
    ({"objective": {"metric": "cross_entropy", "direction": "maximize"}}, "objective.direction",
     "use 'minimize'"),
    ({"objective": {"metric": "r2", "direction": "minimize"}}, "objective.direction",
     "use 'maximize'"),
    ({"objective.metric": "rmse", "model.task": "multiclass"}, "objective.metric",
     "'rmse' does not apply to a multiclass task; use one of: accuracy, auc, cross_entropy"),
    ({"objective.metric": "mae", "model.task": "binary"}, "objective.metric",
     "'mae' does not apply to a binary task; use one of: accuracy, auc, cross_entropy"),
    ({"objective.metric": "accuracy", "model.task": "regression"}, "objective.metric",
     "'accuracy' does not apply to a regression task; use one of: rmse, mae, mse, r2"),
    ({"objective.goal": "max"}, "objective.goal",
     "unknown key; allowed keys here are: direction, metric"),
    ({"objective": "accuracy"}, "objective", MAPPING + ", got 'accuracy'"),
    # ---- search
    ({"search.sampler": "cmaes"}, "search.sampler",
     "got 'cmaes'; allowed values are: tpe, random, grid, gp"),
    ({"search.pruner": "asha"}, "search.pruner",
     "got 'asha'; allowed values are: median, hyperband, none"),
    ({"search.pruner": False}, "search.pruner", "got False; allowed values are: median"),
    ({"search.n_trials": 0}, "search.n_trials", "must be an integer in [1, 10000000], got 0"),
    ({"search.n_trials": -5}, "search.n_trials", "must be an integer in [1, 10000000], got -5"),
    ({"search.n_trials": 10.0}, "search.n_trials", "expected an integer, got 10.0"),
    ({"search.timeout": -5}, "search.timeout", "must be > 0, got -5"),
    ({"search.timeout": 0}, "search.timeout", "must be > 0, got 0"),
    ({"search.timeout": "1h"}, "search.timeout", "expected a number, got '1h'"),
    ({"search.grid_size": 0}, "search.grid_size", "must be an integer in [1, 100], got 0"),
    ({"search.trials": 10}, "search.trials",
     "unknown key; allowed keys here are: engine, grid_size, n_trials, pack_size, pruner, sampler, timeout"),
    ({"search": 10}, "search", MAPPING + ", got 10"),
]


@pytest.mark.parametrize(("changes", "field", "rule"), BAD_VALUES,
                         ids=[f"{i:03d}-{case[1]}" for i, case in enumerate(BAD_VALUES)])
def test_bad_value_names_file_field_and_rule(tmp_path: Path, changes: dict[str, Any],
                                             field: str, rule: str) -> None:
    assert_spec_error(tmp_path, with_fields(changes), field, rule)


@pytest.mark.parametrize(("text", "shown"), [
    ("- name: demo\n- data: {builtin: digits}\n", "got list"),
    ("just a string\n", "got 'just a string'"),
    ("42\n", "got 42"),
])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, shown: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(SpecError, match="^" + re.escape(
            f"{path}: (top level): expected a mapping of keys to values, {shown}")):
        load_spec(path)


def test_empty_file_asks_for_name(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "")
    with pytest.raises(SpecError, match="^" + re.escape(f"{path}: name: is required")):
        load_spec(path)


def test_parse_spec_rejects_non_mapping_directly() -> None:
    with pytest.raises(SpecError, match=re.escape("x.yaml: (top level): expected a mapping")):
        parse_spec(["name", "demo"], source="x.yaml")


# --------------------------------------------------------------------------- reading files


@pytest.mark.parametrize(("text", "line", "column", "problem"), [
    ("name: demo\ndata:\n  builtin: digits\nmodel: activation: relu\n", 4, 18,
     "mapping values are not allowed here"),
    ("name: demo\ndata:\n  builtin: digits\n\ttrain: 1\n", 4, 1,
     "found character '\\t' that cannot start any token"),
    ("name: demo\ndata: {builtin: digits\nseed: 1\n", 3, 5, "expected ',' or '}'"),
    ("name: demo\nseed: 1\n  extra: 2\n", 3, 8, "mapping values are not allowed here"),
])
def test_bad_yaml_reports_line_and_column(tmp_path: Path, text: str, line: int, column: int,
                                          problem: str) -> None:
    path = write_yaml(tmp_path, text, "broken.yaml")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line {line}, column {column}: invalid YAML: "), message
    assert problem in message
    assert info.value.field == f"line {line}, column {column}"


def test_missing_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "absent.yaml"
    with pytest.raises(SpecError, match="^" + re.escape(
            f"{path}: no such study file; check the path")):
        load_spec(path)
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(str(path))


def test_directory_is_a_clear_error(tmp_path: Path) -> None:
    directory = tmp_path / "studies"
    directory.mkdir()
    with pytest.raises(SpecError, match="^" + re.escape(
            f"{directory}: cannot be read as a UTF-8 text file")):
        load_spec(directory)


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="^" + re.escape(
            f"{path}: cannot be read as a UTF-8 text file")):
        load_spec(path)


# --------------------------------------------------------------------------- spec_hash


def spec_of(changes: dict[str, Any]) -> StudySpec:
    return parse_spec(with_fields(changes), source="hash.yaml", base=Path("/studies"))


def test_identical_specs_hash_equal(tmp_path: Path) -> None:
    a = load_mapping(tmp_path, BASE, "a.yaml")
    b = load_mapping(tmp_path, copy.deepcopy(BASE), "b.yaml")
    assert a.source != b.source
    assert a.spec_hash == b.spec_hash
    assert re.fullmatch(r"[0-9a-f]{16}", a.spec_hash)
    assert a.spec_hash == spec_of({}).spec_hash


def test_explicit_defaults_hash_like_omitted_ones() -> None:
    explicit = {"seed": 0, "space.dropout": {"low": 0, "high": 0.5},
                "space.strength": {"low": "1e-6", "high": 0.1},
                "model.hidden_units": [64, 64], "train.learning_rate": "1e-3",
                "data.validation_fraction": 0.2}
    assert spec_of(explicit).spec_hash == spec_of({}).spec_hash


@pytest.mark.parametrize("changes", [
    {"space.regularizers": ["l2"]},
    {"space.regularizers": ["l1", "l2", "none", "l1_l2"]},
    {"space.strength.low": 1e-5},
    {"space.strength.high": 0.05},
    {"space.dropout.low": 0.1},
    {"space.dropout.high": 0.3},
    {"data.builtin": "wine"},
    {"data": {"file": "x.csv", "target": "y"}},
    {"data": {"synthetic": {"task": "regression"}}},
    {"data.validation_fraction": 0.25},
    {"data.test_fraction": 0.1},
    {"model.hidden_units": [32]},
    {"model.activation": "tanh"},
    {"model.task": "multiclass"},
    {"train.epochs": 5},
    {"train.batch_size": 128},
    {"train.optimizer": "sgd"},
    {"train.learning_rate": 0.01},
    {"train.early_stopping": {"patience": 3}},
    {"objective.metric": "auc"},
    {"objective.direction": "maximize"},
    {"seed": 7},
], ids=lambda changes: ",".join(changes))
def test_hash_changes_with_what_a_trial_means(changes: dict[str, Any]) -> None:
    assert spec_of(changes).spec_hash != spec_of({}).spec_hash


@pytest.mark.parametrize("changes", [
    {"search.n_trials": 500},
    {"search.timeout": 3600},
    {"storage": "postgresql+psycopg://user@host/db"},
    {"storage": "sqlite:///elsewhere/other.db"},
    {"search.n_trials": 1, "search.timeout": 1, "storage": "sqlite:///x.db"},
], ids=lambda changes: ",".join(changes))
def test_hash_ignores_budgets_and_storage(changes: dict[str, Any]) -> None:
    changed = spec_of(changes)
    assert changed != spec_of({})  # the change did take effect ...
    assert changed.spec_hash == spec_of({}).spec_hash  # ... but not on the hash


# --------------------------------------------------------------------------- regressions


def test_name_with_trailing_newline_is_rejected(tmp_path: Path) -> None:
    text = "name: |\n  demo\ndata: {builtin: digits}\n"
    assert yaml.safe_load(text)["name"] == "demo\n"
    assert_spec_error(tmp_path, text, "name", "use 1-100 letters, digits")


@pytest.mark.parametrize("field", ["space.strength.high", "train.learning_rate"])
def test_huge_integer_is_a_spec_error(tmp_path: Path, field: str) -> None:
    text = yaml.safe_dump(with_fields({field: 1})).replace(": 1\n", ": 1" + "0" * 400 + "\n")
    assert_spec_error(tmp_path, text, field, "")


@pytest.mark.parametrize(("validation", "test"), [(0.7, 0.2), (0.6, 0.3)])
def test_fractions_summing_to_exactly_point_nine_are_rejected(
        tmp_path: Path, validation: float, test: float) -> None:
    assert_spec_error(tmp_path, with_fields({"data.validation_fraction": validation,
                                             "data.test_fraction": test}),
                      "data.test_fraction", "must be < 0.9")


def test_direction_contradicting_default_metric_is_an_error() -> None:
    def load_and_resolve() -> Objective:
        spec = parse_spec(with_fields({"model.task": "binary", "objective.direction": "minimize"}),
                          source="dir.yaml")
        return resolve_objective(spec, "binary")

    with pytest.raises(SpecError, match=re.escape("dir.yaml: objective.direction: ")):
        load_and_resolve()


@pytest.mark.parametrize(("section", "text", "field"), [
    ("data", "data: {bultin: digits}", "data.bultin"),
    ("early_stopping", "data: {builtin: digits}\ntrain: {early_stopping: {patiense: 3}}",
     "train.early_stopping.patiense"),
    ("synthetic", "data: {synthetic: {taks: regression}}", "data.synthetic.taks"),
])
def test_misspelled_key_is_reported_as_unknown_not_as_missing(
        tmp_path: Path, section: str, text: str, field: str) -> None:
    assert_spec_error(tmp_path, "name: demo\n" + text + "\n", field, "unknown key")


def test_packed_trainer_names_the_optimizers_it_supports() -> None:
    raw = with_fields({"trainer": "packed", "train.optimizer": "rmsprop"})
    with pytest.raises(SpecError, match=r"train\.optimizer: the packed trainer supports adam, sgd"):
        parse_spec(raw, source="p.yaml")
    assert parse_spec(with_fields({"trainer": "packed", "search.pack_size": 8}),
                      source="p.yaml").search.pack_size == 8


def test_trainer_defaults_to_packed_where_the_optimizer_allows() -> None:
    assert parse_spec(with_fields({"train.optimizer": "sgd"}), source="p").trainer == "packed"
    assert parse_spec(with_fields({"train.optimizer": "rmsprop"}), source="p").trainer == "keras"
    assert parse_spec(with_fields({"trainer": "keras"}), source="p").trainer == "keras"


def test_pack_size_does_not_change_the_study_identity() -> None:
    small = parse_spec(with_fields({"trainer": "packed", "search.pack_size": 4}), source="a")
    large = parse_spec(with_fields({"trainer": "packed", "search.pack_size": 64}), source="a")
    assert small.spec_hash == large.spec_hash


def test_is_better_follows_the_direction_and_margin() -> None:
    from regsearch.objective import is_better

    assert is_better("maximize", 0.9, None) and is_better("minimize", 0.9, None)
    assert is_better("maximize", 0.9, 0.8) and not is_better("maximize", 0.8, 0.9)
    assert is_better("minimize", 0.8, 0.9) and not is_better("minimize", 0.9, 0.8)
    assert not is_better("maximize", 0.9, 0.9)
    assert not is_better("maximize", 0.85, 0.8, margin=0.1)
    assert is_better("minimize", 0.0, 0.5) and not is_better("maximize", 0.0, 0.0)


def test_mlflow_must_not_share_the_storage_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    assert_spec_error(tmp_path, with_fields({"storage": url, "mlflow.tracking_uri": url}),
                      "mlflow.tracking_uri", "`alembic_version` table")
    assert_spec_error(tmp_path, with_fields({"mlflow.enabled": "yes"}),
                      "mlflow.enabled", "expected true or false")


def test_a_home_folder_in_sqlite_urls_is_written_out(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite would open `~/runs/s.db` under a folder named `~` where the command ran."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    spec = load_mapping(tmp_path, with_fields({"storage": "sqlite:///~/runs/s.db",
                                               "mlflow.tracking_uri": "sqlite:///~/runs/m.db"}))
    assert spec.storage == f"sqlite:///{tmp_path}/home/runs/s.db"
    assert spec.mlflow.tracking_uri == f"sqlite:///{tmp_path}/home/runs/m.db"
    assert_spec_error(tmp_path, with_fields({"storage": "sqlite:///~/one.db",
                                             "mlflow.tracking_uri": f"sqlite:///{tmp_path}/home/one.db"}),
                      "mlflow.tracking_uri", "`alembic_version` table")


# --------------------------------------------------------------------------- all errors at once

def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, with_fields({
        "name": "my study", "data.builtin": "mnist", "model.activation": "relu6",
        "train.lr": 0.1, "train.epochs": 0, "search.sampler": "cmaes"}))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    fields = [field for field, _ in info.value.problems]
    assert fields[0] == "train.lr"  # unknown keys first: they often explain the rest
    assert sorted(fields) == sorted(["name", "data.builtin", "model.activation", "train.lr",
                                     "train.epochs", "search.sampler"])
    lines = str(info.value).splitlines()
    assert len(lines) == 6 and all(line.startswith(f"{path}: ") for line in lines)
    assert f"{path}: train.epochs: must be an integer in [1, 100000], got 0" in lines


# --------------------------------------------------------------------------- the JSON Schema

SCHEMA_FILE = Path(__file__).parents[1] / "studies" / "regsearch.schema.json"
#: Rules between fields, or beyond what JSON Schema says of one value: the reader's alone.
READER_ONLY = ("give exactly one of", "is only used with", "is required with `file`",
               "must be > 0: the objective", "must be < 0.9", "must be <= features",
               "must be <= strength.high", "must be <= dropout.high", "would search for the worst",
               "does not apply to", "not a SQLAlchemy URL", "must be a finite number",
               "lists a type twice", "expected a number, got '", "use 'minimize'",
               "use 'maximize'", "got 64.0", "got 10.0")  # JSON Schema: 10.0 is an integer


def schema_errors(mapping: Any) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    return [error.message for error in validator.iter_errors(mapping)]


def test_shipped_schema_is_current() -> None:
    from regsearch.study_file import json_schema_text

    assert SCHEMA_FILE.read_text(encoding="utf-8") == json_schema_text(), (
        "run `regsearch schema > studies/regsearch.schema.json`")


def _reader_only(case: tuple[dict[str, Any], str, str]) -> bool:
    changes, field, rule = case
    left_null = field in ("name", "data") and field in changes and changes[field] is None
    return left_null or any(part in rule for part in READER_ONLY)


SCHEMA_CASES = [case for case in BAD_VALUES if not _reader_only(case)]


@pytest.mark.parametrize(("changes", "field", "rule"), SCHEMA_CASES,
                         ids=[f"{i:03d}-{case[1]}" for i, case in enumerate(SCHEMA_CASES)])
def test_schema_rejects_every_single_value_mistake(changes: dict[str, Any], field: str,
                                                   rule: str) -> None:
    """Editors flag what the reader refuses, but for the rules between fields (and a
    required key written as null, which the reader reads as left out)."""
    assert schema_errors(with_fields(changes)), (
        f"the schema accepts {changes}, the reader refuses: {rule}")


def test_schema_accepts_what_the_reader_accepts(tmp_path: Path) -> None:
    accepted = [with_fields(changes) for changes, _, _ in ACCEPTED] + [yaml.safe_load(FULL_TEXT)]
    for mapping in accepted:
        load_mapping(tmp_path, mapping)
        assert not schema_errors(mapping), mapping


def test_shipped_studies_name_the_schema_and_follow_it() -> None:
    studies = sorted(SCHEMA_FILE.parent.glob("*.yaml"))
    assert studies
    for path in studies:
        text = path.read_text(encoding="utf-8")
        assert text.startswith("# yaml-language-server: $schema=regsearch.schema.json\n"), path
        assert not schema_errors(yaml.safe_load(text)), path


def test_a_configs_one_strength_and_its_short_name() -> None:
    """One strength per configuration for log axes (plots, MLflow's `log10_strength`), and
    run names that sort in trial order and show only what the type uses."""
    import math

    from regsearch.space import RegConfig

    assert RegConfig("l1", l1=1e-3, l2=0.5).strength == 1e-3  # an unused l2 is ignored
    assert RegConfig("l2", l2=1e-4).strength == 1e-4
    assert math.isclose(RegConfig("l1_l2", l1=1e-4, l2=1e-2).strength or 0, 1e-3)
    assert RegConfig("none", dropout=0.2).strength is None
    assert RegConfig("l2", l2=3e-4, dropout=0.15).short_name(7) == "t0007 l2=3e-4 d=0.15"
    assert RegConfig("l1_l2", l1=3.25e-5, l2=0.1).short_name(12) == "t0012 l1=3.2e-5 l2=1e-1 d=0.00"
    assert RegConfig("l1", l1=1e-3, l2=0.5, dropout=0.5).short_name(0) == "t0000 l1=1e-3 d=0.50"
    assert RegConfig("none", dropout=0.05).short_name(3) == "t0003 none d=0.05"
    # a trial cut off before its regularizer was chosen (`liveness.config_of`)
    unset = RegConfig("unset", dropout=0.0)
    assert unset.short_name(4) == "t0004 unset d=0.00" and unset.strength is None
    names = [RegConfig("l2", l2=1e-3).short_name(n) for n in (2, 10, 1, 999)]
    assert sorted(names) == [names[2], names[0], names[1], names[3]]
