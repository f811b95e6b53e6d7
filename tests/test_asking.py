"""Asking a pack of trials with one read of the study: same trials, far fewer reads."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from regsearch import asking

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
    """Ask a pack, tell a score that depends on the params, repeat (TPE models after 4)."""
    asked = []
    for _ in range(packs):
        trials = []
        if batched:
            with asking.one_read(study):
                trials = [study.ask() for _ in range(size)]
                params = [_suggest(t) for t in trials]
        else:
            trials = [study.ask() for _ in range(size)]
            params = [_suggest(t) for t in trials]
        for trial, p in zip(trials, params):
            study.tell(trial, p["dropout"] + (p.get("l2", 0.0) * 3))
        asked += params
    return asked


def test_a_batch_samples_exactly_what_separate_asks_sample(tmp_path: Path) -> None:
    plain = _run_in_packs(_study(tmp_path, "plain"), batched=False)
    batched = _run_in_packs(_study(tmp_path, "batched"), batched=True)
    assert batched == plain
    assert len({p["dropout"] for p in plain}) == len(plain)  # really sampled, 24 points


def _count_reads(study: optuna.Study, monkeypatch) -> list[int]:
    backend = study._storage._backend
    reads = [0]
    real = backend._get_trials

    def counting(*args, **kwargs):
        reads[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(backend, "_get_trials", counting)
    return reads


def test_a_batch_reads_the_study_once(tmp_path: Path, monkeypatch) -> None:
    study = _study(tmp_path, "reads")
    reads = _count_reads(study, monkeypatch)
    with asking.one_read(study):
        for _ in range(16):
            _suggest(study.ask())
    in_batch, reads[0] = reads[0], 0
    for _ in range(16):
        _suggest(study.ask())
    assert in_batch == 1
    assert reads[0] >= 16  # what the batch saves: Optuna alone reads at least once per ask


def test_waiting_trials_are_taken_once_each(tmp_path: Path) -> None:
    study = _study(tmp_path, "waiting")
    for rate in (0.1, 0.2, 0.3):
        study.enqueue_trial({"regularizer": "none", "dropout": rate})
    with asking.one_read(study):
        trials = [study.ask() for _ in range(5)]
        params = [_suggest(t) for t in trials]
    assert [p["dropout"] for p in params[:3]] == [0.1, 0.2, 0.3]
    assert len({t._trial_id for t in trials}) == 5
    stored = study.get_trials(deepcopy=False)
    assert len(stored) == 5
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in stored)
    assert [t.params for t in stored] == params


def test_after_the_batch_its_trials_see_the_live_study(tmp_path: Path) -> None:
    study = _study(tmp_path, "after")
    with asking.one_read(study):
        first, second = study.ask(), study.ask()
    study.tell(first, 1.0)
    # The trial kept the batch's storage: it must now answer from the database, not the
    # snapshot in which `first` was still running.
    states = {t.number: t.state for t in second.storage.get_all_trials(study._study_id)}
    assert states[first.number] == optuna.trial.TrialState.COMPLETE
    second.report(0.5, 1)
    study.tell(second, 0.5)
    assert [t.value for t in study.get_trials()] == [1.0, 0.5]
    assert study.get_trials()[1].intermediate_values == {1: 0.5}
