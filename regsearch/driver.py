"""The Optuna study: create or reopen it, ask for trials, feed pruning, tell results.

This is the only module that talks to Optuna. Trainers see a `RegConfig` and a prune
check; listeners (progress display, recorders) see configs, epochs and outcomes.
"""

from __future__ import annotations

import gc
import sys
import time
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch import faults, interrupts, space
from regsearch.data import Dataset, load_dataset
from regsearch.errors import SpecError, StorageError, StudyMismatchError
from regsearch.liveness import (UNCOUNTED, Heartbeat,
                                config_of, count_done, fail_abandoned, reap_dead, requeue)
from regsearch.space import RegConfig
from regsearch.spec import Objective, StudySpec, resolve_objective
from regsearch.protocols import Listener, PackTrainer, Trainer
from regsearch.recorders import LedgerRecorder
from regsearch.recorders.ledger import Ledger
from regsearch.storage import (DATABASE_ERRORS, check_storage_url, check_tracking_uri,
                               expand_home, first_line, has_study_tables, hold_sqlite,
                               is_sqlite, mask_url,
                               open_storage, same_database, sqlite_file)
from regsearch.study_io import PackStorage
from regsearch.states import OPTUNA_STATE, KillReason, State
from regsearch.trainers.base import EpochMetrics, TrialOutcome

if TYPE_CHECKING:
    from regsearch.recorders.mlflow_process import WriterProcess

__all__ = ["UNCOUNTED", "config_of",
           "count_done", "fail_abandoned", "reap_dead", "requeue"]

SPEC_ATTR, HASH_ATTR, METRIC_ATTR = "regsearch_spec", "regsearch_spec_hash", "regsearch_metric"
UID_ATTR, TASK_ATTR = "regsearch_uid", "regsearch_task"
DEFAULT_ATTR = "regsearch_default"  # trial user attr: the unregularized yardstick


