"""Mending the records after a process died between writes: the ledger from Optuna, MLflow
from the ledger.

Each finished trial is written in order: Optuna (which decides the budget), the ledger,
then MLflow. A process killed between two of them leaves the later ones behind: a ledger
row still `running` for a trial Optuna has finished, an MLflow run never ended. Opening a
study mends the ledger (`opening.mend_ledger`); the launcher, once its workers are gone,
and `regsearch sync` mend both.
"""

from __future__ import annotations

from datetime import datetime, UTC
from collections.abc import Iterable

from optuna.trial import FrozenTrial

from regsearch.liveness import config_of
from regsearch.recorders.ledger import TrialRecord
from regsearch.states import FROM_OPTUNA
from regsearch.trainers.base import SUMMARY_FIELDS, EpochMetrics

_NAN = float("nan")


def optuna_records(study_name: str, trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    """Optuna's finished trials as ledger records: state, value, reason and the summary
    Optuna keeps beside them; per-epoch scores from its intermediate values (the losses of
    each epoch live only in the ledger, so a mended row's epochs hold the objective alone)."""
    return [_record(study_name, trial) for trial in trials if trial.state in FROM_OPTUNA]


def _record(study_name: str, trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    epochs = tuple(EpochMetrics(epoch=step, train_loss=_NAN, val_loss=_NAN, val_metric=value,
                                penalty=_NAN)
                   for step, value in sorted(trial.intermediate_values.items()))
    return TrialRecord(
        study_name=study_name, number=trial.number, state=FROM_OPTUNA[trial.state],
        config=config_of(trial),
        value=trial.value, reason=attrs.get("fail_reason") or attrs.get("stop_reason"),
        summary={key: attrs.get(key) for key in SUMMARY_FIELDS}, epochs=epochs,
        started=_utc(trial.datetime_start), finished=_utc(trial.datetime_complete),
        members=tuple(attrs.get("member_values") or ()))


def _utc(moment: datetime | None) -> datetime | None:
    """Optuna keeps its writer's local time without a zone; the ledger keeps UTC."""
    return moment.astimezone(UTC) if moment is not None else None


def reconcile(name: str, storage_url: str, tracking_uri: str | None, *,
              unsynced_only: bool = False) -> tuple[int, int, int]:
    """Mend the ledger from Optuna, then MLflow from the ledger; (ledger rows mended, MLflow
    runs written, MLflow runs already right). For a study no process is working on: a
    running trial's records are left alone, but its MLflow run may still be written by its
    own process."""
    from regsearch.opening import UID_ATTR
    from regsearch.recorders.ledger import Ledger
    from regsearch.results import load_study

    study = load_study(name, storage_url)
    ledger = Ledger(storage_url)
    try:
        mended = ledger.mend(name, optuna_records(name, study.get_trials(deepcopy=False)))
        unsynced = ledger.unsynced(name)
    finally:
        ledger.engine.dispose()
    if not tracking_uri or (unsynced_only and not unsynced):
        return mended, 0, 0  # nothing for MLflow: its import (seconds) is skipped
    from regsearch.recorders.mlflow_sync import sync_study

    written, kept = sync_study(name, storage_url, tracking_uri,
                               uid=study.user_attrs.get(UID_ATTR), unsynced_only=unsynced_only)
    return mended, written, kept
