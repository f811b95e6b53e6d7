"""Optuna reads and writes for a pack of trials, without reading back what this process wrote.

Optuna's ask/tell API is built for one trial at a time, and re-reads the database at every
step: `Study.ask` reads every unfinished trial twice per call (to look for a waiting trial,
then for the sampler), and once more to build the `Trial`; `Study.tell` reads the trial twice.
Filling a pack of K slots is quadratic in K, and each read of one trial costs more ORM
work than a packed epoch spends per trial.

`PackStorage` stands in for the study's storage while this process asks or tells a batch:
- the asks of a batch read the study once, when the batch starts (under the budget lock):
  the finished trials do not change from this process within it, and what other workers
  change meanwhile may as well have landed a moment after the batch;
- the parameters the asks of a batch suggest are written together when it ends, in one
  transaction instead of one each (no trial of the batch trains before that);
- the trials this process runs are kept in memory as it wrote them, and reading one of
  them back is answered from there.
Every other write goes straight to the database, so nothing recorded depends on this
cache; a trial another worker failed meanwhile (no heartbeat) is still refused by the
database when this process tells it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


class PackStorage:
    """The study's storage as this process's batched asks and tells see it.

    `optuna.Trial` keeps the storage it was created with, so the trials asked through this
    object go on writing (reports, attrs) through it between batches: it passes everything
    through and keeps its copy of them current.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self._storage: Any = study._storage
        self._study_id = study._study_id
        self._mine: dict[int, FrozenTrial] = {}  # running trials of this process, as written
        self._snapshot: list[FrozenTrial] | None = None
        self._position: dict[int, int] = {}
        self._params: list[tuple[int, str, float, Any]] = []  # the batch's, not yet written
        self._reports: dict[int, dict[int, float]] | None = None  # `pruning`'s, not yet written

    # ------------------------------------------------------------------ batches

    @contextmanager
    def asking(self) -> Iterator[None]:
        """Within the block, `study.ask()` and the suggestions read the study once, and
        the parameters of the new trials are written together when it ends (no trial of
        the batch trains before that, so none runs with parameters the database lacks)."""
        self._snapshot = list(self._storage.get_all_trials(self._study_id, deepcopy=False))
        self._position = {t._trial_id: i for i, t in enumerate(self._snapshot)}
        try:
            with self._standing_in():
                yield
        finally:
            self._snapshot, self._position = None, {}
            params, self._params = self._params, []
            self._write_params(params)

    @contextmanager
    def pruning(self) -> Iterator[None]:
        """Within the block (an epoch of a pack), the pruner reads the study once, and the
        trials' reported scores are written together when it ends.

        Optuna's pruners read every trial for each trial's decision: through `_CachedStorage`
        that re-reads every running trial, so a pack's epoch cost K reads of K trials. The
        finished trials the pruners compare with do not change from this process within an
        epoch; this process's running trials are its own copies, kept current."""
        self._snapshot = list(self._storage.get_all_trials(self._study_id, deepcopy=False))
        self._position = {t._trial_id: i for i, t in enumerate(self._snapshot)}
        for trial_id, trial in self._mine.items():
            if trial_id in self._position:
                self._snapshot[self._position[trial_id]] = trial
        self._reports = {}
        try:
            with self._standing_in():
                yield
        finally:
            self._snapshot, self._position = None, {}
            reports, self._reports = self._reports, None
            if reports:
                write_details(self._storage, {trial_id: ({}, values)
                                              for trial_id, values in reports.items()})

    @contextmanager
    def telling(self) -> Iterator[None]:
        """Within the block, `study.tell()` finds this process's trials in memory."""
        with self._standing_in():
            yield

    @contextmanager
    def _standing_in(self) -> Iterator[None]:
        self.study._storage = self  # type: ignore[assignment]
        try:
            yield
        finally:
            self.study._storage = self._storage
            for trial_id in [i for i, t in self._mine.items() if t.state.is_finished()]:
                del self._mine[trial_id]

    def write_details(self, details: Mapping[int, tuple[dict[str, Any], dict[int, float]]],
                      *, finished: bool = False) -> set[int]:
        """`write_details` for trials, kept in this process's copies of them too."""
        refused = write_details(self._storage, details, finished=finished)
        for trial_id, (attrs, intermediate) in details.items():
            trial = self._mine.get(trial_id)
            if trial_id in refused:
                self._mine.pop(trial_id, None)  # finished elsewhere: the database's copy counts
            elif trial is not None:
                trial.user_attrs.update(attrs)
                trial.intermediate_values.update(intermediate)
        return refused

    # ------------------------------------------------------------------ reads

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        if self._snapshot is None:
            return self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        trials = [t for t in self._snapshot if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_trial(self, trial_id: int) -> FrozenTrial:
        trial = self._mine.get(trial_id)
        if trial is None:
            return self._storage.get_trial(trial_id)
        return copy.deepcopy(trial)  # the caller may change its copy (`optuna.Trial` does)

    # ------------------------------------------------------------------ writes

    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        trial_id = self._storage.create_new_trial(study_id, template_trial)
        self._adopt(trial_id, self._created(trial_id))
        return trial_id

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Any = None) -> bool:
        changed = self._storage.set_trial_state_values(trial_id, state=state, values=values)
        if state == TrialState.RUNNING and trial_id in self._position:
            # A waiting trial (re-queued or enqueued) that this process took, or another
            # process took first: either way the next ask of the batch must not try it again.
            snapshot = self._snapshot
            assert snapshot is not None, "positions are kept only with a snapshot"
            trial = copy.deepcopy(snapshot[self._position[trial_id]])
            trial.state, trial.datetime_start = state, datetime.now()
            if changed:
                self._adopt(trial_id, trial)
            else:
                snapshot[self._position[trial_id]] = trial
        elif changed and trial_id in self._mine:
            trial = self._mine[trial_id]
            trial.state = state
            trial.values = None if values is None else [float(v) for v in values]
            trial.datetime_complete = datetime.now() if state.is_finished() else None
        return changed

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: Any) -> None:
        if self._snapshot is not None and trial_id in self._mine:
            self._params.append((trial_id, param_name, param_value_internal, distribution))
        else:
            self._storage.set_trial_param(trial_id, param_name, param_value_internal,
                                          distribution)
        trial = self._mine.get(trial_id)
        if trial is not None:
            trial.distributions[param_name] = distribution
            trial.params[param_name] = distribution.to_external_repr(param_value_internal)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        # TPE's relative parameters live here; the later asks of a batch read them.
        self._storage.set_trial_system_attr(trial_id, key, value)
        if trial_id in self._mine:
            self._mine[trial_id].system_attrs[key] = value

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._storage.set_trial_user_attr(trial_id, key, value)
        if trial_id in self._mine:
            self._mine[trial_id].user_attrs[key] = value

    def set_trial_intermediate_value(self, trial_id: int, step: int,
                                     intermediate_value: float) -> None:
        if self._reports is not None and trial_id in self._mine:  # written as `pruning` ends
            self._reports.setdefault(trial_id, {})[step] = intermediate_value
        else:
            self._storage.set_trial_intermediate_value(trial_id, step, intermediate_value)
        if trial_id in self._mine:
            self._mine[trial_id].intermediate_values[step] = intermediate_value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    # ------------------------------------------------------------------ helpers

    def _write_params(self, params: list[tuple[int, str, float, Any]]) -> None:
        """The batch's parameters in one transaction where possible, with the checks Optuna
        makes per parameter (the trial still runs; a name keeps its distribution across the
        study's trials) made once per trial and once per name: Optuna's own per-parameter
        write reads the trial and an earlier parameter of that name each time."""
        rdb = _rdb(self._storage)
        if not (params and can_batch(rdb)):
            for param in params:
                self._storage.set_trial_param(*param)
            return
        from optuna.distributions import (check_distribution_compatibility,
                                          distribution_to_json, json_to_distribution)
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(rdb.scoped_session) as session:
            for trial_id, trial in _trials_by_id(session, {p[0] for p in params}).items():
                rdb.check_trial_is_updatable(trial_id, trial.state)
            known: dict[str, Any] = {}  # name -> the distribution the study holds for it
            for trial_id, name, value, distribution in params:
                if name not in known:
                    earlier = (session.query(models.TrialParamModel.distribution_json)
                               .join(models.TrialModel)
                               .filter(models.TrialModel.study_id == self._study_id,
                                       models.TrialParamModel.param_name == name).first())
                    known[name] = json_to_distribution(earlier[0]) if earlier else distribution
                check_distribution_compatibility(known[name], distribution)
                session.add(models.TrialParamModel(
                    trial_id=trial_id, param_name=name, param_value=value,
                    distribution_json=distribution_to_json(distribution)))

    def _adopt(self, trial_id: int, trial: FrozenTrial) -> None:
        self._mine[trial_id] = trial
        if self._snapshot is not None:
            if trial_id in self._position:
                self._snapshot[self._position[trial_id]] = trial
            else:
                self._position[trial_id] = len(self._snapshot)
                self._snapshot.append(trial)

    def _created(self, trial_id: int) -> FrozenTrial:
        """The new trial as the database has it: Optuna's cache holds it, else read it."""
        try:  # `_CachedStorage` keeps the trial it created; private, so with a fallback
            study_id, number = self._storage._trial_id_to_study_id_and_number[trial_id]
            return copy.deepcopy(self._storage._studies[study_id].trials[number])
        except (AttributeError, KeyError):
            return copy.deepcopy(self._storage.get_trial(trial_id))


