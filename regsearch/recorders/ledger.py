"""The SQL ledger: flat `regsearch_*` tables, the source of truth for every trial.

One row per study, per trial and per trial-epoch, easy to query with plain SQL. MLflow is
a view of these rows and can be rebuilt from them (`regsearch sync`).
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, UTC
from typing import Any
from collections.abc import Collection, Iterator, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.orm import Session, raiseload, selectinload

from regsearch.errors import StorageError
from regsearch.states import State
from regsearch.space import RegConfig
from regsearch.recorders import migrations
from regsearch.recorders.tables import (SCHEMA_VERSION, Base, EngineStateRow, EpochRow, LockRow,
                                        MemberRow, MetaRow, StudyRow, TrialRow, finite, now)
from regsearch.storage import engine_kwargs, mask_url, tune_sqlite
from regsearch.trainers.base import SUMMARY_FIELDS, EpochMetrics, TrialOutcome

_RESULT_FIELDS = ("value", "reason", "finished", "best_epoch", "train_loss", "val_loss",
                  "train_eval_loss", "penalty", "near_zero_share", "test_metric", "seconds",
                  "mlflow_run_id")


@dataclass(frozen=True)
class TrialRecord:
    """A trial as the ledger holds it: all MLflow needs to show (or rebuild) the run."""

    study_name: str
    number: int
    state: str
    config: RegConfig
    value: float | None = None
    reason: str | None = None
    summary: dict[str, float | int | None] = field(default_factory=dict)
    epochs: tuple[EpochMetrics, ...] = ()
    mlflow_run_id: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    members: tuple[float | None, ...] = ()  # each fold's or repeat's objective, if several

    @classmethod
    def from_outcome(cls, study_name: str, number: int, config: RegConfig,
                     outcome: TrialOutcome) -> TrialRecord:
        summary = {k: finite(v) if isinstance(v, float) else v
                   for k, v in outcome.summary().items()}
        finished = now()
        return cls(study_name=study_name, number=number, state=outcome.state, config=config,
                   value=finite(outcome.value), reason=outcome.reason,
                   summary=summary, epochs=tuple(outcome.history),
                   started=finished - timedelta(seconds=outcome.seconds), finished=finished,
                   members=tuple(finite(v) for v in outcome.member_values or ()))


class Ledger:
    """Reads and writes the ledger tables at one SQLAlchemy URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = sa.create_engine(url, **engine_kwargs(url))
        tune_sqlite(self.engine)
        self._create_schema()

    def _create_schema(self, attempts: int = 5) -> None:
        """Create tables and the version row; tolerate other processes doing it at once."""
        for attempt in range(attempts):
            try:
                Base.metadata.create_all(self.engine)
                self._check_version()
                return
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError, sa.exc.OperationalError) as exc:
                # Concurrent CREATE TABLE, version row or schema upgrade: the other process
                # won; look again. A server that is down fails every attempt.
                if attempt == attempts - 1:
                    raise StorageError(f"cannot open the ledger at {mask_url(self.url)}: "
                                       f"{str(exc.orig).splitlines()[0]}") from None
                time.sleep(0.2 * (attempt + 1))

    def _check_version(self) -> None:
        with Session(self.engine) as session, session.begin():
            row = session.get(MetaRow, "schema_version")
            if row is None:
                session.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
            elif row.value.isdigit() and int(row.value) in migrations.STEPS:
                # An earlier regsearch's ledger: brought up to this version in place.
                migrations.upgrade(session.connection(), int(row.value), SCHEMA_VERSION)
                row.value = str(SCHEMA_VERSION)
            elif row.value != str(SCHEMA_VERSION):
                raise StorageError(
                    f"the ledger at {mask_url(self.url)} has schema version {row.value}, but "
                    f"this regsearch uses version {SCHEMA_VERSION}; install the regsearch "
                    "version that wrote it, or record this study in a new database")

    # ------------------------------------------------------------------ writing

    def open_study(self, *, name: str, spec_hash: str, spec: dict[str, Any], description: str,
                   metric: str, direction: str) -> None:
        try:
            with Session(self.engine) as session, session.begin():
                if session.scalar(sa.select(StudyRow.id).where(StudyRow.name == name)) is None:
                    session.add(StudyRow(name=name, spec_hash=spec_hash,
                                         spec=json.dumps(spec, sort_keys=True, default=str),
                                         data_description=description, metric=metric,
                                         direction=direction))
        except sa.exc.IntegrityError:
            pass  # another worker inserted the same study first
        try:
            with Session(self.engine) as session, session.begin():
                if session.get(LockRow, name) is None:
                    session.add(LockRow(name=name))
        except sa.exc.IntegrityError:
            pass

    @contextmanager
    def budget_lock(self, study_name: str) -> Iterator[None]:
        """Hold the study's lock row (SELECT ... FOR UPDATE) for the block.

        Processes sharing a study take it to check the budget and ask for trials, so they
        never ask for more than the budget together. SQLite has one process at a time.
        """
        if self.engine.dialect.name == "sqlite":
            yield
            return
        with Session(self.engine) as session, session.begin():
            session.execute(sa.select(LockRow.name).where(LockRow.name == study_name)
                            .with_for_update())
            yield

    def engine_revision(self, study_name: str) -> int | None:
        """How often the study's engine state was written; None: never."""
        with Session(self.engine) as session:
            return session.scalar(sa.select(EngineStateRow.revision)
                                  .where(EngineStateRow.name == study_name))

    def engine_state(self, study_name: str) -> tuple[int, dict[str, Any]] | None:
        """(revision, state) of the study's engine; None: never written."""
        with Session(self.engine) as session:
            row = session.get(EngineStateRow, study_name)
            return None if row is None else (row.revision, json.loads(row.state))

    def save_engine_state(self, study_name: str, revision: int, state: dict[str, Any]) -> None:
        """Write the engine's state as `revision` (the caller holds the study's lock)."""
        with Session(self.engine) as session, session.begin():
            row = session.get(EngineStateRow, study_name)
            if row is None:
                session.add(EngineStateRow(name=study_name, revision=revision,
                                           state=json.dumps(state)))
            else:
                row.revision, row.state = revision, json.dumps(state)

    def trials_started(self, study_name: str, started: Sequence[tuple[int, RegConfig]]) -> None:
        """One transaction for a batch of trials starting (a pack's slots fill together)."""
        with Session(self.engine) as session, session.begin():
            self._start_rows(session, study_name, started, self._rows(session, study_name, started))

    def _start_rows(self, session: Session, study_name: str,
                    started: Sequence[tuple[int, RegConfig]],
                    rows: dict[int, TrialRow]) -> dict[int, TrialRow]:
        study_id = None
        for number, config in started:
            row = rows.get(number)
            if row is None:
                study_id = study_id or self._study_id(session, study_name)
                row = rows[number] = TrialRow(study_id=study_id, number=number)
                session.add(row)
            row.state, row.worker_host, row.started = State.RUNNING, socket.gethostname(), now()
            row.regularizer, row.l1, row.l2, row.dropout = (
                config.regularizer, config.l1, config.l2, config.dropout)
            # A re-run trial starts clean: nothing of an earlier attempt may look current.
            for name in _RESULT_FIELDS:
                setattr(row, name, None)
            row.epochs_run, row.mlflow_synced = 0, False
            row.epochs.clear()
            row.members.clear()
        return rows

    def trials_ended(self, study_name: str,
                     ended: Sequence[tuple[int, RegConfig | None, TrialOutcome]]) -> None:
        """One transaction for a batch of trial rows and all of their epochs.

        A trial whose start was never written (Ctrl-C between the two) gets its row here,
        from its config.
        """
        with Session(self.engine) as session, session.begin():
            rows = self._rows(session, study_name, ended, epochs=True, lock=True)
            self._start_rows(session, study_name, [(number, config) for number, config, _ in ended
                                              if number not in rows and config is not None],
                             rows)
            for number, _, outcome in ended:
                row = rows.get(number)
                if row is None:  # never started, and no config to start it with
                    continue
                row.state, row.reason, row.finished = outcome.state, outcome.reason, now()
                row.value = finite(outcome.value)
                for key, value in outcome.summary().items():
                    setattr(row, key, finite(value) if isinstance(value, float) else value)
                row.epochs[:] = [EpochRow(epoch=m.epoch, train_loss=finite(m.train_loss),
                                          val_loss=finite(m.val_loss),
                                          val_metric=finite(m.val_metric),
                                          penalty=finite(m.penalty)) for m in outcome.history]
                row.members[:] = [MemberRow(member=j, value=finite(v))
                                  for j, v in enumerate(outcome.member_values or [])]

    def fail_running(self, study_name: str, trials: Mapping[int, RegConfig], reason: str) -> None:
        """Trials a dead process left `running` are failed with the reason, as in Optuna.

        A trial with no row (its process lost the database before the start was written)
        gets one, so the ledger still holds every trial Optuna has.
        """
        with Session(self.engine) as session, session.begin():
            rows = self._rows(session, study_name, list(trials), lock=True)
            self._start_rows(session, study_name,
                             [(n, c) for n, c in trials.items() if n not in rows],
                             rows)
            for number in trials:
                if rows[number].state == State.RUNNING:
                    rows[number].state, rows[number].reason = State.FAILED, reason
                    rows[number].finished = now()

    def mend(self, study_name: str, records: Sequence[TrialRecord]) -> int:
        """Rewrite the rows that disagree with these finished trials (as Optuna has them)
        in state or value, or are missing; how many. A row's epochs are kept if it has
        any; the mended trials are marked for MLflow to be written again."""
        with Session(self.engine) as session:
            held = {number: (state, value) for number, state, value in session.execute(
                sa.select(TrialRow.number, TrialRow.state, TrialRow.value).join(StudyRow)
                .where(StudyRow.name == study_name))}
        stale = [r for r in records if held.get(r.number) != (r.state, finite(r.value))]
        if not stale:
            return 0
        mended = 0
        with Session(self.engine) as session, session.begin():
            rows = self._rows(session, study_name, [r.number for r in stale], epochs=True,
                              lock=True)
            for record in stale:
                row = rows.get(record.number)
                if row is not None and (row.state, row.value) == (record.state,
                                                                  finite(record.value)):
                    continue  # its own process wrote it meanwhile
                if row is None:
                    row = self._start_rows(session, study_name, [(record.number, record.config)],
                                           rows)[record.number]
                    row.worker_host, row.started = "", record.started or now()
                self._mend_row(row, record)
                mended += 1
        return mended

    @staticmethod
    def _mend_row(row: TrialRow, record: TrialRecord) -> None:
        row.state, row.value, row.reason = record.state, finite(record.value), record.reason
        row.finished = record.finished or now()
        for key, value in record.summary.items():
            if value is not None:
                setattr(row, key, finite(value) if isinstance(value, float) else value)
        if not row.members:
            row.members[:] = [MemberRow(member=j, value=finite(v))
                              for j, v in enumerate(record.members)]
        if not row.epochs:
            row.epochs[:] = [EpochRow(epoch=m.epoch, train_loss=finite(m.train_loss),
                                      val_loss=finite(m.val_loss),
                                      val_metric=finite(m.val_metric),
                                      penalty=finite(m.penalty)) for m in record.epochs]
        row.mlflow_synced = False

    def set_mlflow(self, study_name: str, runs: Mapping[int, str | None], synced: bool) -> None:
        """{trial number: MLflow run id} in one transaction; None keeps the known id, and a
        trial the ledger does not have is skipped."""
        with Session(self.engine) as session, session.begin():
            for number, row in self._rows(session, study_name, list(runs)).items():
                row.mlflow_run_id = runs[number] or row.mlflow_run_id
                row.mlflow_synced = synced

    # ------------------------------------------------------------------ reading

    def is_synced(self, study_name: str, number: int) -> bool:
        with Session(self.engine) as session:
            row = self._trial(session, study_name, number)
            return bool(row is not None and row.mlflow_synced)

    def study_names(self) -> list[str]:
        with Session(self.engine) as session:
            return list(session.scalars(sa.select(StudyRow.name).order_by(StudyRow.name)))

    def study_info(self, name: str) -> dict[str, Any] | None:
        with Session(self.engine) as session:
            row = session.scalar(sa.select(StudyRow).where(StudyRow.name == name))
            if row is None:
                return None
            return {"name": row.name, "spec_hash": row.spec_hash, "spec": json.loads(row.spec),
                    "data_description": row.data_description, "metric": row.metric,
                    "direction": row.direction}

    def records(self, study_name: str, *, unsynced_only: bool = False,
                numbers: Collection[int] | None = None,
                epochs: bool = True) -> Iterator[TrialRecord]:
        """Finished or running trials as records, in trial order: all, or those `numbers`;
        without their epochs unless `epochs` (the bulk of a large study)."""
        with Session(self.engine) as session:
            query = (sa.select(TrialRow).join(StudyRow).where(StudyRow.name == study_name)
                     .order_by(TrialRow.number)
                     .options(selectinload(TrialRow.epochs) if epochs
                              else raiseload(TrialRow.epochs), selectinload(TrialRow.members)))
            if numbers is not None:
                query = query.where(TrialRow.number.in_(list(numbers)))
            if unsynced_only:
                query = query.where(TrialRow.mlflow_synced.is_(False))
            for row in session.scalars(query):
                yield _record(study_name, row, epochs=epochs)

    def best(self, study_name: str, direction: str) -> TrialRecord | None:
        """The complete trial that ranks first (`regsearch.objective`)."""
        order = TrialRow.value.desc() if direction == "maximize" else TrialRow.value.asc()
        with Session(self.engine) as session:  # `regsearch.objective`'s rule, in SQL
            row = session.scalar(sa.select(TrialRow).join(StudyRow).where(
                StudyRow.name == study_name, TrialRow.state == State.COMPLETE,
                TrialRow.value.is_not(None)).order_by(
                order, TrialRow.val_loss.is_(None), TrialRow.val_loss.asc(),
                TrialRow.number).limit(1))
            return None if row is None else _record(study_name, row)

    def unsynced(self, study_name: str) -> int:
        """How many finished trials MLflow may lack (not written since they ended)."""
        with Session(self.engine) as session:
            return session.scalar(sa.select(sa.func.count()).select_from(TrialRow).join(
                StudyRow).where(StudyRow.name == study_name, TrialRow.state != State.RUNNING,
                                TrialRow.mlflow_synced.is_(False))) or 0

    def numbers(self, study_name: str, state: str) -> set[int]:
        """The numbers of the study's trials in `state` ("failed", "running", ...)."""
        with Session(self.engine) as session:
            return set(session.scalars(sa.select(TrialRow.number).join(StudyRow)
                                       .where(StudyRow.name == study_name,
                                              TrialRow.state == state)))

    def _study_id(self, session: Session, name: str) -> int | None:
        return session.scalar(sa.select(StudyRow.id).where(StudyRow.name == name))

    def _rows(self, session: Session, study_name: str, trials: Sequence[Any], *,
              epochs: bool = False, lock: bool = False) -> dict[int, TrialRow]:
        """The rows of these trials ({number: row}); each item is a number or starts with one.

        With `lock` the rows are locked for the transaction, by primary key and in its
        order (a locking read through the (study, number) index would also lock the gaps
        beside the rows on MySQL, where other workers insert theirs), and read as they are
        once locked: a process mending the ledger and the trial's own process take turns."""
        numbers = [t if isinstance(t, int) else t[0] for t in trials]
        query = (sa.select(TrialRow).join(StudyRow)
                 .where(StudyRow.name == study_name, TrialRow.number.in_(numbers)))
        if lock and self.engine.dialect.name != "sqlite":
            ids = sorted(session.scalars(query.with_only_columns(TrialRow.id)))
            query = (sa.select(TrialRow).where(TrialRow.id.in_(ids)).order_by(TrialRow.id)
                     .with_for_update().execution_options(populate_existing=True))
        if epochs:
            query = query.options(selectinload(TrialRow.epochs),
                                  selectinload(TrialRow.members))
        return {row.number: row for row in session.scalars(query)}

    def _trial(self, session: Session, study_name: str, number: int) -> TrialRow | None:
        return session.scalar(sa.select(TrialRow).join(StudyRow)
                              .where(StudyRow.name == study_name, TrialRow.number == number))


def _record(study_name: str, row: TrialRow, *, epochs: bool = True) -> TrialRecord:
    history = tuple(EpochMetrics(epoch=e.epoch, train_loss=_nan(e.train_loss),
                                 val_loss=_nan(e.val_loss), val_metric=_nan(e.val_metric),
                                 penalty=_nan(e.penalty)) for e in row.epochs) if epochs else ()
    summary = {key: getattr(row, key) for key in SUMMARY_FIELDS}
    return TrialRecord(study_name=study_name, number=row.number, state=row.state, config=row.config,
                       value=row.value, reason=row.reason, summary=summary, epochs=history,
                       mlflow_run_id=row.mlflow_run_id, started=_utc(row.started),
                       finished=_utc(row.finished),
                       members=tuple(member.value for member in row.members))


def _utc(moment: datetime | None) -> datetime | None:
    """SQLite and MySQL hand back naive datetimes; the ledger writes UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _nan(value: float | None) -> float:
    return float("nan") if value is None else value
