"""Cross-validation folds and seed repeats as members of a pack, and in the reference trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from regsearch import driver, opening
from regsearch.data import load_dataset
from regsearch.errors import SpecError
from regsearch.space import RegConfig
from regsearch.objective import resolve_objective
from regsearch.study_file import parse_spec
from regsearch.trainers import make_trainer
from regsearch.trainers.base import EpochMetrics
from regsearch.trainers.keras import KerasTrainer, fit_targets
from regsearch.trainers.packed import PackedTrainer

pytestmark = pytest.mark.slow


def _never(_metrics: EpochMetrics) -> bool:
    return False


def _packed(spec: Any, pack_size: int) -> tuple[PackedTrainer, Any]:
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    return PackedTrainer(spec, data, metric=objective.metric, direction=objective.direction,
                         pack_size=pack_size), data


def test_folds_and_repeats_are_checked_in_the_study_file(make_spec) -> None:
    with pytest.raises(SpecError, match=r"data\.repeats: give folds or repeats, not both"):
        make_spec(data={"builtin": "digits", "folds": 3, "repeats": 2})
    with pytest.raises(SpecError, match=r"data\.validation_fraction: is not used with folds"):
        make_spec(data={"builtin": "digits", "folds": 3, "validation_fraction": 0.3})
    with pytest.raises(SpecError, match=r"data.folds: must be an integer in \[2, 20\]"):
        make_spec(data={"builtin": "digits", "folds": 1})
    plain = make_spec()
    assert "folds" not in plain.identity()["data"]  # studies made before folds keep their hash
    assert make_spec(data={"builtin": "digits", "folds": 3}).spec_hash != plain.spec_hash


@pytest.mark.parametrize("builtin", ["digits", "diabetes"])
def test_a_fold_member_never_trains_on_its_own_validation_rows(make_spec, builtin) -> None:
    spec = make_spec(data={"builtin": builtin, "folds": 4, "test_fraction": 0.1})
    trainer, data = _packed(spec, pack_size=2)
    rows = trainer.rows
    assert rows.masks.shape == (len(rows.pool), 8)
    assert not set(rows.pool) & set(data.test_rows)  # the test split trains nobody
    for member in range(8):
        fold = data.folds[member % 4]
        trains = set(rows.pool[rows.masks[:, member] == 1])
        assert trains == set(fold.train_rows) and not trains & set(fold.val_rows)
        assert len(trains) + len(fold.val_rows) == len(rows.pool)


def _replay(reference: keras.Model, batches: list[np.ndarray], rows: Any, member: int,
            data: Any) -> float:
    """Train a standalone model on the member's rows of each batch; its mean data loss."""
    view, total, seen = rows.view(member), 0.0, 0
    for idx in batches:
        mine = rows.pool[idx][rows.masks[idx, member] == 1] if rows.folds else idx
        x = view.x_train if not rows.folds else (
            (data.x_raw[mine] - view.feature_mean) / view.feature_std).astype(np.float32)
        y = view.y_train if not rows.folds else (
            (data.y_raw[mine] - view.target_mean) / view.target_std if data.task == "regression"
            else data.y_raw[mine])
        if not rows.folds:
            x, y = x[mine], y[mine]
        logs = reference.train_on_batch(x, fit_targets(data.task, np.asarray(y)),
                                        return_dict=True)
        total, seen = total + float(logs["data_loss"]) * len(mine), seen + len(mine)
    return total / seen


@pytest.mark.parametrize("builtin, split", [("digits", {"folds": 3}),
                                            ("diabetes", {"folds": 3}),
                                            ("breast_cancer", {"repeats": 2})])
def test_each_member_trains_exactly_like_its_standalone_fit(make_spec, builtin, split) -> None:
    """No dropout: every fold's (or repeat's) member follows a standard Keras model trained
    on that fold's rows of the same batches, to 1e-4."""
    spec = make_spec(data={"builtin": builtin, **split}, train__epochs=2,
                     model={"hidden_units": [8]})
    trainer, data = _packed(spec, pack_size=2)
    config = RegConfig("l1_l2", l1=1e-3, l2=1e-2)
    trainer.assign(RegConfig("l2", l2=1e-4, dropout=0.3), seed=9, prune=_never)
    slot = trainer.assign(config, seed=1, prune=_never)
    members = trainer.rows.of_slot(slot)
    references = []
    for member in members:
        reference = trainer.reference.build(config)
        trainer.set_member_weights(member, reference.get_weights())
        references.append(reference)
    for _epoch in (1, 2):
        finished = trainer.run_epoch()
        scores = (trainer.slots[slot].last_members if slot not in finished else None)
        for j, (member, reference) in enumerate(zip(members, references)):
            train_loss = _replay(reference, trainer.last_batches(), trainer.rows, member, data)
            view = trainer.rows.view(member)
            val_loss = float(np.mean(keras.losses.get(reference.loss)(
                fit_targets(data.task, view.y_val), reference.predict(view.x_val, verbose=0))))
            if scores is not None:
                assert scores[j].train_loss == pytest.approx(train_loss, rel=1e-4)
                assert scores[j].val_loss == pytest.approx(val_loss, rel=1e-4)
    outcome = finished[slot]
    assert outcome.member_values is not None and len(outcome.member_values) == len(members)
    assert outcome.value == pytest.approx(np.mean(outcome.member_values))
    # each member's training rows, its own standardization, its best-epoch weights in Keras
    on_train = []
    for member, reference in zip(members, references):
        reference.set_weights(trainer.member_weights(member))
        view = trainer.rows.view(member)
        on_train.append(reference.evaluate(view.x_train, fit_targets(data.task, view.y_train),
                                           verbose=0, return_dict=True)["data_loss"])
    assert outcome.train_eval_loss == pytest.approx(np.mean(on_train), rel=1e-4)


