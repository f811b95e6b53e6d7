"""The packed trainer: K trials trained at once as one Keras model with a member axis.

Every Dense weight carries a leading member axis (kernel ``(K, in, out)``, bias
``(K, out)``). The input batch is shared by all members; per-member L1/L2 coefficients,
dropout rates and an "active" mask are non-trainable variables of shape ``(K,)``, so the
train step is traced once per architecture and reused for every pack of trials.

The loss is the sum over members of each member's own loss (mean data loss over the
batch plus its own L1/L2 penalty, as ``keras.regularizers`` compute it; the penalty enters
through its gradient alone, see `PackedNet.penalties`). Members share no parameter, so the
gradient of member k is exactly the gradient its standalone model would get on the same
batch; the optimizer keeps per-slot step counts so Adam's bias correction
restarts when a slot is refilled. A member is exported as the standard model of
`regsearch.model.build_model` with its weights.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
from keras import ops

from regsearch import compile_cache, interrupts, metrics
from regsearch.data import Dataset
from regsearch.model import OUTPUT_ACTIVATION
from regsearch.space import RegConfig
from regsearch.spec import StudySpec
from regsearch.trainers.base import (FAILED, EpochMetrics, PruneCheck, StopRules,
                                     TrialOutcome)
from regsearch.trainers.keras import KerasTrainer

SUPPORTED_OPTIMIZERS = ("adam", "sgd")
CPU_PACK_CAP = 64
GPU_PACK_CAP = 256
_PREDICT_CHUNK = 8192
_HOST_NOISE_MAX = 1 << 24  # dropout noise numbers held for an epoch (64 MiB)


# --------------------------------------------------------------------------- layers

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


def member_sample_losses(task: str, y_true, logits):
    """(K, B) per-sample data losses, computed as Keras computes them for the task.

    The output activation goes through `keras.ops` so that, as for a standard model, the
    TensorFlow backend takes the cross-entropy from the logits and JAX from the clipped
    probabilities.
    """
    members, batch = logits.shape[0], ops.shape(logits)[1]
    if task == "multiclass":
        target = ops.broadcast_to(ops.expand_dims(ops.cast(y_true, "int32"), 0),
                                  (members, batch))
        return ops.sparse_categorical_crossentropy(target, ops.softmax(logits, axis=-1))
    target = ops.reshape(ops.cast(y_true, logits.dtype), (1, batch, 1))
    target = ops.broadcast_to(target, (members, batch, 1))
    if task == "binary":
        return ops.mean(ops.binary_crossentropy(target, ops.sigmoid(logits)), axis=-1)
    return ops.mean(ops.square(target - logits), axis=-1)


def _masked_sum(losses, row_mask):
    """(K,) sums of (K, B) per-sample losses over the real rows, and how many there are.

    A mask of 1/0 per row marks the padding of a short last batch (`None`: all rows real);
    `where`, not a product, so a padding row's non-finite loss cannot leak into a sum.
    """
    if row_mask is None:
        return ops.sum(losses, axis=1), ops.shape(losses)[1]
    real = ops.greater(ops.reshape(row_mask, (1, -1)), 0)
    return (ops.sum(ops.where(real, losses, ops.zeros_like(losses)), axis=1),
            ops.sum(ops.cast(row_mask, losses.dtype)))


class MemberDataLoss(keras.metrics.Metric):
    """Per-member mean data loss over the samples seen (training mode), shape (K,)."""

    def __init__(self, members: int, task: str, name: str = "member_data_loss") -> None:
        super().__init__(name=name)
        self.task = task
        self.total = self.add_variable(shape=(members,), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        losses = member_sample_losses(self.task, y_true, y_pred)
        total, count = _masked_sum(losses, sample_weight)
        self.total.assign_add(total)
        self.count.assign_add(ops.cast(count, self.count.dtype))

    def result(self):
        return self.total / self.count

    def reset_state(self):
        self.total.assign(ops.zeros(self.total.shape, self.total.dtype))
        self.count.assign(ops.zeros(self.count.shape, self.count.dtype))


@ops.custom_gradient
def _penalty_gradient(kernel, l1, l2):  # noqa: ANN001, ANN202 - backend tensors
    """Zero, with the gradient of `l1 * sum|kernel| + l2 * sum(kernel**2)` per member."""
    shape = (-1,) + (1,) * (len(kernel.shape) - 1)

    def gradient(*args, upstream=None):  # noqa: ANN001, ANN202
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
                 output_units: int, activation: str, task: str, seed: int) -> None:
        super().__init__(name="regsearch_packed")
        self.members, self.task = members, task
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
        alone were ~15 % of a step.
        """
        total = ops.zeros((self.members,))
        for layer in self.hidden:
            total = total + _penalty_gradient(layer.kernel, self.l1, self.l2)
        return total

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                     training=True):
        total, count = _masked_sum(member_sample_losses(self.task, y, y_pred), sample_weight)
        per_member = total / ops.cast(count, total.dtype) + self.penalties()
        # where, not a product: a diverged member's NaN must not reach the others.
        keep = ops.logical_and(ops.greater(self.active, 0.5), ops.isfinite(per_member))
        return ops.sum(ops.where(keep, per_member, ops.zeros_like(per_member)))