# --------------------------------------------------------------------------- details

def write_details(storage: optuna.storages.BaseStorage,
                  details: Mapping[int, tuple[dict[str, Any], dict[int, float]]], *,
                  finished: bool = False) -> set[int]:
    """Trials' user attrs and intermediate values, {trial_id: (attrs, values)}, in one
    transaction where possible; returns the trial ids refused as already finished.

    Optuna's public calls take a transaction and two lookups per row (some 30 rows per
    trial). For `RDBStorage` the rows go in through its own models in one
    session; those are private, so any other storage, or an Optuna whose models changed,
    gets the public calls (`tests/test_driver.py` checks that this Optuna takes the batch).
    `finished` writes to trials that are finished already (a dead worker's).
    """
    rdb = _rdb(storage)
    if can_batch(rdb):
        return _write_rows(rdb, details, finished)
    refused = set()
    for trial_id, (attrs, intermediate) in details.items():
        try:
            for step, value in intermediate.items():
                storage.set_trial_intermediate_value(trial_id, step, value)
            for key, value in attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            refused.add(trial_id)
    return refused


def can_batch(storage: Any) -> bool:
    if not isinstance(storage, optuna.storages.RDBStorage):
        return False
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session  # noqa: F401
    except ImportError:
        return False
    return all(hasattr(models.TrialModel, name) for name in (
        "trial_id", "state", "study_id", "intermediate_values", "user_attributes")) and all(
        hasattr(models.TrialParamModel, name) for name in (
            "trial_id", "param_name", "param_value", "distribution_json")) and hasattr(
        models.TrialIntermediateValueModel, "intermediate_value_to_stored_repr")