@contextmanager
def _without_optuna_notices() -> Iterator[None]:
    """Optuna's notices about features used as designed: experimental APIs, and heartbeats
    with ask/tell (the driver keeps them itself, `Heartbeat`). Filters restored after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


@dataclass
class StudyRun:
    """An opened study and what a run of it needs to know."""

    spec: StudySpec
    study: optuna.Study
    data: Dataset
    objective: Objective
    budget: int
    timeout: float | None
    storage_url: str
    ledger: Ledger
    recorders: list[Listener] = field(default_factory=list)
    #: the study's own random id: an MLflow experiment of the same name must carry it
    uid: str = ""
    #: where MLflow records the study; None when it is off
    tracking_uri: str | None = None
    #: trial id -> when (`time.monotonic`) this process first saw it running, never beaten
    unbeaten_since: dict[int, float] = field(default_factory=dict)
    #: how many running trials the last Ctrl-C or SIGTERM failed
    interrupted: int = 0
    #: Optuna's storage of the study, for `close_run`
    storage: optuna.storages.RDBStorage | None = None
    recorders_closed: bool = False

    @property
    def shared(self) -> bool:
        """A server database: other processes may work on the study at the same time."""
        return not is_sqlite(self.storage_url)

    @property
    def done(self) -> int:
        return count_done(self.study.get_trials(deepcopy=False))

    def room(self) -> tuple[int, int]:
        """(done, trials that may still be asked for): the budget counts every process's
        finished trials and running ones; re-queued (waiting) trials are asked first."""
        trials = self.study.get_trials(deepcopy=False)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        done = count_done(trials)
        return done, max(0, self.budget - done - running)

    def running_trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))

    @cached_property
    def pack(self) -> PackStorage:
        """The study's storage for this process's batches of asks and tells."""
        return PackStorage(self.study)


def trial_seed(study_seed: int, number: int) -> int:
    """A per-trial seed for weights, shuffling and dropout, fixed by the study seed."""
    return (study_seed * 1_000_003 + number) % (2**31 - 1)


@_without_optuna_notices()
def open_run(spec: StudySpec, *, n_trials: int | None = None, timeout: float | None = None,
             storage: str | None = None, mlflow: str | None = None,
             join: bool = False) -> StudyRun:
    """Check data, URLs and the study's identity, then create or reopen the study and its
    records.

    Nothing is written before every check has passed: the data, the storage URL and its
    driver, the MLflow URI (never the storage's own database), the study's spec against a
    study of the same name, and the MLflow experiment of that name (it must be this
    study's). The ledger shares the study's database and is mended from Optuna here (a
    process killed between the two writes); MLflow (unless disabled) gets its own, and its
    writer process starts once the checks pass. With `join` (a worker) the study must
    exist already: one process (`regsearch init` or `run`) creates it, so workers never race.
    """
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    url = expand_home(storage or spec.storage)
    tracking_uri = mlflow or (spec.mlflow.tracking_uri if spec.mlflow.enabled else None)
    tracking_uri = tracking_uri and expand_home(tracking_uri)
    check_urls(url, tracking_uri)
    previous = _existing_study(spec, url, join)
    uid = (previous or {}).get(UID_ATTR) or uuid.uuid4().hex[:16]
    writer = None
    if tracking_uri:
        from regsearch.recorders.mlflow_identity import check_owner, experiment_tags

        check_owner(tracking_uri, spec.name, uid, experiment_tags(tracking_uri, spec.name))
        from regsearch.recorders.mlflow_process import WriterProcess

        writer = WriterProcess(tracking_uri)  # MLflow's import (seconds) runs meanwhile
    try:
        return _open_records(spec, data, objective, url, n_trials, timeout, uid,
                             tracking_uri, writer)
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise


def check_urls(url: str, tracking_uri: str | None) -> None:
    """The storage URL and MLflow URI can be used, and name two different databases."""
    check_storage_url(url)
    if not tracking_uri:
        return
    check_tracking_uri(tracking_uri, "mlflow")
    if same_database(url, tracking_uri):
        raise StorageError(
            f"mlflow {mask_url(tracking_uri)} is the study's own database (storage "
            f"{mask_url(url)}): Optuna and MLflow both keep an `alembic_version` table; give "
            "MLflow a database of its own, e.g. sqlite:///runs/mlflow.db")


def _existing_study(spec: StudySpec, url: str, join: bool) -> dict[str, Any] | None:
    """The user attrs of the study of this name, None if there is none; read without
    creating anything. A study of another spec is refused here."""
    database = sqlite_file(url)
    found = None
    if database.is_file() if database is not None else has_study_tables(url):
        storage = open_storage(url, must_exist=True)
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        found = next((s for s in summaries if s.study_name == spec.name), None)
        storage.engine.dispose()
    if found is None:
        if join:
            raise StudyMismatchError(
                f"{spec.source}: study {spec.name!r} does not exist in {mask_url(url)}; "
                "create it first with `regsearch init` (or `regsearch run`) on this study "
                "file and storage")
        return None
    _check_same_spec(spec, found.user_attrs)
    return found.user_attrs


def _open_records(spec: StudySpec, data: Dataset, objective: Objective, url: str,
                  n_trials: int | None, timeout: float | None, uid: str,
                  tracking_uri: str | None, writer: WriterProcess | None) -> StudyRun:
    heartbeat = None if is_sqlite(url) else (spec.workers.heartbeat_interval,
                                             spec.workers.grace_period)
    rdb = open_storage(url, heartbeat=heartbeat)
    study = _open_study(spec, objective, rdb, uid, data.task, shared=not is_sqlite(url))
    ledger = Ledger(url)
    ledger.open_study(name=spec.name, spec_hash=spec.spec_hash, spec=spec.to_dict(),
                      description=data.description, metric=objective.metric,
                      direction=objective.direction)
    points = (space.grid_count(spec.space, spec.search.grid_size)
              if spec.search.sampler == "grid" else 0)
    run = StudyRun(spec, study, data, objective,
                   n_trials if n_trials is not None else spec.search.budget(points, timeout),
                   timeout if timeout is not None else spec.search.timeout, url, ledger,
                   uid=study.user_attrs.get(UID_ATTR, uid), tracking_uri=tracking_uri,
                   storage=rdb)
    mend_ledger(run)
    run.recorders = [LedgerRecorder(ledger)]
    if tracking_uri:
        from regsearch.recorders.mlflow_live import MlflowRecorder

        run.recorders.append(MlflowRecorder(tracking_uri, ledger, writer=writer))
    return run


def mend_ledger(run: StudyRun) -> int:
    """Write Optuna's finished trials into ledger rows that disagree with them; how many.

    Optuna is told first and the ledger next, so a process killed in between leaves a
    row `running` (or none) for a finished trial; running trials are left alone (their
    process may be alive)."""
    from regsearch.repair import optuna_records

    trials = run.study._storage.get_all_trials(run.study._study_id, deepcopy=False)
    return run.ledger.mend(run.spec.name, optuna_records(run.spec.name, trials))


@_without_optuna_notices()
def prepare(run: StudyRun) -> None:
    """Create what workers share (the study exists already; MLflow's experiment and parent
    run here), once, then close: `regsearch init` and the launcher."""
    for recorder in run.recorders:
        recorder.study_opened(run)
    _close_recorders(run)


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
            _close_recorders(run)


def _close_recorders(run: StudyRun) -> None:
    if not run.recorders_closed:
        run.recorders_closed = True
        for recorder in run.recorders:
            recorder.close()


def close_run(run: StudyRun) -> None:
    """Close what `open_run` opened: the recorders (the MLflow writer drains), then the
    ledger's and the study's database connections."""
    _close_recorders(run)
    run.ledger.engine.dispose()
    if run.storage is not None:
        run.storage.engine.dispose()


@_without_optuna_notices()
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
        _close_recorders(run)


def _search_over(run: StudyRun) -> bool:
    """No trial of any process runs or waits, and at least one completed: the search is
    over (its budget or its timeout spent) and may be confirmed."""
    with run.ledger.budget_lock(run.spec.name):
        reap_dead(run)
    trials = run.study.get_trials(deepcopy=False)
    return any(t.state == TrialState.COMPLETE for t in trials) and not any(
        t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)


def _say(text: str) -> None:
    print(f"regsearch: {text}", file=sys.stderr, flush=True)


@contextmanager
def _long_lived_frozen() -> Iterator[None]:
    """Keep Python's cyclic collector off what exists when a study's loop starts.

    With TensorFlow or JAX loaded and a model built the heap holds some 600,000 objects, and
    each full collection walks them all: 0.3 s, about once per 64-trial search on a 2-core
    CPU (measured with `gc.callbacks`), for nothing. Frozen, they are not walked; garbage made
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
                if run.spec.search.sampler == "grid":
                    _enqueue_grid(run, min(room, wanted))
                for _ in range(min(room, wanted)):
                    asked.append(_Running(run.study.ask(), None, listeners, pruning))
                    faults.point("ask")
                    if heartbeat is not None:
                        heartbeat.add(asked[-1].trial._trial_id)
                    asked[-1].config = space.suggest(asked[-1].trial, run.spec.space)
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


def _enqueue_grid(run: StudyRun, wanted: int) -> None:
    """Queue the next grid points this batch needs: those no trial holds (waiting,
    running, or finished and counted). Points are made as needed, so a grid of any size
    starts at once, and a study interrupted half-way finishes its grid when resumed."""
    trials = run.study.get_trials(deepcopy=False)
    waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
    need = wanted - waiting
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
        if not self.pruning:
            self.unreported[metrics.epoch] = metrics.val_metric
            return False
        self.trial.report(metrics.val_metric, metrics.epoch)
        return self.trial.should_prune()


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
                         uncounted=interrupted)
            run.interrupted = len(told) if interrupted else 0
            for trial in (t for t in told if stopped and t.config is not None):
                requeue(run.study, run.study._storage.get_trial(trial.trial._trial_id))
    except DATABASE_ERRORS:
        # The database is gone: the trials stay RUNNING there, and the next process to
        # open the study fails them (SQLite) or their missing heartbeats do (servers).
        if not isinstance(exc, DATABASE_ERRORS):
            raise


def _tell(run: StudyRun, finished: list[tuple[_Running, TrialOutcome]],
          listeners: Sequence[Listener], heartbeat: Heartbeat | None = None, *,
          uncounted: bool = False) -> list[_Running]:
    """Tell Optuna how these trials ended (their details in one write), then the listeners.

    Returns the trials told; a trial cut off before its config was chosen is told to
    Optuna only (the listeners never heard of it).
    """
    if heartbeat is not None:
        for running, _ in finished:
            heartbeat.remove(running.trial._trial_id)
    extra = {UNCOUNTED: True} if uncounted else {}
    refused = run.pack.write_details({running.trial._trial_id: (
        trial_attrs(outcome) | extra, running.unreported) for running, outcome in finished})
    told: list[tuple[_Running, TrialOutcome]] = []
    with run.pack.telling():
        for running, outcome in finished:
            value = outcome.value if outcome.state == State.COMPLETE else None
            try:
                if running.trial._trial_id not in refused:
                    run.study.tell(running.trial, value, state=OPTUNA_STATE[outcome.state])
                    told.append((running, outcome))
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
            # Another process found no heartbeat for this trial within the grace period and
            # failed and re-queued it (its records say so); this result is dropped.
            print(f"regsearch: warning: trial {running.trial.number} was declared dead by "
                  "another worker (no heartbeat within workers.grace_period; raise it if "
                  "workers are this busy); its re-queued copy runs instead", file=sys.stderr,
                  flush=True)
    faults.point("tell")
    ended = [(running.trial.number, running.config, outcome) for running, outcome in told
             if running.config is not None]
    if ended:
        for listener in listeners:
            listener.trials_ended(ended)
    return [running for running, _ in told]


def trial_attrs(outcome: TrialOutcome) -> dict[str, Any]:
    """What Optuna keeps beside the value, so `best` can tell the whole story."""
    attrs: dict[str, Any] = {
        **outcome.summary(),
        **outcome.member_summary(),
        "fail_reason": outcome.reason if outcome.state == State.FAILED else None,
        "stop_reason": outcome.reason if outcome.state != State.FAILED else None,
    }
    return {k: v for k, v in attrs.items() if v is not None}


# --------------------------------------------------------------------------- opening

def _make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    kind = spec.search.sampler
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if kind == "gp":
        return _gp_sampler(spec, seed)
    # `grid` runs enqueued grid points; random only fills in if the grid is exhausted.
    return optuna.samplers.RandomSampler(seed=seed)


def _gp_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SpecError(spec.source, "search.sampler",
                        "'gp' needs PyTorch; install it with: pip install 'regsearch[gp]', "
                        "or use sampler: tpe") from None
    return optuna.samplers.GPSampler(seed=seed)


def _make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    epochs = spec.train.epochs
    return {
        # Early-epoch scores are noisy: judge a trial only after a third of its epochs.
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5,
                                                      n_warmup_steps=max(1, epochs // 3)),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1,
                                                            max_resource=epochs),
        "none": lambda: optuna.pruners.NopPruner(),
    }[spec.search.pruner]()


def _open_study(spec: StudySpec, objective: Objective, storage: optuna.storages.BaseStorage,
                uid: str, task: str, *, shared: bool = False) -> optuna.Study:
    """Create the study, or load the one `_existing_study` checked (same spec). A new one
    starts with the unregularized default as its first trial: the yardstick its best is
    measured against (`space.default_config`)."""
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage,
                                                                        include_best_trial=False)}
    previous = existing.get(spec.name)
    if previous is not None:
        _check_same_spec(spec, previous.user_attrs)  # made meanwhile by another process
    n_before = previous.n_trials if previous is not None else 0
    # Re-seeding by history length keeps a resumed study reproducible without replaying
    # the first run's random start-up trials.
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                direction=objective.direction, load_if_exists=True,
                                sampler=_make_sampler(spec, _sampler_seed(spec, n_before,
                                                                          shared)),
                                pruner=_make_pruner(spec))
    if previous is None:
        study.set_user_attr(SPEC_ATTR, spec.identity())
        study.set_user_attr(HASH_ATTR, spec.spec_hash)
        study.set_user_attr(METRIC_ATTR, objective.metric)
        study.set_user_attr(TASK_ATTR, task)
        default = space.default_config(spec.space)
        if default is not None and spec.search.sampler != "grid":  # a grid holds it already
            study.enqueue_trial(default.params(), user_attrs={DEFAULT_ATTR: True})
    if study.user_attrs.get(UID_ATTR) is None:  # new, or made before studies had ids
        study.set_user_attr(UID_ATTR, uid)
    if study.metric_names is None:  # Optuna's CLI and dashboards then name the objective
        study.set_metric_names([objective.metric])
    return study


def _sampler_seed(spec: StudySpec, n_before: int, shared: bool) -> int:
    """The study seed, moved on by the history length; a process of a shared study adds
    randomness of its own: workers starting together see the same history and would
    otherwise all propose the same points (seen: 8 workers, 8 identical trials)."""
    import secrets

    return spec.seed + n_before + (secrets.randbits(30) if shared else 0)


def _check_same_spec(spec: StudySpec, attrs: dict[str, Any]) -> None:
    if attrs.get(HASH_ATTR) == spec.spec_hash:
        return
    changes = _differences(attrs.get(SPEC_ATTR, {}), _jsonable(spec.identity()))
    shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    raise StudyMismatchError(
        f"{spec.source}: study {spec.name!r} already exists in this storage with a different "
        f"spec ({shown or 'unknown difference'}); give the study a new `name:` to start a "
        "new study, or restore the old settings to continue it")


def _jsonable(value: Any) -> Any:
    """The identity as it comes back from storage (tuples become lists)."""
    import json

    return json.loads(json.dumps(value, default=str))


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [f"{path} was {old!r}, now {new!r}"]
