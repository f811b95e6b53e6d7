"""The study driver: reproducibility, budgets, samplers, failures and reopening."""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from regsearch.states import KillReason
from regsearch import driver, liveness, opening, space, study_io
from regsearch.errors import DataError, SpecError, StorageError, StudyMismatchError
from regsearch.trainers import make_trainer

pytestmark = pytest.mark.slow


def run(spec, **kwargs) -> opening.StudyRun:
    study_run = opening.open_run(spec, **kwargs)
    driver.run_study(study_run, make_trainer(study_run))
    return study_run


def history(study: optuna.Study) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value) for t in study.get_trials()]


def test_same_seed_gives_same_trials_and_scores(make_spec, tmp_path) -> None:
    def where(name: str) -> dict[str, object]:  # a study and its MLflow store, apart
        return {"storage": f"sqlite:///{tmp_path / name}.db",
                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / name}-mlflow.db"}}

    first = run(make_spec(**where("a")))
    second = run(make_spec(**where("b")))
    assert len(first.study.trials) == 4
    assert history(first.study) == history(second.study)
    third = run(make_spec(seed=4, **where("c")))
    assert [t.params for t in third.study.trials] != [t.params for t in first.study.trials]


def test_resumed_study_samples_new_points_and_stops_at_budget(make_spec) -> None:
    spec = make_spec(search={"n_trials": 2, "pruner": "none", "sampler": "random"})
    first = run(spec)
    resumed = run(spec, n_trials=4)
    trials = resumed.study.get_trials()
    assert len(trials) == 4 and resumed.done == 4
    assert trials[0].params == first.study.trials[0].params
    # Re-seeded by history length: the resumed run does not replay the first two points.
    assert {str(t.params) for t in trials[2:]}.isdisjoint({str(t.params) for t in trials[:2]})
    run(spec, n_trials=4)  # nothing left to do
    assert len(resumed.study.get_trials()) == 4


def test_study_records_spec_hash_and_metric(make_spec) -> None:
    spec = make_spec()
    study = run(spec).study
    assert study.user_attrs[opening.HASH_ATTR] == spec.spec_hash
    assert study.user_attrs[opening.METRIC_ATTR] == "accuracy"
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trial = study.trials[0]
    assert trial.user_attrs["epochs_run"] == 3
    assert 0 <= trial.user_attrs["near_zero_share"] <= 1
    assert trial.user_attrs["penalty"] >= 0


def test_changed_spec_is_refused_naming_the_field(make_spec) -> None:
    run(make_spec())
    before = history(optuna.load_study(study_name="tiny", storage=make_spec().storage))
    with pytest.raises(StudyMismatchError, match=r"space\.dropout\.high was 0\.5, now 0\.3"):
        opening.open_run(make_spec(space={"dropout": {"high": 0.3}}))
    with pytest.raises(StudyMismatchError, match=r"model\.hidden_units"):
        opening.open_run(make_spec(model={"hidden_units": [8]}))
    after = history(optuna.load_study(study_name="tiny", storage=make_spec().storage))
    assert after == before


def test_grid_runs_every_point_once(make_spec) -> None:
    spec = make_spec(space={"regularizers": ["none", "l2"], "dropout": {"low": 0.0, "high": 0.4}},
                     search={"sampler": "grid", "grid_size": 2, "pruner": "none"},
                     train__epochs=1)
    points = space.grid(spec.space, 2)
    assert len(points) == 2 + 4  # none x 2 dropouts, l2 x 2 strengths x 2 dropouts
    study = run(spec).study
    seen = sorted(str(space.from_params(t.params)) for t in study.trials)
    assert seen == sorted(str(p) for p in points)


def test_diverging_trial_is_failed_with_reason_and_study_goes_on(make_spec) -> None:
    spec = make_spec(data={"builtin": "diabetes"},
                     train={"epochs": 3, "optimizer": "sgd", "learning_rate": 1e6},
                     search={"n_trials": 2, "pruner": "none"})
    study = run(spec).study
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("diverged" in t.user_attrs["fail_reason"] for t in study.trials)