def _write_rows(rdb: optuna.storages.RDBStorage,
                details: Mapping[int, tuple[dict[str, Any], dict[int, float]]],
                finished: bool) -> set[int]:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from sqlalchemy.orm import selectinload

    values = models.TrialIntermediateValueModel
    refused = set()
    with _create_scoped_session(rdb.scoped_session) as session:
        trials = _trials_by_id(session, set(details),
                               selectinload(models.TrialModel.intermediate_values),
                               selectinload(models.TrialModel.user_attributes))
        for trial_id, (attrs, intermediate) in details.items():
            trial = trials[trial_id]
            if not finished and trial.state.is_finished():
                refused.add(trial_id)
                continue
            steps = {row.step: row for row in trial.intermediate_values}
            for step, value in intermediate.items():
                stored, kind = values.intermediate_value_to_stored_repr(value)
                row = steps.get(step) or values(trial_id=trial_id, step=step)
                row.intermediate_value, row.intermediate_value_type = stored, kind
                session.add(row)
            keys = {row.key: row for row in trial.user_attributes}
            for key, value in attrs.items():
                row = keys.get(key) or models.TrialUserAttributeModel(trial_id=trial_id, key=key)
                row.value_json = json.dumps(value)
                session.add(row)
    return refused


def _trials_by_id(session: Any, ids: set[int], *options: Any) -> dict[int, Any]:
    """Optuna's rows of these trials in one query (`options`: what to load with them);
    a missing one is Optuna's own error, as its per-trial lookup raises it."""
    from optuna.storages._rdb import models

    trials = {trial.trial_id: trial for trial in session.query(models.TrialModel)
              .options(*options).filter(models.TrialModel.trial_id.in_(ids))}
    for trial_id in ids - trials.keys():
        raise KeyError(f"No trial with trial_id {trial_id} exists.")
    return trials


