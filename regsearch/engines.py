"""Engines: who proposes each trial's configuration and learns from its results.

Whichever engine proposes, every trial is an Optuna trial of the study, so the ledger,
MLflow, `best`, `confirm`, `export` and `report` read them alike. Optuna's own samplers
and pruner work inside the study (`OptunaEngine` only queues grid points). A KerasTuner
oracle (`KerasTunerEngine`) proposes trials that are queued into the study with their
parameters, hears every epoch's penalty-free score, and is told how each trial ended; its
state lives in the study's database (the ledger's `regsearch_engine_states`), so workers
share one oracle and a resumed study continues it.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch import keras_tuner_compat as ktc
from regsearch import space
from regsearch.liveness import ENGINE_EPOCHS, ENGINE_TRIAL, UNCOUNTED
from regsearch.protocols import Engine

if TYPE_CHECKING:
    from regsearch.opening import StudyRun
    from regsearch.trainers.base import EpochMetrics


def make_engine(run: StudyRun) -> Engine:
    if run.spec.search.engine == "keras_tuner":
        return KerasTunerEngine(run)
    return OptunaEngine()


class OptunaEngine:
    """Optuna's sampler proposes inside `study.ask`; a grid's points are queued first."""

    def queue(self, run: StudyRun, wanted: int) -> int | None:
        if run.spec.search.sampler == "grid":
            _enqueue_grid(run, wanted)
        return wanted

    def started(self, trial: optuna.Trial) -> int | None:
        return None

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> bool:
        return False

    def trials_ended(self, run: StudyRun) -> None:
        return None


def _enqueue_grid(run: StudyRun, wanted: int) -> None:
    """Queue the next grid points this batch needs: those no trial holds (waiting,
    running, or finished and counted). Points are made as needed, so a grid of any size
    starts at once, and a study interrupted half-way finishes its grid when resumed."""
    trials = run.study.get_trials(deepcopy=False)
    need = wanted - sum(1 for t in trials if t.state == TrialState.WAITING)
    if need <= 0:
        return
    held = {_point(t.params or t.system_attrs.get("fixed_params", {})) for t in trials
            if t.state in (TrialState.WAITING, TrialState.RUNNING) or
            (t.state.is_finished() and not t.user_attrs.get(UNCOUNTED))}
    for config in space.iter_grid(run.spec.space, run.spec.search.grid_size):
        if need == 0:
            return
        if _point(config.params()) not in held:
            run.study.enqueue_trial(config.params())
            need -= 1


def _point(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


#: A refill of a pack stops asking the oracle after this many seconds once it has a trial
#: to run: a slow oracle (Bayesian optimisation fits a Gaussian process per proposal) then
#: fills the pack over several epochs, training meanwhile, and the study's timeout is
#: checked between refills.
PROPOSING_SECONDS = 1.0


class KerasTunerEngine:
    """A KerasTuner oracle (random, bayesian, hyperband) proposing the study's trials.

    Every change to the oracle happens under the study's lock, on the state last written
    to the database: `queue` (asks for new trials), and `trials_ended` (tells it results).
    Both first `_settle` the oracle with the study: a trial the oracle handed out whose
    Optuna trial finished is ended in the oracle (scored from its epochs); one that was
    interrupted or abandoned, or never queued (a process died in between), is queued again
    with its parameters; so no crash leaves the oracle waiting for a trial for ever.
    A Hyperband trial that continues an earlier one (`tuner/trial_id`) is trained from the
    start to its `tuner/epochs`: regsearch keeps no weights between trials.
    """

    def __init__(self, run: StudyRun) -> None:
        spec = run.spec
        self.kind = spec.search.sampler
        self.arguments: dict[str, Any] = {
            "metric": f"val_{run.objective.metric}", "direction": run.objective.direction,
            "space": spec.space, "seed": spec.seed, "max_epochs": spec.train.epochs}
        self.oracle: Any = None
        self.revision: int | None = None
        self.live: dict[str, Any] = {}  # this process's running trials: KerasTuner id -> Trial
        self.ids: dict[int, str] = {}  # Optuna trial number -> KerasTuner id

    # ------------------------------------------------------------------ the seam

    def queue(self, run: StudyRun, wanted: int) -> int | None:
        """Queue up to `wanted` trials (re-queued ones count); how many may be asked now,
        None when the oracle has nothing more to propose."""
        self._load(run)
        changed, waiting = self._settle(run)
        stopped = False
        created: list[tuple[str, dict[str, Any]]] = []
        began = time.monotonic()
        while waiting + len(created) < wanted:
            if waiting + len(created) and time.monotonic() - began > PROPOSING_SECONDS:
                break  # the rest of the pack is filled after its next epoch
            status, trial_id, values = ktc.new_trial(self.oracle, uuid.uuid4().hex)
            if status != ktc.RUNNING:  # IDLE: it waits for running trials; STOPPED: done
                stopped = status == ktc.STOPPED
                break
            created.append((trial_id, values))
        if changed or created:
            self._save(run)  # before queueing: one a crash leaves unqueued, `_settle` queues
        for trial_id, values in created:
            self._enqueue(run, trial_id, values)
        available = min(wanted, waiting + len(created))
        return None if stopped and not available else available

    def started(self, trial: optuna.Trial) -> int | None:
        """Note the trial's oracle id; its epochs (a Hyperband rung's), None for all."""
        attrs = trial.user_attrs
        trial_id = attrs.get(ENGINE_TRIAL)
        if trial_id is None:  # the unregularized default: the study's yardstick, not proposed
            return None
        self.ids[trial.number] = trial_id
        self.live[trial_id] = self.oracle.trials[trial_id]  # queued under this lock: loaded
        return attrs.get(ENGINE_EPOCHS)

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> bool:
        """The oracle hears the epoch's objective (penalty-free); whether it stops the trial."""
        trial_id = self.ids.get(number)
        if trial_id is None:
            return False
        return ktc.report(self.oracle, trial_id, metrics.val_metric, metrics.epoch) == ktc.STOPPED

    def trials_ended(self, run: StudyRun) -> None:
        with run.ledger.budget_lock(run.spec.name):
            self._load(run)
            if self._settle(run)[0]:
                self._save(run)

    # ------------------------------------------------------------------ the oracle's state

    def _load(self, run: StudyRun) -> None:
        """The oracle as last written; this process's running trials keep their epochs."""
        if self.oracle is not None and run.ledger.engine_revision(run.spec.name) == self.revision:
            return
        saved = run.ledger.engine_state(run.spec.name)
        oracle = ktc.make_oracle(self.kind, **self.arguments)
        if saved is not None:
            self.revision, state = saved
            ktc.restore(oracle, state, self.live)
        self.oracle = oracle
        self.live = {k: t for k, t in self.live.items() if oracle.trials.get(k) is t}

    def _save(self, run: StudyRun) -> None:
        self.revision = (self.revision or 0) + 1
        run.ledger.save_engine_state(run.spec.name, self.revision, ktc.state_of(self.oracle))

    def _settle(self, run: StudyRun) -> tuple[bool, int]:
        """End in the oracle the trials whose Optuna trials finished, queue again those lost;
        (whether the oracle changed, trials waiting in the study)."""
        trials = run.study.get_trials(deepcopy=False)
        copies: dict[str, list[FrozenTrial]] = {}
        for trial in trials:
            if ENGINE_TRIAL in trial.user_attrs:
                copies.setdefault(trial.user_attrs[ENGINE_TRIAL], []).append(trial)
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        changed = False
        for trial_id in ktc.ongoing(self.oracle):
            held = copies.get(trial_id, [])
            if any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in held):
                continue
            last = max(held, key=lambda t: t.number, default=None)
            if last is None or (last.state == TrialState.FAIL and last.user_attrs.get(UNCOUNTED)):
                self._enqueue(run, trial_id, self.oracle.trials[trial_id].hyperparameters.values)
                waiting += 1
                continue
            if trial_id not in self.live:  # another process's, or one whose process died
                for epoch, value in sorted(last.intermediate_values.items()):
                    ktc.report(self.oracle, trial_id, value, epoch)
            finished = last.state in (TrialState.COMPLETE, TrialState.PRUNED)
            ktc.end(self.oracle, trial_id, ktc.COMPLETED if finished else ktc.FAILED,
                    last.user_attrs.get("fail_reason"))
            self.live.pop(trial_id, None)
            changed = True
        return changed, waiting

    def _enqueue(self, run: StudyRun, trial_id: str, values: dict[str, Any]) -> None:
        config = space.from_params({k: v for k, v in values.items()
                                    if not k.startswith("tuner/")})
        attrs: dict[str, Any] = {ENGINE_TRIAL: trial_id}
        if ktc.EPOCHS in values and values[ktc.EPOCHS] < run.spec.train.epochs:
            attrs[ENGINE_EPOCHS] = int(values[ktc.EPOCHS])
        run.study.enqueue_trial(config.params(), user_attrs=attrs)
