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
from typing import Literal, TypeVar

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
