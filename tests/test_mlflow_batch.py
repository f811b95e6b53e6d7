"""Trial runs started and ended in one transaction read back as the client's own writes.

`BatchWriter` fills MLflow's tables itself, so each test writes the same trials both ways,
batched and through `MlflowClient` one call at a time, and compares what the client reads
back. On a local SQLite store, and on MLflow stores in fresh PostgreSQL and MariaDB
databases (REGSEARCH_TEST_POSTGRES_URL / REGSEARCH_TEST_MYSQL_URL).
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, UTC
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from regsearch.recorders.ledger import TrialRecord
from regsearch.recorders.mlflow import RECORDED, TRIAL, MlflowWriter
from regsearch.space import RegConfig
from regsearch.trainers.base import EpochMetrics

pytestmark = [pytest.mark.slow]
SERVER_VARS = {"postgresql": "REGSEARCH_TEST_POSTGRES_URL", "mysql": "REGSEARCH_TEST_MYSQL_URL"}
STARTED = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
ENDED = STARTED + timedelta(seconds=3)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.server),
                        pytest.param("mysql", marks=pytest.mark.server)])
def writer(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowWriter]:
    """A writer on a new, empty MLflow store; a server's is a database of its own (MLflow's
    schema cannot share one with Optuna's: both keep an `alembic_version` table), its
    artifacts under `./mlruns` of the test's own folder."""
    monkeypatch.chdir(tmp_path)
    if request.param == "sqlite":
        yield MlflowWriter(f"sqlite:///{tmp_path / 'mlflow.db'}")
        return
    base = os.environ.get(SERVER_VARS[request.param])
    if not base:
        pytest.skip(f"{SERVER_VARS[request.param]} is not set")
    name = f"regsearch_mlflow_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {name}"))
    writer = MlflowWriter(make_url(base).set(database=name).render_as_string(
        hide_password=False))
    try:
        yield writer
    finally:
        writer.client._tracking_client.store.engine.dispose()
        with admin.connect() as db:
            db.execute(sa.text(f"DROP DATABASE {name}"))
        admin.dispose()


def _records(study: str) -> list[TrialRecord]:
    """A complete trial, a pruned one with a NaN and an infinite score, a failed one."""
    def epochs(n: int, bad: bool = False) -> tuple[EpochMetrics, ...]:
        return tuple(EpochMetrics(epoch=e, train_loss=1.0 / e, val_loss=math.nan if bad and
                                  e == n else 1.5 / e, val_metric=0.5 + e / 100,
                                  penalty=math.inf if bad and e == 1 else 0.01 * e)
                     for e in range(1, n + 1))

    config = RegConfig("l1_l2", l1=1e-4, l2=3e-3, dropout=0.25)
    return [
        TrialRecord(study, 0, "complete", config, value=0.62, epochs=epochs(12),
                    summary={"best_epoch": 12, "near_zero_share": 0.125, "test_accuracy": None},
                    started=STARTED, finished=ENDED),
        TrialRecord(study, 1, "pruned", RegConfig("none", dropout=0.0), epochs=epochs(3, True),
                    reason="pruned at epoch 3", started=STARTED, finished=ENDED),
        TrialRecord(study, 2, "failed", RegConfig("l2", l2=0.1, dropout=0.5), epochs=(),
                    reason="loss is NaN", started=STARTED, finished=ENDED)]


def _write(writer: MlflowWriter, study: str, *, early_epochs: int = 0) -> dict[int, str]:
    """The trials of `_records` started together and ended together; trial 0's first
    `early_epochs` go out while it runs, as `mlflow_live` sends a long trial's epochs."""
    experiment = writer.experiment(study)
    parent = writer.client.create_run(experiment).info.run_id
    records = _records(study)
    ids = writer.start_trials(experiment, parent, study, [(r.number, r.config) for r in records],
                              STARTED, {"regsearch.worker": "host:1"})
    if early_epochs:
        writer.log_epochs({ids[0]: records[0].epochs[:early_epochs]}, "accuracy")
        records[0] = replace(records[0], epochs=records[0].epochs[early_epochs:])
    writer.finish_trials(list(zip(ids, records)), "accuracy")
    return {record.number: run_id for record, run_id in zip(records, ids)}


def _seen(writer: MlflowWriter, run_id: str, parent: str | None = None) -> dict:
    """All the client shows of a run, its own id and its parent's id left out (and the
    time of sending for epochs sent while the trial ran)."""
    run = writer.client.get_run(run_id)
    info = run.info
    end = int(ENDED.timestamp() * 1000)
    histories = {key: sorted((m.step, m.timestamp if m.timestamp == end else "sent",
                              m.value if not math.isnan(m.value) else "nan")
                             for m in writer.client.get_metric_history(run_id, key))
                 for key in run.data.metrics}
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"}
    folder = writer.client.get_experiment(info.experiment_id).artifact_location
    return {"status": info.status, "start": info.start_time, "end": info.end_time,
            "stage": info.lifecycle_stage, "user": info.user_id, "name": info.run_name,
            "artifacts": info.artifact_uri.replace(run_id, "<id>").replace(folder, "<exp>"),
            "params": run.data.params,
            "tags": tags, "has_parent": "mlflow.parentRunId" in run.data.tags,
            "latest": {k: "nan" if math.isnan(v) else v for k, v in run.data.metrics.items()},
            "histories": histories}


def _per_run(writer: MlflowWriter) -> MlflowWriter:
    writer.batch = None  # what a store `BatchWriter` cannot write gets
    return writer


