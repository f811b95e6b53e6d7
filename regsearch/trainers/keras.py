"""The reference trainer: one standard `model.fit` per trial, exactly as users write it."""

from __future__ import annotations

import gc
import time

import keras
import numpy as np

from regsearch import interrupts, metrics
from regsearch.data import Dataset
from regsearch.model import DATA_LOSS, build_model
from regsearch.space import RegConfig
from regsearch.spec import StudySpec
from regsearch.folds import View
from regsearch.states import State
from regsearch.trainers.base import (EpochMetrics, PruneCheck, StopRules, TrialOutcome,
                                     combine)

_PREDICT_CHUNK = 8192
_OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": keras.optimizers.SGD,
    "rmsprop": keras.optimizers.RMSprop,
}
_DATA_LOSS_METRIC = {
    "binary": keras.metrics.BinaryCrossentropy,
    "multiclass": keras.metrics.SparseCategoricalCrossentropy,
    "regression": keras.metrics.MeanSquaredError,
}


def enable_determinism() -> None:
    """Same seed, same scores on CPU: TensorFlow needs deterministic ops switched on."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def fit_targets(task: str, y: np.ndarray) -> np.ndarray:
    """Labels shaped as the model's output: a binary model outputs (N, 1), and Keras's
    cross-entropy metrics refuse 1-D labels against it."""
    return y.reshape(-1, 1).astype(np.float32) if task == "binary" else y


def predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Inference-mode outputs (dropout off) without `predict`'s per-call set-up."""
    parts = [keras.ops.convert_to_numpy(model(x[i:i + _PREDICT_CHUNK], training=False))
             for i in range(0, len(x), _PREDICT_CHUNK)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), np.float32)


