"""Optimizers with per-slot state: a refilled slot starts as a fresh standalone optimizer."""

from __future__ import annotations

import keras
from keras import ops

from regsearch.spec import PACKED_OPTIMIZERS
from regsearch.trainers.packed.layers import MemberWrites


class _SlotMixin(keras.optimizers.Optimizer):
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
                     f"{', '.join(PACKED_OPTIMIZERS)}, not {name!r}; "
                     "use the keras trainer for it")
