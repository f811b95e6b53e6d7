"""KerasTuner's oracles as regsearch's engine (`search: {engine: keras_tuner}`): proposed
trials trained by regsearch's trainers and recorded as Optuna's are; the oracle hears every
epoch penalty-free; its state is the study's, so a changed spec is refused and a killed
study resumes it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from clitools import assert_user_error, cli, show, sqlite_url, study_dict, write_study
from servers import counted, trials_of

from regsearch import driver, keras_tuner_compat, opening
from regsearch.liveness import ENGINE_EPOCHS, ENGINE_TRIAL, UNCOUNTED
from regsearch.recorders.ledger import Ledger
from regsearch.study_file import parse_spec
from regsearch.trainers import make_trainer


def engine_state(url: str, name: str) -> dict[str, Any]:
    saved = Ledger(url).engine_state(name)
    assert saved is not None, "the oracle's state is in the study's database"
    return saved[1]


def ledger_rows(folder: Path, name: str) -> list[dict[str, Any]]:
    with sqlite3.connect(folder / "s.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(
            "SELECT t.* FROM regsearch_trials t JOIN regsearch_studies s ON s.id = t.study_id "
            "WHERE s.name = ? ORDER BY t.number", (name,))]


def filled(rows: list[dict[str, Any]]) -> set[str]:
    """The ledger columns a finished, counted trial of the study has values in."""
    return {key for row in rows if row["state"] == "complete" for key, value in row.items()
            if value is not None}


def mlflow_children(folder: Path, name: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return [run for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get("regsearch.role") == "trial"]


@pytest.fixture(scope="module")
def optuna_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An Optuna study recorded to compare the KerasTuner studies' records with."""
    folder = tmp_path_factory.mktemp("optuna")
    spec = study_dict("ref-optuna", sqlite_url(folder),
                      mlflow={"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"})
    proc = cli(folder, "run", write_study(folder, spec).name)
    assert proc.returncode == 0, show(proc)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["hyperband", "bayesian", "random"])
