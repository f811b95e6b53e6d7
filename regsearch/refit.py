"""`export --format keras|mlflow`: the chosen configuration trained again, as a Keras model
that takes raw features.

The network is trained exactly as the study's trials were (standardized features, and
standardized targets for regression, so the penalty weighs the same against the loss), for
the trial's best epoch count; the saved model wraps it between a `Normalization` layer with
the training statistics and, for regression, a `Rescaling` back to the target's units. It
loads with plain `keras.saving.load_model`, under any Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from regsearch import metrics
from regsearch.exports import Chosen

if TYPE_CHECKING:
    import keras

    from regsearch.data import Dataset


@dataclass(frozen=True)
class Refit:
    model: keras.Model  # raw features in; probabilities or target units out
    rows: str  # "train" or "train+val"
    validation: float  # the objective on the validation rows (trained on, with train+val)
    test: float | None  # on the test rows, when the study holds some out

    def scores(self) -> dict[str, float | str | None]:
        return {"rows": self.rows, "validation": self.validation, "test": self.test}


def refit(chosen: Chosen, data: Dataset, rows: str = "train") -> Refit:
    """Train the chosen configuration again on `rows` and wrap it for raw inputs."""
    import keras

    from regsearch.trainers.keras import KerasTrainer, enable_determinism, fit_targets

    spec = replace(chosen.spec, train=replace(chosen.spec.train, early_stopping=None))
    trainer = KerasTrainer(spec, data, metric=chosen.metric, direction=chosen.direction)
    x, y = data.x_train, data.y_train
    if rows == "train+val":
        x, y = np.concatenate([x, data.x_val]), np.concatenate([y, data.y_val])
    enable_determinism()
    keras.utils.set_random_seed(spec.seed)
    network = trainer.build(chosen.config)
    network.fit(x, fit_targets(data.task, y), batch_size=spec.train.batch_size,
                epochs=chosen.epochs, shuffle=True, verbose=0)
    model = raw_input_model(network, data, name=_model_name(chosen))
    validation = score(model, chosen.metric, data, raw_features(data, data.x_val), data.y_val)
    test = (score(model, chosen.metric, data, raw_features(data, data.x_test), data.y_test)
            if len(data.x_test) else None)
    return Refit(model, rows, validation, test)


def raw_input_model(network: keras.Model, data: Dataset, *, name: str) -> keras.Model:
    """`network` between the standardization of raw features and, for regression, the
    return to the target's units."""
    import keras

    inputs = keras.Input(shape=(data.n_features,), name="features")
    scaled = keras.layers.Normalization(mean=data.feature_mean,
                                        variance=np.square(data.feature_std),
                                        name="standardize")(inputs)
    outputs = network(scaled)
    if data.task == "regression":
        outputs = keras.layers.Rescaling(scale=float(data.target_std),
                                         offset=float(data.target_mean),
                                         name="target_units")(outputs)
    return keras.Model(inputs, outputs, name=name)


def raw_features(data: Dataset, standardized: np.ndarray) -> np.ndarray:
    """Rows as the user has them, before the study standardized them."""
    return (standardized * data.feature_std + data.feature_mean).astype(np.float32)


def score(model: keras.Model, metric: str, data: Dataset, x_raw: np.ndarray,
          y: np.ndarray) -> float:
    """The objective of the raw-input model, computed as every trial's is."""
    from regsearch.trainers.keras import predict

    predicted = predict(model, x_raw)
    if data.task == "regression":  # back to the standardized units the metrics expect
        predicted = (predicted - data.target_mean) / data.target_std
    return metrics.data_loss_and_score(metric, data.task, y, predicted,
                                       target_mean=data.target_mean,
                                       target_std=data.target_std)[1]


def _model_name(chosen: Chosen) -> str:
    which = "default" if chosen.trial is None else f"trial_{chosen.trial}"
    return "".join(c if c.isalnum() or c == "_" else "_" for c in f"{chosen.spec.name}_{which}")
