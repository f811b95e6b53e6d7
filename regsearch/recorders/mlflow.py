"""MLflow: one experiment per study, a parent run per study, a nested child run per trial.

MLflow is a view of the ledger. Runs are addressed by explicit ids through `MlflowClient`
(no global active run), so parallel trials cannot cross. `MlflowWriter` makes the writes,
for `regsearch sync` here and, in a child process, for live recording (`mlflow_live`). Trials
start and end in batches (a pack's worth at once); on a SQL store each batch is one
transaction (`mlflow_batch`), on an MLflow server a few calls per run.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Callable, Iterable

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from sqlalchemy.engine import make_url

from regsearch.recorders.ledger import TrialRecord
from regsearch.recorders.mlflow_batch import BatchWriter, NewRun, RunEnd
from regsearch.recorders.mlflow_confirm import SOURCE_TAG, ConfirmationWrites
from regsearch.recorders.mlflow_identity import UID_TAG, check_owner
from regsearch.recorders.mlflow_process import problem_line
from regsearch.recorders.mlflow_store import seed_new_store
from regsearch.recorders.mlflow_view import (EXPERIMENT_KIND, NOTE, VIEW_TAG, objective_key,
                                             run_params, trial_note, view_state)
from regsearch.space import RegConfig
from regsearch.states import KillReason, State
from regsearch.objective import is_better, ranks_above
from regsearch.storage import DATABASE_ERRORS, mask_url
from regsearch.trainers.base import EpochMetrics

log = logging.getLogger("regsearch")

ROLE, STUDY, TRIAL, STATE = ("regsearch.role", "regsearch.study", "regsearch.trial",
                             "regsearch.state")
#: Who proposed the trials: `optuna/tpe`, `keras_tuner/hyperband`, ... (parent and trials).
ENGINE = "regsearch.engine"
#: On a trial's run once everything of it is written ("the record is whole", not "the trial
#: completed"); earlier regsearch versions named it `regsearch.complete`.
RECORDED, OLD_RECORDED = "regsearch.recorded", "regsearch.complete"
#: A pruned trial ended normally (the pruner stopped it): FINISHED, its state in a tag.
_STATUS = {State.COMPLETE: "FINISHED", State.PRUNED: "FINISHED", State.FAILED: "FAILED"}
_BATCH = 900  # log_batch takes at most 1000 metrics per call
T = TypeVar("T")

#: Set (unless the user has) when a writer starts: MLflow's defaults retry a dead server
#: for minutes, these bound each call to seconds; and MLflow's "View run ... at: URL" line
#: per run, password included, stays out of the report.
CLIENT_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                   "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go in `mlartifacts/` beside its database file."""
    if not tracking_uri.startswith("sqlite:"):
        return None
    database = Path(make_url(tracking_uri).database or "mlflow.db").resolve()
    database.parent.mkdir(parents=True, exist_ok=True)
    return (database.parent / "mlartifacts").as_uri()


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec -> MLflow params such as `space.dropout.high`."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


