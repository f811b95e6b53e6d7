"""The SQL ledger's contract, run unchanged on SQLite, PostgreSQL and MySQL/MariaDB.

Every test gets a clean database (`db_url`): a fresh SQLite file, or a server database
emptied of all tables (Optuna's, `regsearch_*`, `alembic_version`) before and after the
test. Server backends are read from REGSEARCH_TEST_POSTGRES_URL / REGSEARCH_TEST_MYSQL_URL
and skipped when those are unset.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import time
from datetime import datetime, timedelta, UTC
from typing import Any
from collections.abc import Callable, Iterator

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from regsearch.states import KillReason
from regsearch import driver, liveness, opening, space
from regsearch.errors import StorageError
from regsearch.recorders.ledger import (SCHEMA_VERSION, Base, Ledger, MetaRow, TrialRecord)
from regsearch.space import RegConfig
from regsearch.storage import open_storage
from regsearch.trainers.base import SUMMARY_FIELDS, EpochMetrics, TrialOutcome

SERVER_VARS = {"postgresql": "REGSEARCH_TEST_POSTGRES_URL", "mysql": "REGSEARCH_TEST_MYSQL_URL"}
LEDGER_TABLES = {"regsearch_meta", "regsearch_studies", "regsearch_trials", "regsearch_epochs"}
NAN, INF = float("nan"), float("inf")
STUDY = "tiny"


# --------------------------------------------------------------------------- fixtures

def _drop_all_tables(url: str) -> None:
    """Drop every table of the database (reflection orders them by foreign keys)."""
    engine = sa.create_engine(url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.begin() as conn:
            # A connection leaked by a test must fail the clean-up loudly, not hang it.
            if engine.dialect.name == "mysql":
                conn.exec_driver_sql("SET SESSION lock_wait_timeout = 30")
                conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            elif engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET lock_timeout = '30s'")
            meta.drop_all(conn)
        left = sa.inspect(engine).get_table_names()
        assert left == [], f"could not empty the test database: {left}"
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite",
                        pytest.param("postgresql", marks=pytest.mark.server),
                        pytest.param("mysql", marks=pytest.mark.server)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A clean, empty database of each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    var = SERVER_VARS[request.param]
    url = os.environ.get(var)
    if not url:
        pytest.skip(f"{var} is not set; set it to a throwaway {request.param} database URL "
                    "(every table in it is dropped)")
    _drop_all_tables(url)
    try:
        yield url
    finally:
        _drop_all_tables(url)


@pytest.fixture
def open_ledger(db_url: str) -> Iterator[Callable[[], Ledger]]:
    """`open_ledger()` -> a Ledger at `db_url`; its engine is disposed after the test."""
    opened: list[Ledger] = []

    def open_() -> Ledger:
        ledger = Ledger(db_url)
        opened.append(ledger)
        return ledger

    yield open_
    for ledger in opened:
        ledger.engine.dispose()


# --------------------------------------------------------------------------- helpers

TRIALS_SQL = sa.text("""
    SELECT t.number, t.state, t.regularizer, t.l1, t.l2, t.dropout, t.value, t.best_epoch,
           t.train_loss, t.val_loss, t.train_eval_loss, t.penalty, t.near_zero_share,
           t.test_metric,
           t.epochs_run, t.seconds, t.worker_host, t.mlflow_run_id, t.mlflow_synced,
           t.reason, t.started, t.finished
    FROM regsearch_trials t JOIN regsearch_studies s ON s.id = t.study_id
    WHERE s.name = :study
    ORDER BY t.number""")

EPOCHS_SQL = sa.text("""
    SELECT e.epoch, e.train_loss, e.val_loss, e.val_metric, e.penalty
    FROM regsearch_epochs e
    JOIN regsearch_trials t ON t.id = e.trial_id
    JOIN regsearch_studies s ON s.id = t.study_id
    WHERE s.name = :study AND t.number = :number
    ORDER BY e.epoch""")


def trial_rows(engine: sa.Engine, study: str = STUDY) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(TRIALS_SQL, {"study": study}).mappings()]


def epoch_rows(engine: sa.Engine, number: int, study: str = STUDY) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(EPOCHS_SQL, {"study": study,
                                                                "number": number})]


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def meta_rows(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(MetaRow.key, MetaRow.value)).all())


def snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row of every ledger table, for "nothing changed" checks."""
    with engine.connect() as conn:
        return {table.name: sorted(tuple(map(repr, row)) for row in conn.execute(table.select()))
                for table in Base.metadata.sorted_tables}


def same(a: float | None, b: float | None) -> bool:
    """Equal to double precision (a MySQL FLOAT column would lose ~8 digits)."""
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-15, abs_tol=0.0)


