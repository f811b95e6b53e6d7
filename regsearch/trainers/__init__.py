"""Trainers turn one regularization config into per-epoch metrics and an outcome."""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter drowns the progress display; users can still override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from typing import TYPE_CHECKING  # noqa: E402

from regsearch.trainers.base import EpochMetrics, StopRules, TrialOutcome  # noqa: E402

if TYPE_CHECKING:
    from regsearch.driver import StudyRun

__all__ = ["EpochMetrics", "StopRules", "TrialOutcome", "make_trainer"]


def make_trainer(run: StudyRun):  # noqa: ANN201 - the trainer classes import keras
    """The trainer the study file names (`trainer:`), imported only when needed."""
    if run.spec.trainer == "keras":
        from regsearch.trainers.keras import KerasTrainer

        return KerasTrainer(run.spec, run.data, metric=run.objective.metric,
                            direction=run.objective.direction)
    raise ValueError(f"unknown trainer {run.spec.trainer!r}")
