"""The packed trainer: each member trains exactly as its standalone Keras model would."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from regsearch import metrics
from regsearch.data import load_dataset
from regsearch.space import RegConfig
from regsearch.objective import resolve_objective
from regsearch.states import State
from regsearch.trainers.keras import KerasTrainer, fit_targets
from regsearch.trainers.packed import PackedNet, PackedTrainer, choose_pack_size

CONFIGS = {
    "none": RegConfig("none"),
    "l1": RegConfig("l1", l1=1e-3),
    "l2": RegConfig("l2", l2=1e-2),
    "l1_l2": RegConfig("l1_l2", l1=1e-3, l2=1e-2),
}
#: Fillers for the other slots of a pack, dropout included.
OTHERS = [RegConfig("l2", l2=1e-4, dropout=0.3), RegConfig("l1", l1=1e-2, dropout=0.1),
          RegConfig("none", dropout=0.5)]


def _never(_metrics) -> bool:
    return False


def _setup(spec, pack_size: int):
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    trainer = PackedTrainer(spec, data, metric=objective.metric,
                            direction=objective.direction, pack_size=pack_size)
    return trainer, data, objective


def _replay(reference: keras.Model, data, batches) -> float:
    """Train the standard model on the same batches; the epoch's mean data loss."""
    total = 0.0
    for idx in batches:
        logs = reference.train_on_batch(data.x_train[idx], fit_targets(data.task,
                                                                       data.y_train[idx]),
                                        return_dict=True)
        total += float(logs["data_loss"]) * len(idx)
    return total / len(data.x_train)


def _val_loss(model: keras.Model, data) -> float:
    return metrics.data_loss(data.task, data.y_val, model.predict(data.x_val, verbose=0))


# ----------------------------------------------------------------- 1. equivalence

@pytest.mark.parametrize("kind", list(CONFIGS))
def test_member_trains_exactly_like_its_standalone_model(make_spec, kind) -> None:
    spec = make_spec(train__epochs=3, model={"hidden_units": [16, 8]})
    trainer, data, _ = _setup(spec, pack_size=4)
    config = CONFIGS[kind]
    for i, other in enumerate(OTHERS[:2]):
        trainer.assign(other, seed=10 + i, prune=_never)
    slot = trainer.assign(config, seed=1, prune=_never, slot=2)
    assert slot == 2 and trainer.occupied() == [0, 1, 2]

    keras.utils.set_random_seed(7)
    reference = trainer.reference.build(config)
    trainer.set_member_weights(slot, reference.get_weights())
    for epoch in range(1, 4):
        finished = trainer.run_epoch()
        train_loss = _replay(reference, data, trainer.last_batches())
        history = (finished[slot].history if slot in finished
                   else trainer.slots[slot].rules.history)
        got = history[epoch - 1]
        assert got.train_loss == pytest.approx(train_loss, rel=1e-4)
        assert got.val_loss == pytest.approx(_val_loss(reference, data), rel=1e-4)
        expected_penalty = float(sum(keras.ops.convert_to_numpy(x) for x in reference.losses))
        assert got.penalty == pytest.approx(expected_penalty, rel=1e-4, abs=1e-9)
    assert finished[slot].state == State.COMPLETE
    assert trainer.free_slots() == [0, 1, 2, 3]


@pytest.mark.parametrize("builtin", ["breast_cancer", "diabetes"])
def test_member_trains_exactly_like_its_standalone_model_on_every_task(make_spec,
                                                                      builtin) -> None:
    """Binary (one sigmoid output) and regression (one linear output, scaled target) too,
    not only the multiclass digits of the test above."""
    spec = make_spec(data={"builtin": builtin}, train__epochs=2, model={"hidden_units": [8]})
    trainer, data, _ = _setup(spec, pack_size=2)
    trainer.assign(OTHERS[0], seed=10, prune=_never)
    config = CONFIGS["l1_l2"]
    slot = trainer.assign(config, seed=1, prune=_never)
    reference = trainer.reference.build(config)
    trainer.set_member_weights(slot, reference.get_weights())
    for epoch in (1, 2):
        finished = trainer.run_epoch()
        train_loss = _replay(reference, data, trainer.last_batches())
        history = (finished[slot].history if slot in finished
                   else trainer.slots[slot].rules.history)
        assert history[epoch - 1].train_loss == pytest.approx(train_loss, rel=1e-4)
        assert history[epoch - 1].val_loss == pytest.approx(_val_loss(reference, data),
                                                            rel=1e-4)
    assert finished[slot].state == State.COMPLETE


