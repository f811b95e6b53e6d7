"""How many trials to pack: what a share of the free memory holds, capped."""

from __future__ import annotations

import os

import keras

from regsearch.data import Dataset
from regsearch.spec import StudySpec
from regsearch.trainers.packed.backend import PREDICT_CHUNK, start_backend
import itertools

CPU_PACK_CAP = 64
GPU_PACK_CAP = 256


def member_parameters(spec: StudySpec, data: Dataset) -> int:
    widths = [data.n_features, *spec.model.hidden_units, data.output_units]
    return sum((a + 1) * b for a, b in itertools.pairwise(widths))


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
    rows = max(spec.train.batch_size * 4, min(PREDICT_CHUNK, max(len(data.x_val),
                                                                 len(data.x_test))))
    per_member = 4 * (6 * params + rows * units)
    gpu = _gpu_memory()
    budget, cap = (gpu // 2, GPU_PACK_CAP) if gpu else (_host_memory() // 4, CPU_PACK_CAP)
    return int(max(1, min(cap, budget // max(per_member, 1))))
