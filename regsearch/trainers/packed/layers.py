"""The packed model's parts: Dense layers and dropout with a member axis, per-member losses.

Every Dense weight carries a leading member axis (kernel ``(K, in, out)``, bias ``(K, out)``).
The input batch is shared by all members; per-member L1/L2 coefficients, dropout rates and
an "active" mask are non-trainable variables of shape ``(K,)``, so the train step is traced
once per architecture and reused for every pack of trials.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class PackedDense(keras.layers.Layer):
    """K independent Dense layers: (B, in) or (K, B, in) -> (K, B, units)."""

    def __init__(self, members: int, units: int, activation: str | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.members, self.units = members, units
        self.activation = keras.activations.get(activation)

    def build(self, input_shape) -> None:
        fan_in = int(input_shape[-1])
        # Zeros here: each member's Glorot-uniform start is drawn by the trainer with the
        # standalone layer's fan_in/fan_out (a (K, in, out) Glorot would shrink it by ~√K).
        self.kernel = self.add_weight(shape=(self.members, fan_in, self.units),
                                      initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.members, self.units),
                                    initializer="zeros", name="bias")

    def call(self, inputs):
        if len(inputs.shape) == 2:
            out = ops.einsum("bi,kio->kbo", inputs, self.kernel)
        else:
            out = ops.matmul(inputs, self.kernel)
        return self.activation(out + ops.expand_dims(self.bias, 1))


class MemberDropout(keras.layers.Layer):
    """Dropout with a per-member rate held in a (K,) variable (0 = identity)."""

    def __init__(self, members: int, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.members = members
        self.rate = self.add_weight(shape=(members,), initializer="zeros",
                                    trainable=False, name="rate")
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False, noise=None):
        """`noise`: this step's (B, units) uniform draws, if the caller drew them."""
        if not training:
            return inputs
        rate = ops.reshape(ops.cast(self.rate, inputs.dtype), (self.members, 1, 1))
        # One (1, B, units) draw shared by all members (common random numbers): each
        # member's mask is still Bernoulli(its own rate) per unit, as standalone dropout,
        # and drawing K times fewer numbers is most of a packed step's cost otherwise.
        if noise is None:
            noise = keras.random.uniform((1, *ops.shape(inputs)[1:]),
                                         seed=self.seed_generator, dtype=inputs.dtype)
        else:
            noise = ops.expand_dims(ops.cast(noise, inputs.dtype), 0)
        return ops.where(ops.greater_equal(noise, rate), inputs / (1.0 - rate),
                         ops.zeros_like(inputs))


def member_sample_losses(task: str, y_true, logits, targets=None):
    """(K, B) per-sample data losses, computed as Keras computes them for the task.

    The output activation goes through `keras.ops` so that, as for a standard model, the
    TensorFlow backend takes the cross-entropy from the logits and JAX from the clipped
    probabilities. `targets`: each member's own (K, B) regression targets (its fold's
    standardization), instead of `y_true` for all.
    """
    members, batch = logits.shape[0], ops.shape(logits)[1]
    if task == "multiclass":
        target = ops.broadcast_to(ops.expand_dims(ops.cast(y_true, "int32"), 0),
                                  (members, batch))
        return ops.sparse_categorical_crossentropy(target, ops.softmax(logits, axis=-1))
    if targets is not None:
        target = ops.expand_dims(ops.cast(targets, logits.dtype), -1)
    else:
        target = ops.reshape(ops.cast(y_true, logits.dtype), (1, batch, 1))
        target = ops.broadcast_to(target, (members, batch, 1))
    if task == "binary":
        return ops.mean(ops.binary_crossentropy(target, ops.sigmoid(logits)), axis=-1)
    return ops.mean(ops.square(target - logits), axis=-1)


def _masked_sum(losses, row_mask):
    """(K,) sums of (K, B) per-sample losses over the real rows, and how many there are.

    A mask of 1/0 per row (B,) marks the padding of a short last batch (`None`: all rows
    real); one per row and member (B, K) also marks the rows a member must not train on
    (its own validation fold). `where`, not a product, so a masked row's non-finite loss
    cannot leak into a sum.
    """
    if row_mask is None:
        return ops.sum(losses, axis=1), ops.shape(losses)[1]
    if len(row_mask.shape) == 2:
        mask = ops.transpose(ops.cast(row_mask, losses.dtype))
        real = ops.greater(mask, 0)
        return (ops.sum(ops.where(real, losses, ops.zeros_like(losses)), axis=1),
                ops.sum(mask, axis=1))
    real = ops.greater(ops.reshape(row_mask, (1, -1)), 0)
    return (ops.sum(ops.where(real, losses, ops.zeros_like(losses)), axis=1),
            ops.sum(ops.cast(row_mask, losses.dtype)))


