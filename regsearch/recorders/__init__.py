"""Recorders: the SQL ledger (authoritative) and MLflow (a view rebuilt from it)."""

from __future__ import annotations

from typing import Any

from regsearch.protocols import Listener
from regsearch.recorders.ledger import Ledger
from regsearch.space import RegConfig
from regsearch.trainers.base import EpochMetrics, TrialOutcome


class LedgerRecorder(Listener):
    """A listener writing trials' rows at their start and their end, a batch at a time."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.study_name = ""

    def study_opened(self, run: Any) -> None:
        self.study_name = run.spec.name

    def trials_started(self, started: list[tuple[int, RegConfig]]) -> None:
        self.ledger.trials_started(self.study_name, started)

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None:
        pass  # written with the trial, in one transaction

    def trials_ended(self, ended: list[tuple[int, RegConfig, TrialOutcome]]) -> None:
        self.ledger.trials_ended(self.study_name, ended)