def utc(moment: datetime | str) -> datetime:
    """Backends without time zones (SQLite, MySQL DATETIME) give back naive UTC times;
    SQLite gives plain SQL its ISO text."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def canonical(record: TrialRecord) -> TrialRecord:
    """NaN and inf -> None in the epochs (the ledger keeps neither), so records compare.

    Start and finish times are compared by the tests that are about them, not here: a
    live record stamps "now", the ledger stamps the moment the row was written.
    """
    def clean(m: EpochMetrics) -> EpochMetrics:
        return dataclasses.replace(m, **{f.name: None for f in dataclasses.fields(m)
                                         if isinstance(getattr(m, f.name), float)
                                         and not math.isfinite(getattr(m, f.name))})
    return dataclasses.replace(record, epochs=tuple(clean(m) for m in record.epochs),
                               started=None, finished=None)


def open_study(ledger: Ledger, name: str = STUDY) -> None:
    ledger.open_study(name=name, spec_hash="0123456789abcdef", spec={"name": name, "seed": 3},
                      description="builtin:digits", metric="accuracy", direction="maximize")


def outcome(state: str = "complete", epochs: int = 3, value: float | None = 0.9,
            reason: str | None = None, scale: float = 1.0) -> TrialOutcome:
    history = [EpochMetrics(epoch=e, train_loss=scale / e, val_loss=scale / (e + 1),
                            val_metric=0.5 + e / 10, penalty=scale * e / 100)
               for e in range(1, epochs + 1)]
    return TrialOutcome(state=state, value=value, best_epoch=epochs if epochs else None,
                        history=history, reason=reason, seconds=1.5)


# A config and outcome whose every number needs double precision to round-trip.
PRECISE = RegConfig("l1_l2", l1=3.3333333333333335e-4, l2=1.234567890123e-5,
                    dropout=0.123456789012345)
PRECISE_OUTCOME = TrialOutcome(
    state="complete", value=0.876543210987654, best_epoch=2, reason="early stopping at epoch 3",
    seconds=1.23456789, near_zero_share=0.0625, test_metric=0.8123456789012345,
    train_eval_loss=0.7123456789012345,
    history=[EpochMetrics(1, 2.0000000000000004, 1.5, 0.5, 0.0123456789012345),
             EpochMetrics(2, 1.0000000000000002, 0.7500000000000001, 0.876543210987654,
                          0.0234567890123456),
             EpochMetrics(3, NAN, INF, 0.8, -INF)])


# --------------------------------------------------------------------------- 1. schema

def test_fresh_ledger_creates_its_tables_and_schema_version(open_ledger, db_url) -> None:
    ledger = open_ledger()
    assert set(sa.inspect(ledger.engine).get_table_names()) >= LEDGER_TABLES
    assert meta_rows(ledger.engine) == {"schema_version": str(SCHEMA_VERSION)}
    open_study(ledger)
    ledger.trials_started(STUDY, [(0, PRECISE)])

    again = open_ledger()  # reopening keeps the rows and does not add a second version row
    assert meta_rows(again.engine) == {"schema_version": str(SCHEMA_VERSION)}
    assert again.study_names() == [STUDY]
    assert [r.number for r in again.records(STUDY)] == [0]
    assert again.study_info(STUDY) == {"name": STUDY, "spec_hash": "0123456789abcdef",
                                  "spec": {"name": STUDY, "seed": 3},
                                  "data_description": "builtin:digits", "metric": "accuracy",
                                  "direction": "maximize"}
    assert again.study_info("nope") is None
    if ledger.engine.dialect.name == "sqlite":  # commits wait for no full fsync
        with ledger.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_other_schema_version_is_refused_and_rows_are_untouched(open_ledger, db_url) -> None:
    ledger = open_ledger()
    open_study(ledger)
    ledger.trials_started(STUDY, [(0, PRECISE)])
    ledger.trials_ended(STUDY, [(0, None, PRECISE_OUTCOME)])
    other = str(SCHEMA_VERSION + 6)
    with ledger.engine.begin() as conn:
        conn.execute(sa.update(MetaRow).where(MetaRow.key == "schema_version")
                     .values(value=other))
    before = snapshot(ledger.engine)

    with pytest.raises(StorageError) as info:
        Ledger(db_url)
    message = str(info.value)
    assert f"schema version {other}" in message
    assert f"version {SCHEMA_VERSION}" in message
    assert "install the regsearch version that wrote it" in message
    assert "new database" in message
    assert snapshot(ledger.engine) == before


def test_an_earlier_version_ledger_is_upgraded_in_place_keeping_its_rows(open_ledger,
                                                                        db_url) -> None:
    """A version-1 ledger (before `train_eval_loss`) opens: the column is added, every row
    recorded before is kept as it was, and new trials fill the column."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    ledger = open_ledger()
    open_study(ledger)
    ledger.trials_started(STUDY, [(0, PRECISE)])
    ledger.trials_ended(STUDY, [(0, None, PRECISE_OUTCOME)])
    with ledger.engine.begin() as conn:  # what regsearch of schema version 1 wrote
        Operations(MigrationContext.configure(conn)).drop_column("regsearch_trials",
                                                                 "train_eval_loss")
        conn.execute(sa.update(MetaRow).where(MetaRow.key == "schema_version").values(value="1"))
    ledger.engine.dispose()
    old_columns = {c["name"] for c in sa.inspect(ledger.engine).get_columns("regsearch_trials")}
    assert "train_eval_loss" not in old_columns
    with ledger.engine.connect() as conn:
        before = sorted(conn.execute(sa.text("SELECT * FROM regsearch_trials")).all())

    upgraded = open_ledger()
    assert meta_rows(upgraded.engine) == {"schema_version": str(SCHEMA_VERSION)}
    columns = {c["name"] for c in sa.inspect(upgraded.engine).get_columns("regsearch_trials")}
    assert columns == old_columns | {"train_eval_loss"}
    with upgraded.engine.connect() as conn:
        after = conn.execute(sa.text(f"SELECT {', '.join(sorted(old_columns))} "
                                     "FROM regsearch_trials")).all()
    assert sorted(after) == [tuple(row._mapping[c] for c in sorted(old_columns))
                             for row in before]
    (old,) = upgraded.records(STUDY)
    assert old.summary["train_eval_loss"] is None and same(old.value, PRECISE_OUTCOME.value)
    upgraded.trials_started(STUDY, [(1, PRECISE)])
    upgraded.trials_ended(STUDY, [(1, None, PRECISE_OUTCOME)])
    new = {r.number: r for r in upgraded.records(STUDY)}[1]
    assert same(new.summary["train_eval_loss"], PRECISE_OUTCOME.train_eval_loss)
    assert meta_rows(open_ledger().engine) == {"schema_version": str(SCHEMA_VERSION)}