class MemberDataLoss(keras.metrics.Metric):
    """Per-member mean data loss over the samples seen (training mode), shape (K,)."""

    def __init__(self, members: int, task: str, name: str = "member_data_loss",
                 targets=None) -> None:
        super().__init__(name=name)
        self.task, self.targets = task, targets
        self.total = self.add_variable(shape=(members,), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(members,), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        targets = self.targets(y_true) if self.targets is not None else None
        losses = member_sample_losses(self.task, y_true, y_pred, targets)
        total, count = _masked_sum(losses, sample_weight)
        self.total.assign_add(total)
        self.count.assign_add(ops.cast(count, self.count.dtype))

    def result(self):
        return self.total / self.count

    def reset_state(self):
        self.total.assign(ops.zeros(self.total.shape, self.total.dtype))
        self.count.assign(ops.zeros(self.count.shape, self.count.dtype))


@ops.custom_gradient
def _penalty_gradient(kernel, l1, l2):
    """Zero, with the gradient of `l1 * sum|kernel| + l2 * sum(kernel**2)` per member."""
    shape = (-1,) + (1,) * (len(kernel.shape) - 1)

    def gradient(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        scale = ops.reshape(upstream, shape)
        l1_, l2_ = ops.reshape(l1, shape), ops.reshape(l2, shape)
        return (scale * (l1_ * ops.sign(kernel) + 2.0 * l2_ * kernel),
                ops.zeros_like(l1), ops.zeros_like(l2))

    return ops.zeros((kernel.shape[0],), kernel.dtype), gradient


class PackedNet(keras.Model):
    """The fused model: returns logits (K, B, out); loss = Σ_k active members' losses."""

    traces = 0  # training-mode traces, for tests (the call body runs only when traced)

    def __init__(self, members: int, n_features: int, hidden_units: tuple[int, ...],
                 output_units: int, activation: str, task: str, seed: int,
                 standardizes: bool = False) -> None:
        super().__init__(name="regsearch_packed")
        self.members, self.task = members, task
        self.standardizes = standardizes
        if standardizes:  # each member's own feature (and target) standardization: folds
            def row(name: str, width: tuple[int, ...] = ()) -> keras.Variable:
                return self.add_weight(shape=(members, *width), initializer="zeros",
                                       trainable=False, name=name)
            self.shift, self.scale = row("shift", (n_features,)), row("scale", (n_features,))
            self.target_shift, self.target_scale = row("target_shift"), row("target_scale")
        self.hidden = [PackedDense(members, u, activation, name=f"dense_{i}")
                       for i, u in enumerate(hidden_units, start=1)]
        self.drops = [MemberDropout(members, seed=seed + i, name=f"dropout_{i}")
                      for i in range(1, len(hidden_units) + 1)]
        self.head = PackedDense(members, output_units, None, name="output")
        self.l1 = self.add_weight(shape=(members,), initializer="zeros", trainable=False,
                                  name="l1")
        self.l2 = self.add_weight(shape=(members,), initializer="zeros", trainable=False,
                                  name="l2")
        self.active = self.add_weight(shape=(members,), initializer="zeros",
                                      trainable=False, name="active")
        width = n_features
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.head.build((None, width))
        self.built = True

    @property
    def dense_layers(self) -> list[PackedDense]:
        return [*self.hidden, self.head]

    @property
    def noise_units(self) -> int:
        """Columns of the dropout noise a caller may pass with the features (`call`)."""
        return sum(layer.units for layer in self.hidden)

    def call(self, inputs, training=False):
        """`inputs`: the features (B, in), or (features, noise) with the step's dropout
        noise (B, `noise_units`), uniform in [0, 1), drawn by the caller."""
        if training:
            PackedNet.traces += 1
        h, noise = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        if self.standardizes:  # raw features, (B, in) or (K, B, in) -> (K, B, in)
            h = (h if len(h.shape) == 3 else ops.expand_dims(h, 0))
            h = (h - ops.expand_dims(self.shift, 1)) * ops.expand_dims(self.scale, 1)
        start = 0
        for dense, drop in zip(self.hidden, self.drops):
            columns = None if noise is None else noise[:, start:start + dense.units]
            h = drop(dense(h), training=training, noise=columns)
            start += dense.units
        return self.head(h)

    def penalties(self):
        """(K,) terms whose gradient is each member's L1/L2 penalty gradient, as
        keras.regularizers give it (`l1 * sign(w) + 2 * l2 * w` on the hidden kernels).

        Their value is zero: nothing reads the penalty inside the step (the trainer
        computes it from the weights once an epoch), and on XLA's CPU the reductions
        alone are a noticeable share of a step.
        """
        total = ops.zeros((self.members,))
        for layer in self.hidden:
            total = total + _penalty_gradient(layer.kernel, self.l1, self.l2)
        return total

    def member_targets(self, y):
        """(K, B) regression targets in each member's own standardization; None else."""
        if not (self.standardizes and self.task == "regression"):
            return None
        y = ops.expand_dims(ops.cast(ops.reshape(y, (-1,)), self.target_shift.dtype), 0)
        return (y - ops.expand_dims(self.target_shift, 1)) * ops.expand_dims(
            self.target_scale, 1)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        losses = member_sample_losses(self.task, y, y_pred, self.member_targets(y))
        total, count = _masked_sum(losses, sample_weight)
        per_member = total / ops.cast(count, total.dtype) + self.penalties()
        # where, not a product: a diverged member's NaN must not reach the others.
        keep = ops.logical_and(ops.greater(self.active, 0.5), ops.isfinite(per_member))
        return ops.sum(ops.where(keep, per_member, ops.zeros_like(per_member)))


class MemberWrites:
    """Rows of member-axis variables to write, applied one assignment per variable.

    Starting a trial writes a row of some 30 variables; one device op per row, for a full
    pack, would cost more than its epochs. Rows are staged and
    applied together before anything reads or trains.
    """

    def __init__(self) -> None:
        self._rows: dict[int, tuple] = {}

    def set(self, var, slot: int, value) -> None:
        self._rows.setdefault(id(var), (var, {}))[1][slot] = np.asarray(value)

    def apply(self) -> None:
        for var, rows in self._rows.values():
            full = np.array(keras.ops.convert_to_numpy(var))
            for slot, value in rows.items():
                full[slot] = value
            var.assign(full)
        self._rows.clear()