def test_the_pruner_judges_the_mean_of_the_folds(make_spec) -> None:
    spec = make_spec(data={"builtin": "digits", "folds": 3}, train__epochs=3)
    trainer, _ = _packed(spec, pack_size=1)
    seen: list[EpochMetrics] = []

    def prune(metrics: EpochMetrics) -> bool:
        seen.append(metrics)
        return metrics.epoch == 2

    slot = trainer.assign(RegConfig("none"), seed=3, prune=prune)
    folds = []
    while True:
        finished = trainer.run_epoch()
        if slot in finished:
            break
        folds.append(trainer.slots[slot].last_members)
    assert finished[slot].state == "pruned" and len(seen) == 2
    first = folds[0]
    assert seen[0].val_metric == pytest.approx(np.mean([m.val_metric for m in first]))
    assert seen[0].val_loss == pytest.approx(np.mean([m.val_loss for m in first]))
    assert len({m.val_metric for m in first}) > 1  # three folds, three different scores


def _noise_npz(path: Path) -> Path:
    """Labels that are pure noise: nothing generalizes, but a model can memorize rows."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(240, 20)), y=rng.integers(0, 2, 240))
    return path


@pytest.mark.parametrize("trainer", ["packed", "keras"])
def test_a_data_set_where_leaking_would_show_scores_at_chance(tmp_path: Path,
                                                              trainer: str) -> None:
    """A big model memorizes its training rows of random labels (training loss falls far
    below chance); scored on rows it never saw it stays near chance. Had a fold trained on
    its validation rows, its score would be close to 1."""
    raw = {"name": "leak", "seed": 1,
           "data": {"file": str(_noise_npz(tmp_path / "noise.npz")), "folds": 4},
           "model": {"hidden_units": [256]},
           "train": {"epochs": 150, "batch_size": 32, "learning_rate": 0.003},
           "search": {"n_trials": 1, "pruner": "none"}, "space": {"regularizers": ["none"],
                                                                  "dropout": {"high": 0.0}},
           "storage": f"sqlite:///{tmp_path / 's.db'}", "mlflow": {"enabled": False},
           "confirm": None, "trainer": trainer}
    run = opening.open_run(parse_spec(raw, source="leak.yaml"))
    driver.run_study(run, make_trainer(run))
    [trial] = run.study.trials
    [record] = run.ledger.records("leak")
    assert len(record.epochs) == 150
    assert record.epochs[-1].train_loss < 0.2, record.epochs[-1]  # memorized (chance: 0.69)
    assert max(e.val_metric for e in record.epochs) < 0.7, trial.user_attrs
    assert len(trial.user_attrs["member_values"]) == 4


def test_fold_scores_are_recorded_in_optuna_the_ledger_and_mlflow(make_spec) -> None:
    from mlflow import MlflowClient

    spec = make_spec(data={"builtin": "digits", "folds": 3},
                     search={"n_trials": 2, "pruner": "none"})
    run = opening.open_run(spec)
    driver.run_study(run, make_trainer(run))
    trial = run.study.trials[-1]
    values = trial.user_attrs["member_values"]
    assert len(values) == 3 and trial.value == pytest.approx(np.mean(values))
    assert trial.user_attrs["member_sd"] == pytest.approx(np.std(values, ddof=1))
    [record] = [r for r in run.ledger.records(spec.name) if r.number == trial.number]
    assert list(record.members) == pytest.approx(values)
    client = MlflowClient(spec.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(spec.name)
    [mlflow_run] = client.search_runs([experiment.experiment_id],
                                      f"tags.`regsearch.trial` = '{trial.number}'")
    assert [mlflow_run.data.metrics[f"member_{j}_accuracy"] for j in range(3)] == \
        pytest.approx(values)
    assert mlflow_run.data.metrics["member_sd"] == pytest.approx(np.std(values, ddof=1))


def test_the_reference_trainer_scores_a_trial_by_its_folds(make_spec) -> None:
    spec = make_spec(data={"builtin": "diabetes", "folds": 3}, train__epochs=3, trainer="keras")
    data = load_dataset(spec.data, seed=spec.seed)
    objective = resolve_objective(spec, data.task)
    trainer = KerasTrainer(spec, data, metric=objective.metric, direction=objective.direction)
    outcome = trainer.train(RegConfig("l2", l2=1e-3), seed=2, prune=_never)
    assert outcome.state == "complete" and len(outcome.member_values) == 3
    assert outcome.value == pytest.approx(np.mean(outcome.member_values))
    assert outcome.value > 10  # RMSE in the target's units, each fold's own scale undone
