"""Every private name of Optuna that regsearch uses, in one module.

Batched writes go in through the RDB storage's own SQLAlchemy models and scoped session
(`optuna.storages._rdb`), dead workers are found through its heartbeat table, and a pack
stands in for a study's storage (`Study._storage`). Each of these has a public fallback
where Optuna has one (one call per row), taken when a private name is missing, so a newer
Optuna is slower here, not wrong. Tested with Optuna 5.1.0 (`pyproject.toml` allows >=5.1,
<6); `tests/test_driver.py` and `tests/test_study_io.py` check that the batch path is taken.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> Any:
    """The storage a study reads and writes through."""
    return study._storage


def set_storage(study: optuna.Study, storage: Any) -> None:
    """Make `study` read and write through `storage` (a pack's stand-in, and back)."""
    study._storage = storage


def study_id_of(study: optuna.Study) -> int:
    return study._study_id


def trial_id_of(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (its number counts within the study only)."""
    return trial._trial_id


def cached_trial(storage: Any, trial_id: int) -> FrozenTrial | None:
    """The trial as `_CachedStorage` keeps it after creating it, None if it does not."""
    try:
        study_id, number = storage._trial_id_to_study_id_and_number[trial_id]
        return storage._studies[study_id].trials[number]
    except (AttributeError, KeyError):
        return None


def write_params(rdb: optuna.storages.RDBStorage, study_id: int,
                 params: list[tuple[int, str, float, Any]]) -> None:
    """(trial id, name, value, distribution) rows in one transaction, with the checks Optuna
    makes per parameter (the trial still runs; a name keeps its distribution across the
    study's trials) made once per trial and once per name: Optuna's own per-parameter
    write reads the trial and an earlier parameter of that name each time."""
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
                           .filter(models.TrialModel.study_id == study_id,
                                   models.TrialParamModel.param_name == name).first())
                known[name] = json_to_distribution(earlier[0]) if earlier else distribution
            check_distribution_compatibility(known[name], distribution)
            session.add(models.TrialParamModel(
                trial_id=trial_id, param_name=name, param_value=value,
                distribution_json=distribution_to_json(distribution)))


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
    rdb = rdb_of(storage)
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


def rdb_of(storage: Any) -> Any:
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
    rdb = rdb_of(storage)
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
    rdb = rdb_of(storage)
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
    rdb = rdb_of(storage)
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
