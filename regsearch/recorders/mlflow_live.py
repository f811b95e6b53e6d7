"""Live MLflow recording: a `protocols.Listener` that never blocks the study.

One experiment per study, a parent run per study, a nested child run per trial (see
`regsearch.recorders.mlflow`, which also rebuilds runs with `sync`). Writes are queued to one
background thread, which hands them to a writer process (`mlflow_process`): neither MLflow's
import nor its per-run work runs in the training process's interpreter. Short HTTP timeouts
bound each call, so a slow or dead tracking server never stalls training; the first failure
is one warning, later writes are skipped, and the ledger keeps what MLflow is missing for
`regsearch sync`. This module does not import MLflow.
"""

from __future__ import annotations

import os
import queue
import logging
import socket
import threading
import time
from dataclasses import replace
from datetime import datetime, UTC
from typing import Any, TypeVar
from collections.abc import Callable

from optuna.trial import TrialState

from regsearch.protocols import Listener
from regsearch.objective import Score, ranked, ranks_above
from regsearch.recorders.ledger import Ledger, TrialRecord
from regsearch.recorders.mlflow_process import WriterProcess, problem_line
from regsearch.states import State
from regsearch.space import RegConfig, from_params
from regsearch.storage import DATABASE_ERRORS, mask_url
from regsearch.trainers.base import EpochMetrics

log = logging.getLogger("regsearch")

WORKER, GPU = "regsearch.worker", "regsearch.gpu"
EPOCHS_EVERY = 10.0  # seconds between sends of the running trials' epochs
T = TypeVar("T")


def worker_tags() -> dict[str, str]:
    """Which process (and GPU) ran a trial, so a slow or failing worker can be found."""
    tags = {WORKER: f"{socket.gethostname()}:{os.getpid()}"}
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if gpus and gpus != "-1":
        tags[GPU] = gpus
    return tags


