"""The search loop: ask for trials, train them (one by one, or as a pack), feed pruning,
tell results, and confirm the best once the search is over.

Trainers see a `RegConfig` and a prune check; listeners (progress display, recorders) see
configs, epochs and outcomes. Opening the study is `opening`'s job.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any
from collections.abc import Iterator, Sequence

import optuna
from optuna.trial import TrialState

from regsearch import faults, interrupts, space
from regsearch.errors import StorageError
from regsearch.liveness import UNCOUNTED, Heartbeat, fail_abandoned, reap_dead, requeue
from regsearch.opening import StudyRun, close_recorders, trial_seed, without_optuna_notices
from regsearch.optuna_compat import storage_of, trial_id_of
from regsearch.protocols import Engine, Listener, PackTrainer, Trainer
from regsearch.space import RegConfig
from regsearch.states import OPTUNA_STATE, KillReason, State
from regsearch.storage import DATABASE_ERRORS, first_line, hold_sqlite, mask_url
from regsearch.trainers.base import EpochMetrics, TrialOutcome

log = logging.getLogger("regsearch")


@without_optuna_notices()
def prepare(run: StudyRun) -> None:
    """Create what workers share (the study exists already; MLflow's experiment and parent
    run here), once, then close: `regsearch init` and the launcher."""
    for recorder in run.recorders:
        recorder.study_opened(run)
    close_recorders(run)


def confirm_only(run: StudyRun, trainer: Trainer) -> bool:
    """`regsearch confirm`: confirm the study as it stands, recorded as a run would; whether
    this process did it (another may be confirming it)."""
    from regsearch.confirm import confirm_study

    with hold_sqlite(run.storage_url):
        for recorder in run.recorders:
            recorder.study_opened(run)
        try:
            with interrupts.deferred_sigint():
                return confirm_study(run, trainer, _say)
        finally:
            close_recorders(run)


@without_optuna_notices()
def run_study(run: StudyRun, trainer: Trainer, listeners: Sequence[Listener] = (), *,
              max_trials: int | None = None) -> bool:
    """Run trials until the study's budget or the timeout is spent.

    A packed trainer (one with `run_epoch`) trains many trials at once and each finished
    slot is refilled with a new trial; any other trainer runs one trial at a time.
    On Ctrl-C every running trial is told FAIL ("interrupted by the user") so it does not
    spend budget, and KeyboardInterrupt propagates; a later run picks up from there. On
    SIGTERM (`interrupts.Stopped`) the trials are also re-queued with their parameters.
    On a server database other processes may share the study: the budget counts theirs
    too, this process keeps heartbeats for its trials, and it waits while theirs run
    (a dead one's trial comes back to the queue) until the budget is spent.
    Recorders come first so the ledger holds a trial before anything else reports it.
    Returns True when it stopped after `max_trials` of its own (the worker recycles).
    """
    with hold_sqlite(run.storage_url):
        return _run_study(run, trainer, listeners, max_trials)


def _run_study(run: StudyRun, trainer: Trainer, listeners: Sequence[Listener],
               max_trials: int | None) -> bool:
    listeners = [*run.recorders, *listeners]
    for listener in listeners:
        listener.study_opened(run)
    if not run.shared:  # this process holds the SQLite study: what still runs was abandoned
        fail_abandoned(run)
    deadline = time.monotonic() + run.timeout if run.timeout else float("inf")
    loop: Any = _run_packed if isinstance(trainer, PackTrainer) else _run_one_by_one
    heartbeat = Heartbeat(run) if run.shared else None
    try:
        with interrupts.deferred_sigint(), _long_lived_frozen():
            recycle = loop(run, trainer, listeners, deadline, heartbeat,
                           max_trials if max_trials is not None else float("inf"))
            if not recycle and run.spec.confirm is not None and _search_over(run):
                from regsearch.confirm import confirm_study

                confirm_study(run, trainer, _say)
            return recycle
    except DATABASE_ERRORS as exc:
        raise StorageError(
            f"lost the database at {mask_url(run.storage_url)} "
            f"({mask_url(first_line(exc.__cause__ or exc))}); every trial recorded before is "
            "kept, and the trials that were running are failed (and re-queued) when the study "
            "is next opened; run the same command again once the database is back") from None
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        close_recorders(run)


def _search_over(run: StudyRun) -> bool:
    """No trial of any process runs or waits, and at least one completed: the search is
    over (its budget or its timeout spent) and may be confirmed."""
    with run.ledger.budget_lock(run.spec.name):
        reap_dead(run)
    trials = run.study.get_trials(deepcopy=False)
    return any(t.state == TrialState.COMPLETE for t in trials) and not any(
        t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def _say(text: str) -> None:
    from regsearch.presentation import say

    say(f"regsearch: {text}")


@contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """Keep Python's cyclic collector off what exists when a study's loop starts.

    With TensorFlow or JAX loaded and a model built the heap holds hundreds of thousands of
    long-lived objects, and each full collection walks them all for nothing (figures in
    tests/benchmarks/RESULTS.md). Frozen, they are not walked; garbage made
    during the loop is still collected. They are unfrozen afterwards, so that what only the
    collector frees (SQLAlchemy's pooled connections, whose close checkpoints a SQLite WAL
    into the database file) is freed at exit as before.
    """
    gc.collect(1)  # the young generations' garbage first, so it is not frozen with the rest
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _run_one_by_one(run: StudyRun, trainer: Trainer, listeners: Sequence[Listener],
                    deadline: float, heartbeat: Heartbeat | None, max_trials: float) -> bool:
    started = 0
    while time.monotonic() < deadline:
        if started >= max_trials:
            return True
        interrupts.check()
        asked = _ask(run, listeners, 1, heartbeat)
        if asked is None:
            return False
        if not asked:
            continue
        running, started = asked[0], started + 1
        try:
            outcome = trainer.train(running.chosen, prune=running.prune,
                                    seed=trial_seed(run.spec.seed, running.trial.number))
        except BaseException as exc:
            _abort(run, [running], exc, listeners, heartbeat)
            raise
        _tell(run, [(running, outcome)], listeners, heartbeat)
    return False


def _run_packed(run: StudyRun, trainer: PackTrainer, listeners: Sequence[Listener],
                deadline: float, heartbeat: Heartbeat | None, max_trials: float) -> bool:
    """Keep every slot busy: ask a trial for each free slot, train an epoch, tell results."""
    active: dict[int, _Running] = {}
    started = 0
    pruning = not isinstance(run.study.pruner, optuna.pruners.NopPruner)
    try:
        while True:
            interrupts.check()
            free = min(len(trainer.free_slots()), max_trials - started)
            if free and time.monotonic() < deadline:
                asked = _ask(run, listeners, int(free), heartbeat, idle=not active)
                if asked is None and not active:
                    return False
                for running in asked or []:
                    slot = trainer.assign(running.chosen, prune=running.prune,
                                          seed=trial_seed(run.spec.seed, running.trial.number))
                    active[slot] = running
                    started += 1
            if not active:
                if started >= max_trials:
                    return True
                if time.monotonic() >= deadline:
                    return False
                continue  # others' trials run: `_ask` waited; one may die and come back
            with run.pack.pruning() if pruning else nullcontext():
                finished = trainer.run_epoch()
            if finished:
                _tell(run, [(active.pop(slot), outcome) for slot, outcome in finished.items()],
                      listeners, heartbeat)
    except BaseException as exc:
        _abort(run, list(active.values()), exc, listeners, heartbeat)
        raise


def _ask(run: StudyRun, listeners: Sequence[Listener], wanted: int,
         heartbeat: Heartbeat | None, *, idle: bool = True) -> list[_Running] | None:
    """Up to `wanted` new trials within the budget; None when the budget is spent.

    The budget check and the asks hold the study's lock row, so processes sharing the
    study never overshoot it; so does reaping, so that a dead worker's trial is failed and
    its copy queued before anyone counts the budget again (between the two, another
    process would take its place). An idle process whose study still has others' trials
    running waits for them (one may die and come back to the queue): an empty list.
    """
    pruning = not isinstance(run.study.pruner, optuna.pruners.NopPruner)
    asked: list[_Running] = []
    try:
        with run.ledger.budget_lock(run.spec.name):
            reap_dead(run)
            with run.pack.asking():
                done, room = run.room()
                wanted = min(room, wanted)
                available = (run.engine.queue(run, wanted) or 0) if wanted else 0
                for _ in range(available):
                    asked.append(_Running(run.study.ask(), None, listeners, pruning,
                                          run.spec.train.epochs, run.engine))
                    faults.point("ask")
                    if heartbeat is not None:
                        heartbeat.add(trial_id_of(asked[-1].trial))
                    asked[-1].config = space.suggest(asked[-1].trial, run.spec.space)
                    asked[-1].budget = run.engine.started(asked[-1].trial)
        if asked:
            started = [(running.trial.number, running.config) for running in asked
                       if running.config is not None]
            for listener in listeners:
                listener.trials_started(started)
    except BaseException as exc:
        _abort(run, asked, exc, listeners, heartbeat)
        raise
    if asked:
        return asked
    if done >= run.budget:
        return None
    # Not spent, but every remaining trial is running: ours (keep training) or others'.
    if idle and run.shared:
        _wait(run)
        return []
    return None if idle else []


def _wait(run: StudyRun) -> None:
    """Idle until others' trials may have ended; Ctrl-C and SIGTERM still land."""
    until = time.monotonic() + min(5.0, run.spec.workers.heartbeat_interval)
    while time.monotonic() < until:
        interrupts.check()
        time.sleep(0.2)


@dataclass
class _Running:
    """A trial being trained, and its per-epoch scores not yet written to Optuna."""

    trial: optuna.Trial
    config: RegConfig | None
    listeners: Sequence[Listener]
    pruning: bool
    #: the most epochs a trial trains: a pruner's "stop" at the last one would only turn a
    #: fully trained trial into a pruned one (Hyperband's top rung can fall there)
    epochs: int
    engine: Engine
    #: fewer epochs the engine gave this trial (a KerasTuner Hyperband rung); None: all
    budget: int | None = None
    unreported: dict[int, float] = field(default_factory=dict)

    @property
    def chosen(self) -> RegConfig:
        assert self.config is not None, "suggested right after the ask"
        return self.config

    def prune(self, metrics: EpochMetrics) -> bool:
        """Report the epoch; with a pruner, to Optuna at once, else when the trial ends.

        Optuna writes each report in a transaction of its own; without a pruner nothing
        reads them before the trial ends, so they are written then, in one.
        """
        faults.point("epoch")
        for listener in self.listeners:
            listener.epoch_ended(self.trial.number, metrics)
        stop = self.engine.epoch_ended(self.trial.number, metrics) or (
            self.budget is not None and metrics.epoch >= self.budget)
        if not self.pruning:
            self.unreported[metrics.epoch] = metrics.val_metric
            return stop and metrics.epoch < self.epochs
        self.trial.report(metrics.val_metric, metrics.epoch)
        return metrics.epoch < self.epochs and (stop or self.trial.should_prune())


def _abort(run: StudyRun, running: list[_Running], exc: BaseException,
           listeners: Sequence[Listener], heartbeat: Heartbeat | None = None) -> None:
    """Tell every running trial FAIL; an interrupted or stopped one does not spend budget.

    A stopped worker's trials (SIGTERM) are re-queued with their parameters, so whichever
    worker asks next runs them again.
    """
    interrupted = isinstance(exc, KeyboardInterrupt)
    stopped = isinstance(exc, interrupts.Stopped)
    reason = (KillReason.STOPPED if stopped else KillReason.INTERRUPTED if interrupted
              else f"error: {exc!r}")
    try:
        # A stopped worker's trials are failed and re-queued under the budget lock, so no
        # other worker takes their place in the budget between the two.
        with run.ledger.budget_lock(run.spec.name) if stopped else nullcontext():
            told = _tell(run, [(trial, TrialOutcome(state=State.FAILED, reason=reason))
                               for trial in running], listeners, heartbeat,
                         uncounted=interrupted, learn=False)
            run.interrupted = len(told) if interrupted else 0
            for trial in (t for t in told if stopped and t.config is not None):
                requeue(run.study, storage_of(run.study).get_trial(trial_id_of(trial.trial)))
    except DATABASE_ERRORS:
        # The database is gone: the trials stay RUNNING there, and the next process to
        # open the study fails them (SQLite) or their missing heartbeats do (servers).
        if not isinstance(exc, DATABASE_ERRORS):
            raise


def _tell(run: StudyRun, finished: list[tuple[_Running, TrialOutcome]],
          listeners: Sequence[Listener], heartbeat: Heartbeat | None = None, *,
          uncounted: bool = False, learn: bool = True) -> list[_Running]:
    """Tell Optuna how these trials ended (their details in one write), then the listeners,
    then (with `learn`) the engine.

    Returns the trials told; a trial cut off before its config was chosen is told to
    Optuna only (the listeners never heard of it). Trials killed with their process are
    not told to the engine (`learn=False`): it settles them when it next proposes.
    """
    finished = [(running, _rung_reason(running, outcome)) for running, outcome in finished]
    if heartbeat is not None:
        for running, _ in finished:
            heartbeat.remove(trial_id_of(running.trial))
    extra = {UNCOUNTED: True} if uncounted else {}
    refused = run.pack.write_details({trial_id_of(running.trial): (
        trial_attrs(outcome) | extra, running.unreported) for running, outcome in finished})
    told: list[tuple[_Running, TrialOutcome]] = []
    with run.pack.telling():
        for running, outcome in finished:
            value = outcome.value if outcome.state == State.COMPLETE else None
            try:
                if trial_id_of(running.trial) not in refused:
                    run.study.tell(running.trial, value, state=OPTUNA_STATE[outcome.state])
                    told.append((running, outcome))
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            # Another process found no heartbeat for this trial within the grace period and
            # failed and re-queued it (its records say so); this result is dropped.
            log.warning("trial %d was declared dead by another worker (no heartbeat within "
                        "workers.grace_period; raise it if workers are this busy); its "
                        "re-queued copy runs instead", running.trial.number)
    faults.point("tell")
    ended = [(running.trial.number, running.config, outcome) for running, outcome in told
             if running.config is not None]
    if ended:
        for listener in listeners:
            listener.trials_ended(ended)
    if learn and told:
        run.engine.trials_ended(run)
    return [running for running, _ in told]


def _rung_reason(running: _Running, outcome: TrialOutcome) -> TrialOutcome:
    """A trial stopped at the epochs its engine gave it trained as asked: say so, not
    "pruned" (it is recorded pruned: a rung's score is not a fully trained model's)."""
    if (running.budget is None or outcome.state != State.PRUNED
            or len(outcome.history) != running.budget):
        return outcome
    return replace(outcome, reason=f"trained the {running.budget} of {running.epochs} epochs "
                                   "its Hyperband rung gives it")


def trial_attrs(outcome: TrialOutcome) -> dict[str, Any]:
    """What Optuna keeps beside the value, so `best` can tell the whole story."""
    attrs: dict[str, Any] = {
        **outcome.summary(),
        **outcome.member_summary(),
        "fail_reason": outcome.reason if outcome.state == State.FAILED else None,
        "stop_reason": outcome.reason if outcome.state != State.FAILED else None,
    }
    return {k: v for k, v in attrs.items() if v is not None}
