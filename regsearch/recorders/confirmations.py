"""The ledger's confirmation runs: each chosen configuration trained again per fresh seed.

A plan is a set of rows, one per (configuration, seed), written before any of them trains;
each row is filled in when its run ends. Resuming trains only the rows not yet ended, so an
interrupted confirmation never runs a configuration and seed twice. One process at a time
confirms a study: it holds the study's confirmation lock row (others skip it, they do not
wait), and the database lets go of it however that process ends.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from collections.abc import Iterator, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from regsearch.recorders.ledger import Ledger
from regsearch.recorders.tables import (ConfirmationEpochRow, ConfirmationRow, LockRow,
                                        StudyRow, finite, now)
from regsearch.states import State
from regsearch.space import RegConfig
from regsearch.storage import engine_kwargs
from regsearch.trainers.base import EpochMetrics, TrialOutcome



def config_key(config: RegConfig) -> str:
    """A configuration's identity: the parameters that define it, exactly."""
    return ";".join(f"{k}={v!r}" for k, v in sorted(config.params().items()))


@dataclass(frozen=True)
class PlannedRun:
    """One configuration and one seed of a confirmation."""

    config: RegConfig
    seed_index: int
    seed: int
    trial: int | None = None  # the search trial the configuration comes from
    is_default: bool = False

    @property
    def key(self) -> str:
        return config_key(self.config)


@dataclass(frozen=True)
class ConfirmationRecord:
    """A planned run as the ledger holds it; `state` is "planned" until it has ended."""

    run: PlannedRun
    state: str
    value: float | None = None
    val_loss: float | None = None
    test_metric: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    reason: str | None = None
    epochs: tuple[EpochMetrics, ...] = field(default=(), repr=False)
    mlflow_run_id: str | None = None


class Confirmations:
    """The confirmation rows of a ledger's studies."""

    def __init__(self, ledger: Ledger) -> None:
        self.engine = ledger.engine

    @contextmanager
    def lock(self, study_name: str) -> Iterator[bool]:
        """Whether this process may confirm `study` now (True for as long as the block
        runs): False when another process holds the lock. SQLite has one process."""
        if self.engine.dialect.name == "sqlite":
            yield True
            return
        name = "confirm:" + hashlib.sha1(study_name.encode()).hexdigest()[:20]
        try:
            with Session(self.engine) as session, session.begin():
                if session.get(LockRow, name) is None:
                    session.add(LockRow(name=name))
        except sa.exc.IntegrityError:
            pass  # another process made it first
        with Session(self.engine) as session, session.begin():
            held = session.execute(sa.select(LockRow.name).where(LockRow.name == name)
                                   .with_for_update(skip_locked=True)).first()
            yield held is not None

    def plan(self, study_name: str, runs: Sequence[PlannedRun]) -> None:
        """Rows for the planned runs the ledger lacks (those it has are kept as they are)."""
        with Session(self.engine) as session, session.begin():
            study_id = session.scalar(sa.select(StudyRow.id).where(StudyRow.name == study_name))
            have = set(session.execute(sa.select(ConfirmationRow.config_key,
                                                 ConfirmationRow.seed_index)
                                       .where(ConfirmationRow.study_id == study_id)).all())
            for run in runs:
                if (run.key, run.seed_index) in have:
                    continue
                session.add(ConfirmationRow(
                    study_id=study_id, config_key=run.key, trial=run.trial,
                    is_default=run.is_default, seed_index=run.seed_index, seed=run.seed,
                    state=State.PLANNED, regularizer=run.config.regularizer, l1=run.config.l1,
                    l2=run.config.l2, dropout=run.config.dropout))

    def ended(self, study_name: str, ended: Sequence[tuple[PlannedRun, TrialOutcome]]) -> None:
        """Fill in the rows of runs that ended, with their epochs, in one transaction."""
        with Session(self.engine) as session, session.begin():
            rows = self._rows(session, study_name, epochs=True)
            for run, outcome in ended:
                row = rows[(run.key, run.seed_index)]
                summary = outcome.summary()
                row.state, row.reason, row.finished = outcome.state, outcome.reason, now()
                row.value = finite(outcome.value)
                row.best_epoch, row.epochs_run = outcome.best_epoch, outcome.epochs_run
                for name in ("train_loss", "val_loss", "penalty", "test_metric", "seconds"):
                    setattr(row, name, finite(summary[name]))
                row.epochs[:] = [ConfirmationEpochRow(
                    epoch=m.epoch, train_loss=finite(m.train_loss), val_loss=finite(m.val_loss),
                    val_metric=finite(m.val_metric), penalty=finite(m.penalty))
                    for m in outcome.history]

    def set_mlflow(self, study_name: str, runs: dict[tuple[str, int], str]) -> None:
        """{(config key, seed index): MLflow run id} of runs written to MLflow."""
        with Session(self.engine) as session, session.begin():
            rows = self._rows(session, study_name)
            for key, run_id in runs.items():
                rows[key].mlflow_run_id, rows[key].mlflow_synced = run_id, True

    def records(self, study_name: str) -> list[ConfirmationRecord]:
        """Every confirmation row of the study, planned or ended."""
        with Session(self.engine) as session:
            return [_record(row) for row in self._rows(session, study_name, epochs=True).values()]

    def _rows(self, session: Session, study_name: str, *,
              epochs: bool = False) -> dict[tuple[str, int], ConfirmationRow]:
        query = (sa.select(ConfirmationRow).join(StudyRow, StudyRow.id == ConfirmationRow.study_id)
                 .where(StudyRow.name == study_name)
                 .order_by(ConfirmationRow.seed_index, ConfirmationRow.id))
        if epochs:
            query = query.options(selectinload(ConfirmationRow.epochs))
        return {(row.config_key, row.seed_index): row for row in session.scalars(query)}


def read_records(url: str, study_name: str) -> list[ConfirmationRecord]:
    """A study's confirmation runs, read without creating anything (`regsearch best`): none
    where the database has no confirmation table (a study recorded before they existed)."""
    engine = sa.create_engine(url, **engine_kwargs(url))
    try:
        if not sa.inspect(engine).has_table(ConfirmationRow.__tablename__):
            return []
        with Session(engine) as session:
            query = (sa.select(ConfirmationRow)
                     .join(StudyRow, StudyRow.id == ConfirmationRow.study_id)
                     .where(StudyRow.name == study_name)
                     .options(selectinload(ConfirmationRow.epochs)))
            return [_record(row) for row in session.scalars(query)]
    finally:
        engine.dispose()


def _record(row: ConfirmationRow) -> ConfirmationRecord:
    nan = float("nan")
    return ConfirmationRecord(
        run=PlannedRun(row.config, row.seed_index, row.seed, row.trial, row.is_default),
        state=row.state, value=row.value, val_loss=row.val_loss, test_metric=row.test_metric,
        best_epoch=row.best_epoch, epochs_run=row.epochs_run, reason=row.reason,
        epochs=tuple(EpochMetrics(e.epoch, *(nan if v is None else v for v in (
            e.train_loss, e.val_loss, e.val_metric, e.penalty))) for e in row.epochs),
        mlflow_run_id=row.mlflow_run_id)