# --------------------------------------------------------------------------- 2. writes

def test_trial_row_and_epochs_hold_the_outcome_at_double_precision(open_ledger) -> None:
    ledger = open_ledger()
    open_study(ledger)
    before = datetime.now(UTC)
    ledger.trials_started(STUDY, [(0, PRECISE)])
    ledger.trials_ended(STUDY, [(0, None, PRECISE_OUTCOME)])
    after = datetime.now(UTC)

    [row] = trial_rows(ledger.engine)
    assert (row["number"], row["state"], row["regularizer"]) == (0, "complete", "l1_l2")
    for column, expected in [("l1", PRECISE.l1), ("l2", PRECISE.l2), ("dropout", PRECISE.dropout),
                             ("value", 0.876543210987654), ("train_loss", 1.0000000000000002),
                             ("val_loss", 0.7500000000000001), ("penalty", 0.0234567890123456),
                             ("train_eval_loss", 0.7123456789012345),
                             ("near_zero_share", 0.0625), ("test_metric", 0.8123456789012345),
                             ("seconds", 1.2346)]:
        assert same(row[column], expected), (column, row[column], expected)
    assert (row["best_epoch"], row["epochs_run"]) == (2, 3)
    assert row["reason"] == "early stopping at epoch 3"
    assert row["worker_host"] == socket.gethostname()
    assert row["mlflow_run_id"] is None and not row["mlflow_synced"]
    slack = timedelta(seconds=1)  # MySQL DATETIME keeps whole seconds
    started, finished = utc(row["started"]), utc(row["finished"])
    assert before - slack <= started <= finished + slack and finished <= after + slack

    epochs = epoch_rows(ledger.engine, 0)
    assert [e[0] for e in epochs] == [1, 2, 3]
    for got, want in zip(epochs[:2], PRECISE_OUTCOME.history[:2]):
        assert all(same(g, w) for g, w in zip(got[1:], dataclasses.astuple(want)[1:])), got
    assert epochs[2] == (3, None, None, 0.8, None)  # NaN, inf and -inf are NULL

    [record] = ledger.records(STUDY)
    expected = TrialRecord.from_outcome(STUDY, 0, PRECISE, PRECISE_OUTCOME)
    assert canonical(record) == canonical(expected)


