"""Ranking ties, the default as a yardstick, and confirmation over fresh seeds."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from regsearch import confirm, driver, opening, results
from regsearch.progress import Progress
from regsearch.recorders.confirmations import Confirmations
from regsearch.states import State
from regsearch.space import DEFAULT, RegConfig
from regsearch.stats import estimate, paired_gain
from regsearch.trainers import make_trainer
from regsearch.trainers.base import EpochMetrics, TrialOutcome

pytestmark = pytest.mark.slow


def mlflow_runs(tracking_uri: str, study: str, role: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    return [r for r in client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("regsearch.role") == role]


# --------------------------------------------------------------------------- statistics

def test_intervals_are_students_t_and_gains_are_paired_by_seed() -> None:
    from scipy import stats

    samples = [0.951, 0.962, 0.948, 0.97, 0.955]
    got = estimate(samples)
    low, high = stats.t.interval(0.95, len(samples) - 1, loc=sum(samples) / 5,
                                 scale=stats.sem(samples))
    assert (got.low, got.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert got.sd == pytest.approx(stats.tstd(samples), rel=1e-12)
    # A candidate 0.01 better with every seed: a tight interval though both spread widely.
    base = dict(enumerate(samples))
    gain = paired_gain("maximize", {s: v + 0.01 for s, v in base.items()}, base)
    assert gain.mean == pytest.approx(0.01) and gain.high - gain.low < 1e-9
    assert paired_gain("minimize", {0: 1.0, 1: 2.0}, {0: 1.5, 1: 2.5}).mean == pytest.approx(0.5)


def _trial(number: int, value: float, val_loss: float, params: dict[str, Any]) -> Any:
    distributions = {"regularizer": CategoricalDistribution(["none", "l1", "l2", "l1_l2"]),
                     "l2": FloatDistribution(1e-6, 0.1, log=True),
                     "dropout": FloatDistribution(0.0, 0.5)}
    trial = optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=value, params=params, user_attrs={"val_loss": val_loss},
        distributions={k: distributions[k] for k in params})
    trial.number = number
    return trial


def test_the_plan_is_the_top_distinct_configurations_and_the_default_once() -> None:
    a = {"regularizer": "l2", "l2": 1e-3, "dropout": 0.1}
    b = {"regularizer": "l2", "l2": 1e-4, "dropout": 0.2}
    trials = [_trial(0, 0.90, 0.3, {"regularizer": "none", "dropout": 0.0}),
              _trial(1, 0.95, 0.4, a), _trial(2, 0.95, 0.2, b),
              _trial(3, 0.95, 0.1, a)]  # the same configuration as 1, ranked first now
    runs = confirm.plan(trials, "maximize", confirm_settings(top=2, seeds=3), study_seed=4)
    assert [(r.trial, r.is_default) for r in runs[:3]] == [(3, False), (2, False), (0, True)]
    assert len(runs) == 9 and {r.seed_index for r in runs} == {0, 1, 2}
    assert len({r.seed for r in runs}) == 3  # a fresh seed per index, shared by configs
    with_default = confirm.plan(trials, "maximize", confirm_settings(top=4, seeds=2), 4)
    assert sum(r.is_default for r in with_default) == 2  # once per seed, not twice
    assert [r.config for r in with_default if r.is_default] == [DEFAULT, DEFAULT]


def confirm_settings(top: int, seeds: int) -> Any:
    from regsearch.spec import ConfirmSpec

    return ConfirmSpec(top=top, seeds=seeds)


# --------------------------------------------------------------------------- ranking

class TiedTrainer:
    """Completes trials with scripted (value, validation loss) pairs; no TensorFlow."""

    def __init__(self, *scores: tuple[float, float]) -> None:
        self.scores = list(scores)

    def train(self, config: Any, *, seed: int, prune: Any, keep_model: bool = False) -> Any:
        value, loss = self.scores.pop(0)
        metrics = EpochMetrics(epoch=1, train_loss=loss, val_loss=loss, val_metric=value,
                               penalty=0.0)
        prune(metrics)
        return TrialOutcome(state="complete", value=value, best_epoch=1, history=[metrics],
                            seconds=0.01)


def test_tied_objectives_are_ranked_by_validation_loss_everywhere(make_spec) -> None:
    """Three trials tie at the top; the one with the lowest validation loss is named best
    by the progress display, `best`, the ledger and MLflow alike (not the first of them)."""
    spec = make_spec(search={"n_trials": 5, "pruner": "none", "sampler": "random"})
    run = opening.open_run(spec)
    shown = io.StringIO()
    driver.run_study(run, TiedTrainer((0.90, 0.5), (0.95, 0.40), (0.95, 0.10), (0.95, 0.30),
                                      (0.80, 0.05)), [Progress(stream=shown)])
    assert run.study.trials[0].user_attrs.get(opening.DEFAULT_ATTR) is True  # the yardstick
    assert run.study.metric_names == ["accuracy"]
    summary = results.study_summary(run.study, run.storage_url)
    assert [row["trial"] for row in summary["top"][:3]] == [2, 3, 1]
    assert summary["best"]["trial"] == 2
    assert shown.getvalue().splitlines()[-1].endswith("best accuracy=0.9500 (#2)")
    assert run.ledger.best(spec.name, "maximize").number == 2
    [parent] = mlflow_runs(spec.mlflow.tracking_uri, spec.name, "parent")
    assert parent.data.tags["best.trial"] == "2"
    assert summary["default"]["trial"] == 0
    assert summary["gain_over_default"] == pytest.approx(0.05)


def test_a_tied_epoch_with_a_lower_loss_becomes_the_best_epoch() -> None:
    from regsearch.trainers.base import StopRules

    rules = StopRules("maximize", None)
    for epoch, (value, loss) in enumerate([(0.9, 0.5), (1.0, 0.6), (1.0, 0.2), (1.0, 0.3)], 1):
        rules.observe(EpochMetrics(epoch, 0.1, loss, value, 0.0), lambda m: False)
    assert rules.best_epoch == 3


def test_timeout_alone_runs_until_the_time_is_spent(make_spec) -> None:
    spec = make_spec(search={"n_trials": None, "timeout": 4, "pruner": "none"},
                     mlflow={"enabled": False})
    run = opening.open_run(spec)
    assert run.budget >= 10_000_000
    driver.run_study(run, make_trainer(run))
    done = [t for t in run.study.trials if t.state == TrialState.COMPLETE]
    assert len(done) > 20, len(done)  # not the 20 of a study without a budget
    assert not [t for t in run.study.trials if t.state == TrialState.RUNNING]


# --------------------------------------------------------------------------- confirmation

def _confirmed_run(make_spec, tmp_path: Path, name: str, **spec: Any) -> opening.StudyRun:
    spec = make_spec(name=name, storage=f"sqlite:///{tmp_path / name}.db",
                     mlflow={"tracking_uri": f"sqlite:///{tmp_path / name}-mlflow.db"},
                     confirm={"top": 2, "seeds": 3}, **spec)
    run = opening.open_run(spec)
    driver.run_study(run, make_trainer(run))
    return run


def test_confirmation_records_each_run_once_and_names_the_best(make_spec, tmp_path) -> None:
    run = _confirmed_run(make_spec, tmp_path, "confirmed")
    rows = Confirmations(run.ledger).records("confirmed")
    configs = {r.run.key for r in rows}  # the top 2, and the default unless among them
    assert len(configs) in (2, 3) and rows_key({"config": DEFAULT.as_dict()}) in configs
    assert len(rows) == 3 * len(configs) and not [r for r in rows if r.state == State.PLANNED]
    assert len({(r.run.key, r.run.seed_index) for r in rows}) == len(rows)
    assert all(len(r.epochs) == r.epochs_run >= 1 and math.isfinite(r.value) for r in rows)
    runs = mlflow_runs(run.spec.mlflow.tracking_uri, "confirmed", "confirmation")
    assert len(runs) == len(rows) and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_id for r in runs) == sorted(r.mlflow_run_id for r in rows)
    for r in runs:  # described as what they are, and not ranked with the search's trials
        assert r.data.tags["mlflow.note.content"].startswith("Confirmation: "), r.data.tags
        assert "best_accuracy" not in r.data.metrics, r.data.metrics
    summary = results.study_summary(run.study, run.storage_url)
    best, table = summary["best"], summary["confirmation"]["configurations"]
    assert best["source"] == "confirmation" and best["confirmed"] == table[0]
    means = [row["score"]["mean"] for row in table]
    assert means == sorted(means, reverse=True)
    assert [row["default"] for row in table].count(True) == 1
    winner = [r.value for r in rows if r.run.key == rows_key(table[0])]
    assert best["value"] == pytest.approx(sum(winner) / 3)
    [parent] = mlflow_runs(run.spec.mlflow.tracking_uri, "confirmed", "parent")
    assert parent.data.tags["best.source"] == "confirmation"
    assert float(parent.data.tags["best.mean"]) == pytest.approx(best["value"])
    assert "verdict:" in results.render(summary, "table")


def rows_key(row: dict[str, Any]) -> str:
    from regsearch.recorders.confirmations import config_key

    return config_key(RegConfig(**row["config"]))


def test_the_same_seed_gives_the_same_confirmation(make_spec, tmp_path) -> None:
    first = _confirmed_run(make_spec, tmp_path, "same-a")
    second = _confirmed_run(make_spec, tmp_path, "same-b")
    values = [[(r.run.key, r.run.seed_index, r.value) for r in
               Confirmations(run.ledger).records(run.spec.name)] for run in (first, second)]
    assert sorted(values[0]) == sorted(values[1])


class StopsAfter:
    """The real packed trainer, interrupted (as by Ctrl-C) at its `calls`-th epoch."""

    def __init__(self, trainer: Any, calls: int) -> None:
        self.trainer, self.calls = trainer, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trainer, name)

    def run_epoch(self) -> Any:
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.trainer.run_epoch()


def test_an_interrupted_confirmation_resumes_without_duplicates(make_spec) -> None:
    """Ctrl-C part-way through the confirmation (packs of one: the search's 4 trials take 12
    epochs, each confirmation run 3); `regsearch confirm` trains only what is left."""
    spec = make_spec(confirm={"top": 2, "seeds": 3}, train__epochs=3,
                     search={"n_trials": 4, "pruner": "none", "pack_size": 1})
    run = opening.open_run(spec)
    with pytest.raises(KeyboardInterrupt):
        driver.run_study(run, StopsAfter(make_trainer(run), 4 * 3 + 3 * 3 + 4))
    records = Confirmations(run.ledger)
    done = {(r.run.key, r.run.seed_index): r.value for r in records.records(spec.name)
            if r.state != State.PLANNED}
    configs = len({r.run.key for r in records.records(spec.name)})
    assert 0 < len(done) < 3 * configs, done  # some runs ended, others never started
    again = opening.open_run(spec)  # as `regsearch confirm` opens the study
    assert driver.confirm_only(again, make_trainer(again)) is True
    rows = records.records(spec.name)
    assert len(rows) == 3 * configs and not [r for r in rows if r.state == State.PLANNED]
    for row in rows:  # what was done is kept, not trained again
        assert done.get((row.run.key, row.run.seed_index), row.value) == row.value
    runs = mlflow_runs(spec.mlflow.tracking_uri, spec.name, "confirmation")
    assert len(runs) == len(rows)  # one MLflow run per configuration and seed
    assert sorted(r.info.run_id for r in runs) == sorted(r.mlflow_run_id for r in rows)


def test_the_reference_trainer_confirms_too(make_spec, tmp_path) -> None:
    run = _confirmed_run(make_spec, tmp_path, "reference", trainer="keras",
                         search={"n_trials": 2, "pruner": "none"})
    rows = Confirmations(run.ledger).records("reference")
    assert len(rows) >= 6 and all(r.state == "complete" for r in rows)


def test_regsearch_confirm_confirms_an_existing_study_once(tmp_path: Path) -> None:
    import json

    from clitools import cli, show, sqlite_url, study_dict, write_study

    url = sqlite_url(tmp_path)
    study = write_study(tmp_path, study_dict("later", url, search={"n_trials": 4}))
    assert cli(tmp_path, "run", study.name).returncode == 0  # searched, not confirmed
    first = cli(tmp_path, "confirm", "later", "--storage", url, "--top", "1", "--seeds", "2")
    assert first.returncode == 0, show(first)
    assert "regsearch: confirming 2 configurations (the search's top 1 and the default) " \
           "with 2 fresh seeds each: 4 runs" in first.stderr, show(first)
    assert "best, confirmed over 2 seeds" in first.stdout, show(first)
    best = json.loads(cli(tmp_path, "best", "later", "--storage", url, "--format",
                          "json").stdout)["best"]
    assert best["source"] == "confirmation" and best["confirmed"]["score"]["n"] == 2
    again = cli(tmp_path, "confirm", "later", "--storage", url, "--top", "1", "--seeds", "2")
    assert again.returncode == 0 and "confirming" not in again.stderr, show(again)  # all done
    assert json.loads(cli(tmp_path, "best", "later", "--storage", url, "--format",
                          "json").stdout)["best"] == best
    bad = cli(tmp_path, "confirm", "later", "--storage", url, "--seeds", "1")
    assert bad.returncode == 2 and "must be >= 2" in bad.stderr, show(bad)


def test_on_the_breast_cancer_study_the_best_is_not_a_near_chance_model(tmp_path) -> None:
    """The shipped study ties many trials at validation AUC 1.0; ranking ties by trial
    number once named a model whose validation loss was near chance (0.65 of 0.69)."""
    import yaml

    from regsearch.study_file import parse_spec

    path = Path(__file__).parents[1] / "studies" / "breast-cancer.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw.update(storage=f"sqlite:///{tmp_path / 's.db'}", mlflow={"enabled": False})
    run = opening.open_run(parse_spec(raw, source=path.name, base=path.parent))
    driver.run_study(run, make_trainer(run))
    summary = results.study_summary(run.study, run.storage_url)
    assert summary["search_best"]["val_loss"] < 0.3, summary["search_best"]
    assert summary["best"]["source"] == "confirmation"
    assert summary["best"]["val_loss"] < 0.3 and summary["best"]["value"] > 0.98, summary["best"]


class CurveTrainer:
    """Completes a trial with a scripted validation curve (one score per epoch)."""

    def __init__(self, curve: list[float]) -> None:
        self.curve = curve

    def train(self, config: Any, *, seed: int, prune: Any, keep_model: bool = False) -> Any:
        from regsearch.trainers.base import StopRules

        rules = StopRules("maximize", None)
        for epoch, value in enumerate(self.curve, start=1):
            rules.observe(EpochMetrics(epoch, 0.3, 0.3, value, 0.0), prune)
        return rules.outcome(0.01)


@pytest.mark.parametrize("curve, warning", [
    ([0.80, 0.90, 0.95], "the best epoch is the last one (3 of 3): more epochs may help; "
                         "raise train.epochs"),
    ([0.80, 0.95, 0.60], "accuracy fell from 0.9500 (epoch 2) to 0.6000 (epoch 3): training "
                         "is unstable after its best epoch"),
])
def test_best_warns_about_the_best_epochs_place_in_the_curve(make_spec, curve: list[float],
                                                             warning: str) -> None:
    spec = make_spec(search={"n_trials": 1, "pruner": "none"}, train__epochs=3,
                     mlflow={"enabled": False})
    run = opening.open_run(spec)
    driver.run_study(run, CurveTrainer(curve))
    summary = results.study_summary(run.study, run.storage_url)
    assert summary["warnings"] == [warning]
    assert f"warning: {warning}" in results.render(summary, "table")
