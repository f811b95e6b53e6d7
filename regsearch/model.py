"""The standard Keras model a user writes; trainers train it and export reuses it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from regsearch.space import RegConfig

if TYPE_CHECKING:
    import keras

OUTPUT_ACTIVATION = {"binary": "sigmoid", "multiclass": "softmax", "regression": None}
DATA_LOSS = {
    "binary": "binary_crossentropy",
    "multiclass": "sparse_categorical_crossentropy",
    "regression": "mean_squared_error",
}


#: regularizer type -> the `keras.regularizers` class and its arguments from a config
_KERAS_REGULARIZERS = {
    "l1": ("L1", lambda c: {"l1": c.l1}),
    "l2": ("L2", lambda c: {"l2": c.l2}),
    "l1_l2": ("L1L2", lambda c: {"l1": c.l1, "l2": c.l2}),
}


def make_regularizer(config: RegConfig) -> keras.regularizers.Regularizer | None:
    """Keras's own L1/L2/L1L2 objects, so an exported model is plain Keras."""
    import keras

    if config.regularizer == "none":
        return None
    name, arguments = _KERAS_REGULARIZERS[config.regularizer]
    return getattr(keras.regularizers, name)(**arguments(config))


def regularizer_source(config: RegConfig) -> str:
    """`make_regularizer`'s object as the Python a user writes, e.g.
    keras.regularizers.L2(0.001)."""
    if config.regularizer == "none":
        return "None"
    name, arguments = _KERAS_REGULARIZERS[config.regularizer]
    return f"keras.regularizers.{name}(" + ", ".join(
        f"{key}={value:.3g}" for key, value in arguments(config).items()) + ")"


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