class MemberWrites:
    """Rows of member-axis variables to write, applied one assignment per variable.

    Starting a trial writes a row of some 30 variables; one device op per row costs ~2 ms
    on TensorFlow, so a full pack would spend seconds starting. Rows are staged and
    applied together before anything reads or trains.
    """

    def __init__(self) -> None:
        self._rows: dict[int, tuple] = {}

    def set(self, var, slot: int, value) -> None:  # noqa: ANN001 - a variable, a value
        self._rows.setdefault(id(var), (var, {}))[1][slot] = np.asarray(value)

    def apply(self) -> None:
        for var, rows in self._rows.values():
            full = np.array(keras.ops.convert_to_numpy(var))
            for slot, value in rows.items():
                full[slot] = value
            var.assign(full)
        self._rows.clear()


# --------------------------------------------------------------------------- optimizers

class _SlotMixin:
    """Per-slot optimizer state: reset a slot's moments and restart its step count."""

    members: int

    def _slot_state(self) -> list:
        return []

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.slot_start = self.add_variable(shape=(self.members,), initializer="zeros",
                                            dtype="float32", name="slot_start")

    def reset_slot(self, slot: int, writes: MemberWrites) -> None:
        for var in self._slot_state():
            writes.set(var, slot, 0.0)
        writes.set(self.slot_start, slot, float(keras.ops.convert_to_numpy(self.iterations)))


class SlotAdam(_SlotMixin, keras.optimizers.Adam):
    """keras.optimizers.Adam with bias correction on each slot's own step count."""

    def __init__(self, members: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.members = members

    def _slot_state(self) -> list:
        return [*self._momentums, *self._velocities]

    def update_step(self, gradient, variable, learning_rate):
        # keras.optimizers.Adam.update_step (amsgrad off) with local_step per slot.
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype) - ops.cast(
            self.slot_start, variable.dtype)
        local_step = ops.reshape(local_step, (self.members,) + (1,) * (len(variable.shape) - 1))
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)

        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]

        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)

        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v),
                                        1 - self.beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha),
                                             ops.add(ops.sqrt(v), self.epsilon)))


