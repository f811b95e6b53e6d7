"""The standard Keras model a user writes; trainers train it and export reuses it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from regsearch.space import RegConfig
from regsearch.spec import STRENGTHS

if TYPE_CHECKING:
    import keras

OUTPUT_ACTIVATION = {"binary": "sigmoid", "multiclass": "softmax", "regression": None}
DATA_LOSS = {
    "binary": "binary_crossentropy",
    "multiclass": "sparse_categorical_crossentropy",
    "regression": "mean_squared_error",
}


#: regularizer type -> the `keras.regularizers` class; its arguments are the strengths
#: the type uses (`spec.STRENGTHS`)
_KERAS_CLASSES = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}


def _arguments(config: RegConfig) -> dict[str, float]:
    return {name: getattr(config, name) for name in STRENGTHS[config.regularizer]}


def make_regularizer(config: RegConfig) -> keras.regularizers.Regularizer | None:
    """Keras's own L1/L2/L1L2 objects, so an exported model is plain Keras."""
    import keras

    if config.regularizer == "none":
        return None
    return getattr(keras.regularizers, _KERAS_CLASSES[config.regularizer])(**_arguments(config))


def regularizer_source(config: RegConfig) -> str:
    """`make_regularizer`'s object as the Python a user writes, e.g.
    keras.regularizers.L2(0.001)."""
    if config.regularizer == "none":
        return "None"
    return f"keras.regularizers.{_KERAS_CLASSES[config.regularizer]}(" + ", ".join(
        f"{key}={value:.3g}" for key, value in _arguments(config).items()) + ")"


def build_model(
    config: RegConfig,
    *,
    n_features: int,
    output_units: int,
    task: str,
    hidden_units: tuple[int, ...],
    activation: str,
) -> keras.Sequential:
    """Dense + kernel regularizer + Dropout per hidden layer, then the task's output layer.

    This is the code of the Keras regularization guides; the output layer is not
    regularized, as there.
    """
    import keras

    layers: list[keras.layers.Layer] = [keras.Input(shape=(n_features,))]
    for index, units in enumerate(hidden_units, start=1):
        layers.append(keras.layers.Dense(units, activation=activation,
                                         kernel_regularizer=make_regularizer(config),
                                         name=f"dense_{index}"))
        if config.dropout > 0:
            layers.append(keras.layers.Dropout(config.dropout, name=f"dropout_{index}"))
    layers.append(keras.layers.Dense(output_units, activation=OUTPUT_ACTIVATION[task],
                                     name="output"))
    return keras.Sequential(layers, name="regsearch_model")
