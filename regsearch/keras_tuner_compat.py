"""Every use of KerasTuner's oracles that is not its documented API, in one place.

regsearch drives an oracle through its public calls (`create_trial`, `update_trial`,
`end_trial`, `get_state`/`set_state`), but an oracle writes itself and every trial to files
of a project folder as it goes, and reloads that folder when it is reused: the two ways a
KerasTuner study gets mixed with an older one. Here an oracle keeps no folder: its state is
a JSON document (`state_of`) that the caller stores in the study's database, and
`restore` rebuilds an oracle from it. A trial is kept in the document by its values,
status and score; its per-epoch history is the ledger's and Optuna's.
"""

from __future__ import annotations

import math
from typing import Any

from regsearch.spec import STRENGTHS, SpaceSpec

#: The epochs KerasTuner's Hyperband gives a trial, among its hyperparameter values.
EPOCHS = "tuner/epochs"
#: The oracle's status of a trial that may run now, of one that must wait for running
#: ones, and of a search that has nothing more to propose.
RUNNING, IDLE, STOPPED = "RUNNING", "IDLE", "STOPPED"
COMPLETED, FAILED = "COMPLETED", "FAILED"


def _oracle_classes() -> dict[str, type]:
    import keras_tuner as kt

    class Folderless:
        """An oracle that writes nothing to disk: its state goes where the caller puts it."""

        def save(self) -> None:  # Oracle.save: oracle.json in the project folder
            return None

        def _save_trial(self, trial: Any) -> None:  # each trial's trial.json
            return None

    return {kind: type(f"Folderless{base.__name__}", (Folderless, base), {})
            for kind, base in (("random", kt.oracles.RandomSearchOracle),
                               ("bayesian", kt.oracles.BayesianOptimizationOracle),
                               ("hyperband", kt.oracles.HyperbandOracle))}


def hyperparameters(space: SpaceSpec) -> Any:
    """The search space as KerasTuner's `HyperParameters`: the same names, ranges and
    conditions as `space.suggest` (a strength exists only for the types that use it)."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    hp.Choice("regularizer", list(space.regularizers))
    for name in ("l1", "l2"):
        users = [kind for kind in space.regularizers if name in STRENGTHS[kind]]
        if users:
            with hp.conditional_scope("regularizer", users):
                _float(hp, name, space.strength.low, space.strength.high, log=True)
    _float(hp, "dropout", space.dropout.low, space.dropout.high)
    return hp


def _float(hp: Any, name: str, low: float, high: float, *, log: bool = False) -> None:
    if low == high:
        hp.Fixed(name, low)
    else:
        hp.Float(name, low, high, sampling="log" if log else "linear")


def make_oracle(kind: str, *, metric: str, direction: str, space: SpaceSpec, seed: int,
                max_epochs: int) -> Any:
    """A new oracle of `kind` (random, bayesian, hyperband) that stops only when the
    caller's budget does, and prints nothing (regsearch's display and records report)."""
    import keras_tuner as kt

    common: dict[str, Any] = {
        "objective": kt.Objective(metric, "max" if direction == "maximize" else "min"),
        "hyperparameters": hyperparameters(space),
        "seed": seed + 1,  # KerasTuner draws a random seed for 0
        # A failed configuration is recorded and the search goes on, as with Optuna.
        "max_consecutive_failed_trials": 1_000_000_000,
    }
    extra: dict[str, Any] = ({"max_epochs": max_epochs, "factor": 3,
                              "hyperband_iterations": None} if kind == "hyperband"
                             else {"max_trials": None})
    oracle = _oracle_classes()[kind](**common, **extra)
    oracle.verbose = 0
    return oracle


def state_of(oracle: Any) -> dict[str, Any]:
    """The oracle and its trials as JSON-ready data."""
    return {"oracle": oracle.get_state(),
            "trials": {trial_id: {"values": trial.hyperparameters.values,
                                  "status": trial.status, "score": trial.score,
                                  "best_step": trial.best_step, "message": trial.message}
                       for trial_id, trial in oracle.trials.items()}}


def restore(oracle: Any, state: dict[str, Any], live: dict[str, Any]) -> None:
    """Load `state` into `oracle` (made by `make_oracle` with the same arguments); the
    trials in `live` (this process's running ones, with their epochs) are kept as they are
    while the state has them running."""
    import keras_tuner as kt

    trials: dict[str, Any] = {}
    for trial_id, saved in state["trials"].items():
        if trial_id in live and saved["status"] == RUNNING:
            trials[trial_id] = live[trial_id]
            continue
        hp = oracle.hyperparameters.copy()
        hp.values = dict(saved["values"])
        trial = kt.engine.trial.Trial(hp, trial_id=trial_id, status=saved["status"],
                                      message=saved["message"])
        trial.score, trial.best_step = saved["score"], saved["best_step"]
        trials[trial_id] = trial
    oracle.trials = trials
    oracle.set_state(state["oracle"])


def new_trial(oracle: Any, tuner_id: str) -> tuple[str, str, dict[str, Any]]:
    """(status, trial id, values) of the oracle's next trial; a trial that cannot run
    (IDLE, STOPPED) is not kept by the oracle."""
    trial = oracle.create_trial(tuner_id)
    return trial.status, trial.trial_id, dict(trial.hyperparameters.values)


def report(oracle: Any, trial_id: str, value: float, epoch: int) -> str:
    """One epoch's objective for the trial; the status the oracle answers (an oracle may
    stop a trial by answering STOPPED)."""
    if not math.isfinite(value):
        return oracle.trials[trial_id].status
    return oracle.update_trial(trial_id, {oracle.objective.name: value}, step=epoch).status


def end(oracle: Any, trial_id: str, status: str, message: str | None = None) -> None:
    """End a trial: COMPLETED (scored from its reported epochs) or FAILED."""
    trial = oracle.trials[trial_id]
    if status == COMPLETED and not trial.metrics.exists(oracle.objective.name):
        status, message = FAILED, message or "no finite objective was reported"
    trial.status, trial.message = status, message
    oracle.end_trial(trial)


def ongoing(oracle: Any) -> list[str]:
    """The ids of the trials the oracle has handed out and not seen end."""
    return [trial.trial_id for trial in oracle.ongoing_trials.values()]
