"""The one ranking rule: by the objective, ties by the penalty-free validation data loss.

On small validation sets many trials (or epochs) tie on accuracy or AUC; ranking ties by
trial number named near-chance models "best" (an AUC of 1.0 from a model whose validation
loss was close to chance). The data loss at the same epoch separates them. Every place that
names a best trial or epoch (the progress display, `best`, the ledger, MLflow's parent run,
the stop rules) ranks through here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar

from regsearch.errors import SpecError

if TYPE_CHECKING:
    from regsearch.spec import StudySpec

T = TypeVar("T")


def is_better(direction: str, candidate: float, incumbent: float | None,
              margin: float = 0.0) -> bool:
    """Whether `candidate` beats `incumbent` by more than `margin` (no incumbent: it does)."""
    if incumbent is None:
        return True
    sign = 1.0 if direction == "maximize" else -1.0
    return sign * (candidate - incumbent) > margin


#: Metrics whose values lie in [0, 1]: a difference of 0.01 is "one point".
BOUNDED_METRICS = ("accuracy", "auc")


def difference_text(difference: float, metric: str) -> str:
    """A difference as a user reads it: points for scores in [0, 1], the metric's units
    else."""
    if metric in BOUNDED_METRICS:
        return f"{100 * difference:+.2f} points"
    return f"{difference:+.4g}"


Direction = Literal["minimize", "maximize"]
Score = tuple[float | None, float | None]  # (objective, validation data loss)


def rank_key(direction: str, value: float | None, val_loss: float | None,
             number: int = 0) -> tuple[float, float, int]:
    """Sorts best first: the objective, then the lower validation data loss, then the
    earlier trial (a last resort, for exact ties of both). A missing value ranks last."""
    loss = val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
    if value is None:
        return math.inf, loss, number
    return (-value if direction == "maximize" else value), loss, number


def ranks_above(direction: str, candidate: Score, incumbent: Score | None) -> bool:
    """Whether (value, val_loss) `candidate` ranks above `incumbent` (None: it does)."""
    if incumbent is None:
        return True
    return rank_key(direction, *candidate) < rank_key(direction, *incumbent)


def ranked(direction: str, items: Iterable[T],
           key: Callable[[T], tuple[float | None, float | None, int]]) -> list[T]:
    """`items` best first; `key` gives an item's (value, val_loss, number)."""
    return sorted(items, key=lambda item: rank_key(direction, *key(item)))


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
