"""The Optuna study: create or reopen it, ask for trials, feed pruning, tell results.

This is the only module that talks to Optuna. Trainers see a `RegConfig` and a prune
check; listeners (progress display, recorders) see configs, epochs and outcomes.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch import interrupts, space
from regsearch.data import Dataset, load_dataset
from regsearch.errors import SpecError, StudyMismatchError
from regsearch.space import RegConfig
from regsearch.spec import Objective, StudySpec, resolve_objective
from regsearch.recorders import LedgerRecorder
from regsearch.recorders.ledger import Ledger
from regsearch.storage import is_sqlite, open_storage
from regsearch.trainers.base import (COMPLETE, FAILED, PRUNED, EpochMetrics, PruneCheck,
                                     TrialOutcome)

SPEC_ATTR, HASH_ATTR, METRIC_ATTR = "regsearch_spec", "regsearch_spec_hash", "regsearch_metric"
INTERRUPTED = "interrupted by the user"
ABANDONED = "its process ended while the trial was running"
UNCOUNTED = "uncounted"  # user attr: the trial did not spend budget (it will be re-run)
_STATES = {COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL}

optuna.logging.set_verbosity(logging.WARNING)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Listener(Protocol):
    """Told what happens, in order; must not raise (recorders turn failures into warnings)."""

    def study_opened(self, run: StudyRun) -> None: ...
    def trial_started(self, number: int, config: RegConfig) -> None: ...
    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None: ...
    def trial_ended(self, number: int, config: RegConfig, outcome: TrialOutcome) -> None: ...


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

    @property
    def done(self) -> int:
        return count_done(self.study.get_trials(deepcopy=False))

    def running_trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def count_done(trials: Iterable[FrozenTrial]) -> int:
    """Trials that spent budget: finished ones, but not interrupted or abandoned ones."""
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in trials if t.state in finished and not t.user_attrs.get(UNCOUNTED))


def trial_seed(study_seed: int, number: int) -> int:
    """A per-trial seed for weights, shuffling and dropout, fixed by the study seed."""
    return (study_seed * 1_000_003 + number) % (2**31 - 1)


def open_run(spec: StudySpec, *, n_trials: int | None = None, timeout: float | None = None,
             storage: str | None = None, mlflow: str | None = None) -> StudyRun:
    """Validate data, then create or reopen the study and its records.

    Nothing is written before the data passes. The ledger shares the study's database;
    MLflow (unless disabled) gets its own.
    """
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    url = storage or spec.storage
    rdb = open_storage(url)
    grid = space.grid(spec.space, spec.search.grid_size) if spec.search.sampler == "grid" else []
    study = _open_study(spec, objective, rdb, grid)
    ledger = Ledger(url)
    ledger.open_study(name=spec.name, spec_hash=spec.spec_hash, spec=spec.to_dict(),
                      description=data.description, metric=objective.metric,
                      direction=objective.direction)
    run = StudyRun(spec, study, data, objective,
                   n_trials if n_trials is not None else spec.search.budget(len(grid)),
                   timeout if timeout is not None else spec.search.timeout, url, ledger)
    if is_sqlite(url):  # one process at a time: anything still running was abandoned
        fail_abandoned(run, [t.number for t in run.running_trials()])
    run.recorders = [LedgerRecorder(ledger)]
    if mlflow or spec.mlflow.enabled:
        from regsearch.recorders.mlflow import MlflowRecorder  # ~1 s to import; only when used

        run.recorders.append(MlflowRecorder(mlflow or spec.mlflow.tracking_uri, ledger))
    return run


def fail_abandoned(run: StudyRun, numbers: list[int]) -> None:
    """Fail trials a dead process left running, in Optuna and the ledger; they are re-run."""
    storage = run.study._storage
    for trial in run.running_trials():
        if trial.number in numbers:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", ABANDONED)
            storage.set_trial_user_attr(trial._trial_id, UNCOUNTED, True)
            run.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    run.ledger.fail_running(run.spec.name, numbers, ABANDONED)


def run_study(run: StudyRun, trainer: Any, listeners: Sequence[Listener] = ()) -> None:
    """Run trials until the study's budget or the timeout is spent.

    A packed trainer (one with `run_epoch`) trains many trials at once and each finished
    slot is refilled with a new trial; any other trainer runs one trial at a time.
    On Ctrl-C every running trial is told FAIL ("interrupted by the user") so it does not
    spend budget, and KeyboardInterrupt propagates; a later run picks up from there.
    Recorders come first so the ledger holds a trial before anything else reports it.
    """
    listeners = [*run.recorders, *listeners]
    for listener in listeners:
        listener.study_opened(run)
    deadline = time.monotonic() + run.timeout if run.timeout else float("inf")
    loop = _run_packed if hasattr(trainer, "run_epoch") else _run_one_by_one
    try:
        with interrupts.deferred_sigint():
            loop(run, trainer, listeners, deadline)
    finally:
        for recorder in run.recorders:
            getattr(recorder, "close", lambda: None)()


def _run_one_by_one(run: StudyRun, trainer: Any, listeners: Sequence[Listener],
                    deadline: float) -> None:
    while run.done < run.budget and time.monotonic() < deadline:
        interrupts.check()
        trial, config, prune = _begin(run, listeners)
        try:
            outcome = trainer.train(config, seed=trial_seed(run.spec.seed, trial.number),
                                    prune=prune)
        except BaseException as exc:
            _abort(run, [(trial, config)], exc, listeners)
            raise
        _tell(run.study, trial, outcome, listeners, config)


def _run_packed(run: StudyRun, trainer: Any, listeners: Sequence[Listener],
                deadline: float) -> None:
    """Keep every slot busy: ask a trial for each free slot, train an epoch, tell results."""
    active: dict[int, tuple[optuna.Trial, RegConfig]] = {}
    try:
        while True:
            interrupts.check()
            room = run.budget - run.done - len(active)
            for _ in range(min(room, len(trainer.free_slots()))):
                if time.monotonic() >= deadline:
                    break
                trial, config, prune = _begin(run, listeners)
                active[trainer.assign(config, seed=trial_seed(run.spec.seed, trial.number),
                                      prune=prune)] = (trial, config)
            if not active:
                return
            for slot, outcome in trainer.run_epoch().items():
                trial, config = active.pop(slot)
                _tell(run.study, trial, outcome, listeners, config)
    except BaseException as exc:
        _abort(run, list(active.values()), exc, listeners)
        raise


def _begin(run: StudyRun, listeners: Sequence[Listener]
           ) -> tuple[optuna.Trial, RegConfig, PruneCheck]:
    """Ask for a trial and its config; from the moment it exists, any exit tells it."""
    trial = run.study.ask()
    config: RegConfig | None = None
    try:
        config = space.suggest(trial, run.spec.space)
        for listener in listeners:
            listener.trial_started(trial.number, config)
    except BaseException as exc:
        _abort(run, [(trial, config)], exc, listeners)
        raise

    def prune(metrics: EpochMetrics) -> bool:
        trial.report(metrics.val_metric, metrics.epoch)
        for listener in listeners:
            listener.epoch_ended(trial.number, metrics)
        return trial.should_prune()
    return trial, config, prune


def _abort(run: StudyRun, running: list[tuple[optuna.Trial, RegConfig | None]],
           exc: BaseException, listeners: Sequence[Listener]) -> None:
    """Tell every running trial FAIL; an interrupted one does not spend budget."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    reason = INTERRUPTED if interrupted else f"error: {exc!r}"
    for trial, config in running:
        if interrupted:
            trial.set_user_attr(UNCOUNTED, True)
        _tell(run.study, trial, TrialOutcome(state=FAILED, reason=reason),
              listeners if config else [], config)


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome,
          listeners: Sequence[Listener], config: RegConfig) -> None:
    for key, value in trial_attrs(outcome).items():
        trial.set_user_attr(key, value)
    value = outcome.value if outcome.state == COMPLETE else None
    study.tell(trial, value, state=_STATES[outcome.state])
    for listener in listeners:
        listener.trial_ended(trial.number, config, outcome)


