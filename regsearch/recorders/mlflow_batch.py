"""Many trial runs started or ended in one transaction of MLflow's SQL tracking store.

Through `MlflowClient` a trial's run takes four calls (create, its params, its end, its
metrics and tags), and MLflow's SQL store opens nine sessions and transactions for them,
beside a packed search that starts and ends many trials at once every fraction of a second.
Here a batch of starts, or of ends, is one transaction: MLflow's own store opens it and the
rows are MLflow's own models (`mlflow.store.tracking.dbmodels`), filled as its `create_run`,
`log_batch` and `set_terminated` fill them; tests compare runs written both ways, read back
through the client, on SQLite, PostgreSQL and MariaDB. Running trials' epochs go the same
way (`log_metrics`), and workers sharing a store lock only their own runs' rows
(`_active_runs`).

Only SQL stores have this door: `for_client` gives None for an MLflow server, and the writer
then calls the client per run.

This is the one module that names MLflow's private parts (its SQL store's models, session
maker and validators, its schema set-up); tested with MLflow 3.17 (`pyproject.toml` allows
>=3.17,<4), on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

from mlflow.entities import LifecycleStage, Metric, RunStatus, SourceType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import (SqlLatestMetric, SqlMetric, SqlParam, SqlRun,
                                                  SqlTag)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, MLFLOW_USER
from mlflow.utils.uri import append_to_uri_path
from mlflow.utils.validation import _validate_param, _validate_tag
from sqlalchemy import insert


@dataclass
class NewRun:
    """A run to create, as `MlflowClient.create_run` then `log_batch(params=...)` make it."""

    name: str
    start_time: int | None
    tags: dict[str, str]
    params: dict[str, str]


@dataclass
class RunEnd:
    """A run's end, as `set_terminated` then `log_batch(metrics, tags=...)` make it."""

    run_id: str
    status: str
    end_time: int | None
    metrics: list[Metric] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)