def test_adam_bias_correction_uses_each_slots_own_step(make_spec) -> None:
    """A slot filled late starts at Adam step 1, exactly like a fresh standalone model."""
    spec = make_spec(train__epochs=5)
    trainer, data, _ = _setup(spec, pack_size=2)
    trainer.assign(OTHERS[0], seed=3, prune=_never)
    trainer.run_epoch()
    trainer.run_epoch()
    slot = trainer.assign(CONFIGS["l2"], seed=4, prune=_never)
    reference = trainer.reference.build(CONFIGS["l2"])
    trainer.set_member_weights(slot, reference.get_weights())
    trainer.run_epoch()
    train_loss = _replay(reference, data, trainer.last_batches())
    assert trainer.slots[slot].rules.history[0].train_loss == pytest.approx(train_loss, rel=1e-4)
    assert trainer.slots[slot].rules.history[0].val_loss == pytest.approx(
        _val_loss(reference, data), rel=1e-4)


# ----------------------------------------------------------------- 2. export

@pytest.mark.parametrize("kind", ["l1_l2", "none"])
def test_export_is_the_standard_model_with_the_members_weights(make_spec, kind) -> None:
    spec = make_spec(train__epochs=2, model={"hidden_units": [16, 8]})
    trainer, data, _ = _setup(spec, pack_size=3)
    trainer.assign(OTHERS[0], seed=0, prune=_never)
    config = RegConfig(kind, l1=1e-3 if kind != "none" else 0.0,
                       l2=1e-2 if kind != "none" else 0.0, dropout=0.25)
    slot = trainer.assign(config, seed=1, prune=_never)
    trainer.run_epoch()
    exported = trainer.export(slot)
    assert type(exported) is keras.Sequential
    layers = exported.layers
    assert [type(layer) for layer in layers] == [
        keras.layers.Dense, keras.layers.Dropout, keras.layers.Dense, keras.layers.Dropout,
        keras.layers.Dense]
    for dense in (layers[0], layers[2]):
        reg = dense.kernel_regularizer
        if kind == "none":
            assert reg is None
        else:
            assert type(reg) is keras.regularizers.L1L2
            assert reg.l1 == pytest.approx(1e-3) and reg.l2 == pytest.approx(1e-2)
    assert layers[1].rate == pytest.approx(0.25)
    assert layers[-1].kernel_regularizer is None
    np.testing.assert_allclose(exported.predict(data.x_val, verbose=0),
                               trainer.predict(slot, data.x_val), rtol=1e-5, atol=1e-6)


def test_keep_model_returns_the_best_epoch_export(make_spec) -> None:
    spec = make_spec(train__epochs=3, objective={"metric": "accuracy"},
                     data={"builtin": "digits", "test_fraction": 0.2})
    trainer, data, _ = _setup(spec, pack_size=2)
    slot = trainer.assign(RegConfig("l1", l1=1e-3, dropout=0.3), seed=2, prune=_never,
                          keep_model=True)
    finished = {}
    while slot not in finished:
        finished.update(trainer.run_epoch())
    outcome = finished[slot]
    predicted = outcome.model.predict(data.x_val, verbose=0).argmax(axis=1)
    assert np.mean(predicted == data.y_val) == pytest.approx(outcome.value)
    on_train = outcome.model.evaluate(data.x_train, data.y_train, verbose=0, return_dict=True)
    assert outcome.train_eval_loss == pytest.approx(on_train["data_loss"], rel=1e-4)
    test_pred = outcome.model.predict(data.x_test, verbose=0).argmax(axis=1)
    assert outcome.test_metric == pytest.approx(np.mean(test_pred == data.y_test))
    kernels = [outcome.model.get_layer("dense_1").kernel.numpy()]
    assert outcome.near_zero_share == pytest.approx(metrics.near_zero_share(kernels))


# ----------------------------------------------------------------- 3. refill

