"""Asking and telling a pack of trials without reading back what this process wrote:
the same trials and records as Optuna alone, with far fewer reads."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from regsearch.optuna_compat import write_details
from regsearch.study_io import PackStorage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def _study(tmp_path: Path, name: str) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=7, multivariate=True, group=True,
                                         n_startup_trials=4)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / name}.db", sampler=sampler,
                               direction="maximize")


def _suggest(trial: optuna.Trial) -> dict:
    kind = trial.suggest_categorical("regularizer", ["none", "l2"])
    if kind == "l2":
        trial.suggest_float("l2", 1e-6, 1e-1, log=True)
    trial.suggest_float("dropout", 0.0, 0.5)
    return trial.params


def _run_in_packs(study: optuna.Study, batched: bool, packs: int = 4, size: int = 6
                  ) -> list[dict]:
    """Ask a pack, report two epochs, tell each trial (some pruned, with a score that
    depends on the params), repeat (TPE models after 4); the trials as stored."""
    pack = PackStorage(study)
    for _ in range(packs):
        with pack.asking() if batched else nullcontext():
            trials = [study.ask() for _ in range(size)]
            params = [_suggest(t) for t in trials]
        for trial, p in zip(trials, params):
            score = p["dropout"] + (p.get("l2", 0.0) * 3)
            trial.report(score / 2, 1)
            trial.report(score, 2)
            trial.set_user_attr("width", 64)
        if batched:
            pack.write_details({t._trial_id: ({"seconds": 1.5}, {3: 0.125}) for t in trials})
        else:
            write_details(study._storage,
                          {t._trial_id: ({"seconds": 1.5}, {3: 0.125}) for t in trials})
        with pack.telling() if batched else nullcontext():
            for trial, p in zip(trials, params):
                if p["dropout"] < 0.1:
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                else:
                    study.tell(trial, p["dropout"] + (p.get("l2", 0.0) * 3))
    return [_stored(t) for t in study.get_trials()]


def _stored(trial: optuna.trial.FrozenTrial) -> dict:
    return {"number": trial.number, "state": trial.state, "value": trial.value,
            "params": trial.params, "intermediate": trial.intermediate_values,
            "user_attrs": trial.user_attrs, "system_attrs": trial.system_attrs}


def test_a_batch_samples_and_records_exactly_what_separate_calls_do(tmp_path: Path) -> None:
    plain = _run_in_packs(_study(tmp_path, "plain"), batched=False)
    batched = _run_in_packs(_study(tmp_path, "batched"), batched=True)
    assert batched == plain
    assert len({t["params"]["dropout"] for t in plain}) == len(plain)  # really sampled, 24
    pruned = [t for t in plain if t["state"] == optuna.trial.TrialState.PRUNED]
    assert pruned and all(t["value"] == 0.125 for t in pruned)  # its last reported score
    assert all(t["intermediate"][3] == 0.125 and t["user_attrs"] == {"width": 64,
                                                                      "seconds": 1.5}
               for t in plain)


def _count_trial_reads(study: optuna.Study, monkeypatch) -> list[int]:
    backend = study._storage._backend
    reads = [0]
    real = backend.get_trial

    def counting(*args, **kwargs):
        reads[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "get_trial", counting)
    return reads


def test_a_batch_reads_none_of_its_own_trials_back(tmp_path: Path, monkeypatch) -> None:
    study = _study(tmp_path, "own")
    reads = _count_trial_reads(study, monkeypatch)
    pack = PackStorage(study)
    with pack.asking():
        trials = [study.ask() for _ in range(8)]
        for trial in trials:
            _suggest(trial)
    with pack.telling():
        for trial in trials:
            study.tell(trial, 0.5)
    in_batch, reads[0] = reads[0], 0
    trials = [study.ask() for _ in range(8)]
    for trial in trials:
        _suggest(trial)
        study.tell(trial, 0.5)
    assert in_batch == 0
    assert reads[0] >= 3 * 8  # Optuna alone: once per ask, twice per tell
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 16


def _count_commits(study: optuna.Study) -> list[int]:
    commits = [0]
    engine = study._storage._backend.engine

    def count(_conn) -> None:
        commits[0] += 1

    sqlalchemy.event.listen(engine, "commit", count)
    return commits


def test_a_batch_writes_its_parameters_in_one_transaction(tmp_path: Path) -> None:
    study = _study(tmp_path, "params")
    commits = _count_commits(study)
    with PackStorage(study).asking():
        trials = [study.ask() for _ in range(8)]
        params = [_suggest(t) for t in trials]
        assert study._storage._storage.get_trial(trials[0]._trial_id).params == {}  # not yet
    in_batch, commits[0] = commits[0], 0
    for _ in range(8):
        _suggest(study.ask())
    # Optuna commits reads too: the study's one read, a commit per new trial, this test's
    # read, and one for all the batch's parameters.
    assert in_batch == 1 + 8 + 1 + 1
    assert commits[0] >= 8 + 16  # Optuna alone: one more per parameter (2 or 3 per trial)
    assert [t.params for t in study.get_trials()[:8]] == params


def test_a_parameter_that_changes_its_distribution_is_still_refused(tmp_path: Path) -> None:
    study = _study(tmp_path, "changed")
    study.enqueue_trial({"dropout": 0.2})
    study.optimize(lambda t: t.suggest_float("dropout", 0.0, 0.5), n_trials=1)
    with pytest.raises(ValueError, match="different distribution"), PackStorage(study).asking():
        study.ask().suggest_categorical("dropout", ["low", "high"])


def test_a_distribution_changed_within_one_batch_is_refused(tmp_path: Path) -> None:
    """The batch checks each name once against the study: the first trial of the batch
    that uses a name sets it for the rest, as Optuna's per-parameter writes do."""
    study = _study(tmp_path, "within")
    with pytest.raises(ValueError, match="different distribution"), PackStorage(study).asking():
        study.ask().suggest_float("dropout", 0.0, 0.5)
        study.ask().suggest_categorical("dropout", ["low", "high"])
    assert all(t.params == {} for t in study.get_trials())  # the batch wrote nothing


def test_the_database_still_refuses_a_trial_another_process_finished(tmp_path: Path) -> None:
    """The in-memory copy says running; the database, where another worker failed the
    trial (no heartbeat), decides: before its details are written, or after."""
    study = _study(tmp_path, "refused")
    pack = PackStorage(study)
    with pack.asking():
        early, late, fine = study.ask(), study.ask(), study.ask()
    failed = optuna.trial.TrialState.FAIL
    study._storage.set_trial_state_values(early._trial_id, failed)
    refused = pack.write_details({t._trial_id: ({"seconds": 1.0}, {}) for t in (early, late, fine)})
    assert refused == {early._trial_id}
    study._storage.set_trial_state_values(late._trial_id, failed)
    with pack.telling(), pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        study.tell(late, 1.0)
    with pack.telling():
        study.tell(fine, 2.0)
    stored = study.get_trials()
    assert [t.state for t in stored] == [failed, failed, optuna.trial.TrialState.COMPLETE]
    assert [t.user_attrs for t in stored] == [{}, {"seconds": 1.0}, {"seconds": 1.0}]
    assert stored[2].value == 2.0