def test_interrupted_trial_is_failed_and_does_not_spend_budget(make_spec) -> None:
    spec = make_spec(trainer="keras")  # wraps `train`, the one-by-one trainer's call
    study_run = opening.open_run(spec)

    class InterruptSecond:
        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, 0

        def train(self, config, *, seed, prune):
            self.calls += 1
            if self.calls == 2:
                raise KeyboardInterrupt
            return self.inner.train(config, seed=seed, prune=prune)

    with pytest.raises(KeyboardInterrupt):
        driver.run_study(study_run, InterruptSecond(make_trainer(study_run)))
    states = [t.state for t in study_run.study.trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert study_run.study.trials[1].user_attrs["fail_reason"] == KillReason.INTERRUPTED
    assert study_run.done == 1
    finished = run(spec)
    assert finished.done == 4 and len(finished.study.trials) == 5


def test_a_trial_declared_dead_meanwhile_is_one_logged_warning(
        make_spec, regsearch_warnings: list[str]) -> None:
    spec = make_spec(trainer="keras", search={"n_trials": 2, "pruner": "none"})
    study_run = opening.open_run(spec)

    class ReapedWhileTraining:
        """Another worker finds no heartbeat for the first trial and fails it meanwhile."""

        def __init__(self, inner) -> None:
            self.inner, self.calls = inner, 0

        def train(self, config, *, seed, prune):
            self.calls += 1
            if self.calls == 1:
                (mine,) = study_run.study.get_trials(states=(TrialState.RUNNING,))
                liveness.fail_dead(study_run, [mine], "no heartbeat")
            return self.inner.train(config, seed=seed, prune=prune)

    driver.run_study(study_run, ReapedWhileTraining(make_trainer(study_run)))
    (warning,) = regsearch_warnings
    assert warning.startswith("trial 0 was declared dead by another worker"), warning
    assert "its re-queued copy runs instead" in warning
    trials = study_run.study.trials
    assert trials[0].state == TrialState.FAIL and "no heartbeat" in trials[0].user_attrs[
        "fail_reason"]
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2  # the copy, then #2
    assert trials[1].params == trials[0].params


def test_timeout_stops_starting_trials(make_spec) -> None:
    spec = make_spec(search={"n_trials": 1000, "pruner": "none"}, train__epochs=1)
    started = time.monotonic()
    study_run = run(spec, timeout=3)
    assert time.monotonic() - started < 30
    assert 1 <= study_run.done < 1000


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruners_prune_some_trials(make_spec, pruner) -> None:
    spec = make_spec(search={"n_trials": 12, "pruner": pruner, "sampler": "random"},
                     space={"strength": {"low": 1e-4, "high": 10.0}}, train__epochs=6)
    study = run(spec).study
    states = [t.state for t in study.trials]
    assert states.count(TrialState.PRUNED) >= 1
    assert states.count(TrialState.COMPLETE) >= 1


def test_gp_sampler_runs_or_says_how_to_install(make_spec) -> None:
    spec = make_spec(search={"n_trials": 2, "pruner": "none", "sampler": "gp"})
    try:
        import torch  # noqa: F401
    except ImportError:
        with pytest.raises(SpecError,
                           match=r"search\.sampler: 'gp' needs PyTorch.*regsearch\[gp\]"):
            opening.open_run(spec)
    else:
        assert run(spec).done == 2


def test_unreachable_database_is_a_clear_error_without_password(make_spec) -> None:
    spec = make_spec(storage="postgresql+psycopg://user:hunter2@127.0.0.1:1/none")
    with pytest.raises(StorageError) as info:
        opening.open_run(spec)
    message = str(info.value)
    assert "hunter2" not in message and "***" in message
    assert "127.0.0.1:1" in message and "check that the database server is running" in message


def _writer_processes() -> list[int]:
    """This process's live MLflow writer children (an exited child's cmdline is empty)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"mlflow_process" in command:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_study_that_fails_to_open_leaves_no_writer_and_a_whole_mlflow_store(
        make_spec, tmp_path) -> None:
    """The MLflow writer starts when the data passes, before the study opens; a study that
    then fails lets it finish opening its store and end, never killed half-way."""
    spec = make_spec(storage="postgresql+psycopg://user@127.0.0.1:1/none")
    with pytest.raises(StorageError):
        opening.open_run(spec)
    deadline = time.monotonic() + 60
    while _writer_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _writer_processes()
    store = tmp_path / "mlflow.db"
    if store.exists():
        from mlflow import MlflowClient

        assert [e.name for e in MlflowClient(f"sqlite:///{store}").search_experiments()] == [
            "Default"]


def test_bad_data_is_refused_before_storage_is_created(make_spec, tmp_path) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b,label\n1,nan,0\n2,3,1\n4,5,0\n6,7,1\n")
    spec = make_spec(data={"file": str(csv), "target": "label"})
    with pytest.raises(DataError, match="missing or infinite feature values"):
        opening.open_run(spec)
    assert not (tmp_path / "study.db").exists()


def test_trial_details_take_one_transaction_with_the_installed_optuna(make_spec) -> None:
    """The batched path (Optuna's private per-row writers) must still exist; else ~30
    commits per trial come back silently. Both paths must write the same records."""
    # (no default trial queued: the space leaves it out; asks make plain trials)
    study_run = opening.open_run(make_spec(space={"regularizers": ["l2"]}))
    assert study_io.can_batch(study_run.study._storage._backend)
    batched, public = study_run.study.ask(), study_run.study.ask()
    attrs, steps = {"fail_reason": "x", "seconds": 1.5}, {1: 0.25, 2: 0.5}
    study_io.write_details(study_run.study._storage, {batched._trial_id: (attrs, steps)})
    for step, value in steps.items():  # what the fallback does
        study_run.study._storage.set_trial_intermediate_value(public._trial_id, step, value)
    for key, value in attrs.items():
        public.set_user_attr(key, value)
    written = {t.number: t for t in study_run.study.get_trials()}
    for trial in (batched, public):
        assert written[trial.number].user_attrs == attrs
        assert written[trial.number].intermediate_values == steps


def test_without_a_pruner_the_epochs_still_reach_optuna(make_spec) -> None:
    study_run = run(make_spec(train__epochs=3))
    for trial in study_run.study.get_trials():
        assert sorted(trial.intermediate_values) == [1, 2, 3]
        assert trial.value == max(trial.intermediate_values.values())


def test_config_of_a_trial_cut_off_mid_suggestion_says_what_is_unset() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    full = optuna.trial.create_trial(
        state=TrialState.FAIL, params={"regularizer": "l1", "l1": 1e-4, "dropout": 0.3},
        distributions={"regularizer": CategoricalDistribution(["l1", "l2"]),
                       "l1": FloatDistribution(1e-6, 1e-1, log=True),
                       "dropout": FloatDistribution(0.0, 0.5)})
    assert liveness.config_of(full) == space.RegConfig("l1", l1=1e-4, dropout=0.3)
    nothing = optuna.trial.create_trial(state=TrialState.FAIL)
    assert liveness.config_of(nothing) == space.RegConfig("unset")


class _FreezeCount:
    """A listener that notes how many objects are frozen while trials start."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def study_opened(self, run) -> None:
        pass

    def trials_started(self, started) -> None:
        import gc

        self.seen.append(gc.get_freeze_count())

    def epoch_ended(self, number, metrics) -> None:
        pass

    def trials_ended(self, ended) -> None:
        pass


def test_the_heap_is_frozen_while_the_study_loop_runs(make_spec) -> None:
    """What exists when the loop starts is kept off full collections (`gc.freeze`), and
    given back to the collector afterwards (it closes SQLite's pooled connections at exit)."""
    import gc

    study_run = opening.open_run(make_spec(search={"n_trials": 2, "pruner": "none"},
                                           trainer="keras"))
    count = _FreezeCount()
    driver.run_study(study_run, make_trainer(study_run), [count])
    assert len(count.seen) == 2 and min(count.seen) > 10_000
    assert gc.get_freeze_count() == 0
