"""The study `regsearch report` summarizes and plots: every trial read once, mostly from the
ledger.

Reading a large study through Optuna builds an object for each parameter, attribute and
epoch of every trial, the bulk of a large study's report. The ledger's rows (one query)
hold all that the summary's ranking and Optuna's history plot read; the trials the summary
describes in full (the top ones and the default) are Optuna's own, so the summary is the
one `regsearch best` prints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from regsearch.objective import ranked
from regsearch.opening import DEFAULT_ATTR
from regsearch.states import OPTUNA_STATE, State

if TYPE_CHECKING:
    from regsearch.recorders.ledger import TrialRecord


def study_in_memory(study: optuna.Study, storage: optuna.storages.BaseStorage,
                    records: Sequence[TrialRecord], *, top: int) -> optuna.Study:
    """`study` in memory: ledger rows for most trials, Optuna's trials for the `top` best
    and the default. A study whose default is not its trial 0 (the default failed and was
    re-queued, or the study has none) is copied from Optuna whole."""
    study_id = storage.get_study_id_from_name(study.study_name)

    def from_optuna(number: int) -> FrozenTrial:
        return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id,
                                                                                  number))

    first = from_optuna(0) if any(r.number == 0 for r in records) else None
    if first is None or not first.user_attrs.get(DEFAULT_ATTR) or \
            first.state == TrialState.FAIL:
        return _copy(study, study.get_trials(deepcopy=False))
    trials = {r.number: _from_ledger(r) for r in records}
    done = [r for r in records if r.state == State.COMPLETE and r.value is not None
            and math.isfinite(r.value)]
    best = ranked(study.direction.name.lower(), done,
                  lambda r: (r.value, r.summary.get("val_loss"), r.number))[:top]
    for number in {0, *(r.number for r in best)}:
        trials[number] = from_optuna(number)
    return _copy(study, [trials[n] for n in sorted(trials)])


def _from_ledger(record: TrialRecord) -> FrozenTrial:
    """A trial as the summary's ranking and the history plot read it."""
    state = OPTUNA_STATE.get(State(record.state), TrialState.RUNNING)
    scored = state in (TrialState.COMPLETE, TrialState.PRUNED) and record.value is not None
    trial = optuna.trial.create_trial(
        state=state, value=record.value if scored else None,
        user_attrs={k: v for k, v in record.summary.items() if v is not None})
    trial.number = record.number
    return trial


def _copy(study: optuna.Study, trials: Iterable[FrozenTrial]) -> optuna.Study:
    copy = optuna.create_study(study_name=study.study_name, direction=study.direction)
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    copy.add_trials(trials)
    return copy
