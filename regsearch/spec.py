"""The study's data model: a frozen `StudySpec` and its sections, with the rules they
share (metrics and their directions, the strengths each regularizer uses, the objective).

`study_file` reads and checks a study file into one; everything else reads it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from regsearch.errors import SpecError
from regsearch.objective import Direction

#: Each regularizer type and the strengths it uses (the one home of this rule).
STRENGTHS: dict[str, tuple[str, ...]] = {"none": (), "l1": ("l1",), "l2": ("l2",),
                                         "l1_l2": ("l1", "l2")}
REGULARIZERS = tuple(STRENGTHS)
TASKS = ("binary", "multiclass", "regression")
BUILTIN_DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
SYNTHETIC_TASKS = ("classification", "regression")
ACTIVATIONS = ("relu", "gelu", "elu", "selu", "tanh", "sigmoid", "swish", "leaky_relu")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SAMPLERS = ("tpe", "random", "grid", "gp")
PRUNERS = ("median", "hyperband", "none")
TRAINERS = ("keras", "packed")
PACKED_OPTIMIZERS = ("adam", "sgd")
DIRECTIONS = ("maximize", "minimize")
UNLIMITED = 10_000_000  # the budget of a search that only its timeout ends
DEFAULT_STORAGE = "sqlite:///runs/regsearch.db"
DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


@dataclass(frozen=True)
class Metric:
    """A validation metric on the data alone (never the regularization penalty)."""

    name: str
    direction: Direction
    tasks: tuple[str, ...]


_CLASSIFICATION = ("binary", "multiclass")
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", "maximize", _CLASSIFICATION),
        Metric("auc", "maximize", _CLASSIFICATION),
        Metric("cross_entropy", "minimize", _CLASSIFICATION),
        Metric("rmse", "minimize", ("regression",)),
        Metric("mae", "minimize", ("regression",)),
        Metric("mse", "minimize", ("regression",)),
        Metric("r2", "maximize", ("regression",)),
    )
}


@dataclass(frozen=True)
class Objective:
    """The metric a study optimizes and its direction, once the task is known."""

    metric: str
    direction: Direction


def resolve_objective(spec: StudySpec, task: str) -> Objective:
    """Fill in the default metric for `task` and check an explicit one fits it."""
    named = spec.objective.metric is not None
    metric = spec.objective.metric or ("rmse" if task == "regression" else "accuracy")
    problem = objective_problem(metric, spec.objective.direction, task, named=named,
                                data_task=True)
    if problem:
        raise SpecError(spec.source, f"objective.{problem[0]}", problem[1])
    return Objective(metric, METRICS[metric].direction)


def objective_problem(metric: str, direction: str | None, task: str | None, *, named: bool,
                      data_task: bool = False) -> tuple[str, str] | None:
    """(field, message) when `metric` does not fit `task` or `direction` would search for
    its worst: the one rule for a study file's metric, direction and task."""
    if task is not None and task not in METRICS[metric].tasks:
        allowed = [m.name for m in METRICS.values() if task in m.tasks]
        whose = "the data's" if data_task else "a"
        return "metric", (f"{metric!r} does not apply to {whose} {task} task; "
                          f"use one of: {', '.join(allowed)}")
    right = METRICS[metric].direction
    if direction is not None and direction != right:
        if named:
            return "direction", (f"{direction!r} would search for the worst {metric}; "
                                 f"use {right!r} or leave it out")
        return "direction", (f"{direction!r} would search for the worst {metric} (the default "
                             f"metric for a {task} task); use {right!r}, name a metric, or "
                             "leave direction out")
    return None


@dataclass(frozen=True)
class SyntheticSpec:
    task: str
    samples: int = 2000
    features: int = 20
    classes: int = 2
    informative: int | None = None
    noise: float = 0.1


@dataclass(frozen=True)
class DataSpec:
    builtin: str | None = None
    file: str | None = None
    target: str | None = None
    synthetic: SyntheticSpec | None = None
    validation_fraction: float = 0.2
    test_fraction: float = 0.0
    folds: int | None = None    # k-fold cross-validation of every trial (`regsearch.folds`)
    repeats: int | None = None  # r models of every trial from different initial weights

    @property
    def members(self) -> int:
        """Models that score one trial."""
        return self.folds or self.repeats or 1

    def describe(self) -> str:
        if self.builtin:
            return f"builtin:{self.builtin}"
        if self.synthetic:
            s = self.synthetic
            return f"synthetic:{s.task}(samples={s.samples}, features={s.features})"
        return f"file:{self.file} (target {self.target})"


