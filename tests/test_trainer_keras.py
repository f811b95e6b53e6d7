"""The reference trainer: data-only objective, penalty on the side, stop rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import log_loss, mean_squared_error

from regsearch.data import load_dataset
from regsearch.space import RegConfig
from regsearch.objective import resolve_objective
from regsearch.states import State
from regsearch.trainers.keras import KerasTrainer

pytestmark = pytest.mark.slow


def _trainer(spec):
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    return KerasTrainer(spec, data, metric=objective.metric, direction=objective.direction), data


def _never(_metrics) -> bool:
    return False


def test_objective_excludes_the_l2_penalty(make_spec) -> None:
    spec = make_spec(objective={"metric": "cross_entropy"}, train__epochs=4)
    trainer, data = _trainer(spec)
    outcome = trainer.train(RegConfig("l2", l2=1.0), seed=1, prune=_never, keep_model=True)
    model = outcome.model
    probabilities = model.predict(data.x_val, verbose=0)
    independent = log_loss(data.y_val, probabilities, labels=np.arange(10))
    assert outcome.value == pytest.approx(independent, rel=1e-4)
    # Keras's own validation loss adds the penalty; ranking by it would punish regularization.
    keras_says = model.evaluate(data.x_val, data.y_val, verbose=0, return_dict=True)
    assert outcome.best.penalty > 0.05
    assert keras_says["loss"] == pytest.approx(independent + outcome.best.penalty, rel=1e-3)
    assert keras_says["data_loss"] == pytest.approx(independent, rel=1e-3)


def test_regression_error_is_in_target_units(make_spec) -> None:
    spec = make_spec(data={"builtin": "diabetes"}, objective={"metric": "rmse"})
    trainer, data = _trainer(spec)
    outcome = trainer.train(RegConfig("l1", l1=1e-3), seed=0, prune=_never, keep_model=True)
    scaled = outcome.model.predict(data.x_val, verbose=0).reshape(-1)
    truth = data.y_val * data.target_std + data.target_mean
    guess = scaled * data.target_std + data.target_mean
    assert outcome.value == pytest.approx(math.sqrt(mean_squared_error(truth, guess)), rel=1e-4)
    assert outcome.value > 10  # diabetes targets are in the hundreds, not standardized units


def test_best_epoch_weights_are_restored(make_spec) -> None:
    spec = make_spec(train__epochs=6, objective={"metric": "accuracy"})
    trainer, data = _trainer(spec)
    outcome = trainer.train(RegConfig("none", dropout=0.3), seed=5, prune=_never,
                            keep_model=True)
    accuracies = [m.val_metric for m in outcome.history]
    assert outcome.value == max(accuracies)
    assert outcome.best_epoch == accuracies.index(max(accuracies)) + 1
    predicted = outcome.model.predict(data.x_val, verbose=0).argmax(axis=1)
    assert np.mean(predicted == data.y_val) == pytest.approx(outcome.value)
    # the training rows' loss at that epoch as Keras evaluates them: dropout off, no penalty
    on_train = outcome.model.evaluate(data.x_train, data.y_train, verbose=0, return_dict=True)
    assert outcome.train_eval_loss == pytest.approx(on_train["data_loss"], rel=1e-4)
    assert outcome.summary()["train_eval_loss"] == outcome.train_eval_loss
    assert outcome.train_eval_loss < outcome.best.train_loss  # dropout's noise is not in it


def test_divergence_fails_the_trial_with_a_reason(make_spec) -> None:
    spec = make_spec(data={"builtin": "diabetes"},
                     train={"epochs": 5, "optimizer": "sgd", "learning_rate": 1e6})
    trainer, _ = _trainer(spec)
    outcome = trainer.train(RegConfig("none"), seed=0, prune=_never)
    assert outcome.state == State.FAILED
    assert outcome.value is None
    assert "non-finite" in outcome.reason and "diverged" in outcome.reason


def test_prune_check_stops_training_at_that_epoch(make_spec) -> None:
    spec = make_spec(train__epochs=8)
    trainer, _ = _trainer(spec)
    outcome = trainer.train(RegConfig("l2", l2=1e-4), seed=0,
                            prune=lambda metrics: metrics.epoch == 2)
    assert outcome.state == State.PRUNED
    assert outcome.epochs_run == 2


def test_early_stopping_ends_a_stalled_trial(make_spec) -> None:
    # A huge L1 strength zeroes the network: accuracy never improves after epoch 1.
    spec = make_spec(train={"epochs": 30, "early_stopping": {"patience": 2}})
    trainer, _ = _trainer(spec)
    outcome = trainer.train(RegConfig("l1", l1=50.0), seed=0, prune=_never)
    assert outcome.epochs_run < 30
    assert outcome.epochs_run - outcome.best_epoch == 2
    assert "early stopping" in outcome.reason


def test_near_zero_share_grows_with_l1(make_spec) -> None:
    spec = make_spec(train__epochs=5)
    trainer, _ = _trainer(spec)
    weak = trainer.train(RegConfig("l1", l1=1e-6), seed=0, prune=_never)
    strong = trainer.train(RegConfig("l1", l1=0.05), seed=0, prune=_never)
    assert strong.near_zero_share > 4 * weak.near_zero_share > 0


@pytest.mark.parametrize("builtin, task", [("breast_cancer", "binary"), ("digits", "multiclass"),
                                           ("diabetes", "regression")])
def test_every_task_trains_to_a_finite_score(make_spec, builtin: str, task: str) -> None:
    """The reference trains binary targets too (Keras's cross-entropy metric once refused
    1-D labels against the (N, 1) output of a binary model)."""
    spec = make_spec(data={"builtin": builtin}, train__epochs=2)
    trainer, data = _trainer(spec)
    assert data.task == task
    outcome = trainer.train(RegConfig("l2", l2=1e-3, dropout=0.1), seed=0, prune=_never)
    assert outcome.state == "complete", outcome.reason
    assert outcome.epochs_run == 2 and math.isfinite(outcome.value)
    assert all(math.isfinite(m.train_loss) and math.isfinite(m.val_loss)
               for m in outcome.history)