class MlflowRecorder(Listener):
    """A `protocols.Listener` that mirrors the study into MLflow without ever blocking it."""

    def __init__(self, tracking_uri: str, ledger: Ledger, *, drain_seconds: float = 30.0,
                 epochs_every: float = EPOCHS_EVERY, writer: WriterProcess | None = None) -> None:
        """`writer`: one started earlier for `tracking_uri` (`opening.open_run` starts it
        as soon as the data passes, so MLflow's import overlaps opening the study)."""
        self.tracking_uri, self.ledger = tracking_uri, ledger
        self.drain_seconds, self.epochs_every = drain_seconds, epochs_every
        self.unsent: dict[int, list[EpochMetrics]] = {}  # running trials' epochs, not yet sent
        self.sent: dict[int, int] = {}  # how many epochs of a running trial were sent
        self.last_send = time.monotonic()
        self.failed: str | None = None
        self.writer = writer or WriterProcess(tracking_uri)  # imports MLflow from its start
        self.tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="regsearch-mlflow", daemon=True)
        self.thread.start()
        self.study_name = self.metric = self.direction = ""
        self.experiment_id = self.parent_id = ""
        self.optuna_study: Any = None
        self.run_ids: dict[int, str] = {}
        self.best: Score | None = None

    # ---------------------------------------------------------------- listener

    def study_opened(self, run: Any) -> None:
        info = self.ledger.study_info(run.spec.name)
        assert info is not None, "the driver records a study before it is opened"
        self.study_name, self.metric = info["name"], info["metric"]
        self.direction = info["direction"]
        self.optuna_study = run.study
        storage, uid = run.storage_url, run.uid
        # a resumed study must not let a worse trial become "best" in the parent
        best = self._study_best()
        self.best = None if best is None else (best.value, best.summary.get("val_loss"))

        def open_study() -> None:
            self.experiment_id = self.writer.experiment(self.study_name, uid)
            self.parent_id = self.writer.parent_run(self.experiment_id, info, storage)
            # Read when the writer gets here (it may be seconds later), not when queued.
            failed = self._from_ledger(lambda: self.ledger.numbers(self.study_name, State.FAILED))
            self.writer.close_stale(self.experiment_id, failed or set())
        self._submit(open_study)

    def trials_started(self, started: list[tuple[int, RegConfig]]) -> None:
        moment = datetime.now(UTC)
        self._submit(lambda: self._start(started, moment))

    def _start(self, started: list[tuple[int, RegConfig]], moment: datetime) -> None:
        """A run per trial, in one write; the ledger learns their ids in one transaction."""
        ids = self.writer.start_trials(self.experiment_id, self.parent_id, self.study_name, started,
                                       moment, worker_tags())
        runs = {number: run_id for (number, _), run_id in zip(started, ids)}
        self.run_ids.update(runs)
        self._from_ledger(lambda: self.ledger.set_mlflow(self.study_name, runs, synced=False))

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None:
        """Every `epochs_every` seconds the running trials' new epochs go out together, so
        a long trial's curves grow in the UI; short trials' epochs go with their ends."""
        self.unsent.setdefault(number, []).append(metrics)
        if time.monotonic() - self.last_send < self.epochs_every:
            return
        self.last_send = time.monotonic()
        batch, self.unsent = self.unsent, {}
        for trial, epochs in batch.items():
            self.sent[trial] = self.sent.get(trial, 0) + len(epochs)
        self._submit(lambda: self._send_epochs(batch))

    def _send_epochs(self, batch: dict[int, list[EpochMetrics]]) -> None:
        self.writer.log_epochs({self.run_ids[number]: epochs for number, epochs in batch.items()},
                               self.metric)

    def trials_ended(self, ended: list[tuple[int, RegConfig, Any]]) -> None:
        records = []
        for number, config, outcome in ended:
            self.unsent.pop(number, None)  # the record holds every epoch
            records.append((TrialRecord.from_outcome(self.study_name, number, config, outcome),
                            self.sent.pop(number, 0)))
        self._submit(lambda: self._finish(records))

    def _finish(self, records: list[tuple[TrialRecord, int]]) -> None:
        """End each run with the epochs not sent yet, in one write (a trial whose start was
        never written gets its whole run); then the ledger's flags in one transaction and,
        if the batch holds a new best, the parent's best (once, for the best of the batch)."""
        ends = []
        for record, sent in records:
            if record.number not in self.run_ids:  # its start was never written: a whole run
                self.run_ids[record.number], sent = self.writer.start_trial(
                    self.experiment_id, self.parent_id, self.study_name, record.number,
                    record.config, record.started, worker_tags()), 0
            ends.append((self.run_ids[record.number], replace(record, epochs=record.epochs[sent:])))
        self.writer.finish_trials(ends, self.metric)
        synced = {record.number: self.run_ids.pop(record.number) for record, _ in records}
        self._from_ledger(lambda: self.ledger.set_mlflow(self.study_name, synced, synced=True))
        best = None
        for record, _ in records:
            if record.value is not None and record.state == State.COMPLETE and self._better(record):
                best = record
        if best is not None:
            self.writer.set_best(self.parent_id, best, self.metric, self.direction)

    def confirmations_ended(self, batch: list[tuple[Any, Any]]) -> None:
        """Confirmation runs that ended ((planned run, outcome)): a finished MLflow run each,
        nested under the parent; the ledger learns their ids."""
        items = [(run, TrialRecord.from_outcome(self.study_name, -1 if run.trial is None else
                                                run.trial, run.config, outcome))
                 for run, outcome in batch]

        def write() -> None:
            from regsearch.recorders.confirmations import Confirmations

            ids = self.writer.write_confirmations(self.experiment_id, self.parent_id,
                                                  self.study_name, items, self.metric)
            runs = {(run.key, run.seed_index): run_id for (run, _), run_id in zip(items, ids)}
            self._from_ledger(lambda: Confirmations(self.ledger).set_mlflow(self.study_name, runs))
        self._submit(write)

    def confirmed(self, winner: dict[str, Any], verdict: str) -> None:
        """The confirmation's winner becomes the parent's best."""
        self._submit(lambda: self.writer.set_confirmed(self.parent_id, winner, verdict,
                                                       self.metric))

    def trials_killed(self, numbers: list[int]) -> None:
        """Trials of a dead worker (failed by this process): their runs end KILLED."""
        def kill() -> None:
            for number in numbers:
                self.writer.kill_trial(self.experiment_id, number)
        self._submit(kill)

    def close(self) -> None:
        """Wait a bounded time for queued writes; what is left stays for `regsearch sync`."""
        best = self._study_best()
        if best is not None:
            self._submit(lambda: self.writer.set_best(self.parent_id, best, self.metric,
                                                      self.direction, settle=True))
        self._submit(lambda: self.writer.end_parent(self.experiment_id, self.parent_id))
        self.tasks.put(None)
        self.thread.join(self.drain_seconds)
        if self.thread.is_alive():
            self.writer.kill()
            self._warn(f"MLflow writes did not finish within {self.drain_seconds:.0f}s")
        else:
            self.writer.close()

    # ---------------------------------------------------------------- internals

    def _study_best(self) -> TrialRecord | None:
        """The best trial of the whole study (all workers'), as the study database has it,
        ranked by `regsearch.objective`'s rule."""
        try:
            trials = self.optuna_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        except Exception:  # noqa: BLE001 - the database is gone
            return None
        top = ranked(self.direction, [t for t in trials if t.value is not None],
                     lambda t: (t.value, t.user_attrs.get("val_loss"), t.number))
        if not top:
            return None
        trial = top[0]
        return TrialRecord(self.study_name, trial.number, State.COMPLETE, from_params(trial.params),
                           value=trial.value,
                           summary={"val_loss": trial.user_attrs.get("val_loss")})

    def _from_ledger(self, call: Callable[[], T]) -> T | None:
        """A ledger read or write of this thread; None if the database is gone.

        Losing the study's database is not an MLflow failure: the runs still go to MLflow
        (the driver reports the loss and stops). The ledger's MLflow columns are only a
        note of what was written; `regsearch sync` matches runs by their trial tag."""
        try:
            return call()
        except DATABASE_ERRORS:
            return None

    def _better(self, record: TrialRecord) -> bool:
        rank = (record.value, record.summary.get("val_loss"))
        if ranks_above(self.direction, rank, self.best):
            self.best = rank
            return True
        return False

    def _submit(self, task: Callable[[], None]) -> None:
        if self.failed is None:
            self.tasks.put(task)

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            try:
                if self.failed is None:
                    task()
            except Exception as exc:  # noqa: BLE001 - any MLflow failure: warn once, train on
                self.failed = problem_line(exc)
                self._warn(self.failed)
            finally:
                self.tasks.task_done()  # `tasks.join()` waits for what was queued

    def _warn(self, problem: str) -> None:
        log.warning("MLflow at %s failed (%s); training continues and the ledger keeps every "
                    "trial; run `regsearch sync %s` once MLflow is back",
                    mask_url(self.tracking_uri), problem, self.study_name)