@dataclass(frozen=True)
class ModelSpec:
    hidden_units: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    task: str | None = None


@dataclass(frozen=True)
class Range:
    low: float
    high: float


@dataclass(frozen=True)
class SpaceSpec:
    regularizers: tuple[str, ...] = REGULARIZERS
    strength: Range = Range(1e-6, 1e-1)
    dropout: Range = Range(0.0, 0.5)


@dataclass(frozen=True)
class EarlyStopping:
    patience: int
    min_delta: float = 0.0


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 20
    batch_size: int = 64
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    early_stopping: EarlyStopping | None = None


@dataclass(frozen=True)
class ObjectiveSpec:
    metric: str | None = None
    direction: str | None = None


@dataclass(frozen=True)
class SearchSpec:
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int | None = None
    timeout: float | None = None
    grid_size: int = 3
    pack_size: int | None = None

    def budget(self, grid_points: int, timeout: float | None = None) -> int:
        """Trials to run: `n_trials`; else the whole grid for `sampler: grid`; else as many
        as `timeout` (this one, or the study file's) allows; else 20."""
        if self.n_trials is not None:
            return self.n_trials
        if self.sampler == "grid":
            return grid_points
        return UNLIMITED if (timeout or self.timeout) else 20


def trials_of(done: int, budget: int) -> str:
    """"7 of 20 trials", or "7 trials" for a search bounded by its timeout alone."""
    return f"{done} trials" if budget >= UNLIMITED else f"{done} of {budget} trials"


@dataclass(frozen=True)
class MlflowSpec:
    """Where trials are mirrored for the MLflow UI; its own database, never the storage's."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    enabled: bool = True


@dataclass(frozen=True)
class ConfirmSpec:
    """After the search, the `top` distinct configurations and the unregularized default
    are trained again with `seeds` fresh seeds each, and ranked by their mean; not part of
    a study's identity (changing it changes no trial)."""

    top: int = 5
    seeds: int = 5


@dataclass(frozen=True)
class WorkersSpec:
    """How worker processes share a study (server databases only); not part of its identity.

    A worker beats every `heartbeat_interval` seconds from a thread of its own, so a busy
    worker keeps beating; one silent for `grace_period` seconds is declared dead, its trial
    failed and re-queued with the same parameters at most `max_retries` times.
    `recycle_after` trials, a worker replaces its process with a fresh one (memory).
    """

    heartbeat_interval: int = 10
    grace_period: int = 120
    max_retries: int = 2
    recycle_after: int | None = None


@dataclass(frozen=True)
class StudySpec:
    """A validated study: what to search, on which data, and where to record it."""

    name: str
    seed: int
    data: DataSpec
    model: ModelSpec = ModelSpec()
    space: SpaceSpec = SpaceSpec()
    train: TrainSpec = TrainSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    search: SearchSpec = SearchSpec()
    storage: str = DEFAULT_STORAGE
    mlflow: MlflowSpec = MlflowSpec()
    workers: WorkersSpec = WorkersSpec()
    trainer: str = "packed"
    confirm: ConfirmSpec | None = ConfirmSpec()
    source: str = field(default="<spec>", compare=False)

    def identity(self) -> dict[str, Any]:
        """The fields that define the study's results; a reopened study must match them.

        Budgets (`search`), the storage URL and the trainer do not change what a trial
        means, so they are left out: a user may extend a study or move it.
        """
        full = asdict(self)
        for key in ("folds", "repeats"):  # absent, as before they existed: the same hash
            if full["data"][key] is None:
                del full["data"][key]
        return {k: full[k] for k in ("seed", "data", "model", "space", "train", "objective")}

    @property
    def spec_hash(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain data for the records, URLs with their passwords masked."""
        from regsearch.storage import mask_url

        out = asdict(self)
        out.pop("source")
        out["storage"] = mask_url(out["storage"])
        out["mlflow"]["tracking_uri"] = mask_url(out["mlflow"]["tracking_uri"])
        return out