def trial_attrs(outcome: TrialOutcome) -> dict[str, Any]:
    """What Optuna keeps beside the value, so `best` can tell the whole story."""
    attrs: dict[str, Any] = {
        **outcome.summary(),
        "fail_reason": outcome.reason if outcome.state == FAILED else None,
        "stop_reason": outcome.reason if outcome.state != FAILED else None,
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
                grid: list[RegConfig]) -> optuna.Study:
    """Reopen a study only if it was made from the same spec; never mix results silently."""
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage,
                                                                        include_best_trial=False)}
    previous = existing.get(spec.name)
    if previous is not None:
        _check_same_spec(spec, previous.user_attrs, storage)
    n_before = previous.n_trials if previous is not None else 0
    # Re-seeding by history length keeps a resumed study reproducible without replaying
    # the first run's random start-up trials.
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                direction=objective.direction, load_if_exists=True,
                                sampler=_make_sampler(spec, spec.seed + n_before),
                                pruner=_make_pruner(spec))
    if previous is None:
        study.set_user_attr(SPEC_ATTR, spec.identity())
        study.set_user_attr(HASH_ATTR, spec.spec_hash)
        study.set_user_attr(METRIC_ATTR, objective.metric)
        for point in grid:
            study.enqueue_trial(point.params(), skip_if_exists=True)
    return study


def _check_same_spec(spec: StudySpec, attrs: dict[str, Any], storage: Any) -> None:
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
