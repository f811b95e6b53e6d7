"""Opening a study: check everything, then create or reopen it and its records.

A study's identity is its name and its spec's hash: a study file that changed what a
stored study measures is refused with the differences, and the MLflow experiment of the
same name must carry the study's random id. `StudyRun` is what a run of it needs to know.
"""

from __future__ import annotations

import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any
from collections.abc import Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch import space
from regsearch.data import Dataset, load_dataset
from regsearch.errors import StorageError, StudyMismatchError
from regsearch.liveness import count_done
from regsearch.optuna_compat import storage_of, study_id_of
from regsearch.protocols import Engine, Listener
from regsearch.recorders import LedgerRecorder
from regsearch.recorders.ledger import Ledger
from regsearch.samplers import make_pruner, make_sampler, sampler_seed
from regsearch.objective import Objective, resolve_objective
from regsearch.spec import StudySpec
from regsearch.storage import (check_storage_url, check_tracking_uri, expand_home,
                               has_study_tables, is_sqlite, mask_url, open_storage,
                               same_database, sqlite_file)
from regsearch.study_io import PackStorage

if TYPE_CHECKING:
    from regsearch.recorders.mlflow_process import WriterProcess

SPEC_ATTR, HASH_ATTR, METRIC_ATTR = "regsearch_spec", "regsearch_spec_hash", "regsearch_metric"
UID_ATTR, TASK_ATTR = "regsearch_uid", "regsearch_task"
DEFAULT_ATTR = "regsearch_default"  # trial user attr: the unregularized yardstick


@contextmanager
def without_optuna_notices() -> Iterator[None]:
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
    def engine(self) -> Engine:
        """Who proposes the study's trials (`regsearch.engines`)."""
        from regsearch.engines import make_engine

        return make_engine(self)

    @cached_property
    def pack(self) -> PackStorage:
        """The study's storage for this process's batches of asks and tells."""
        return PackStorage(self.study)


def trial_seed(study_seed: int, number: int) -> int:
    """A per-trial seed for weights, shuffling and dropout, fixed by the study seed."""
    return (study_seed * 1_000_003 + number) % (2**31 - 1)


@without_optuna_notices()
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

    trials = storage_of(run.study).get_all_trials(study_id_of(run.study), deepcopy=False)
    return run.ledger.mend(run.spec.name, optuna_records(run.spec.name, trials))


def close_recorders(run: StudyRun) -> None:
    """Each recorder's `close`, once however many of `run_study`, `confirm_only` and
    `close_run` end the run."""
    if not run.recorders_closed:
        run.recorders_closed = True
        for recorder in run.recorders:
            recorder.close()


def close_run(run: StudyRun) -> None:
    """Close what `open_run` opened: the recorders (the MLflow writer drains), then the
    ledger's and the study's database connections."""
    close_recorders(run)
    run.ledger.engine.dispose()
    if run.storage is not None:
        run.storage.engine.dispose()


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
    sampler = make_sampler(spec, sampler_seed(spec, n_before, shared))
    study = optuna.create_study(study_name=spec.name, storage=storage,
                                direction=objective.direction, load_if_exists=True,
                                sampler=sampler, pruner=make_pruner(spec))
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
