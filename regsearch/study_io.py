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
from collections.abc import Container, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch.optuna_compat import (can_batch, cached_trial, rdb_of, set_storage, storage_of,
                                     study_id_of, trial_id_of, write_details, write_params)


class PackStorage:
    """The study's storage as this process's batched asks and tells see it.

    `optuna.Trial` keeps the storage it was created with, so the trials asked through this
    object go on writing (reports, attrs) through it between batches: it passes everything
    through and keeps its copy of them current.
    """

    def __init__(self, study: optuna.Study) -> None:
        self.study = study
        self._storage: Any = storage_of(study)
        self._study_id = study_id_of(study)
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
        self._position = {trial_id_of(t): i for i, t in enumerate(self._snapshot)}
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
        self._position = {trial_id_of(t): i for i, t in enumerate(self._snapshot)}
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
        set_storage(self.study, self)
        try:
            yield
        finally:
            set_storage(self.study, self._storage)
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
        """The batch's parameters in one transaction where possible (`write_params`)."""
        rdb = rdb_of(self._storage)
        if not (params and can_batch(rdb)):
            for param in params:
                self._storage.set_trial_param(*param)
            return
        write_params(rdb, self._study_id, params)

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
        return copy.deepcopy(cached_trial(self._storage, trial_id)
                             or self._storage.get_trial(trial_id))
