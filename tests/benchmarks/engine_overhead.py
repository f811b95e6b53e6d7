"""What proposing trials costs: the same packed study with Optuna's and KerasTuner's engines.

Each engine runs the same study (digits, Dense 64-64, the packed trainer, SQLite, MLflow
off, no confirmation) in a process of its own, one after another; printed per engine: the
trials, the wall clock of the search (after the study is opened), trials per second, and
the ratio to Optuna's random sampler (the cheapest proposer: what is left is training and
bookkeeping). Hyperband's trials train fewer epochs each: compare its epochs per second.

    .venv/bin/python tests/benchmarks/engine_overhead.py --trials 300 --epochs 10

Timings mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ENGINES = ("optuna/random", "optuna/tpe", "keras_tuner/random", "keras_tuner/hyperband",
           "keras_tuner/bayesian")


def one(engine: str, trials: int, epochs: int, folder: Path) -> dict[str, float]:
    """`--engine E`: one search in this process; its figures."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    from regsearch import driver, opening
    from regsearch.study_file import parse_spec
    from regsearch.trainers import make_trainer

    name, sampler = engine.split("/")
    search = {"engine": name, "sampler": sampler, "n_trials": trials}
    if name == "optuna":
        search["pruner"] = "none"
    spec = parse_spec({"name": "overhead", "seed": 1, "data": {"builtin": "digits"},
                       "train": {"epochs": epochs, "batch_size": 64},
                       "search": search, "storage": f"sqlite:///{folder / 'study.db'}",
                       "mlflow": {"enabled": False}, "confirm": None}, source="benchmark")
    run = opening.open_run(spec)
    trainer = make_trainer(run)
    started = time.perf_counter()
    driver.run_study(run, trainer)
    wall = time.perf_counter() - started
    return {"trials": len(run.study.trials), "wall_s": wall,
            "epochs": sum(len(t.intermediate_values) for t in run.study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(one(args.engine, args.trials, args.epochs, Path(folder))))
        return
    rows = {}
    for engine in args.engines.split(","):
        proc = subprocess.run([sys.executable, __file__, "--engine", engine, "--trials",
                               str(args.trials), "--epochs", str(args.epochs)],
                              capture_output=True, text=True, check=True)
        rows[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{engine}: done", file=sys.stderr)
    base = rows.get("optuna/random")
    print(f"{'engine':<24} {'trials':>6} {'epochs':>7} {'search s':>9} {'trials/s':>9} "
          f"{'epochs/s':>9} {'time vs optuna/random':>22}")
    for engine, row in rows.items():
        ratio = f"{row['wall_s'] / base['wall_s']:.2f}x" if base else "-"
        print(f"{engine:<24} {row['trials']:>6} {row['epochs']:>7} {row['wall_s']:>9.1f} "
              f"{row['trials'] / row['wall_s']:>9.1f} {row['epochs'] / row['wall_s']:>9.0f} "
              f"{ratio:>22}")


if __name__ == "__main__":
    main()
