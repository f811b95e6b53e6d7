"""A whole epoch as one compiled TensorFlow program (the TensorFlow backend's fast path)."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np

#: After an epoch: each member's mean training data loss (K,), its validation outputs
#: (K, N, out) and its weights (K, ...) in `build_model(...).get_weights()` order.
Readout = tuple[np.ndarray, np.ndarray, list[np.ndarray]]


class TensorFlowEpoch:
    """A whole epoch as one compiled TensorFlow program: every step, no Python in between.

    Keras's `fit` (and its train function with `steps_per_execution`) runs the steps in a graph
    loop that launches one XLA program per step and pulls each batch from `tf.data`; for a
    packed step of a few milliseconds that costs as much again as the step. Here the loop
    itself is compiled: each epoch's shuffled rows are assigned to two variables and batch i
    is a slice of them. The last, short batch is padded to full size with a row mask (the
    `sample_weight` that `PackedNet.compute_loss` and `MemberDataLoss` read), so every step
    has one shape and the step is traced once.

    The dropout noise comes the same way, drawn by NumPy for the whole epoch (`train`'s
    `noise`): XLA's CPU random-number code is a large share of a small step, and NumPy
    draws an epoch's worth in a fraction of it. Without `noise_units` the model
    draws its own (`MemberDropout`).

    With `member_masks` (folds: which rows each member trains on, one column per member) the
    row mask is (rows, members), assigned each epoch in the epoch's row order.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, *,
                 jit_compile: bool, noise_units: int = 0, member_masks: int = 0,
                 readout: Callable[[], tuple] | None = None) -> None:
        import tensorflow as tf

        steps = -(-len(x) // batch_size)
        padded = steps * batch_size
        self.x = tf.Variable(self._padded(x, padded), trainable=False)
        self.y = tf.Variable(self._padded(y, padded), trainable=False)
        self.noise = (tf.Variable(np.zeros((padded, noise_units), np.float32), trainable=False)
                      if noise_units else None)
        self.masks = (tf.Variable(np.zeros((padded, member_masks), np.float32),
                                  trainable=False) if member_masks else None)
        mask = (self.masks if self.masks is not None else
                tf.constant(self._padded(np.ones(len(x), np.float32), padded)))

        def step(i):
            def rows(t):
                return tf.slice(t, [i * batch_size] + [0] * (t.shape.rank - 1),
                                [batch_size, *t.shape[1:]])

            features = rows(self.x) if self.noise is None else (rows(self.x), rows(self.noise))
            model.train_step((features, rows(self.y), rows(mask)))
            return (i + 1,)

        @tf.function(jit_compile=jit_compile, autograph=False)
        def epoch():
            (done,) = tf.while_loop(lambda i: i < steps, step, (tf.constant(0),))
            if readout is None:
                return ()
            with tf.control_dependencies([done]):  # after the last step
                return readout()

        self.function = epoch

    def train(self, x: np.ndarray, y: np.ndarray, noise: np.ndarray | None = None,
              masks: np.ndarray | None = None) -> Readout | None:
        """Train an epoch on these rows (and their dropout noise, if the program takes it,
        and each member's row mask); the readout, if the program makes one."""
        padded = self.x.shape[0]
        self.x.assign(self._padded(x, padded))
        self.y.assign(self._padded(y, padded))
        if self.masks is not None and masks is not None:
            self.masks.assign(self._padded(masks, padded))
        if self.noise is not None and noise is not None:
            self.noise.assign(self._padded(noise, padded))
        out = self.function()
        if not out:
            return None
        loss, outputs, *weights = (np.asarray(t) for t in out)
        return loss, outputs, weights

    @staticmethod
    def _padded(rows: np.ndarray, length: int) -> np.ndarray:
        out = np.zeros((length, *rows.shape[1:]), rows.dtype)
        out[:len(rows)] = rows
        return out