@pytest.mark.parametrize("trainer", ["packed", "keras"])
def test_each_algorithm_runs_through_the_cli_recorded_as_optuna_trials_are(
        sampler: str, trainer: str, optuna_study: Path, tmp_path: Path) -> None:
    name = f"kt-{sampler}-{trainer}"
    spec = study_dict(name, sqlite_url(tmp_path), trainer=trainer,
                      train={"epochs": 9}, search={"engine": "keras_tuner", "sampler": sampler,
                                                   "n_trials": 8},
                      mlflow={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
                      confirm={"top": 2, "seeds": 2})
    study_file = write_study(tmp_path, spec)
    proc = cli(tmp_path, "run", study_file.name)
    assert proc.returncode == 0, show(proc)
    assert "confirmed" in proc.stderr, show(proc)
    assert (f"study {name}: 0 of 8 trials already done; KerasTuner's {sampler} oracle "
            "proposes them") in proc.stderr, show(proc)

    trials = trials_of(sqlite_url(tmp_path), name)
    assert len(counted(trials)) == 8
    proposed = [t for t in trials if ENGINE_TRIAL in t.user_attrs]
    assert len(proposed) == 7  # all but the unregularized default, trial 0
    state = engine_state(sqlite_url(tmp_path), name)
    assert not state["oracle"]["ongoing_trials"], "every trial it proposed was ended"
    assert sorted(t.user_attrs[ENGINE_TRIAL] for t in proposed) == sorted(state["trials"])

    rows = ledger_rows(tmp_path, name)
    reference = ledger_rows(optuna_study, "ref-optuna")
    assert filled(rows) == filled(reference), "the same ledger columns are filled"
    if sampler == "hyperband":  # the first rungs train 1 and 3 of the 9 epochs
        short = [r for r in rows if r["state"] == "pruned"]
        assert short and all("its Hyperband rung" in r["reason"] for r in short), rows
        assert {r["epochs_run"] for r in short} <= {1, 3}, rows

    ours, theirs = mlflow_children(tmp_path, name), mlflow_children(optuna_study, "ref-optuna")
    assert len(ours) == len(trials)
    finished = [r for r in ours if r.data.tags["regsearch.state"] == "complete"]
    assert {frozenset(r.data.params) for r in ours} <= {frozenset(r.data.params) for r in theirs}
    assert set(finished[0].data.metrics) == set(
        next(r for r in theirs if r.data.tags["regsearch.state"] == "complete").data.metrics)
    assert {r.data.tags["regsearch.engine"] for r in ours} == {f"keras_tuner/{sampler}"}
    assert {r.data.tags["regsearch.engine"] for r in theirs} == {"optuna/tpe"}

    best = cli(tmp_path, "best", study_file.name, "-f", "json")
    assert best.returncode == 0, show(best)
    answer = json.loads(best.stdout)
    assert answer["best"]["trial"] in {t.number for t in trials
                                       if t.state == TrialState.COMPLETE}
    exported = cli(tmp_path, "export", study_file.name, "-f", "keras", "--out", "winner.keras")
    assert exported.returncode == 0, show(exported)
    assert (tmp_path / "winner.keras").stat().st_size > 0
    report = cli(tmp_path, "report", study_file.name, "--out", "report", "--no-mlflow")
    assert report.returncode == 0, show(report)
    assert (tmp_path / "report" / "report.html").is_file()


@pytest.mark.slow
def test_the_oracle_hears_every_epoch_penalty_free_and_hyperband_promotes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One trial at a time (the reference trainer), so Hyperband's first bracket runs as
    KerasTuner runs it: 9 trials of 1 epoch, the best 3 again for 3, the best one for 9."""
    heard: list[tuple[str, float, int]] = []
    report = keras_tuner_compat.report

    def listening(oracle: Any, trial_id: str, value: float, epoch: int) -> str:
        heard.append((trial_id, value, epoch))
        return report(oracle, trial_id, value, epoch)

    monkeypatch.setattr(keras_tuner_compat, "report", listening)
    url = sqlite_url(tmp_path)
    spec = parse_spec(study_dict(
        "kt-epochs", url, trainer="keras", train={"epochs": 9},
        objective={"metric": "cross_entropy"},
        space={"regularizers": ["l1", "l2"], "strength": {"low": 1e-3, "high": 1e-1}},
        search={"engine": "keras_tuner", "sampler": "hyperband", "n_trials": 13},
        mlflow={"enabled": False}), source="test")
    run = opening.open_run(spec)
    driver.run_study(run, make_trainer(run))

    trials = {t.user_attrs[ENGINE_TRIAL]: t for t in trials_of(url, "kt-epochs")}
    epochs = {row["number"]: row for row in _epochs(tmp_path, "kt-epochs")}
    assert len(trials) == 13 and len({trial_id for trial_id, _, _ in heard}) == 13
    for trial_id, value, epoch in heard:
        row = epochs[(trials[trial_id].number, epoch)]
        assert value == pytest.approx(row["val_loss"], rel=1e-6)  # the data loss alone
        assert row["penalty"] > 0 and value != pytest.approx(row["val_loss"] + row["penalty"])

    budgets = [t.user_attrs.get(ENGINE_EPOCHS, 9) for t in trials.values()]
    assert sorted(budgets) == [1] * 9 + [3] * 3 + [9]
    state = engine_state(url, "kt-epochs")["trials"]
    rows = {row["number"]: row for row in ledger_rows(tmp_path, "kt-epochs")}
    first = [k for k, v in state.items() if v["values"]["tuner/epochs"] == 1]
    by_score = sorted(first, key=lambda k: state[k]["score"])  # cross-entropy: lower is better
    for trial_id, saved in state.items():
        assert saved["score"] == pytest.approx(rows[trials[trial_id].number]["value"])
        assert rows[trials[trial_id].number]["epochs_run"] == saved["values"]["tuner/epochs"]
    promoted = {saved["values"]["tuner/trial_id"] for saved in state.values()
                if saved["values"]["tuner/epochs"] == 3}
    assert promoted == set(by_score[:3]), "the best three of the first rung go on"
    for trial_id, saved in state.items():
        parent = saved["values"].get("tuner/trial_id")
        if parent is not None:
            assert trials[trial_id].params == trials[parent].params


def _epochs(folder: Path, name: str) -> list[dict[str, Any]]:
    with sqlite3.connect(folder / "s.db") as db:
        db.row_factory = sqlite3.Row
        return [{**dict(row), "number": (row["trial_number"], row["epoch"])} for row in
                db.execute("SELECT t.number AS trial_number, e.* FROM regsearch_epochs e "
                           "JOIN regsearch_trials t ON t.id = e.trial_id JOIN regsearch_studies "
                           "s ON s.id = t.study_id WHERE s.name = ?", (name,))]


def test_a_changed_engine_or_algorithm_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    spec = study_dict("kt-identity", url, search={"engine": "keras_tuner", "sampler": "random",
                                                  "n_trials": 2},
                      mlflow={"enabled": False})
    proc = cli(tmp_path, "run", write_study(tmp_path, spec).name)
    assert proc.returncode == 0, show(proc)
    for search in ({"engine": "keras_tuner", "sampler": "bayesian"}, {"engine": "optuna"}):
        changed = {**spec, "search": {**search, "n_trials": 4}}
        refused = cli(tmp_path, "run", write_study(tmp_path, changed, "changed.yaml").name)
        assert_user_error(refused, "already exists in this storage with a different spec",
                          "engine was 'keras_tuner/random'")
    assert len(counted(trials_of(url, "kt-identity"))) == 2


@pytest.mark.slow
def test_a_killed_study_resumes_its_oracle_without_repeating_trials(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    spec = study_dict("kt-resume", url, train={"epochs": 9},
                      search={"engine": "keras_tuner", "sampler": "hyperband", "n_trials": 16,
                              "pack_size": 4}, mlflow={"enabled": False})
    study_file = write_study(tmp_path, spec)
    import subprocess
    import sys

    from clitools import ENV

    killed = subprocess.run([sys.executable, "-m", "regsearch", "run", study_file.name],
                            cwd=tmp_path, env={**ENV, "REGSEARCH_FAULT": "epoch:25"},
                            capture_output=True, text=True, timeout=240)
    assert killed.returncode == -9, show(killed)
    before = engine_state(url, "kt-resume")
    lost = [t for t in trials_of(url, "kt-resume")
            if t.state == TrialState.RUNNING and ENGINE_TRIAL in t.user_attrs]
    assert lost, "the kill left proposed trials running"

    proc = cli(tmp_path, "run", study_file.name)
    assert proc.returncode == 0, show(proc)
    trials = trials_of(url, "kt-resume")
    after = engine_state(url, "kt-resume")
    assert len(counted(trials)) == 16
    assert not after["oracle"]["ongoing_trials"]
    for trial_id, saved in before["trials"].items():  # the oracle went on from its state
        assert after["trials"][trial_id]["values"] == saved["values"]
    runs: dict[str, list[Any]] = {}
    for trial in trials:
        if ENGINE_TRIAL in trial.user_attrs:
            runs.setdefault(trial.user_attrs[ENGINE_TRIAL], []).append(trial)
    for trial_id, held in runs.items():  # each proposal trained to its end once
        assert len([t for t in held if not t.user_attrs.get(UNCOUNTED)]) == 1, (trial_id, held)
    again = {t.user_attrs[ENGINE_TRIAL] for t in lost}
    for trial_id in again:  # the killed ones ran again, with their parameters
        finished = [t for t in runs[trial_id] if not t.user_attrs.get(UNCOUNTED)]
        assert finished[0].params == next(t for t in lost
                                          if t.user_attrs[ENGINE_TRIAL] == trial_id).params


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_workers_on_a_server_share_one_oracle(tmp_path: Path, fresh_db: Any, kind: str) -> None:
    from servers import regsearch

    storage, mlflow = fresh_db(kind), fresh_db("postgresql")
    spec = study_dict("kt-shared", storage, train={"epochs": 9},
                      search={"engine": "keras_tuner", "sampler": "hyperband", "n_trials": 18,
                              "pack_size": 2},
                      workers={"heartbeat_interval": 2, "grace_period": 120})
    proc = regsearch(tmp_path, "run", write_study(tmp_path, spec).name, "--workers", 3,
                     storage=storage, mlflow=mlflow)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = trials_of(storage, "kt-shared")
    assert len(counted(trials)) == 18
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    state = engine_state(storage, "kt-shared")
    assert not state["oracle"]["ongoing_trials"]
    proposed = [t.user_attrs[ENGINE_TRIAL] for t in trials if ENGINE_TRIAL in t.user_attrs]
    # One oracle for all workers: every proposal has its own id, and each ran once.
    assert len(proposed) == len(set(proposed)) == 17 == len(state["trials"])
    promoted = [s for s in state["trials"].values() if s["values"].get("tuner/trial_id")]
    assert promoted, "a rung's best went on: the workers' results reached one oracle"


def test_the_engine_picks_its_defaults_and_refuses_the_other_engines_algorithms() -> None:
    from regsearch.errors import SpecError

    def search(**given: Any) -> Any:
        return parse_spec({"name": "s", "data": {"builtin": "digits"}, "search": given},
                          source="s.yaml").search

    assert (search(engine="keras_tuner").sampler, search(engine="keras_tuner").pruner) == \
        ("bayesian", "none")
    assert (search().sampler, search().pruner) == ("tpe", "median")
    for given, field, words in (
            ({"engine": "keras_tuner", "sampler": "tpe"}, "search.sampler",
             "'tpe' is offered by engine optuna, not keras_tuner; use one of bayesian, "
             "random, hyperband, or engine: optuna"),
            ({"sampler": "bayesian"}, "search.sampler",
             "'bayesian' is offered by engine keras_tuner, not optuna"),
            ({"engine": "keras_tuner", "pruner": "median"}, "search.pruner",
             "KerasTuner's algorithms choose each trial's epochs themselves")):
        with pytest.raises(SpecError) as error:
            search(**given)
        assert f"s.yaml: {field}: {words}" in str(error.value)


@pytest.mark.slow
def test_a_slow_oracle_fills_a_pack_over_several_epochs(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `PROPOSING_SECONDS` a refill stops asking the oracle once it has a trial, so
    training goes on between a slow oracle's proposals (and the timeout is checked)."""
    from regsearch import engines

    monkeypatch.setattr(engines, "PROPOSING_SECONDS", 0.0)
    proposed: list[int] = []  # new trials per refill
    new_trial, queue = keras_tuner_compat.new_trial, engines.KerasTunerEngine.queue

    def counted_proposal(oracle: Any, tuner_id: str) -> Any:
        proposed[-1] += 1
        return new_trial(oracle, tuner_id)

    def refill(self: Any, run: Any, wanted: int) -> int | None:
        proposed.append(0)
        return queue(self, run, wanted)

    monkeypatch.setattr(keras_tuner_compat, "new_trial", counted_proposal)
    monkeypatch.setattr(engines.KerasTunerEngine, "queue", refill)
    url = sqlite_url(tmp_path)
    spec = parse_spec(study_dict(
        "kt-slow", url, train={"epochs": 2}, mlflow={"enabled": False},
        search={"engine": "keras_tuner", "sampler": "bayesian", "n_trials": 9,
                "pack_size": 4}), source="test")
    run = opening.open_run(spec)
    driver.run_study(run, make_trainer(run))
    assert len(counted(trials_of(url, "kt-slow"))) == 9
    assert max(proposed) == 1 and sum(proposed) == 8, proposed  # all but the default