class BatchWriter:
    """Starts and ends of many runs, one transaction per call; all or nothing."""

    def __init__(self, store: SqlAlchemyStore) -> None:
        self.store = store

    @classmethod
    def for_client(cls, client: Any) -> BatchWriter | None:
        store = client._tracking_client.store
        return cls(store) if isinstance(store, SqlAlchemyStore) else None

    def start_runs(self, experiment_id: str, runs: list[NewRun]) -> list[str]:
        """Create the runs (RUNNING) with their tags and params; their ids, in order."""
        experiment = self.store.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(f"experiment {experiment_id} is deleted")
        now = int(time.time() * 1000)
        ids = []
        with self.store.ManagedSessionMaker(read_only=False) as session:
            for new in runs:
                run_id = uuid.uuid4().hex
                tags = [_validate_tag(k, v) for k, v in {MLFLOW_RUN_NAME: new.name,
                                                          **new.tags}.items()]
                params = [_validate_param(k, v) for k, v in new.params.items()]
                session.add(SqlRun(
                    name=new.name, run_uuid=run_id, experiment_id=int(experiment_id),
                    artifact_uri=append_to_uri_path(experiment.artifact_location, run_id,
                                                    SqlAlchemyStore.ARTIFACTS_FOLDER_NAME),
                    source_type=SourceType.to_string(SourceType.UNKNOWN), source_name="",
                    entry_point_name="", user_id=new.tags.get(MLFLOW_USER, "unknown"),
                    status=RunStatus.to_string(RunStatus.RUNNING),
                    start_time=new.start_time or now, end_time=None, deleted_time=None,
                    source_version="", lifecycle_stage=LifecycleStage.ACTIVE,
                    tags=[SqlTag(key=tag.key, value=tag.value) for tag in tags],
                    params=[SqlParam(key=param.key, value=param.value) for param in params]))
                ids.append(run_id)
        return ids

    def finish_runs(self, ends: list[RunEnd]) -> None:
        """End the runs: status and end time, metric points and each key's latest point
        (the highest (step, timestamp, value), as MLflow keeps it), tags set or replaced.

        Rows go in as bulk inserts and each table is read once for the whole batch, not
        through ORM objects and per-run queries."""
        now = int(time.time() * 1000)
        ids = [end.run_id for end in ends]
        with self.store.ManagedSessionMaker(read_only=False) as session:
            found = self._active_runs(session, ids)
            points, tags = [], []
            for end in ends:
                run = found[end.run_id]
                run.status = end.status  # type: ignore[assignment]
                run.end_time = end.end_time or now  # type: ignore[assignment]
                points += self._metric_rows(end.run_id, end.metrics)
                tags += [{"run_uuid": end.run_id, "key": tag.key, "value": tag.value}
                         for tag in (_validate_tag(k, v) for k, v in end.tags.items())]
            self._write_points(session, ids, points)
            self._upsert(session, SqlTag, ids, tags)

    def log_metrics(self, metrics: dict[str, list[Metric]]) -> None:
        """Points of running runs (a trial's curves while it trains), as `log_batch` logs
        them, for many runs in one transaction."""
        ids = list(metrics)
        with self.store.ManagedSessionMaker(read_only=False) as session:
            self._active_runs(session, ids)
            self._write_points(session, ids, [row for run_id in ids
                                              for row in self._metric_rows(run_id,
                                                                           metrics[run_id])])

    def _active_runs(self, session: Any, ids: list[str]) -> dict[str, SqlRun]:
        """The runs, each one there and active, locked for the transaction.

        The run rows are the lock, as a writer's turn at a run's latest points: they are
        locked by primary key, which locks nothing but them. MLflow locks the latest points
        themselves; on MySQL a locking read of those through their run index also locks the
        gaps beside them, and two workers ending trials at once deadlocked on each other's
        inserts (`test_writers_batching_into_one_experiment_at_once_lose_nothing`)."""
        found = {run.run_uuid: run for run in self.store._get_query(session, SqlRun)
                 .filter(SqlRun.run_uuid.in_(ids)).order_by(SqlRun.run_uuid)
                 .with_for_update()}
        for run_id in ids:
            run = found.get(run_id)
            if run is None or run.lifecycle_stage != LifecycleStage.ACTIVE:
                raise MlflowException(f"run {run_id} is missing or deleted")
        return found

    def _write_points(self, session: Any, ids: list[str], points: list[dict[str, Any]]) -> None:
        """Metric points and each key's latest point, of runs `_active_runs` holds."""
        self._upsert(session, SqlLatestMetric, ids, _latest(points),
                     replaces=lambda new, old: _rank(new) > (old.step, old.timestamp, old.value))
        if points:
            session.execute(insert(SqlMetric), points)

    @staticmethod
    def _upsert(session: Any, model: Any, run_ids: list[str], rows: list[dict[str, Any]], *,
                replaces: Callable[[dict[str, Any], Any], bool] = lambda new, old: True
                ) -> None:
        """Rows keyed by (run, key): an existing row is overwritten where `replaces` says
        so, the others are inserted; the existing rows are read in one query."""
        if not rows:
            return
        held = {(row.run_uuid, row.key): row for row in session.query(model).filter(
            model.run_uuid.in_(run_ids), model.key.in_({row["key"] for row in rows}))}
        fresh = []
        for row in rows:
            old = held.get((row["run_uuid"], row["key"]))
            if old is None:
                fresh.append(row)
            elif replaces(row, old):
                for column, value in row.items():
                    setattr(old, column, value)
        if fresh:
            session.execute(insert(model), fresh)

    def _metric_rows(self, run_id: str, metrics: list[Metric]) -> list[dict[str, Any]]:
        """MLflow's rows for these points: NaN as 0 flagged, infinities as the float limits,
        a point repeated in the batch once (as `log_batch` drops repeats)."""
        rows, seen = [], set()
        for metric in metrics:
            if metric in seen:
                continue
            seen.add(metric)
            is_nan, value = self.store.sanitize_metric_value(metric.value)
            rows.append({"run_uuid": run_id, "key": metric.key, "value": value,
                         "timestamp": metric.timestamp, "step": metric.step, "is_nan": is_nan})
        return rows


def _rank(point: dict[str, Any]) -> tuple:
    """MLflow's order of a key's points: the latest is the highest."""
    return point["step"], point["timestamp"], point["value"]


def _latest(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run's latest point per key among `points`."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for point in points:
        key = (point["run_uuid"], point["key"])
        if key not in latest or _rank(point) > _rank(latest[key]):
            latest[key] = point
    return list(latest.values())


def initialize_tables(engine: Any) -> None:
    """A new store's tables, made by MLflow's own migrations (its private set-up)."""
    from mlflow.store.db.utils import _initialize_tables

    _initialize_tables(engine)