def test_nan_outcome_fields_are_null_and_sql_aggregates_work(open_ledger) -> None:
    ledger = open_ledger()
    open_study(ledger)
    ledger.trials_started(STUDY, [(0, PRECISE)])
    ledger.trials_ended(STUDY, [(0, None, PRECISE_OUTCOME)])
    ledger.trials_started(STUDY, [(1, RegConfig("none", dropout=0.25))])
    diverged = TrialOutcome(state="failed", value=NAN, reason="non-finite train_loss at epoch 1",
                            history=[EpochMetrics(1, NAN, NAN, NAN, INF)], seconds=0.25,
                            near_zero_share=NAN, test_metric=INF)
    ledger.trials_ended(STUDY, [(1, None, diverged)])

    row = trial_rows(ledger.engine)[1]
    assert row["state"] == "failed" and row["reason"] == "non-finite train_loss at epoch 1"
    assert (row["l1"], row["l2"], row["dropout"]) == (0.0, 0.0, 0.25)
    for column in ("value", "best_epoch", "train_loss", "val_loss", "penalty",
                   "near_zero_share", "test_metric"):
        assert row[column] is None, column
    assert row["epochs_run"] == 1
    assert epoch_rows(ledger.engine, 1) == [(1, None, None, None, None)]
    [_, record] = ledger.records(STUDY)
    assert record.value is None and record.summary["near_zero_share"] is None
    assert all(math.isnan(x) for x in dataclasses.astuple(record.epochs[0])[1:])

    # Plain SQL, as a user would type it: NULLs keep aggregates meaningful.
    with ledger.engine.connect() as conn:
        best = conn.execute(sa.text(
            "SELECT regularizer, value FROM regsearch_trials "
            "WHERE state = 'complete' ORDER BY value DESC")).all()
        assert [tuple(r) for r in best] == [("l1_l2", 0.876543210987654)]
        count, mean = conn.execute(sa.text(
            "SELECT COUNT(*), AVG(val_loss) FROM regsearch_epochs")).one()
        assert count == 4 and same(float(mean), (1.5 + 0.7500000000000001) / 2)
        assert conn.execute(sa.text(
            "SELECT COUNT(*) FROM regsearch_trials WHERE value IS NULL")).scalar() == 1


def test_a_batch_of_trials_is_one_transaction_each_way(open_ledger) -> None:
    """A pack's trials start and end together: one commit for each batch, every row right,
    a re-run trial reset, and a trial whose start was never written given a row."""
    ledger = open_ledger()
    open_study(ledger)
    ledger.trials_started(STUDY, [(1, RegConfig("none"))])
    ledger.trials_ended(STUDY, [(1, None, outcome(state="failed", value=None))])
    commits = []
    sa.event.listen(ledger.engine, "commit", lambda _conn: commits.append(1))
    ledger.trials_started(STUDY, [(0, RegConfig("l1", l1=1e-4)), (1, RegConfig("l2", l2=1e-3)),
                                  (2, RegConfig("none", dropout=0.2))])
    assert len(commits) == 1
    assert [r["state"] for r in trial_rows(ledger.engine)] == ["running"] * 3
    assert epoch_rows(ledger.engine, 1) == []  # the failed attempt's epochs are gone
    ledger.trials_ended(STUDY, [(0, RegConfig("l1", l1=1e-4), outcome(epochs=2, value=0.5)),
                                (1, RegConfig("l2", l2=1e-3), outcome(epochs=3, value=0.7)),
                                (3, RegConfig("l2", l2=2e-3), outcome(epochs=1, value=0.6))])
    assert len(commits) == 2
    rows = {r["number"]: r for r in trial_rows(ledger.engine)}
    assert {n: (r["state"], r["value"], r["regularizer"]) for n, r in rows.items()} == {
        0: ("complete", 0.5, "l1"), 1: ("complete", 0.7, "l2"), 2: ("running", None, "none"),
        3: ("complete", 0.6, "l2")}
    assert [len(epoch_rows(ledger.engine, n)) for n in range(4)] == [2, 3, 0, 1]


# --------------------------------------------------------------------------- 3. flags

def test_mlflow_flags_and_unsynced_records(open_ledger) -> None:
    ledger = open_ledger()
    open_study(ledger)
    open_study(ledger, "other")
    for number in (0, 1, 2):
        ledger.trials_started(STUDY, [(number, RegConfig("l2", l2=1e-3))])
    ledger.trials_started("other", [(0, RegConfig("none"))])
    ledger.trials_ended(STUDY, [(0, None, outcome())])
    ledger.trials_ended(STUDY, [(1, None, outcome())])

    assert ledger.numbers(STUDY, "running") == {2} and ledger.numbers("other", "running") == {0}
    assert ledger.numbers(STUDY, outcome().state) == {0, 1}
    assert not ledger.is_synced(STUDY, 0)
    ledger.set_mlflow(STUDY, {0: "run-a"}, synced=False)
    assert not ledger.is_synced(STUDY, 0)
    ledger.set_mlflow(STUDY, {0: None}, synced=True)  # no new id: the old one is kept
    assert ledger.is_synced(STUDY, 0)
    assert not ledger.is_synced("other", 0)  # same number, other study
    assert not ledger.is_synced(STUDY, 42) and not ledger.is_synced("nope", 0)
    ledger.set_mlflow(STUDY, {42: "run-x"}, synced=True)  # unknown trial: ignored, not created

    assert [(r.number, r.mlflow_run_id) for r in ledger.records(STUDY)] == [
        (0, "run-a"), (1, None), (2, None)]
    assert [r.number for r in ledger.records(STUDY, unsynced_only=True)] == [1, 2]
    ledger.set_mlflow(STUDY, {2: "run-c"}, synced=True)
    assert [r.number for r in ledger.records(STUDY, unsynced_only=True)] == [1]
    ledger.set_mlflow(STUDY, {0: "run-b"}, synced=False)
    assert [r.number for r in ledger.records(STUDY, unsynced_only=True)] == [0, 1]
    assert [r.mlflow_run_id for r in ledger.records(STUDY)] == ["run-b", None, "run-c"]
    ledger.set_mlflow(STUDY, {1: "run-d", 2: None, 42: "run-y"}, synced=True)  # a batch
    assert [(r.mlflow_run_id, ledger.is_synced(STUDY, r.number))
            for r in ledger.records(STUDY)] == [("run-b", False), ("run-d", True),
                                                ("run-c", True)]
    assert scalar(ledger.engine, "SELECT COUNT(*) FROM regsearch_trials") == 4


