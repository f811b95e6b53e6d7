"""Trials whose process is gone: heartbeats, reaping, re-queueing.

Workers die (OOM, preemption, `kill -9`). A trial they held stays RUNNING in Optuna until
another process notices: on a server database by its missing heartbeats, on SQLite when
the next process takes the study. Such a trial is failed *and* marked as not spending
budget in one transaction, so that no reader ever counts it as done, then a copy with the
same parameters is queued. A process that dies half-way through this leaves a failed,
uncounted trial: the budget stays open and the study still ends with exactly its budget.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch import faults, space
from regsearch.space import RegConfig
from regsearch.states import KillReason
from regsearch.optuna_compat import (fail_trials, stale_trial_ids, storage_of, study_id_of,
                                     trial_id_of, unbeaten_trial_ids)

if TYPE_CHECKING:
    from regsearch.opening import StudyRun

UNCOUNTED = "uncounted"  # user attr: the trial did not spend budget (it will be re-run)
#: User attrs an engine gives a trial it queues (`regsearch.engines`): the trial's id in
#: the engine, and the epochs it trains when fewer than the study's (a Hyperband rung).
#: A re-queued copy carries them: it is the same trial to the engine.
ENGINE_TRIAL, ENGINE_EPOCHS = "engine_trial", "engine_epochs"


def count_done(trials: Iterable[FrozenTrial]) -> int:
    """Trials that spent budget: finished ones, but not interrupted or abandoned ones."""
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in trials if t.state in finished and not t.user_attrs.get(UNCOUNTED))


def config_of(trial: FrozenTrial) -> RegConfig:
    """What a trial was given; one cut off before its regularizer was chosen says `unset`."""
    return space.from_params({"regularizer": "unset", **trial.params})


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a copy of `trial` with the same parameters, asked before any new trial;
    `retry_history` is Optuna's own convention (`RetryFailedTrialCallback`)."""
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        system_attrs={"failed_trial": trial.number, "retry_history": _history(trial)},
        user_attrs={k: v for k, v in trial.user_attrs.items()
                    if k in (ENGINE_TRIAL, ENGINE_EPOCHS)}))


def _history(trial: FrozenTrial) -> list[int]:
    return [*trial.system_attrs.get("retry_history", []), trial.number]


def fail_dead(run: StudyRun, trials: list[FrozenTrial], reason: str, *,
              retry: bool = True) -> list[FrozenTrial]:
    """Fail trials whose process is gone, without spending budget; close their records.

    With `retry` each is re-queued with its parameters, unless it was retried
    `max_retries` times already: then it spends budget, so that a configuration that kills
    its worker every time cannot hold the study open for ever. Only what this process
    failed itself is followed up: another process may be reaping the same trials.
    """
    attrs: dict[int, dict[str, Any]] = {}
    for trial in trials:
        again = retry and len(_history(trial)) <= run.spec.workers.max_retries
        note = ("; re-queued" if again else "; retried too often, not re-queued") if retry else ""
        attrs[trial_id_of(trial)] = {"fail_reason": reason + note, UNCOUNTED: again or not retry}
    won = fail_trials(storage_of(run.study), attrs)
    failed = [t for t in trials if trial_id_of(t) in won]
    faults.point("reap")
    for trial in failed:
        if retry and attrs[trial_id_of(trial)][UNCOUNTED]:
            requeue(run.study, trial)
    by_reason: dict[str, dict[int, RegConfig]] = {}
    for trial in failed:
        by_reason.setdefault(attrs[trial_id_of(trial)]["fail_reason"], {})[trial.number] = \
            config_of(trial)
    for text, configs in by_reason.items():
        run.ledger.fail_running(run.spec.name, configs, text)
    if failed:
        for recorder in run.recorders:
            recorder.trials_killed([t.number for t in failed])
    return failed


def reap_dead(run: StudyRun) -> None:
    """Fail (and re-queue) trials of workers whose heartbeats stopped, or that died before
    their first beat; any process sharing the study may."""
    if not run.shared:
        return
    storage = storage_of(run.study)
    dead = set(stale_trial_ids(storage, study_id_of(run.study)))
    # A never-beaten trial is timed from when this process first saw it so, by its own
    # clock: the trial's start time is the creating machine's local time (Optuna's), and
    # machines' clocks and time zones differ.
    now = time.monotonic()
    run.unbeaten_since = {trial_id: run.unbeaten_since.get(trial_id, now) for trial_id
                          in unbeaten_trial_ids(storage, study_id_of(run.study))}
    dead |= {trial_id for trial_id, since in run.unbeaten_since.items()
             if now - since >= run.spec.workers.grace_period}
    if dead:
        fail_dead(run, [storage.get_trial(trial_id) for trial_id in sorted(dead)], KillReason.DIED)


def fail_abandoned(run: StudyRun) -> None:
    """Fail every trial still running, in Optuna and the ledger, without spending budget.

    Only for a process that holds the SQLite study alone: whatever runs there was left by
    a process that died. The sampler proposes afresh in their place."""
    fail_dead(run, run.running_trials(), KillReason.ABANDONED, retry=False)


class Heartbeat:
    """Beats for this process's running trials from a thread of its own.

    A thread keeps beating while the main thread is busy training (TensorFlow releases
    the GIL), so only a dead, frozen or disconnected process goes silent.
    """

    def __init__(self, run: StudyRun) -> None:
        self.storage: Any = storage_of(run.study)
        self.interval = run.spec.workers.heartbeat_interval
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="regsearch-heartbeat",
                                        daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)
        self.storage.record_heartbeat(trial_id)

    def remove(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = sorted(self.trial_ids)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - the main thread reports a lost database
                    break
