"""The packed trainer: K trials trained at once, each slot refilled as its trial ends."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from regsearch import interrupts, metrics
from regsearch.data import Dataset
from regsearch.space import RegConfig
from regsearch.spec import StudySpec
from regsearch.folds import View
from regsearch.states import State
from regsearch.trainers.base import (EpochMetrics, PruneCheck, StopRules,
                                     TrialOutcome, combine)
from regsearch.trainers.keras import KerasTrainer
from regsearch.trainers.packed.backend import (PREDICT_CHUNK, activate, standard_outputs,
                                               start_backend, xla_available)
from regsearch.trainers.packed.epoch import Readout, TensorFlowEpoch
from regsearch.trainers.packed.layers import MemberDataLoss, MemberWrites, PackedNet
from regsearch.trainers.packed.members import MemberData
from regsearch.trainers.packed.optimizers import make_optimizer

_HOST_NOISE_MAX = 1 << 24  # dropout noise numbers held for an epoch (64 MiB)


@dataclass
class _Slot:
    """A trial in the pack: its members (one, or its folds or repeats) and how it goes."""

    config: RegConfig
    rules: StopRules
    prune: PruneCheck
    keep_model: bool
    members: list[int]
    epochs: int = 0
    seconds: float = 0.0
    #: each member's weights and scores at the trial's best epoch so far
    best_weights: list[list[np.ndarray]] | None = field(default=None, repr=False)
    best_members: list[EpochMetrics] = field(default_factory=list, repr=False)
    last_members: list[EpochMetrics] = field(default_factory=list, repr=False)  # latest


class _BatchHook(keras.callbacks.Callback):
    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        interrupts.check()


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
        self.pack_size = int(pack_size)  # trials
        self.rows = MemberData(data, self.pack_size)
        members = self.rows.members
        self.optimizer = make_optimizer(spec.train.optimizer, spec.train.learning_rate,
                                        members)
        self.reference = KerasTrainer(spec, data, metric=metric, direction=direction)
        self.model = PackedNet(members, data.n_features, spec.model.hidden_units,
                               data.output_units, spec.model.activation, data.task,
                               seed=spec.seed, standardizes=self.rows.folds)
        self.loss_metric = MemberDataLoss(members, data.task,
                                          targets=self.model.member_targets)
        # XLA: a packed step is small and its elementwise work (Adam, penalties, dropout) is
        # worth fusing. steps_per_execution: `fit` (JAX) runs an epoch in one compiled call;
        # TensorFlow runs its own epoch program (`TensorFlowEpoch`). A weighted metric, so
        # it is given that program's row mask of a padded last batch.
        steps = max(1, -(-len(self.rows.x_train) // spec.train.batch_size))
        self.model.compile(optimizer=self.optimizer, weighted_metrics=[self.loss_metric],
                           jit_compile=xla_available(), steps_per_execution=steps)
        self.optimizer.build(self.model.trainable_variables)
        self.rng = np.random.default_rng(spec.seed)
        self.noise_rng = np.random.default_rng([spec.seed, 1])  # dropout (`TensorFlowEpoch`)
        self.last_order: np.ndarray | None = None
        self.slots: dict[int, _Slot] = {}
        self.writes = MemberWrites()
        self._hook = _BatchHook()
        self._x_train, self._y_train = self.rows.x_train, self.rows.y_train
        self._tf_epoch: TensorFlowEpoch | None = None

    def reseed(self, seed: int) -> None:
        """Batches and dropout noise from `seed` from now on (confirmation runs: a fresh
        seed is new shuffling and noise as well as new initial weights)."""
        self.rng = np.random.default_rng(seed)
        self.noise_rng = np.random.default_rng([seed, 1])

    def train(self, config: RegConfig, *, seed: int, prune: PruneCheck) -> TrialOutcome:
        """One configuration alone (the `Trainer` protocol): a pack with one busy slot."""
        if self.slots:
            raise RuntimeError("train() needs an idle pack; use assign() and run_epoch()")
        slot = self.assign(config, seed=seed, prune=prune)
        while True:
            finished = self.run_epoch()
            if slot in finished:
                return finished[slot]

    # ------------------------------------------------------------------ slots

    def free_slots(self) -> list[int]:
        return [k for k in range(self.pack_size) if k not in self.slots]

    def occupied(self) -> list[int]:
        return sorted(self.slots)

    def assign(self, config: RegConfig, *, seed: int, prune: PruneCheck,
               keep_model: bool = False, slot: int | None = None) -> int:
        """Start `config` in a free slot (the lowest, or `slot`): fresh weights and state
        for each of its members (member j > 0 of a trial starts from seed (seed, j))."""
        free = self.free_slots()
        if not free:
            raise RuntimeError("no free slot in the pack")
        if slot is None:
            slot = free[0]
        elif slot not in free:
            raise ValueError(f"slot {slot} is not free")
        members = self.rows.of_slot(slot)
        l1, l2 = config.effective()
        for j, member in enumerate(members):
            self.set_member_weights(member, self._initial_weights(
                np.random.default_rng(seed if j == 0 else [seed, j])))
            self.writes.set(self.model.l1, member, l1)
            self.writes.set(self.model.l2, member, l2)
            for drop in self.model.drops:
                self.writes.set(drop.rate, member, config.dropout)
            self.writes.set(self.model.active, member, 1.0)
            if self.model.standardizes:
                for name, value in self.rows.scales(member).items():
                    self.writes.set(getattr(self.model, name), member, value)
            self.optimizer.reset_slot(member, self.writes)
        self.slots[slot] = _Slot(config, StopRules(self.direction, self.spec.train.early_stopping),
                                 prune, keep_model, members)
        return slot

    def _initial_weights(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Glorot-uniform kernels with the standalone layer's fan-in/out, zero biases."""
        weights: list[np.ndarray] = []
        for layer in self.model.dense_layers:
            _, fan_in, fan_out = layer.kernel.shape
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32))
            weights.append(np.zeros((fan_out,), np.float32))
        return weights

    def set_member_weights(self, member: int, weights: list[np.ndarray]) -> None:
        """Standard-model weights (`build_model(...).get_weights()` order) into `member`
        (with one member a trial, a slot's number is its member's)."""
        variables = self._variables()
        if len(weights) != len(variables):
            raise ValueError(f"expected {len(variables)} arrays, got {len(weights)}")
        for var, value in zip(variables, weights):
            self.writes.set(var, member, np.asarray(value, np.float32).reshape(var.shape[1:]))

    def member_weights(self, member: int) -> list[np.ndarray]:
        self.writes.apply()
        return [np.array(keras.ops.convert_to_numpy(v)[member]) for v in self._variables()]

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
            scores = [self._member_epoch(slot, m, train_loss, val_out, hidden)
                      for m in slot.members]
            current, slot.last_members = combine(scores), scores
            keep_going = slot.rules.observe(current, slot.prune)
            if slot.rules.best_epoch == current.epoch:
                slot.best_weights = [[w[m].copy() for w in full] for m in slot.members]
                slot.best_members = scores
            if not keep_going or slot.epochs >= self.spec.train.epochs:
                finished[k] = self._finish(k)
        return finished

    def _member_epoch(self, slot: _Slot, member: int, train_loss: np.ndarray,
                      val_out: np.ndarray, hidden: list[np.ndarray]) -> EpochMetrics:
        """One member's scores of the epoch: data losses, its objective, its penalty."""
        view = self.rows.view(member)
        val_loss, val_metric = self._evaluate(self.rows.validation(val_out, member),
                                              view.y_val, view)
        l1, l2 = map(np.float32, slot.config.effective())
        with np.errstate(all="ignore"):  # a diverged member's penalty is inf: it fails
            penalty = float(sum(float(l1 * np.sum(np.abs(w[member]), dtype=np.float32)
                                      + l2 * np.sum(np.square(w[member]), dtype=np.float32))
                                for w in hidden))
        return EpochMetrics(epoch=slot.epochs, train_loss=float(train_loss[member]),
                            val_loss=val_loss, val_metric=val_metric, penalty=penalty)

    def _train_epoch(self, order: np.ndarray) -> Readout:
        """One pass over the training rows in `order`, as each backend runs it fastest; then
        what the epoch's scores need (`Readout`).

        On TensorFlow one compiled program runs the whole epoch and its readout
        (`TensorFlowEpoch`); other backends go through `fit`, which on JAX iterates NumPy
        arrays without such costs, and read out after it.
        """
        x, y = self._x_train[order], self._y_train[order]
        masks = None if self.rows.masks is None else self.rows.masks[order]
        if keras.backend.backend() != "tensorflow":
            self.model.fit(x, y, sample_weight=masks, batch_size=self.spec.train.batch_size,
                           shuffle=False, epochs=1, verbose=0, callbacks=[self._hook])
            return self._readout()
        if self._tf_epoch is None:
            x_val = self.rows.x_val
            # Validation outputs inside the program unless the split needs chunking.
            in_program = 0 < x_val.shape[-2] <= PREDICT_CHUNK
            self._tf_epoch = TensorFlowEpoch(
                self.model, x, y, self.spec.train.batch_size, jit_compile=xla_available(),
                noise_units=self._host_noise_units(),
                member_masks=0 if masks is None else masks.shape[1],
                readout=(lambda: self._readout_tensors(x_val)) if in_program else None)
        self.model.reset_metrics()
        noise = None
        if self._tf_epoch.noise is not None and any(s.config.dropout for s in self.slots.values()):
            noise = self.noise_rng.random((len(x), self.model.noise_units), np.float32)
        readout = self._tf_epoch.train(x, y, noise, masks)
        self._hook.on_train_batch_end(0)
        return readout or self._readout()

    def _host_noise_units(self) -> int:
        """Noise columns for the epoch program to take from NumPy; 0 (the model draws its
        own) when an epoch's worth would be large: it is held in memory beside the rows."""
        units = self.model.noise_units
        return units if len(self._x_train) * units <= _HOST_NOISE_MAX else 0

    def _readout(self) -> Readout:
        return (np.asarray(keras.ops.convert_to_numpy(self.loss_metric.result())),
                self._outputs(self.rows.x_val),
                [np.asarray(keras.ops.convert_to_numpy(v)) for v in self._variables()])

    def _readout_tensors(self, x_val: np.ndarray) -> tuple:
        """`_readout` as tensors of a compiled program: (loss, outputs, *weights)."""
        outputs = activate(self.model(x_val, training=False), self.data.task)
        return (self.loss_metric.result(), outputs, *(v.value for v in self._variables()))

    def _finish(self, k: int) -> TrialOutcome:
        slot = self.slots[k]
        outcome = slot.rules.outcome(slot.seconds)
        if outcome.state != State.FAILED and slot.best_weights is not None:
            for member, weights in zip(slot.members, slot.best_weights):
                self.set_member_weights(member, weights)
            n_hidden = len(self.model.hidden)
            outcome.near_zero_share = float(np.mean([metrics.near_zero_share(
                [weights[2 * i] for i in range(n_hidden)]) for weights in slot.best_weights]))
            outcome.train_eval_loss = float(np.mean([
                self._train_eval_loss(member, weights)
                for member, weights in zip(slot.members, slot.best_weights)]))
            if len(self.rows.x_test):
                outputs = self._outputs(self.rows.x_test)
                outcome.test_metric = float(np.mean([self._evaluate(
                    outputs[m], self.rows.view(m).y_test, self.rows.view(m))[1]
                    for m in slot.members]))
            if len(slot.members) > 1:
                outcome.member_values = [m.val_metric for m in slot.best_members]
            if slot.keep_model:
                outcome.model = self.export(k)
        for member in slot.members:
            self.writes.set(self.model.active, member, 0.0)
        del self.slots[k]
        return outcome

    # ------------------------------------------------------------------ inference

    def _train_eval_loss(self, member: int, weights: list[np.ndarray]) -> float:
        """The member's training rows' data loss, dropout off (as its validation loss is)."""
        view = self.rows.view(member)
        outputs = standard_outputs(weights, view.x_train, activation=self.spec.model.activation,
                                   task=self.data.task)
        return metrics.data_loss(self.data.task, view.y_train, outputs)

    def predict(self, slot: int, x: np.ndarray) -> np.ndarray:
        """The inference outputs (dropout off) of the slot's trial (its first member), as
        its exported model gives them."""
        return self._outputs(x)[self.rows.member(slot)]

    def export(self, slot: int) -> keras.Sequential:
        """The standard model (`build_model`, compiled as the keras trainer does) of the
        slot's trial (its first member); a fold's model is not one (its rows are raw)."""
        if slot not in self.slots:
            raise ValueError(f"slot {slot} is empty")
        if self.rows.folds:
            raise ValueError("a cross-validated trial's fold models are not exported; "
                             "export trains the configuration on the whole split")
        model = self.reference.build(self.slots[slot].config)
        model.set_weights(self.member_weights(self.rows.member(slot)))
        return model

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        """(members, N, out) probabilities / values, dropout off; `x` is (N, features) for
        all members or (members, N, features), one set of rows each."""
        self.writes.apply()
        x = np.asarray(x, np.float32)
        rows = x.shape[-2]
        parts = []
        for i in range(0, rows, PREDICT_CHUNK):
            chunk = x[..., i:i + PREDICT_CHUNK, :]
            out = self.model.predict_on_batch(chunk)  # compiled call
            parts.append(np.asarray(keras.ops.convert_to_numpy(activate(out, self.data.task))))
        if not parts:
            return np.zeros((self.rows.members, 0, self.data.output_units), np.float32)
        return np.concatenate(parts, axis=1)

    def _evaluate(self, y_pred: np.ndarray, y: np.ndarray,
                  view: View | None = None) -> tuple[float, float]:
        """(data loss, objective) of outputs against targets, in the target's units of
        `view` (a fold's standardization; the data set's when None)."""
        scale = view or self.data
        return metrics.data_loss_and_score(self.metric, self.data.task, y, y_pred,
                                           target_mean=scale.target_mean,
                                           target_std=scale.target_std)

    # ------------------------------------------------------------------ helpers

    def _variables(self) -> list:
        return [v for layer in self.model.dense_layers for v in (layer.kernel, layer.bias)]
