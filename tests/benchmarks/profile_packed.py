"""Where a packed search's time goes: the tools behind RESULTS.md's phase and epoch figures.

    python tests/benchmarks/profile_packed.py steady [--pack-size 16] [--epochs 60]
    python tests/benchmarks/profile_packed.py phases [--no-mlflow] [--pack-size K]

`steady`: a full pack (all four regularizer types, dropout 0.2) trains `--epochs` epochs;
the first epoch (trace, compile or cache load) and the median and fastest of the rest, and
the steady epochs' GFLOP/s (the throughput benchmark's count of useful work).
`phases`: the throughput benchmark's packed contestant in this process, the driver's and
trainer's calls wrapped in timers: opening, asks, tells, first and steady epochs, Python's
full garbage collections, and the MLflow writer process's CPU time.
Same problem as `throughput.py` (digits, 64-64-64, batch 64, 64 trials x 20 epochs).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

import throughput  # noqa: E402 - the benchmark's own problem definition


def _options(args: argparse.Namespace, epochs: int) -> argparse.Namespace:
    return argparse.Namespace(data="digits", hidden=(64, 64, 64), epochs=epochs, batch_size=64,
                              trials=64, pack_size=args.pack_size)


def steady(args: argparse.Namespace) -> None:
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
    times = [_timed(trainer.run_epoch) for _ in range(args.epochs + 1)]
    first, rest = times[0], times[1:]
    work = throughput.dense_weights(spec, data) * len(data.x_train) * 6 * size
    print(f"pack {size}: first epoch {first:.2f} s; steady epoch median "
          f"{statistics.median(rest) * 1e3:.1f} ms, fastest {min(rest) * 1e3:.1f} ms; "
          f"{work / statistics.median(rest) / 1e9:.1f} GFLOP/s at the median")


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
    parser.add_argument("mode", choices=["steady", "phases"])
    parser.add_argument("--pack-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=60, help="steady: epochs after the first")
    parser.add_argument("--no-mlflow", action="store_true", help="phases: MLflow disabled")
    args = parser.parse_args()
    import keras  # noqa: F401 - TensorFlow's start-up, outside every figure

    (steady if args.mode == "steady" else phases)(args)


if __name__ == "__main__":
    main()