def test_fail_running_touches_only_running_trials_of_its_study(open_ledger) -> None:
    ledger = open_ledger()
    open_study(ledger)
    open_study(ledger, "other")
    for number in (0, 1, 2):
        ledger.trials_started(STUDY, [(number, RegConfig("l1", l1=1e-4))])
    ledger.trials_started("other", [(2, RegConfig("none"))])
    ledger.trials_ended(STUDY, [(0, None, outcome())])
    ledger.trials_ended(STUDY, [(1, None, outcome(state="pruned", epochs=1,
                                                  reason="pruned at epoch 1"))])
    finished = {r["number"]: r for r in trial_rows(ledger.engine)}

    config = RegConfig("l1", l1=1e-4)
    ledger.fail_running(STUDY, {n: config for n in (0, 1, 2)},
                        "its process ended while the trial was running")

    rows = {r["number"]: r for r in trial_rows(ledger.engine)}
    assert rows[0] == finished[0] and rows[1] == finished[1]
    assert rows[2]["state"] == "failed"
    assert rows[2]["reason"] == "its process ended while the trial was running"
    assert rows[2]["finished"] is not None and rows[2]["value"] is None
    assert set(rows) == {0, 1, 2}
    [other] = trial_rows(ledger.engine, "other")
    assert other["state"] == "running" and other["finished"] is None and other["reason"] is None


# --------------------------------------------------------------------------- 4. restarts

def test_restarted_trial_replaces_its_epochs(open_ledger) -> None:
    ledger = open_ledger()
    open_study(ledger)
    ledger.trials_started(STUDY, [(0, RegConfig("l1", l1=1e-4))])
    ledger.trials_ended(STUDY, [(0, None, outcome(epochs=3, scale=1.0))])
    ledger.trials_started(STUDY, [(1, RegConfig("none"))])
    ledger.trials_ended(STUDY, [(1, None, outcome(epochs=3, scale=3.0))])

    ledger.trials_started(STUDY, [(0, RegConfig("l2", l2=2e-3, dropout=0.1))])
    assert epoch_rows(ledger.engine, 0) == []
    [row0, _] = trial_rows(ledger.engine)
    assert (row0["state"], row0["regularizer"], row0["l1"], row0["l2"], row0["dropout"]) == (
        "running", "l2", 0.0, 2e-3, 0.1)

    ledger.trials_ended(STUDY, [(0, None, outcome(epochs=2, scale=2.0, value=0.7))])
    assert epoch_rows(ledger.engine, 0) == [(1, 2.0, 2.0 / 2, 0.6, 0.02),
                                            (2, 1.0, 2.0 / 3, 0.7, 0.04)]
    assert len(epoch_rows(ledger.engine, 1)) == 3  # the other trial keeps its epochs
    assert scalar(ledger.engine, "SELECT COUNT(*) FROM regsearch_trials") == 2
    assert scalar(ledger.engine, "SELECT COUNT(*) FROM regsearch_epochs") == 5
    [record0, _] = ledger.records(STUDY)
    assert (record0.value, record0.summary["epochs_run"], len(record0.epochs)) == (0.7, 2, 2)


def test_restarted_trial_forgets_the_previous_attempt(open_ledger) -> None:
    ledger = open_ledger()
    open_study(ledger)
    ledger.trials_started(STUDY, [(0, RegConfig("l1", l1=1e-4))])
    ledger.trials_ended(STUDY, [(0, None, outcome(value=0.95,
                                                  reason="early stopping at epoch 3"))])
    ledger.set_mlflow(STUDY, {0: "run-old"}, synced=True)

    ledger.trials_started(STUDY, [(0, RegConfig("l2", l2=2e-3))])
    [row] = trial_rows(ledger.engine)
    stale = {column: row[column] for column in ("value", "reason", "finished", *SUMMARY_FIELDS)
             if row[column] not in (None, 0)}
    assert row["state"] == "running" and stale == {}
    assert not ledger.is_synced(STUDY, 0)
    # What the stale value does: the abandoned re-run is "failed" yet holds the old score.
    ledger.fail_running(STUDY, {0: RegConfig("l2", l2=2e-3)},
                        "its process ended while the trial was running")
    assert trial_rows(ledger.engine)[0]["value"] is None