@pytest.mark.parametrize("early_epochs", [0, 5])
def test_batched_runs_read_back_as_the_clients_per_run_writes(writer: MlflowWriter,
                                                              early_epochs: int) -> None:
    batched = _write(writer, "batched", early_epochs=early_epochs)
    assert writer.batch is not None  # the batches were written as batches
    per_run = _write(_per_run(writer), "per-run", early_epochs=early_epochs)
    for number in batched:
        mine, theirs = _seen(writer, batched[number]), _seen(writer, per_run[number])
        for seen, study in ((mine, "batched"), (theirs, "per-run")):
            seen["tags"]["regsearch.study"] = "<study>"
            note = seen["tags"]["mlflow.note.content"]
            seen["tags"]["mlflow.note.content"] = note.replace(f"study {study}:", "study <s>:")
        assert mine == theirs
    complete = _seen(writer, batched[0])
    assert complete["status"] == "FINISHED" and complete["tags"][RECORDED] == "true"
    assert complete["params"] == {"regularizer": "l1_l2", "l1": "0.0001", "l2": "0.003",
                                  "dropout": "0.25", "log10_strength": "-3.2614"}
    assert complete["latest"]["val_accuracy"] == pytest.approx(0.62)
    assert len(complete["histories"]["val_loss"]) == 12
    pruned = _seen(writer, batched[1])
    assert pruned["status"] == "FINISHED" and pruned["latest"]["val_loss"] == "nan"
    assert pruned["tags"]["regsearch.state"] == "pruned"
    assert _seen(writer, batched[2])["status"] == "FAILED"


def test_found_by_their_tags_as_sync_and_the_recorder_find_runs(writer: MlflowWriter) -> None:
    ids = _write(writer, "found")
    experiment = writer.experiment("found")
    runs = writer.client.search_runs([experiment], f"tags.`{TRIAL}` = '1' and "
                                                   "tags.`regsearch.state` = 'pruned'")
    assert [run.info.run_id for run in runs] == [ids[1]]
    children = writer.client.search_runs([experiment], "tags.`regsearch.role` = 'trial'")
    assert sorted(run.info.run_name for run in children) == [
        "t0000 l1=1e-4 l2=3e-3 d=0.25", "t0001 none d=0.00", "t0002 l2=1e-1 d=0.50"]


def _with_a_deleted_run(writer: MlflowWriter, study: str) -> tuple[list[str], list]:
    """Two started trials, the second's run deleted since: a batch of their ends fails."""
    experiment = writer.experiment(study)
    parent = writer.client.create_run(experiment).info.run_id
    records = _records(study)[:2]
    ids = writer.start_trials(experiment, parent, study, [(r.number, r.config)
                                                          for r in records], STARTED)
    writer.client.delete_run(ids[1])
    return ids, records


def test_a_batch_the_store_refuses_writes_nothing(writer: MlflowWriter,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  regsearch_warnings: list[str]) -> None:
    ids, records = _with_a_deleted_run(writer, "refused")
    monkeypatch.setattr(writer, "_finish_run", lambda end: None)  # no per-run writes after
    writer.finish_trials(list(zip(ids, records)), "accuracy")
    untouched = writer.client.get_run(ids[0])
    assert untouched.info.status == "RUNNING" and RECORDED not in untouched.data.tags
    assert untouched.data.metrics == {}
    # Per-run writes took what the batch did not: later batches go per run, and say so once.
    assert writer.batch is None
    (warning,) = regsearch_warnings
    assert warning.startswith("MLflow at")
    assert "refused batched writes" in warning and ids[1] in warning
    assert "writing run by run from now on" in warning
    writer.finish_trials(list(zip(ids, records)), "accuracy")
    assert len(regsearch_warnings) == 1


def test_a_refused_batch_is_written_per_run(writer: MlflowWriter,
                                           capsys: pytest.CaptureFixture) -> None:
    """The per-run calls end the trial whose run is there and report the deleted one."""
    ids, records = _with_a_deleted_run(writer, "per-run")
    with pytest.raises(Exception, match=ids[1]):
        writer.finish_trials(list(zip(ids, records)), "accuracy")
    ended = writer.client.get_run(ids[0])
    assert ended.info.status == "FINISHED" and ended.data.tags[RECORDED] == "true"
    assert len(writer.client.get_metric_history(ids[0], "val_loss")) == 12
    # The data was at fault (the per-run writes failed too), not the batch: it stays on.
    assert writer.batch is not None and "warning" not in capsys.readouterr().err


def test_writers_batching_into_one_experiment_at_once_lose_nothing(
        writer: MlflowWriter) -> None:
    """Workers share a study's experiment: their batches interleave (on MariaDB a lock on a
    latest point that does not exist yet would lock a gap and deadlock two writers)."""
    writer.experiment("shared")  # created once, as `prepare` does before workers start
    writers, rounds = 4, 5
    start = threading.Barrier(writers)

    def work(_: int) -> list[dict[int, str]]:
        mine = MlflowWriter(writer.tracking_uri)
        start.wait()
        return [_write(mine, "shared", early_epochs=5) for _ in range(rounds)]

    with ThreadPoolExecutor(writers) as pool:
        written = [ids for done in pool.map(work, range(writers)) for ids in done]
    assert len(written) == writers * rounds
    for ids in written:
        complete = _seen(writer, ids[0])
        assert complete["status"] == "FINISHED" and complete["tags"][RECORDED] == "true"
        assert complete["latest"]["val_accuracy"] == pytest.approx(0.62)
        assert len(complete["histories"]["val_loss"]) == 12
        pruned = _seen(writer, ids[1])
        assert pruned["status"] == "FINISHED" and pruned["tags"]["regsearch.state"] == "pruned"
        assert _seen(writer, ids[2])["status"] == "FAILED"