class MlflowWriter(ConfirmationWrites):
    """Synchronous MLflow writes; shared by live recording and `regsearch sync`."""

    def __init__(self, tracking_uri: str) -> None:
        for variable, value in CLIENT_SETTINGS.items():
            os.environ.setdefault(variable, value)
        self.tracking_uri = tracking_uri
        #: the study's engine, from its spec when `parent_run` opens it
        self.engine = "optuna/tpe"
        seed_new_store(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)

    @cached_property
    def batch(self) -> BatchWriter | None:
        """Batched writes, if the store takes them (first asked when a batch is written)."""
        return BatchWriter.for_client(self.client)

    def experiment(self, study_name: str, uid: str | None = None) -> str:
        """The study's experiment, made if missing; one that holds another study of the
        same name is refused (`mlflow_identity`), one made before study ids adopted."""
        found = self.client.get_experiment_by_name(study_name)
        kind, training = EXPERIMENT_KIND
        if found is None:
            return self.client.create_experiment(study_name, artifact_location=_subdir(
                artifact_root(self.tracking_uri), study_name),
                tags={kind: training, **({UID_TAG: uid} if uid else {})})
        if found.tags.get(kind) != training:  # made by an earlier regsearch
            self.client.set_experiment_tag(found.experiment_id, kind, training)
        if uid:
            check_owner(self.tracking_uri, study_name, uid, found.tags)
            if found.tags.get(UID_TAG) is None:
                self.client.set_experiment_tag(found.experiment_id, UID_TAG, uid)
        return found.experiment_id

    def parent_run(self, experiment_id: str, info: dict[str, Any], storage_url: str) -> str:
        """The study's parent run, found by tag or created with the spec as params/artifact."""
        search = info["spec"].get("search", {})
        self.engine = f"{search.get('engine', 'optuna')}/{search.get('sampler', 'tpe')}"
        found = self._find(experiment_id, f"tags.`{ROLE}` = 'parent'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            self._set_view(experiment_id, run_id, info)
            return run_id
        run = self.client.create_run(experiment_id, run_name=info["name"],
                                     tags={ROLE: "parent", STUDY: info["name"],
                                           "regsearch.spec_hash": info["spec_hash"],
                                           ENGINE: self.engine})
        self._set_view(experiment_id, run.info.run_id, info)
        params = {**flatten(info["spec"]), "metric": info["metric"],
                  "direction": info["direction"], "storage": mask_url(storage_url)}
        self._log(run.info.run_id, params=params)
        self.client.log_text(run.info.run_id, yaml.safe_dump(info["spec"], sort_keys=False),
                             "spec.yaml")
        return run.info.run_id

    def _set_view(self, experiment_id: str, parent_id: str, info: dict[str, Any]) -> None:
        """The experiment's ready runs view (`mlflow_view`), kept current."""
        view = view_state(info["metric"], info["direction"], parent_id)
        if self.client.get_experiment(experiment_id).tags.get(VIEW_TAG) != view:
            self.client.set_experiment_tag(experiment_id, VIEW_TAG, view)

    def start_trial(self, experiment_id: str, parent_id: str, study_name: str, number: int,
                    config: RegConfig, started: datetime | None = None,
                    tags: dict[str, str] | None = None) -> str:
        return self.start_trials(experiment_id, parent_id, study_name, [(number, config)], started,
                                 tags)[0]

    def start_trials(self, experiment_id: str, parent_id: str, study_name: str,
                     trials: list[tuple[int, RegConfig]], started: datetime | None = None,
                     tags: dict[str, str] | None = None) -> list[str]:
        """A RUNNING child run per trial, with its config as params; the run ids, in order.

        `started` is when the trials began, not when this (possibly late) write happens."""
        runs = [NewRun(config.short_name(number), epoch_ms(started), tags={
            "mlflow.parentRunId": parent_id, ROLE: "trial", STUDY: study_name, TRIAL: str(number),
            STATE: "running", ENGINE: self.engine, **(tags or {})}, params=run_params(config))
            for number, config in trials]
        return self._batched(lambda batch: batch.start_runs(experiment_id, runs),
                             lambda: [self._start_run(experiment_id, run) for run in runs])

    def _start_run(self, experiment_id: str, new: NewRun) -> str:
        run = self.client.create_run(experiment_id, start_time=new.start_time,
                                     run_name=new.name, tags=new.tags)
        self._log(run.info.run_id, params=new.params)
        return run.info.run_id

    def finish_trial(self, run_id: str, record: TrialRecord, metric: str) -> None:
        self.finish_trials([(run_id, record)], metric)

    def finish_trials(self, finished: list[tuple[str, TrialRecord]], metric: str) -> None:
        """Each run's end, its epochs, the outcome and the completion tag.

        The completion tag comes with the last write (one transaction each): a run that has
        it has everything; one cut off before is rebuilt by `sync`."""
        ends = [self._run_end(run_id, record, metric) for run_id, record in finished]
        self._batched(lambda batch: batch.finish_runs(ends),
                      lambda: list(map(self._finish_run, ends)))

    @staticmethod
    def _run_end(run_id: str, record: TrialRecord, metric: str, *,
                 note: str | None = None) -> RunEnd:
        """A run's end from its record: epochs, final numbers, status and state tags, and
        `note` as its description (a search trial's own, unless given)."""
        stamp = epoch_ms(record.finished) or int(time.time() * 1000)
        metrics = _epoch_points(record.epochs, metric, stamp)
        metrics += [Metric(f"final_{k}", float(v), stamp, 0)
                    for k, v in record.summary.items() if v is not None]
        if record.value is not None and record.state == State.COMPLETE and note is None:
            # The objective as the search ranks it; a pruned trial is not ranked (the value
            # it was pruned at is its `val_<metric>` curve's latest point).
            metrics.append(Metric(objective_key(metric), record.value, stamp, 0))
        members = [value for value in record.members if value is not None]
        metrics += [Metric(f"member_{j}_{metric}", value, stamp, 0)
                    for j, value in enumerate(members)]
        if len(members) > 1:
            metrics.append(Metric("member_sd", statistics.stdev(members), stamp, 0))
        return RunEnd(run_id, _status(record), epoch_ms(record.finished), metrics, {
            STATE: record.state, **({"regsearch.reason": record.reason} if record.reason else {}),
            NOTE: note or trial_note(record, metric), RECORDED: "true"})

    def _finish_run(self, end: RunEnd) -> None:
        self.client.set_terminated(end.run_id, end.status, end_time=end.end_time)
        self._log(end.run_id, metrics=end.metrics, tags=end.tags)

    def _batched(self, batched: Callable[[BatchWriter], T], per_run: Callable[[], T]) -> T:
        """One transaction for the whole batch where the store allows it, else a call per
        run. A batch the store refuses (its transaction rolled back: nothing written) is
        written again per run. If that works, the store is one MLflow's client can write
        and `BatchWriter` cannot (another MLflow version's tables): later batches go per
        run, slower, never wrong, and a warning says so once. If it fails too, the data
        was at fault (a run deleted meanwhile), not the batch: batching stays on. A lost
        connection is raised at once: its commit may have landed, and starting the runs
        again would leave copies RUNNING for ever."""
        refused = None
        try:
            batch = self.batch
            if batch is not None:
                return batched(batch)
        except Exception as exc:
            if isinstance(exc, DATABASE_ERRORS) or isinstance(exc.__cause__, DATABASE_ERRORS):
                raise
            refused = exc
        written = per_run()
        if refused is not None:
            self.batch = None
            log.warning("MLflow at %s refused batched writes (%s); writing run by run from "
                        "now on (slower, nothing lost)", mask_url(self.tracking_uri),
                        problem_line(refused))
        return written

    def log_epochs(self, epochs: dict[str, Iterable[EpochMetrics]], metric: str) -> None:
        """Running trials' epochs by run id, so their curves grow in the UI while they
        train: one transaction for all where the store allows it."""
        sent = int(time.time() * 1000)
        points = {run_id: _epoch_points(run_epochs, metric, sent)
                  for run_id, run_epochs in epochs.items()}

        def per_run() -> None:
            for run_id, run_points in points.items():
                self._log(run_id, metrics=run_points)

        self._batched(lambda batch: batch.log_metrics(points), per_run)

    def write_trial(self, experiment_id: str, parent_id: str, record: TrialRecord,
                    metric: str) -> tuple[str, bool]:
        """Rebuild one trial's run from the ledger, replacing any partial run; idempotent.

        Returns the run id and whether a run was written (False: a complete one was there).
        """
        existing = self._find(experiment_id, f"tags.`{TRIAL}` = '{record.number}'")
        complete = [r for r in existing if "true" in (r.data.tags.get(RECORDED),
                                                      r.data.tags.get(OLD_RECORDED))]
        if complete:
            return complete[0].info.run_id, False
        for partial in existing:
            self.client.delete_run(partial.info.run_id)
        run_id = self.start_trial(experiment_id, parent_id, record.study_name, record.number,
                                  record.config, record.started)
        self.finish_trial(run_id, record, metric)
        return run_id, True

    def set_best(self, parent_id: str, record: TrialRecord, metric: str, direction: str, *,
                 settle: bool = False) -> None:
        """Name `record` the study's best unless the parent already holds one as good: other
        workers write the parent too. One point per improvement, each a step above the last
        (MLflow shows the point with the highest step: the one the `best.*` tags name); a
        new best of the same value (won on validation loss) changes the tags alone.

        With `settle`, `record` is the best read from the study itself (a worker stopping, or
        sync): it is written unless the parent names it already, which mends two workers'
        live writes that crossed.
        """
        if record.value is None:
            return
        key = objective_key(metric)
        history = self.client.get_metric_history(parent_id, key)
        shown = self.client.get_run(parent_id).data
        val_loss = record.summary.get("val_loss")
        if shown.tags.get(SOURCE_TAG) == "confirmation":
            return  # the confirmed winner is the study's best, not a single-seed score
        if settle:
            if (shown.tags.get("best.trial"), shown.metrics.get(key)) == (str(record.number),
                                                                          record.value):
                return
        else:
            held = None
            for point in history:
                if is_better(direction, point.value, held):
                    held = point.value
            # a tie with the held value is broken by the validation loss the parent names
            held_loss = (_number(shown.tags.get("best.val_loss"))
                         if held is not None and shown.metrics.get(key) == held else None)
            if not ranks_above(direction, (record.value, val_loss),
                               None if held is None else (held, held_loss)):
                return
        config = record.config
        tags = {"best.trial": str(record.number), "best.regularizer": config.regularizer,
                "best.l1": str(config.l1), "best.l2": str(config.l2),
                "best.dropout": str(config.dropout),
                **({"best.val_loss": str(val_loss)} if val_loss is not None else {})}
        latest = max(history, key=lambda p: (p.step, p.timestamp), default=None)
        improvement = [] if latest is not None and latest.value == record.value else [
            Metric(key, record.value, int(time.time() * 1000),
                   latest.step + 1 if latest is not None else 0)]
        self._log(parent_id, metrics=improvement, tags=tags)

    def close_stale(self, experiment_id: str, failed: set[int]) -> list[int]:
        """Trial runs still RUNNING whose trial failed (its process died) become KILLED.

        Only failed trials: a run of a trial that another worker has just completed may
        still be RUNNING until that worker's own writes land, and must not be killed."""
        closed = []
        for run in self._find(experiment_id, "attributes.status = 'RUNNING'"):
            number = run.data.tags.get(TRIAL)
            if number is not None and int(number) in failed:
                self._kill(run.info.run_id)
                closed.append(int(number))
        return closed

    def kill_trial(self, experiment_id: str, number: int) -> None:
        for run in self._find(experiment_id, f"tags.`{TRIAL}` = '{number}' and "
                                             "attributes.status = 'RUNNING'"):
            self._kill(run.info.run_id)

    def _kill(self, run_id: str) -> None:
        self.client.set_tag(run_id, STATE, "killed")
        self.client.set_terminated(run_id, "KILLED")

    def end_parent(self, experiment_id: str, parent_id: str) -> None:
        """FINISHED once no trial runs any more: the last of many workers to stop ends it."""
        if not self._find(experiment_id, f"tags.`{ROLE}` = 'trial' and "
                                         "attributes.status = 'RUNNING'"):
            self.client.set_terminated(parent_id, "FINISHED")

    def _find(self, experiment_id: str, where: str) -> list[Any]:
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], where, max_results=1000,
                                           page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _log(self, run_id: str, *, metrics: Iterable[Metric] = (),
             params: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> None:
        """As few `log_batch` calls as MLflow's limits allow (1000 metrics, 100 params);
        the tags (a few) go with the last call, so a completion tag lands with the last data."""
        metrics = list(metrics)
        param_list = [Param(k, v) for k, v in (params or {}).items()]
        tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
        if not (metrics or param_list or tag_list):
            return
        calls = max(-(-len(metrics) // _BATCH), -(-len(param_list) // 100), 1)
        for i in range(calls):
            self.client.log_batch(run_id, metrics=metrics[i * _BATCH:(i + 1) * _BATCH],
                                  params=param_list[i * 100:(i + 1) * 100],
                                  tags=tag_list if i == calls - 1 else [])


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _epoch_points(epochs: Iterable[EpochMetrics], metric: str, stamp: int) -> list[Metric]:
    """Each epoch's scores as MLflow metric points, the epoch as their step."""
    return [Metric(key, value, stamp, m.epoch) for m in epochs for key, value in (
        ("train_loss", m.train_loss), ("val_loss", m.val_loss), (f"val_{metric}", m.val_metric),
        ("penalty", m.penalty))]


def _status(record: TrialRecord) -> str:
    """MLflow's run status; a trial whose process was stopped or lost was KILLED."""
    if record.state == State.FAILED and KillReason.of(record.reason) is not None:
        return "KILLED"
    return _STATUS.get(State(record.state), "FAILED")


def epoch_ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def _subdir(root: str | None, name: str) -> str | None:
    return f"{root}/{name}" if root else None