def test_a_failed_trial_whose_start_was_never_written_still_gets_its_row(open_ledger) -> None:
    """Its process lost the database between Optuna's ask and the ledger's start row."""
    ledger = open_ledger()
    open_study(ledger)
    ledger.fail_running(STUDY, {7: RegConfig("l2", l2=3e-4, dropout=0.2)}, "lost")
    [row] = trial_rows(ledger.engine)
    assert (row["number"], row["state"], row["reason"]) == (7, "failed", "lost")
    assert (row["regularizer"], row["l2"], row["dropout"]) == ("l2", 3e-4, 0.2)
    assert row["finished"] is not None and row["value"] is None


# --------------------------------------------------------------------------- concurrency

def test_workers_opening_a_new_server_database_at_once_all_succeed(db_url) -> None:
    if db_url.startswith("sqlite"):
        pytest.skip("a SQLite study is run by one process at a time")
    errors: list[str] = []
    opened: list[Ledger] = []
    for _ in range(3):
        _drop_all_tables(db_url)
        barrier = threading.Barrier(6)

        def worker(barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            try:
                opened.append(Ledger(db_url))
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for ledger in opened:
            ledger.engine.dispose()
    assert errors == []


# --------------------------------------------------------------------------- driver

def _close(run: opening.StudyRun) -> None:
    run.ledger.engine.dispose()
    storage = run.study._storage
    getattr(storage, "_backend", storage).engine.dispose()


def _abandon_one_trial(run: opening.StudyRun) -> int:
    """What a killed worker leaves: a RUNNING Optuna trial and a `running` ledger row."""
    trial = run.study.ask()
    config = space.suggest(trial, run.spec.space)
    for recorder in run.recorders:
        recorder.study_opened(run)
        recorder.trials_started([(trial.number, config)])
    return trial.number


def test_fail_abandoned_fails_the_trial_in_optuna_and_the_ledger(db_url, make_spec) -> None:
    run = opening.open_run(make_spec(storage=db_url, mlflow={"enabled": False}))
    try:
        number = _abandon_one_trial(run)
        assert trial_rows(run.ledger.engine)[0]["state"] == "running"
        liveness.fail_abandoned(run)
        [trial] = run.study.get_trials()
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["fail_reason"] == KillReason.ABANDONED
        assert trial.user_attrs[liveness.UNCOUNTED] is True
        assert run.done == 0 == liveness.count_done([trial])
        [row] = trial_rows(run.ledger.engine)
        assert (row["number"], row["state"], row["reason"]) == (number, "failed",
                                                                KillReason.ABANDONED)
        assert row["finished"] is not None
    finally:
        _close(run)


def test_running_a_sqlite_study_fails_what_a_dead_process_left_running(db_url,
                                                                      make_spec) -> None:
    """Opening a study touches no running trial (its process may be alive: `init`, or a
    second `run` that the SQLite lock then refuses); running one on SQLite, with the lock
    held, fails them as abandoned. On a server only heartbeats decide that a worker died."""
    from regsearch.trainers import make_trainer

    spec = make_spec(storage=db_url, mlflow={"enabled": False},
                     search={"n_trials": 1, "pruner": "none"}, train__epochs=1)
    first = opening.open_run(spec)
    try:
        _abandon_one_trial(first)
    finally:
        _close(first)
    second = opening.open_run(spec)
    try:
        [row] = trial_rows(second.ledger.engine)
        [trial] = second.study.get_trials()
        assert (row["state"], row["reason"], trial.state) == ("running", None,
                                                              TrialState.RUNNING)
        if db_url.startswith("sqlite"):
            driver.run_study(second, make_trainer(second))
            rows = trial_rows(second.ledger.engine)
            trials = second.study.get_trials()
            assert [(r["state"], r["reason"]) for r in rows] == [
                ("failed", KillReason.ABANDONED), ("complete", None)]
            assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    finally:
        _close(second)


# --------------------------------------------------------------------------- 5. end to end

class _PruneTrialOne(optuna.pruners.BasePruner):
    """Deterministic pruning: trial 1 is pruned after its second epoch."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number == 1 and (trial.last_step or 0) >= 2


_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
           TrialState.FAIL: "failed"}


def _complete_pruned_and_failed(make_spec: Callable[..., Any], db_url: str) -> tuple[Any, Any]:
    """Two studies whose trials end every way: digits (trial 1 pruned with `_PruneTrialOne`,
    the others complete) and diabetes at a learning rate that diverges at once."""
    digits = make_spec(storage=db_url, mlflow={"enabled": False},
                       search={"n_trials": 4, "pruner": "none"}, train__epochs=3)
    diverging = make_spec(name="diverging", storage=db_url, mlflow={"enabled": False},
                          data={"builtin": "diabetes"}, search={"n_trials": 1, "pruner": "none"},
                          train={"epochs": 2, "optimizer": "sgd", "learning_rate": 1e6})
    return digits, diverging


@pytest.mark.slow
def test_real_studies_ledger_matches_optuna_trial_for_trial(db_url, make_spec,
                                                           monkeypatch) -> None:
    from regsearch.trainers import make_trainer

    monkeypatch.setattr(opening, "make_pruner", lambda spec: _PruneTrialOne())
    digits, diverging = _complete_pruned_and_failed(make_spec, db_url)
    runs: list[opening.StudyRun] = []
    rdb = None
    try:
        for spec in (digits, diverging):
            runs.append(opening.open_run(spec))
            driver.run_study(runs[-1], make_trainer(runs[-1]))
        engine = runs[0].ledger.engine
        rdb = open_storage(db_url)  # a fresh reader of what Optuna stored
        states: set[str] = set()
        for spec, metric, direction in ((digits, "accuracy", "maximize"),
                                        (diverging, "rmse", "minimize")):
            info = runs[0].ledger.study_info(spec.name)
            assert (info["spec_hash"], info["metric"], info["direction"]) == (
                spec.spec_hash, metric, direction)
            assert info["spec"]["data"]["builtin"] == spec.data.builtin
            trials = optuna.load_study(study_name=spec.name, storage=rdb).get_trials()
            rows = trial_rows(engine, spec.name)
            assert [r["number"] for r in rows] == [t.number for t in trials]
            assert len(rows) == spec.search.n_trials
            records = list(runs[0].ledger.records(spec.name))
            for trial, row, record in zip(trials, rows, records):
                _check_trial(trial, row, record, epoch_rows(engine, trial.number, spec.name))
                states.add(row["state"])
        assert states == {"complete", "pruned", "failed"}
        assert runs[0].ledger.study_names() == sorted([digits.name, diverging.name])
    finally:
        for run in runs:
            _close(run)
        if rdb is not None:
            rdb.engine.dispose()


def _check_trial(trial: optuna.trial.FrozenTrial, row: dict[str, Any], record: TrialRecord,
                 epochs: list[tuple]) -> None:
    where = f"trial {trial.number}"
    attrs = trial.user_attrs
    assert row["state"] == _STATES[trial.state], where
    assert row["regularizer"] == trial.params["regularizer"], where
    for name in ("l1", "l2", "dropout"):
        assert same(row[name], trial.params.get(name, 0.0)), (where, name)
    assert record.config == space.from_params(trial.params), where
    assert (record.number, record.state) == (trial.number, row["state"]), where

    for name in SUMMARY_FIELDS:  # Optuna leaves out the None ones
        assert same(row[name], attrs.get(name)), (where, name, row[name], attrs.get(name))
    assert row["epochs_run"] == attrs["epochs_run"] == len(epochs) >= 1, where
    if trial.state == TrialState.FAIL:
        assert row["reason"] == attrs["fail_reason"], where
        assert "training diverged" in row["reason"], where
        assert row["value"] is None and trial.value is None and record.value is None, where
    else:
        assert row["reason"] == attrs.get("stop_reason"), where
        assert row["best_epoch"] is not None, where
        # Ledger and Optuna agree on every finished trial's value.
        assert same(row["value"], trial.value) and same(record.value, trial.value), where
    if trial.state == TrialState.COMPLETE:
        # A completed trial's value is its best epoch's score, as the ledger's epochs show.
        assert same(row["value"], epochs[row["best_epoch"] - 1][3]), where
    if trial.state == TrialState.PRUNED:
        assert row["reason"] == "pruned at epoch 2" and row["epochs_run"] == 2, where
        # As in Optuna, a pruned trial's value is the score it was pruned at.
        assert same(trial.value, trial.intermediate_values[trial.last_step]), where

    # Each epoch Optuna saw (all but a diverged one) is in the ledger with the same score.
    assert [e[0] for e in epochs] == list(range(1, len(epochs) + 1)), where
    for epoch, _train_loss, _val_loss, val_metric, _penalty in epochs:
        if epoch in trial.intermediate_values:
            assert same(val_metric, trial.intermediate_values[epoch]), (where, epoch)
        else:
            assert trial.state == TrialState.FAIL and val_metric is None, (where, epoch)
    assert len(record.epochs) == len(epochs), where
    assert row["finished"] is not None and utc(row["started"]) <= utc(row["finished"]) + \
        timedelta(seconds=1), where


def _break(engine: sa.Engine, study: str, number: int, sql: str, **params: Any) -> None:
    """Run `sql` on trial `number`'s ledger row (`:id` is its id)."""
    with engine.begin() as conn:
        trial_id = conn.execute(sa.text(
            "SELECT t.id FROM regsearch_trials t JOIN regsearch_studies s ON s.id = t.study_id "
            "WHERE s.name = :s AND t.number = :n"), {"s": study, "n": number}).scalar_one()
        for statement in sql.split(";"):
            conn.execute(sa.text(statement), {"id": trial_id, **params})


@pytest.mark.slow
def test_a_broken_ledger_is_mended_from_optuna_when_the_study_is_opened(db_url, make_spec,
                                                                       monkeypatch) -> None:
    """What a worker killed between its Optuna write and its ledger write leaves (a finished
    trial `running`, or no row at all), and rows that say something else than Optuna, are
    rewritten from Optuna when the study is next opened; the rest is not touched."""
    from regsearch.trainers import make_trainer

    monkeypatch.setattr(opening, "make_pruner", lambda spec: _PruneTrialOne())
    digits, diverging = _complete_pruned_and_failed(make_spec, db_url)
    runs: list[opening.StudyRun] = []
    try:
        for spec in (digits, diverging):
            runs.append(opening.open_run(spec))
            driver.run_study(runs[-1], make_trainer(runs[-1]))
        engine = runs[0].ledger.engine
        kept = epoch_rows(engine, 3)
        _break(engine, STUDY, 0, "UPDATE regsearch_trials SET state = 'running', value = NULL, "
               "reason = NULL, finished = NULL WHERE id = :id; "
               "DELETE FROM regsearch_epochs WHERE trial_id = :id")
        _break(engine, STUDY, 1, "DELETE FROM regsearch_epochs WHERE trial_id = :id; "
               "DELETE FROM regsearch_trials WHERE id = :id")
        _break(engine, STUDY, 2, "UPDATE regsearch_trials SET value = 0.123 WHERE id = :id")
        _break(engine, "diverging", 0, "UPDATE regsearch_trials SET state = 'running', "
               "reason = NULL WHERE id = :id")
        for spec in (digits, diverging):
            runs.append(opening.open_run(spec))  # opening mends
            assert opening.mend_ledger(runs[-1]) == 0  # and nothing is left to mend
        for spec, run in zip((digits, diverging), runs[2:]):
            trials = run.study.get_trials()
            rows = trial_rows(engine, spec.name)
            assert [r["number"] for r in rows] == [t.number for t in trials]
            for trial, row in zip(trials, rows):
                where = (spec.name, trial.number, row)
                assert row["state"] == _STATES[trial.state], where
                assert same(row["value"], trial.value), where
                assert row["reason"] == (trial.user_attrs.get("fail_reason")
                                         or trial.user_attrs.get("stop_reason")), where
                for name in SUMMARY_FIELDS:
                    assert same(row[name], trial.user_attrs.get(name)), (where, name)
                scores = [e[3] for e in epoch_rows(engine, trial.number, spec.name)]
                assert all(same(a, trial.intermediate_values[e]) for e, a in
                           enumerate(scores, start=1) if e in trial.intermediate_values), where
        assert [r["state"] for r in trial_rows(engine)] == ["complete", "pruned", "complete",
                                                           "complete"]
        rebuilt = epoch_rows(engine, 0)
        assert len(rebuilt) == 3 and all(e[1] is None for e in rebuilt)  # Optuna's scores only
        assert epoch_rows(engine, 3) == kept  # an agreeing row keeps its losses
    finally:
        for run in runs:
            _close(run)


# --------------------------------------------------------------------------- 6. unreachable

@pytest.mark.parametrize("url", ["postgresql+psycopg://u:s3cret-pw@127.0.0.1:1/x",
                                 "mysql+pymysql://u:s3cret-pw@127.0.0.1:1/x"])
def test_unreachable_server_is_a_fast_storage_error_with_the_password_masked(url) -> None:
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        Ledger(url)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert "s3cret-pw" not in message
    assert "u:***@127.0.0.1:1/x" in message
    assert message.startswith("cannot open the ledger at ")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_sqlite_file_held_by_a_reader_still_opens_and_turns_wal_later(tmp_path) -> None:
    """Switching to WAL needs the file alone for a moment; a reader in a transaction (an
    `mlflow ui`, a user's query) makes that fail, and the connection must still work."""
    import sqlite3

    from regsearch.storage import tune_sqlite

    path = tmp_path / "held.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
        setup.execute("INSERT INTO t VALUES (1)")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT * FROM t").fetchall()  # holds a shared lock until COMMIT
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.2})
    tune_sqlite(engine)
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT x FROM t").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        reader.execute("COMMIT")
        engine.dispose()
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        reader.close()
        engine.dispose()