def _rdb(storage: Any) -> Any:
    """The storage under Optuna's `_CachedStorage` wrapper, if any (an `RDBStorage`)."""
    return getattr(storage, "_backend", storage)


# --------------------------------------------------------------------------- reaping

def fail_trials(storage: optuna.storages.BaseStorage,
                attrs: Mapping[int, dict[str, Any]]) -> set[int]:
    """Fail each of these trials that still runs, writing its user attrs in the same
    transaction; returns the ids this call failed (others finished or were failed meanwhile).

    Optuna's own `fail_stale_trials` sets the state first, and its callback writes the rest:
    a reader in between (or a process killed there) sees a failed trial that spent budget
    and is never re-run. Here the state and what it means land together.
    """
    rdb = _rdb(storage)
    if not can_batch(rdb):
        return _fail_one_by_one(storage, attrs)
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    won = set()
    for trial_id, trial_attrs in attrs.items():
        with _create_scoped_session(rdb.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            if trial.state != TrialState.RUNNING:
                continue
            trial.state, trial.datetime_complete = TrialState.FAIL, datetime.now()
            keys = {row.key: row for row in trial.user_attributes}
            for key, value in trial_attrs.items():
                row = keys.get(key) or models.TrialUserAttributeModel(trial_id=trial_id, key=key)
                row.value_json = json.dumps(value)
                session.add(row)
            won.add(trial_id)
    return won


def _fail_one_by_one(storage: optuna.storages.BaseStorage,
                     attrs: Mapping[int, dict[str, Any]]) -> set[int]:
    """`fail_trials` through Optuna's public calls: the attrs first, then the state."""
    won = set()
    for trial_id, trial_attrs in attrs.items():
        try:
            if storage.get_trial(trial_id).state != TrialState.RUNNING:
                continue
            for key, value in trial_attrs.items():
                storage.set_trial_user_attr(trial_id, key, value)
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                won.add(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    return won


def stale_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """Running trials whose last heartbeat is older than the grace period (Optuna's test,
    made with the database's clock); none where heartbeats are off."""
    rdb = _rdb(storage)
    if getattr(rdb, "heartbeat_interval", None) is None:
        return []
    return list(rdb._get_stale_trial_ids(study_id))


def unbeaten_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """Running trials that never had a heartbeat.

    A live process beats for a trial at once; one that died between creating a trial and its
    first beat leaves a trial whose heartbeat can never go stale: Optuna's reaper, which
    looks only at trials with a heartbeat, never fails it, and it would hold the budget
    forever. The caller times how long it stays so (`liveness.reap_dead`). Optuna keeps
    heartbeats in a private table, so an Optuna without it finds none.
    """
    rdb = _rdb(storage)
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy.orm import selectinload

        with _create_scoped_session(rdb.scoped_session) as session:
            running = (session.query(models.TrialModel)
                       .options(selectinload(models.TrialModel.heartbeats))
                       .filter(models.TrialModel.study_id == study_id,
                               models.TrialModel.state == TrialState.RUNNING).all())
            return [t.trial_id for t in running if not t.heartbeats]
    except (ImportError, AttributeError):
        return []
