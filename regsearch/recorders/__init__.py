"""Recorders: the SQL ledger (authoritative) and MLflow (a view rebuilt from it)."""

from __future__ import annotations

from typing import Any

from regsearch.recorders.ledger import Ledger
from regsearch.space import RegConfig
from regsearch.trainers.base import EpochMetrics, TrialOutcome


class LedgerRecorder:
    """A `driver.Listener` writing each trial's row at its start and its end."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.study = ""

    def study_opened(self, run: Any) -> None:
        self.study = run.spec.name

    def trial_started(self, number: int, config: RegConfig) -> None:
        self.ledger.trial_started(self.study, number, config)

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None:
        pass  # written with the trial, in one transaction

    def trial_ended(self, number: int, config: RegConfig, outcome: TrialOutcome) -> None:
        self.ledger.trial_ended(self.study, number, outcome, config=config)
