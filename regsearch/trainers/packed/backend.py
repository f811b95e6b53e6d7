"""What the packed trainer asks of the Keras backend: XLA, its compile cache, activations."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from regsearch import compile_cache
from regsearch.model import OUTPUT_ACTIVATION

PREDICT_CHUNK = 8192  # rows per inference call


def xla_available() -> bool:
    """XLA, unless TensorFlow's op determinism is on (Keras then refuses XLA, with a warning).

    XLA's CPU and GPU kernels are deterministic for this model's ops, so the packed trainer
    needs no switch of its own; the keras trainer's switch is process-wide, though.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    from tensorflow.python.framework.config import is_op_determinism_enabled

    return not is_op_determinism_enabled()


def start_backend() -> None:
    """Turn the XLA compile cache on, before anything makes the backend start up.

    TensorFlow reads its XLA flags once, when its runtime starts: the first tensor, and also
    a device query such as the pack size's GPU check. Called first by each of them.
    """
    if xla_available():
        compile_cache.enable(keras.backend.backend())


#: After an epoch: each member's mean training data loss (K,), its validation outputs
#: (K, N, out) and its weights (K, ...) in `build_model(...).get_weights()` order.


def activate(logits, task: str):
    """The standard model's output activation on the packed logits."""
    activation = OUTPUT_ACTIVATION[task]
    if activation == "softmax":
        return ops.softmax(logits, axis=-1)
    if activation == "sigmoid":
        return ops.sigmoid(logits)
    return logits


def standard_outputs(weights: list[np.ndarray], x: np.ndarray, *, activation: str,
                     task: str) -> np.ndarray:
    """One member's inference outputs (dropout off) from its standard-model weights
    (kernel, bias per layer), without running the whole pack over `x`."""
    hidden = keras.activations.get(activation)
    parts = []
    for start in range(0, len(x), PREDICT_CHUNK):
        h = np.asarray(x[start:start + PREDICT_CHUNK], np.float32)
        for kernel, bias in zip(weights[0:-2:2], weights[1:-2:2]):
            h = np.asarray(ops.convert_to_numpy(hidden(h @ kernel + bias)))
        parts.append(np.asarray(ops.convert_to_numpy(
            activate(h @ weights[-2] + weights[-1], task))))
    return np.concatenate(parts) if parts else np.zeros((0, weights[-1].shape[0]), np.float32)
