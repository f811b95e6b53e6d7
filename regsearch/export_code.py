"""`export --format python`: the chosen model as the Keras code users write by hand.

The file imports only Keras and NumPy: `build_model()` is the network of the trial with a
`Normalization` layer holding the training statistics in front, compiled as the study
compiled it; `train(x, y)` trains it on raw arrays for the best epoch count and returns a
model that predicts in the target's own units.
"""

from __future__ import annotations

import textwrap
from typing import Any

_OPTIMIZERS = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop"}
_REGULARIZERS = {"l1": "L1", "l2": "L2", "l1_l2": "L1L2"}


def python_source(doc: dict[str, Any]) -> str:
    """A standalone Python file building and training the model a document describes."""
    study, reg, model = doc["study"], doc["regularization"], doc["model"]
    train, pre, data = doc["training"], doc["preprocessing"], doc["data"]
    regression = data["task"] == "regression"
    which = "the unregularized default" if study["trial"] is None else f"trial #{study['trial']}"
    layers = []
    for units in model["hidden_units"]:
        layers.append(f"keras.layers.Dense({units}, activation={model['activation']!r}, "
                      f"kernel_regularizer={_regularizer(reg)}),")
        if reg["dropout"] > 0:
            layers.append(f"keras.layers.Dropout({reg['dropout']!r}),")
    output = model["output_activation"]
    layers.append(f"keras.layers.Dense({model['output_units']}, activation={output!r}),")
    scores = doc["scores"]
    confirmed = scores.get("confirmed")
    scored = (f"confirmed {doc['objective']['metric']} {confirmed['mean']:.4f} over "
              f"{confirmed['seeds']} seeds" if confirmed else
              f"validation {doc['objective']['metric']} {scores['validation']:.4f}")
    target = ("y = (np.asarray(y, dtype='float32') - TARGET_MEAN) / TARGET_SCALE"
              if regression else "y = np.asarray(y)")
    returned = ("keras.Sequential([model, keras.layers.Rescaling(TARGET_SCALE, "
                "offset=TARGET_MEAN)])" if regression else "model")
    made = doc["versions"]
    labels = "target values" if regression else "class indices 0..C-1"
    outputs = "in the target's units" if regression else "probabilities"
    statistics = [f"FEATURE_MEAN = {_array(pre['feature_mean'])}",
                  f"FEATURE_SCALE = {_array(pre['feature_scale'])}"]
    if regression:
        statistics += [f"TARGET_MEAN = {pre['target_mean']!r}",
                       f"TARGET_SCALE = {pre['target_scale']!r}"]
    body = f'''\
        """{which.capitalize()} of regsearch study {study['name']!r} ({scored}).

        Exported by regsearch {made['regsearch']} (Keras {made['keras']}); it needs
        only Keras and NumPy. Features are raw: the Normalization layer holds the training
        split's statistics ({len(pre['feature_mean'])} features: {_features(data['features'])}).

            model = train(x, y)       # raw features, {labels}
            model.predict(x_new)      # {outputs}
        """

        import keras
        import numpy as np

        {_indent(statistics, 8)}
        EPOCHS = {train['epochs']}  # the trial's best epoch
        BATCH_SIZE = {train['batch_size']}


        def build_model() -> keras.Model:
            """The trial's network, compiled as the study compiled it."""
            model = keras.Sequential([
                keras.Input(shape=({len(pre['feature_mean'])},)),
                keras.layers.Normalization(mean=FEATURE_MEAN, variance=FEATURE_SCALE**2),
                {_indent(layers, 16)}
            ])
            model.compile(
                optimizer=keras.optimizers.{_OPTIMIZERS[train['optimizer']]}(learning_rate={train['learning_rate']!r}),
                loss={train['loss']!r},
            )
            return model


        def train(x, y, **fit_options) -> keras.Model:
            """Train on raw arrays for the best epoch count; returns the model to predict with."""
            model = build_model()
            {target}
            model.fit(np.asarray(x, dtype="float32"), y, batch_size=BATCH_SIZE, epochs=EPOCHS,
                      **fit_options)
            return {returned}


        if __name__ == "__main__":
            build_model().summary()
        '''
    return textwrap.dedent(body)


def _regularizer(reg: dict[str, Any]) -> str:
    if reg["type"] == "none":
        return "None"
    factors = {"l1": f"l1={reg['l1']!r}", "l2": f"l2={reg['l2']!r}"}
    used = ["l1", "l2"] if reg["type"] == "l1_l2" else [reg["type"]]
    return (f"keras.regularizers.{_REGULARIZERS[reg['type']]}("
            + ", ".join(factors[k] for k in used) + ")")


def _array(values: list[float]) -> str:
    numbers = ", ".join(repr(float(v)) for v in values)
    wrapped = textwrap.fill(numbers, width=88, initial_indent=" " * 4,
                            subsequent_indent=" " * 4)
    return f"np.array([\n{wrapped},\n], dtype='float32')"


def _features(names: list[str]) -> str:
    shown = ", ".join(names[:6])
    return shown + (f", ... ({len(names) - 6} more)" if len(names) > 6 else "")


def _indent(lines: list[str], spaces: int) -> str:
    """Lines for a template whose first line is already indented by `spaces`."""
    text = "\n".join(lines)
    return textwrap.indent(text, " " * spaces)[spaces:]
