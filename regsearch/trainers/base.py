"""What every trainer reports, and the stop rules they all share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from regsearch.states import State
from regsearch.objective import is_better, ranks_above
from regsearch.spec import EarlyStopping

DIVERGED = "(training diverged)"  # ends the reason of a trial whose numbers went non-finite
#: Per-trial numbers kept beside the value (Optuna user attrs, ledger columns, MLflow).
SUMMARY_FIELDS = ("best_epoch", "epochs_run", "seconds", "penalty", "train_loss", "val_loss",
                  "train_eval_loss", "near_zero_share", "test_metric")


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of one trial. Losses are data losses: the penalty is its own number."""

    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float
    penalty: float


def combine(members: list[EpochMetrics]) -> EpochMetrics:
    """A trial's epoch from its members' (folds or repeats): the mean of each number."""
    if len(members) == 1:
        return members[0]
    n = len(members)
    return EpochMetrics(epoch=members[0].epoch,
                        **{name: sum(getattr(m, name) for m in members) / n
                           for name in ("train_loss", "val_loss", "val_metric", "penalty")})


#: Called after each epoch; returns True when the trial should be pruned.
PruneCheck = Callable[[EpochMetrics], bool]


@dataclass
class TrialOutcome:
    state: State
    value: float | None = None
    best_epoch: int | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    reason: str | None = None
    seconds: float = 0.0
    near_zero_share: float | None = None
    #: the training rows' data loss at the best epoch measured as validation is (dropout
    #: off, the best-epoch weights): `val_loss` minus it is the generalization gap, which
    #: `train_loss` (dropout on, averaged while the weights moved) cannot give
    train_eval_loss: float | None = None
    test_metric: float | None = None
    #: each member's objective at the best epoch, when folds or repeats score the trial
    member_values: list[float] | None = None
    model: Any = field(default=None, repr=False)  # the best-epoch Keras model, on request

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    @property
    def best(self) -> EpochMetrics | None:
        return self.history[self.best_epoch - 1] if self.best_epoch else None

    def member_summary(self) -> dict[str, Any]:
        """Each member's (fold's or repeat's) objective at the best epoch and their spread,
        when several models score the trial; nothing else."""
        values = self.member_values
        if not values or len(values) < 2:
            return {}
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return {"member_values": list(values), "member_sd": sd}

    def summary(self) -> dict[str, float | int | None]:
        """`SUMMARY_FIELDS`, with the losses and penalty of the best epoch."""
        best = self.best
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "seconds": round(self.seconds, 4),
            "penalty": best.penalty if best else None,
            "train_loss": best.train_loss if best else None,
            "val_loss": best.val_loss if best else None,
            "train_eval_loss": self.train_eval_loss,
            "near_zero_share": self.near_zero_share,
            "test_metric": self.test_metric,
        }


class StopRules:
    """Tracks the best epoch and decides when a trial stops: diverged, stalled or pruned.

    The trial's value is its best epoch's objective, and its weights are restored to that
    epoch, as KerasTuner and `EarlyStopping(restore_best_weights=True)` do.
    """

    def __init__(self, direction: str, early_stopping: EarlyStopping | None) -> None:
        self.direction = direction
        self.early = early_stopping
        self.history: list[EpochMetrics] = []
        self.best_epoch: int | None = None
        self.state: State | None = None
        self.reason: str | None = None

    @property
    def best_value(self) -> float | None:
        return self.history[self.best_epoch - 1].val_metric if self.best_epoch else None

    def observe(self, metrics: EpochMetrics, prune: PruneCheck) -> bool:
        """Record an epoch; False means stop (see `state` and `reason` for why)."""
        self.history.append(metrics)
        bad = [n for n in ("train_loss", "val_loss", "val_metric", "penalty")
               if not math.isfinite(getattr(metrics, n))]
        if bad:
            return self._stop(State.FAILED, f"non-finite {', '.join(bad)} at epoch "
                                            f"{metrics.epoch} {DIVERGED}")
        if self.improved(metrics):
            self.best_epoch = metrics.epoch
        if prune(metrics):
            return self._stop(State.PRUNED, f"pruned at epoch {metrics.epoch}")
        if self.early and metrics.epoch - (self.best_epoch or 0) >= self.early.patience:
            return self._stop(State.COMPLETE, f"early stopping at epoch {metrics.epoch}")
        return True

    def improved(self, metrics: EpochMetrics) -> bool:
        """Better by early stopping's `min_delta`, or as good with a lower validation data
        loss (`regsearch.objective`: ties are not kept by the earlier epoch)."""
        margin = self.early.min_delta if self.early else 0.0
        if is_better(self.direction, metrics.val_metric, self.best_value, margin):
            return True
        best = self.history[self.best_epoch - 1] if self.best_epoch else None
        return best is not None and metrics.val_metric == best.val_metric and \
            ranks_above(self.direction, (metrics.val_metric, metrics.val_loss),
                        (best.val_metric, best.val_loss))

    def _stop(self, state: State, reason: str) -> bool:
        self.state, self.reason = state, reason
        return False

    def outcome(self, seconds: float) -> TrialOutcome:
        state = self.state or State.COMPLETE
        # As in Optuna: a pruned trial's value is the one it was pruned at.
        value = {State.COMPLETE: self.best_value, State.FAILED: None}.get(
            state, self.history[-1].val_metric if self.history else None)
        return TrialOutcome(
            state=state,
            value=value,
            best_epoch=self.best_epoch,
            history=list(self.history),
            reason=self.reason,
            seconds=seconds,
        )