class KerasTrainer:
    """One `fit` per trial; the slow but obviously-correct reference."""

    name = "keras"

    def __init__(self, spec: StudySpec, data: Dataset, *, metric: str, direction: str) -> None:
        self.spec, self.data = spec, data
        self.metric, self.direction = metric, direction

    def build(self, config: RegConfig) -> keras.Sequential:
        model = build_model(config, n_features=self.data.n_features,
                            output_units=self.data.output_units, task=self.data.task,
                            hidden_units=self.spec.model.hidden_units,
                            activation=self.spec.model.activation)
        train = self.spec.train
        model.compile(optimizer=_OPTIMIZERS[train.optimizer](learning_rate=train.learning_rate),
                      loss=DATA_LOSS[self.data.task],
                      metrics=[_DATA_LOSS_METRIC[self.data.task](name="data_loss")],
                      jit_compile=False)
        return model

    def train(self, config: RegConfig, *, seed: int, prune: PruneCheck,
              keep_model: bool = False) -> TrialOutcome:
        """Train one config; with `keep_model` the outcome carries the best-epoch model."""
        enable_determinism()
        keras.utils.set_random_seed(seed)
        if self.data.members > 1:
            return self._train_members(config, prune)
        started = time.perf_counter()
        model = self.build(config)
        watcher = _EpochWatcher(self, StopRules(self.direction, self.spec.train.early_stopping),
                                prune)
        try:
            model.fit(self.data.x_train, fit_targets(self.data.task, self.data.y_train),
                      batch_size=self.spec.train.batch_size,
                      epochs=self.spec.train.epochs, shuffle=True, verbose=0,
                      callbacks=[watcher])
            outcome = watcher.rules.outcome(time.perf_counter() - started)
            if outcome.state != State.FAILED and watcher.best_weights is not None:
                model.set_weights(watcher.best_weights)
                self._finish(model, outcome)
                if keep_model:
                    outcome.model = model
        finally:
            if not keep_model:
                del model
                keras.backend.clear_session(free_memory=True)
                gc.collect()
        return outcome

    def _train_members(self, config: RegConfig, prune: PruneCheck) -> TrialOutcome:
        """Folds or repeats: one model per member (`Dataset.views`), trained epoch by epoch
        side by side so that the stop rules and the pruner judge their mean every epoch."""
        started = time.perf_counter()
        views = self.data.views()
        models = [self.build(config) for _ in views]
        rules = StopRules(self.direction, self.spec.train.early_stopping)
        best: tuple[list[list[np.ndarray]], list[EpochMetrics]] | None = None
        hook = _InterruptHook()
        try:
            for epoch in range(self.spec.train.epochs):
                scores = []
                for model, view in zip(models, views):
                    history = model.fit(view.x_train, fit_targets(self.data.task, view.y_train),
                                        batch_size=self.spec.train.batch_size,
                                        initial_epoch=epoch, epochs=epoch + 1, shuffle=True,
                                        verbose=0, callbacks=[hook])
                    scores.append(self._member_epoch(model, view, epoch + 1,
                                                     history.history["data_loss"][-1]))
                current = combine(scores)
                keep_going = rules.observe(current, prune)
                if rules.best_epoch == current.epoch:
                    best = ([m.get_weights() for m in models], scores)
                if not keep_going:
                    break
            outcome = rules.outcome(time.perf_counter() - started)
            if outcome.state != State.FAILED and best is not None:
                for model, weights in zip(models, best[0]):
                    model.set_weights(weights)
                outcome.member_values = [m.val_metric for m in best[1]]
                self._finish_members(models, views, outcome)
        finally:
            del models
            keras.backend.clear_session(free_memory=True)
            gc.collect()
        return outcome

    def _member_epoch(self, model: keras.Model, view: View, epoch: int,
                      train_loss: float) -> EpochMetrics:
        val_loss, val_metric = metrics.data_loss_and_score(
            self.metric, self.data.task, view.y_val, predict(model, view.x_val),
            target_mean=view.target_mean, target_std=view.target_std)
        penalty = float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses))
        return EpochMetrics(epoch=epoch, train_loss=float(train_loss), val_loss=val_loss,
                            val_metric=val_metric, penalty=penalty)

    def _finish_members(self, models: list[keras.Model], views: list[View],
                        outcome: TrialOutcome) -> None:
        """The members' near-zero share, training loss (dropout off) and test score,
        averaged."""
        kernels = [[keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers
                    if isinstance(layer, keras.layers.Dense) and layer.name != "output"]
                   for model in models]
        outcome.near_zero_share = float(np.mean([metrics.near_zero_share(k) for k in kernels]))
        outcome.train_eval_loss = float(np.mean([metrics.data_loss(
            self.data.task, view.y_train, predict(model, view.x_train))
            for model, view in zip(models, views)]))
        if len(self.data.x_test):
            outcome.test_metric = float(np.mean([metrics.data_loss_and_score(
                self.metric, self.data.task, view.y_test, predict(model, view.x_test),
                target_mean=view.target_mean, target_std=view.target_std)[1]
                for model, view in zip(models, views)]))

    def evaluate(self, model: keras.Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(data loss, objective metric) on held-out data, with dropout off."""
        d = self.data
        return metrics.data_loss_and_score(self.metric, d.task, y, predict(model, x),
                                           target_mean=d.target_mean, target_std=d.target_std)

    def _finish(self, model: keras.Model, outcome: TrialOutcome) -> None:
        kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers
                   if isinstance(layer, keras.layers.Dense) and layer.name != "output"]
        outcome.near_zero_share = metrics.near_zero_share(kernels)
        outcome.train_eval_loss = metrics.data_loss(self.data.task, self.data.y_train,
                                                    predict(model, self.data.x_train))
        if len(self.data.x_test):
            outcome.test_metric = self.evaluate(model, self.data.x_test, self.data.y_test)[1]


class _InterruptHook(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.check()


class _EpochWatcher(keras.callbacks.Callback):
    """Measures each epoch on data alone and applies the shared stop rules."""

    def __init__(self, trainer: KerasTrainer, rules: StopRules, prune: PruneCheck) -> None:
        super().__init__()
        self.trainer, self.rules, self.prune = trainer, rules, prune
        self.best_weights: list[np.ndarray] | None = None

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.check()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        data = self.trainer.data
        val_loss, val_metric = self.trainer.evaluate(self.model, data.x_val, data.y_val)
        penalty = float(sum(keras.ops.convert_to_numpy(loss) for loss in self.model.losses))
        current = EpochMetrics(epoch=epoch + 1, train_loss=float((logs or {})["data_loss"]),
                               val_loss=val_loss, val_metric=val_metric, penalty=penalty)
        keep_going = self.rules.observe(current, self.prune)
        if self.rules.best_epoch == current.epoch:
            self.best_weights = self.model.get_weights()
        if not keep_going:
            self.model.stop_training = True