def test_refilled_slot_matches_a_fresh_trainer(make_spec) -> None:
    spec = make_spec(train__epochs=3)
    config = RegConfig("l1_l2", l1=1e-3, l2=1e-3)
    used, _, _ = _setup(spec, pack_size=3)
    used.assign(OTHERS[0], seed=0, prune=_never, slot=1)   # leaves after epoch 3
    used.run_epoch()
    used.assign(OTHERS[1], seed=1, prune=_never, slot=2)   # still running at the refill
    used.run_epoch()
    assert 1 in used.run_epoch()                            # slot 1 is free again
    used.assign(config, seed=5, prune=_never, slot=1)
    orders = []
    for _ in range(3):
        finished = used.run_epoch()
        orders.append(used.last_order)
    refilled = finished[1].history

    fresh, _, _ = _setup(spec, pack_size=3)
    fresh.assign(config, seed=5, prune=_never, slot=1)
    for order in orders:
        finished = fresh.run_epoch(order=order)
    for a, b in zip(refilled, finished[1].history, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
        assert a.penalty == pytest.approx(b.penalty, rel=1e-5)


def test_both_trainers_meet_the_trainer_protocol_and_train_alone_is_a_pack_of_one(
        make_spec) -> None:
    from regsearch.protocols import PackTrainer, Trainer

    spec = make_spec(train__epochs=3)
    alone, data, objective = _setup(spec, pack_size=2)
    reference = KerasTrainer(spec, data, metric=objective.metric,
                             direction=objective.direction)
    assert isinstance(alone, PackTrainer) and isinstance(reference, Trainer)
    assert not isinstance(reference, PackTrainer)  # the driver runs it one by one

    config = RegConfig("l2", l2=1e-3, dropout=0.2)
    outcome = alone.train(config, seed=5, prune=_never)
    packed, _, _ = _setup(spec, pack_size=2)
    slot = packed.assign(config, seed=5, prune=_never)
    finished: dict = {}
    while slot not in finished:
        finished = packed.run_epoch()
    assert outcome.state == finished[slot].state and outcome.epochs_run == 3
    assert [m.val_loss for m in outcome.history] == [m.val_loss for m in finished[slot].history]

    packed.assign(config, seed=6, prune=_never)
    with pytest.raises(RuntimeError, match="idle pack"):
        packed.train(config, seed=7, prune=_never)


# ----------------------------------------------------------------- 4. NaN isolation

def test_a_diverging_member_fails_alone(make_spec) -> None:
    spec = make_spec(train__epochs=2)
    runs = []
    for poison in (True, False):
        trainer, _, _ = _setup(spec, pack_size=3)
        trainer.assign(CONFIGS["l2"], seed=0, prune=_never, slot=0)
        trainer.assign(OTHERS[0], seed=1, prune=_never, slot=2)
        if poison:
            bad = trainer.assign(CONFIGS["none"], seed=2, prune=_never, slot=1)
            trainer.set_member_weights(bad, [w * 1e30 for w in trainer.member_weights(bad)])
        finished = trainer.run_epoch()
        if poison:
            assert finished[bad].state == State.FAILED
            assert "non-finite" in finished[bad].reason
            assert trainer.occupied() == [0, 2]
        finished.update(trainer.run_epoch())
        runs.append(finished)
    poisoned, clean = runs
    for slot in (0, 2):
        assert poisoned[slot].state == State.COMPLETE
        for a, b in zip(poisoned[slot].history, clean[slot].history, strict=True):
            assert a.train_loss == pytest.approx(b.train_loss, rel=1e-6)
            assert a.val_loss == pytest.approx(b.val_loss, rel=1e-6)
            assert a.val_metric == b.val_metric


# ----------------------------------------------------------------- 5. traced once

def test_train_step_is_traced_once_across_packs_and_refills(make_spec) -> None:
    spec = make_spec(train__epochs=2)
    trainer, _, _ = _setup(spec, pack_size=2)
    before = PackedNet.traces
    trainer.assign(CONFIGS["l1"], seed=0, prune=_never)
    trainer.assign(CONFIGS["l2"], seed=1, prune=_never)
    trainer.run_epoch()
    traces, function = PackedNet.traces, _compiled_epoch(trainer)
    assert function is not None
    if keras.backend.backend() == "tensorflow":
        assert traces - before == 1  # the last batch is padded: one shape
    else:
        assert traces - before <= 2  # full batches, and at most once more for the last one
    finished = trainer.run_epoch()
    assert sorted(finished) == [0, 1]
    for pack in range(2):  # two more packs, through refilled slots
        trainer.assign(OTHERS[pack], seed=2 + pack, prune=_never)
        trainer.assign(CONFIGS["none"], seed=4 + pack, prune=_never)
        trainer.run_epoch()
        trainer.run_epoch()
    assert PackedNet.traces == traces
    assert _compiled_epoch(trainer) is function


def _compiled_epoch(trainer: PackedTrainer):
    """What the trainer calls to train an epoch, as compiled the first time."""
    if keras.backend.backend() == "tensorflow":
        return trainer._tf_epoch.function
    return trainer.model.train_function


def test_unsupported_optimizer_is_a_clear_error(make_spec) -> None:
    spec = make_spec(train__optimizer="rmsprop")
    with pytest.raises(ValueError, match="packed trainer supports"):
        _setup(spec, pack_size=2)


def test_pack_size_override_wins_and_default_is_capped(make_spec) -> None:
    spec = make_spec()
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    assert choose_pack_size(spec, data, 5) == 5
    assert 1 <= choose_pack_size(spec, data, None) <= 256


# ----------------------------------------------------------------- 6. dropout statistics

@pytest.mark.slow
def test_dropout_members_score_like_the_reference_trainer(make_spec) -> None:
    """Mean best val accuracy over 6 seeds: |packed - keras| < 3 standard errors + 0.01."""
    seeds = range(6)
    spec = make_spec(train__epochs=6, model={"hidden_units": [32]})
    config = RegConfig("l2", l2=1e-4, dropout=0.3)
    trainer, data, objective = _setup(spec, pack_size=len(seeds))
    for seed in seeds:
        trainer.assign(config, seed=seed, prune=_never)
    finished: dict = {}
    while trainer.occupied():
        finished.update(trainer.run_epoch())
    packed = np.array([finished[k].value for k in sorted(finished)])
    reference = KerasTrainer(spec, data, metric=objective.metric, direction=objective.direction)
    keras_values = np.array([reference.train(config, seed=s, prune=_never).value
                             for s in seeds])
    se = math.sqrt(packed.var(ddof=1) / len(packed) + keras_values.var(ddof=1) / len(seeds))
    assert abs(packed.mean() - keras_values.mean()) < 3 * se + 0.01, (packed, keras_values)


class _AllZeroDraws:
    def random(self, shape, dtype):
        return np.zeros(shape, dtype)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the epoch program of the TensorFlow backend")
@pytest.mark.parametrize("host_noise", [True, False])
def test_dropout_masks_with_the_epoch_programs_noise(make_spec, monkeypatch,
                                                     host_noise) -> None:
    """NumPy's draws are the masks (all-zero draws drop every unit, so the hidden kernels
    get no gradient); past the size cap the model draws its own and the kernels train."""
    import regsearch.trainers.packed.trainer as packed

    if not host_noise:
        monkeypatch.setattr(packed, "_HOST_NOISE_MAX", 0)
    trainer, _, _ = _setup(make_spec(train__epochs=2), pack_size=2)
    slot = trainer.assign(RegConfig("none", dropout=0.5), seed=0, prune=_never)
    before = trainer.member_weights(slot)
    trainer.noise_rng = _AllZeroDraws()
    trainer.run_epoch()
    after = trainer.member_weights(slot)
    assert (trainer._tf_epoch.noise is not None) == host_noise
    hidden_kernels_moved = [not np.array_equal(a, b) for a, b in zip(before[:-2:2],
                                                                     after[:-2:2])]
    assert hidden_kernels_moved == [not host_noise] * len(hidden_kernels_moved)
    assert not np.array_equal(before[-1], after[-1])  # the output bias trains either way


# ----------------------------------------------------------------- 7. JAX backend

@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KERAS_BACKEND") == "jax", reason="already on JAX")
def test_the_same_tests_pass_on_jax(tmp_path: Path) -> None:
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:warnings",
         "-p", "no:cacheprovider", "-m", "not slow", "--basetemp", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
        cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert keras.backend.backend() != "jax"