class SlotSGD(_SlotMixin, keras.optimizers.SGD):
    """keras.optimizers.SGD; only the momentum (if any) is per-slot state."""

    def __init__(self, members: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.members = members

    def _slot_state(self) -> list:
        return list(self.momentums)


def make_optimizer(name: str, learning_rate: float, members: int) -> keras.Optimizer:
    if name == "adam":
        return SlotAdam(members, learning_rate=learning_rate)
    if name == "sgd":
        return SlotSGD(members, learning_rate=learning_rate)
    raise ValueError(f"the packed trainer supports the optimizers "
                     f"{', '.join(SUPPORTED_OPTIMIZERS)}, not {name!r}; "
                     "use the keras trainer for it")


# --------------------------------------------------------------------------- trainer

@dataclass
class _Slot:
    config: RegConfig
    rules: StopRules
    prune: PruneCheck
    keep_model: bool
    epochs: int = 0
    seconds: float = 0.0
    best_weights: list[np.ndarray] | None = field(default=None, repr=False)


class _BatchHook(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.check()


def _xla_available() -> bool:
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
    if _xla_available():
        compile_cache.enable(keras.backend.backend())


#: After an epoch: each member's mean training data loss (K,), its validation outputs
#: (K, N, out) and its weights (K, ...) in `build_model(...).get_weights()` order.
_Readout = tuple[np.ndarray, np.ndarray, list[np.ndarray]]


def _activate(logits, task: str):  # noqa: ANN001, ANN202 - backend tensors
    """The standard model's output activation on the packed logits."""
    activation = OUTPUT_ACTIVATION[task]
    if activation == "softmax":
        return ops.softmax(logits, axis=-1)
    if activation == "sigmoid":
        return ops.sigmoid(logits)
    return logits


def _effective(config: RegConfig) -> tuple[float, float]:
    l1 = config.l1 if config.regularizer in ("l1", "l1_l2") else 0.0
    l2 = config.l2 if config.regularizer in ("l2", "l1_l2") else 0.0
    return float(l1), float(l2)


class PackedTrainer:
    """Up to `pack_size` trials trained together, one shuffled epoch at a time."""

    name = "packed"

    def __init__(self, spec: StudySpec, data: Dataset, *, metric: str, direction: str,
                 pack_size: int) -> None:
        if pack_size < 1:
            raise ValueError(f"pack_size must be at least 1, not {pack_size}")
        start_backend()
        self.spec, self.data = spec, data
        self.metric, self.direction = metric, direction
        self.pack_size = int(pack_size)
        self.optimizer = make_optimizer(spec.train.optimizer, spec.train.learning_rate,
                                        self.pack_size)
        self.reference = KerasTrainer(spec, data, metric=metric, direction=direction)
        self.model = PackedNet(self.pack_size, data.n_features, spec.model.hidden_units,
                               data.output_units, spec.model.activation, data.task,
                               seed=spec.seed)
        self.loss_metric = MemberDataLoss(self.pack_size, data.task)
        # XLA: a packed step is small and its elementwise work (Adam, penalties, dropout) is
        # worth fusing. steps_per_execution: `fit` (JAX) runs an epoch in one compiled call;
        # TensorFlow runs its own epoch program (`_TensorFlowEpoch`). A weighted metric, so
        # it is given that program's row mask of a padded last batch.
        steps = max(1, -(-len(data.x_train) // spec.train.batch_size))
        self.model.compile(optimizer=self.optimizer, weighted_metrics=[self.loss_metric],
                           jit_compile=_xla_available(), steps_per_execution=steps)
        self.optimizer.build(self.model.trainable_variables)
        self.rng = np.random.default_rng(spec.seed)
        self.noise_rng = np.random.default_rng([spec.seed, 1])  # dropout (`_TensorFlowEpoch`)
        self.last_order: np.ndarray | None = None
        self.slots: dict[int, _Slot] = {}
        self.writes = MemberWrites()
        self._hook = _BatchHook()
        self._x_train = np.asarray(data.x_train, np.float32)
        self._y_train = np.asarray(data.y_train)
        self._tf_epoch: _TensorFlowEpoch | None = None

    def reseed(self, seed: int) -> None:
        """Batches and dropout noise from `seed` from now on (confirmation runs: a fresh
        seed is new shuffling and noise as well as new initial weights)."""
        self.rng = np.random.default_rng(seed)
        self.noise_rng = np.random.default_rng([seed, 1])

    # ------------------------------------------------------------------ slots

    def free_slots(self) -> list[int]:
        return [k for k in range(self.pack_size) if k not in self.slots]

    def occupied(self) -> list[int]:
        return sorted(self.slots)

    def assign(self, config: RegConfig, *, seed: int, prune: PruneCheck,
               keep_model: bool = False, slot: int | None = None) -> int:
        """Start `config` in a free slot (the lowest, or `slot`): fresh weights and state."""
        free = self.free_slots()
        if not free:
            raise RuntimeError("no free slot in the pack")
        if slot is None:
            slot = free[0]
        elif slot not in free:
            raise ValueError(f"slot {slot} is not free")
        rng = np.random.default_rng(seed)
        weights: list[np.ndarray] = []
        for layer in self.model.dense_layers:
            _, fan_in, fan_out = layer.kernel.shape
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
            weights.append(np.zeros((fan_out,), np.float32))
        self.set_member_weights(slot, weights)
        l1, l2 = _effective(config)
        self.writes.set(self.model.l1, slot, l1)
        self.writes.set(self.model.l2, slot, l2)
        for drop in self.model.drops:
            self.writes.set(drop.rate, slot, config.dropout)
        self.writes.set(self.model.active, slot, 1.0)
        self.optimizer.reset_slot(slot, self.writes)
        self.slots[slot] = _Slot(config, StopRules(self.direction, self.spec.train.early_stopping),
                                 prune, keep_model)
        return slot

    def set_member_weights(self, slot: int, weights: list[np.ndarray]) -> None:
        """Standard-model weights (`build_model(...).get_weights()` order) into `slot`."""
        variables = self._variables()
        if len(weights) != len(variables):
            raise ValueError(f"expected {len(variables)} arrays, got {len(weights)}")
        for var, value in zip(variables, weights):
            self.writes.set(var, slot, np.asarray(value, np.float32).reshape(var.shape[1:]))

    def member_weights(self, slot: int) -> list[np.ndarray]:
        self.writes.apply()
        return [np.array(keras.ops.convert_to_numpy(v)[slot]) for v in self._variables()]

    # ------------------------------------------------------------------ training

    def batches(self, order: np.ndarray) -> list[np.ndarray]:
        size = self.spec.train.batch_size
        return [order[i:i + size] for i in range(0, len(order), size)]

    def last_batches(self) -> list[np.ndarray]:
        """The batches (index arrays into x_train) of the last `run_epoch`, in order."""
        return self.batches(self.last_order) if self.last_order is not None else []

    def run_epoch(self, *, order: np.ndarray | None = None) -> dict[int, TrialOutcome]:
        """One shuffled pass for every occupied slot; returns the trials that finished.

        `order` (a permutation of the training rows) replaces the trainer's own shuffle;
        tests use it to replay batches.
        """
        if not self.slots:
            return {}
        started = time.perf_counter()
        self.writes.apply()
        n = len(self._x_train)
        order = self.rng.permutation(n) if order is None else np.asarray(order)
        self.last_order = order
        train_loss, val_out, full = self._train_epoch(order)
        hidden = full[0:2 * len(self.model.hidden):2]
        share = (time.perf_counter() - started) / len(self.slots)

        finished: dict[int, TrialOutcome] = {}
        for k in self.occupied():
            slot = self.slots[k]
            slot.epochs += 1
            slot.seconds += share
            val_loss, val_metric = self._evaluate(val_out[k], self.data.y_val)
            l1, l2 = map(np.float32, _effective(slot.config))
            with np.errstate(all="ignore"):  # a diverged member's penalty is inf: it fails
                penalty = float(sum(float(l1 * np.sum(np.abs(w[k]), dtype=np.float32)
                                          + l2 * np.sum(np.square(w[k]), dtype=np.float32))
                                    for w in hidden))
            current = EpochMetrics(epoch=slot.epochs, train_loss=float(train_loss[k]),
                                   val_loss=val_loss, val_metric=val_metric, penalty=penalty)
            keep_going = slot.rules.observe(current, slot.prune)
            if slot.rules.best_epoch == current.epoch:
                slot.best_weights = [w[k].copy() for w in full]
            if not keep_going or slot.epochs >= self.spec.train.epochs:
                finished[k] = self._finish(k)
        return finished

    def _train_epoch(self, order: np.ndarray) -> _Readout:
        """One pass over the training rows in `order`, as each backend runs it fastest; then
        what the epoch's scores need (`_Readout`).

        On TensorFlow one compiled program runs the whole epoch and its readout
        (`_TensorFlowEpoch`); other backends go through `fit`, which on JAX iterates NumPy
        arrays without such costs, and read out after it.
        """
        x, y = self._x_train[order], self._y_train[order]
        if keras.backend.backend() != "tensorflow":
            self.model.fit(x, y, batch_size=self.spec.train.batch_size, shuffle=False,
                           epochs=1, verbose=0, callbacks=[self._hook])
            return self._readout()
        if self._tf_epoch is None:
            x_val = np.asarray(self.data.x_val, np.float32)
            # Validation outputs inside the program unless the split needs chunking.
            in_program = 0 < len(x_val) <= _PREDICT_CHUNK
            self._tf_epoch = _TensorFlowEpoch(
                self.model, x, y, self.spec.train.batch_size, jit_compile=_xla_available(),
                noise_units=self._host_noise_units(),
                readout=(lambda: self._readout_tensors(x_val)) if in_program else None)
        self.model.reset_metrics()
        noise = None
        if self._tf_epoch.noise is not None and any(s.config.dropout for s in self.slots.values()):
            noise = self.noise_rng.random((len(x), self.model.noise_units), np.float32)
        readout = self._tf_epoch.train(x, y, noise)
        self._hook.on_train_batch_end(0)
        return readout or self._readout()

    def _host_noise_units(self) -> int:
        """Noise columns for the epoch program to take from NumPy; 0 (the model draws its
        own) when an epoch's worth would be large: it is held in memory beside the rows."""
        units = self.model.noise_units
        return units if len(self._x_train) * units <= _HOST_NOISE_MAX else 0

    def _readout(self) -> _Readout:
        return (np.asarray(keras.ops.convert_to_numpy(self.loss_metric.result())),
                self._outputs(self.data.x_val),
                [np.asarray(keras.ops.convert_to_numpy(v)) for v in self._variables()])

    def _readout_tensors(self, x_val: np.ndarray) -> tuple:
        """`_readout` as tensors of a compiled program: (loss, outputs, *weights)."""
        outputs = _activate(self.model(x_val, training=False), self.data.task)
        return (self.loss_metric.result(), outputs, *(v.value for v in self._variables()))

    def _finish(self, k: int) -> TrialOutcome:
        slot = self.slots[k]
        outcome = slot.rules.outcome(slot.seconds)
        if outcome.state != FAILED and slot.best_weights is not None:
            self.set_member_weights(k, slot.best_weights)
            n_hidden = len(self.model.hidden)
            outcome.near_zero_share = metrics.near_zero_share(
                [slot.best_weights[2 * i] for i in range(n_hidden)])
            if len(self.data.x_test):
                outcome.test_metric = self._evaluate(self.predict(k, self.data.x_test),
                                                     self.data.y_test)[1]
            if slot.keep_model:
                outcome.model = self.export(k)
        self.writes.set(self.model.active, k, 0.0)
        del self.slots[k]
        return outcome

    # ------------------------------------------------------------------ inference

    def predict(self, slot: int, x: np.ndarray) -> np.ndarray:
        """Member `slot`'s inference outputs (dropout off), as its exported model gives."""
        return self._outputs(x)[slot]

    def export(self, slot: int) -> keras.Sequential:
        """The standard model (`build_model`, compiled as the keras trainer does)."""
        if slot not in self.slots:
            raise ValueError(f"slot {slot} is empty")
        model = self.reference.build(self.slots[slot].config)
        model.set_weights(self.member_weights(slot))
        return model

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        """(K, N, out) probabilities / values for all members, dropout off."""
        self.writes.apply()
        x = np.asarray(x, np.float32)
        parts = []
        for i in range(0, len(x), _PREDICT_CHUNK):
            out = self.model.predict_on_batch(x[i:i + _PREDICT_CHUNK])  # compiled call
            parts.append(np.asarray(keras.ops.convert_to_numpy(_activate(out, self.data.task))))
        if not parts:
            return np.zeros((self.pack_size, 0, self.data.output_units), np.float32)
        return np.concatenate(parts, axis=1)

    def _evaluate(self, y_pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        d = self.data
        return metrics.data_loss_and_score(self.metric, d.task, y, y_pred,
                                           target_mean=d.target_mean, target_std=d.target_std)

    # ------------------------------------------------------------------ helpers

    def _variables(self) -> list:
        return [v for layer in self.model.dense_layers for v in (layer.kernel, layer.bias)]



class _TensorFlowEpoch:
    """A whole epoch as one compiled TensorFlow program: every step, no Python in between.

    Keras's `fit` (and its train function with `steps_per_execution`) runs the steps in a
    graph loop that launches one XLA program per step and pulls each batch from `tf.data`;
    for a packed step of a few milliseconds that costs as much again as the step (measured
    at 16 members of 64-64-64 on digits: 47 ms an epoch as one program, 78-135 ms through
    Keras's train function). Here the loop itself is compiled: each epoch's shuffled rows
    are assigned to two variables and batch i is a slice of them. The last, short batch is
    padded to full size with a row mask (the `sample_weight` that `PackedNet.compute_loss`
    and `MemberDataLoss` read), so every step has one shape and the step is traced once.

    The dropout noise comes the same way, drawn by NumPy for the whole epoch (`train`'s
    `noise`): XLA's CPU random-number code took ~15 % of a 16-member step on digits, NumPy
    draws an epoch's worth in well under a millisecond. Without `noise_units` the model
    draws its own (`MemberDropout`).
    """

    def __init__(self, model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int, *,
                 jit_compile: bool, noise_units: int = 0,
                 readout: Callable[[], tuple] | None = None) -> None:
        import tensorflow as tf

        steps = -(-len(x) // batch_size)
        padded = steps * batch_size
        self.x = tf.Variable(self._padded(x, padded), trainable=False)
        self.y = tf.Variable(self._padded(y, padded), trainable=False)
        self.noise = (tf.Variable(np.zeros((padded, noise_units), np.float32), trainable=False)
                      if noise_units else None)
        mask = tf.constant(self._padded(np.ones(len(x), np.float32), padded))

        def step(i):  # noqa: ANN001, ANN202 - a graph tensor
            def rows(t):  # noqa: ANN001, ANN202 - batch i, with a static shape for XLA
                return tf.slice(t, [i * batch_size] + [0] * (t.shape.rank - 1),
                                [batch_size, *t.shape[1:]])

            features = rows(self.x) if self.noise is None else (rows(self.x), rows(self.noise))
            model.train_step((features, rows(self.y), rows(mask)))
            return (i + 1,)

        @tf.function(jit_compile=jit_compile, autograph=False)
        def epoch():  # noqa: ANN202 - tensors
            (done,) = tf.while_loop(lambda i: i < steps, step, (tf.constant(0),))
            if readout is None:
                return ()
            with tf.control_dependencies([done]):  # after the last step
                return readout()

        self.function = epoch

    def train(self, x: np.ndarray, y: np.ndarray,
              noise: np.ndarray | None = None) -> _Readout | None:
        """Train an epoch on these rows (and their dropout noise, if the program takes it);
        the readout, if the program makes one."""
        padded = self.x.shape[0]
        self.x.assign(self._padded(x, padded))
        self.y.assign(self._padded(y, padded))
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


# --------------------------------------------------------------------------- pack size

def member_parameters(spec: StudySpec, data: Dataset) -> int:
    widths = [data.n_features, *spec.model.hidden_units, data.output_units]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:]))


def _gpu_memory() -> int | None:
    """Bytes of accelerator memory, or None on a CPU-only backend."""
    start_backend()  # the device query below starts the backend
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform == "cpu":
                return None
            stats = device.memory_stats() or {}
            return int(stats.get("bytes_limit", 16 << 30))
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if not gpus:
                return None
            details = tf.config.experimental.get_device_details(gpus[0])
            return int(details.get("memory_limit", 16 << 30)) if details else 16 << 30
    except Exception:  # noqa: BLE001 - any failure: treat as unknown size
        return 16 << 30 if backend != "jax" else None
    return None


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def choose_pack_size(spec: StudySpec, data: Dataset, override: int | None) -> int:
    """How many trials to pack: `override`, else what a quarter of free memory holds.

    Per member: weights, gradients, two optimizer moments and a best-epoch copy (6x the
    parameters) plus training activations for one batch and inference over the largest
    held-out split; capped at 64 on CPU and 256 with a GPU.
    """
    if override is not None:
        if override < 1:
            raise ValueError(f"pack size must be at least 1, not {override}")
        return int(override)
    params = member_parameters(spec, data)
    units = sum(spec.model.hidden_units) + data.output_units
    rows = max(spec.train.batch_size * 4, min(_PREDICT_CHUNK, max(len(data.x_val),
                                                                 len(data.x_test))))
    per_member = 4 * (6 * params + rows * units)
    gpu = _gpu_memory()
    budget, cap = (gpu // 2, GPU_PACK_CAP) if gpu else (_host_memory() // 4, CPU_PACK_CAP)
    return int(max(1, min(cap, budget // max(per_member, 1))))
