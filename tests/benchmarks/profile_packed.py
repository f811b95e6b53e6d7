"""Where a packed search's time goes: the tools behind RESULTS.md's phase and epoch figures.

    python tests/benchmarks/profile_packed.py steady [--pack-size 16] [--epochs 60] [--hidden W,W,W]
    python tests/benchmarks/profile_packed.py phases [--no-mlflow] [--pack-size K]
    python tests/benchmarks/profile_packed.py kernels [--pack-size 16] [--hidden W,W,W]
    python tests/benchmarks/profile_packed.py trace [--pack-size 16] [--epochs 10]

`steady`: a full pack (all four regularizer types, dropout 0.2) trains `--epochs` epochs;
the first epoch (trace, compile or cache load) and the median and fastest of the rest, and
the steady epochs' GFLOP/s (the throughput benchmark's count of useful work).
`phases`: the throughput benchmark's packed contestant in this process, the driver's and
trainer's calls wrapped in timers: opening, asks, tells, first and steady epochs, Python's
full garbage collections, and the MLflow writer process's CPU time.
`kernels`: the ceiling the step's shapes allow: only a training step's matmuls (forward,
input and weight gradients of a pack's linear layers, chained so that nothing is hoisted),
compiled by XLA in a loop and, beside it, the same matmuls through NumPy's BLAS, against the
matmul probe. The trainer cannot beat its own matmuls, whatever it does with the rest.
`trace` (TensorFlow): XLA's own trace of steady epochs: its kernels' time on TensorFlow's
two pool threads by kind (matmuls, elementwise fusions, other) and how long 0, 1 or 2+ of
them ran at once (a step is mostly a chain of small kernels, one at a time).
Same problem as `throughput.py` (digits, 64-64-64 unless `--hidden`, batch 64, 64 trials x
20 epochs).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import throughput
import itertools


def _options(args: argparse.Namespace, epochs: int) -> argparse.Namespace:
    return argparse.Namespace(data="digits", hidden=args.hidden, epochs=epochs, batch_size=64,
                              trials=64, pack_size=args.pack_size)


def _full_pack(args: argparse.Namespace) -> tuple[Any, int]:
    """A trainer with every slot filled (all four regularizer types, dropout 0.2), and the
    useful FLOPs of one of its epochs (the throughput benchmark's count)."""
    from regsearch.space import RegConfig
    from regsearch.trainers.packed import PackedTrainer

    spec, data = throughput.load_spec_and_data(_options(args, 100_000),
                                               Path(tempfile.mkdtemp()))
    size = args.pack_size or 16
    trainer = PackedTrainer(spec, data, metric="accuracy", direction="maximize",
                            pack_size=size)
    for k in range(size):
        kind = ("none", "l1", "l2", "l1_l2")[k % 4]
        trainer.assign(RegConfig(kind, l1=1e-4, l2=1e-4, dropout=0.2), seed=k,
                       prune=lambda _metrics: False)
    return trainer, (throughput.dense_weights(spec, data) * len(data.x_train)
                     * throughput.FLOPS_PER_WEIGHT_SAMPLE * size)


def steady(args: argparse.Namespace) -> None:
    trainer, work = _full_pack(args)
    times = [_timed(trainer.run_epoch) for _ in range(args.epochs + 1)]
    first, rest = times[0], times[1:]
    print(f"pack {trainer.pack_size}: first epoch {first:.2f} s; steady epoch median "
          f"{statistics.median(rest) * 1e3:.1f} ms, fastest {min(rest) * 1e3:.1f} ms; "
          f"{work / statistics.median(rest) / 1e9:.1f} GFLOP/s at the median")


def trace(args: argparse.Namespace) -> None:
    """TensorFlow only: XLA's own trace of `--epochs` steady epochs, its kernels' time on
    the pool threads by kind, and how long 0, 1 or 2+ of them ran at once."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    trainer, work = _full_pack(args)
    for _ in range(3):  # the compile, then warm
        trainer.run_epoch()
    logdir = Path(tempfile.mkdtemp())
    tf.profiler.experimental.start(str(logdir))
    wall = sum(_timed(trainer.run_epoch) for _ in range(args.epochs))
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(next(logdir.rglob("*.xplane.pb")).read_bytes())
    kernels = list(_pool_kernels(space))
    by_kind: dict[str, float] = {}
    for start, end, kind in kernels:
        by_kind[kind] = by_kind.get(kind, 0.0) + (end - start) / 1e12
    running = _concurrency(kernels)
    print(f"pack {trainer.pack_size}: {args.epochs} epochs in {wall * 1e3:.0f} ms "
          f"({work * args.epochs / wall / 1e9:.1f} GFLOP/s); the pool threads' kernels: "
          + ", ".join(f"{kind} {seconds * 1e3:.0f} ms" for kind, seconds in
                      sorted(by_kind.items(), key=lambda item: -item[1]))
          + "; running at once: " + ", ".join(f"{count} for {seconds * 1e3:.0f} ms"
                                              for count, seconds in running.items()))


def _pool_kernels(space: Any) -> Any:
    """(start ps, end ps, kind) of each compiled kernel the XLA pool threads ran."""
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if "Eigen" not in line.name:  # TensorFlow's intra-op pool, XLA's threads
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name == "ThunkExecutor::Execute" or "Await" in name:
                    continue  # a batch of kernels, or a thread waiting: not a kernel
                kind = ("matmul" if name.startswith(("MatMul", "dot")) else
                        "elementwise fusions" if "fusion" in name else "other")
                start = line.timestamp_ns * 1000 + event.offset_ps
                yield start, start + event.duration_ps, kind


def _concurrency(kernels: list[tuple[int, int, str]]) -> dict[str, float]:
    """Seconds, between the first kernel's start and the last one's end, during which
    0, 1 or 2+ kernels ran."""
    edges = sorted([(start, 1) for start, _, _ in kernels] + [(end, -1) for _, end, _ in kernels])
    seconds = {"0": 0.0, "1": 0.0, "2+": 0.0}
    running, last = 0, edges[0][0] if edges else 0
    for at, step in edges:
        # max: a zero-length kernel's end sorts before its start
        seconds[("0", "1", "2+")[min(max(running, 0), 2)]] += (at - last) / 1e12
        running, last = running + step, at
    return seconds


def phases(args: argparse.Namespace) -> None:
    from regsearch import driver
    from regsearch.trainers.packed import PackedTrainer

    spent: dict[str, list[float]] = {}
    _wrap(driver, "open_run", spent)
    _wrap(driver, "_ask", spent)
    _wrap(driver, "_tell", spent)
    _wrap(PackedTrainer, "run_epoch", spent)
    full = _count_full_collections()
    workdir = Path(tempfile.mkdtemp())
    os.chdir(workdir)
    if args.no_mlflow:
        base = throughput.study_dict
        throughput.study_dict = lambda *a, **k: {**base(*a, **k), "mlflow": {"enabled": False}}
    started = time.perf_counter()
    throughput.run_packed(_options(args, 20), workdir)
    whole = time.perf_counter() - started
    epochs = spent["run_epoch"]
    writer = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"whole {whole:.2f} s; open {sum(spent['open_run']):.2f} s, asks "
          f"{sum(spent['_ask']):.2f} s, tells {sum(spent['_tell']):.2f} s; {len(epochs)} epochs: "
          f"first {epochs[0]:.2f} s, the rest {sum(epochs[1:]):.2f} s (median "
          f"{statistics.median(epochs[1:]) * 1e3:.1f} ms); full collections {full[0]} "
          f"({full[1]:.2f} s); MLflow writer CPU {writer.ru_utime + writer.ru_stime:.2f} s")


def kernels(args: argparse.Namespace) -> None:
    import numpy as np
    import tensorflow as tf

    spec, data = throughput.load_spec_and_data(_options(args, 1), Path(tempfile.mkdtemp()))
    members, batch, steps = args.pack_size or 16, spec.train.batch_size, 50
    widths = [data.n_features, *spec.model.hidden_units, data.output_units]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, widths[0]), dtype=np.float32)
    kernels0 = [rng.standard_normal((members, a, b), dtype=np.float32) / math.sqrt(a)
                for a, b in itertools.pairwise(widths)]

    def step(batch_x, weights, matmul, transpose):
        """A linear pack's forward and backward matmuls (the output is its own gradient;
        the shared (B, in) input batch broadcast over the members); one SGD update."""
        inputs, h = [], batch_x
        for w in weights:
            inputs.append(h)
            h = matmul(h, w)
        grads, g = [], h
        for i in reversed(range(len(weights))):
            grads.insert(0, matmul(transpose(inputs[i]), g))
            if i > 0:  # no gradient for the data
                g = matmul(g, transpose(weights[i]))
        return [w - 1e-6 * dw for w, dw in zip(weights, grads)]

    def tf_transpose(t):
        return tf.linalg.matrix_transpose(t)

    def np_transpose(t):
        return np.swapaxes(t, -1, -2)

    @tf.function(jit_compile=True)
    def compiled(weights):
        return tf.while_loop(lambda i, _: i < steps,
                             lambda i, ws: (i + 1, step(x, ws, tf.matmul, tf_transpose)),
                             (0, weights))[1]

    def numpy_steps() -> None:
        weights = kernels0
        for _ in range(steps):
            weights = step(x, weights, np.matmul, np_transpose)

    tf_kernels = [tf.constant(k) for k in kernels0]
    # The benchmark's count (FLOPs a weight a sample) includes the first layer's input
    # gradient, which a step does not compute; the rates below are in that count.
    work = (throughput.dense_weights(spec, data) * batch * members
            * throughput.FLOPS_PER_WEIGHT_SAMPLE * steps)
    rates = {name: work / _best_of(call) / 1e9 for name, call in (
        ("XLA", lambda: [k.numpy() for k in compiled(tf_kernels)]), ("NumPy", numpy_steps))}
    peak = throughput.run_matmul_probe(args, Path("."))["best_gflops"]
    print(f"pack {members}, widths {'-'.join(map(str, widths))}, batch {batch}: a step's "
          "matmuls alone (the benchmark's count): " + ", ".join(
              f"{name} {rate:.1f} GFLOP/s ({100 * rate / peak:.0f} %)"
              for name, rate in rates.items()) + f" of the {peak:.1f} GFLOP/s probe")


def _best_of(call: Callable[[], Any], runs: int = 7) -> float:
    call()  # compile, thread pools
    return min(_timed(call) for _ in range(runs))


def _timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def _wrap(owner: Any, name: str, spent: dict[str, list[float]]) -> None:
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.setdefault(name, []).append(time.perf_counter() - started)

    setattr(owner, name, timed)


def _count_full_collections() -> list:
    """[count, seconds] of generation-2 collections from now on, kept up to date."""
    totals: list = [0, 0.0]
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            totals[0] += 1
            totals[1] += time.perf_counter() - started[0]

    gc.callbacks.append(callback)
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["steady", "phases", "kernels", "trace"])
    parser.add_argument("--pack-size", type=int, default=None)
    parser.add_argument("--hidden", type=throughput._units, default=(64, 64, 64),
                        help="hidden Dense widths, comma-separated (default 64,64,64)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="steady: epochs after the first (default 60); trace: epochs "
                             "traced (default 10)")
    parser.add_argument("--no-mlflow", action="store_true", help="phases: MLflow disabled")
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = 10 if args.mode == "trace" else 60
    if args.mode == "trace":  # read when TensorFlow's runtime starts
        os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} "
                                   "--xla_cpu_enable_xprof_traceme=true")
    import keras  # noqa: F401 - TensorFlow's start-up, outside every figure

    {"steady": steady, "phases": phases, "kernels": kernels, "trace": trace}[args.mode](args)


if __name__ == "__main__":
    main()
