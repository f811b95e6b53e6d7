"""Worker processes and bookkeeping: what sharing a study through a database costs.

Two measurements, in one run:

  bookkeeping   milliseconds of recording per trial, training taken out: the driver runs
                a trainer that reports E epochs instantly, so what is left is Optuna
                (ask, suggest, tell, scores and attrs), the ledger, the budget lock and
                heartbeats; on SQLite and on PostgreSQL, with and without MLflow
  workers       trials per second of `regsearch run STUDY --workers 1` and `--workers 2`
                on PostgreSQL (fresh databases), the whole command timed, start-up included

    .venv/bin/python tests/benchmarks/workers.py                       # needs PostgreSQL
    .venv/bin/python tests/benchmarks/workers.py --trials 16 --trainer keras

PostgreSQL comes from REGSEARCH_TEST_POSTGRES_URL (default: the local test server); each
measurement gets fresh databases, dropped afterwards. Timings mean something only on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import sqlalchemy as sa
import yaml

PG = os.environ.get("REGSEARCH_TEST_POSTGRES_URL",
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_pg() -> Iterator[str]:
    admin = sa.make_url(PG)
    name = f"rs_bench_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        engine.dispose()


def study(name: str, opts: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    return {"name": name, "seed": 1, "data": {"builtin": "digits"},
            "model": {"hidden_units": [64, 64, 64]},
            "train": {"epochs": opts.epochs, "batch_size": 64, "learning_rate": 0.003},
            "search": {"n_trials": opts.trials, "pruner": "none"}, "confirm": None,
            **({"trainer": opts.trainer} if getattr(opts, "trainer", None) else {}), **extra}


class InstantTrainer:
    """Reports `epochs` epochs at once: the driver's recording without any training."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def train(self, config: Any, *, seed: int, prune: Any, keep_model: bool = False) -> Any:
        from regsearch.trainers.base import EpochMetrics, StopRules

        rules = StopRules("maximize", None)
        for epoch in range(1, self.epochs + 1):
            metrics = EpochMetrics(epoch, 1.0 / epoch, 1.0 / epoch, 0.5 + seed % 97 / 200
                                   + epoch / 1000, 0.01)
            if not rules.observe(metrics, prune):
                break
        return rules.outcome(0.0)


def bookkeeping(opts: argparse.Namespace, storage: str, mlflow: str | None) -> float:
    """Milliseconds of recording per trial."""
    from regsearch import driver, opening
    from regsearch.study_file import parse_spec

    raw = study(f"bk-{uuid.uuid4().hex[:6]}", opts, storage=storage,
                mlflow={"tracking_uri": mlflow or "sqlite:///unused.db",
                        "enabled": mlflow is not None})
    run = opening.open_run(parse_spec(raw, source="workers.py"))
    started = time.perf_counter()
    driver.run_study(run, InstantTrainer(opts.epochs))
    return (time.perf_counter() - started) * 1000 / opts.trials


def run_workers(opts: argparse.Namespace, count: int, folder: Path) -> float:
    with fresh_pg() as storage, fresh_pg() as mlflow:
        path = folder / f"w{count}.yaml"
        path.write_text(yaml.safe_dump(study(f"w{count}", opts)), encoding="utf-8")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "regsearch", "run", path.name,
                               "--workers", str(count), "--storage", storage,
                               "--mlflow", mlflow], cwd=folder, env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"--workers {count} failed:\n{done.stderr[-3000:]}")
        return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--bookkeeping-trials", type=int, default=50)
    parser.add_argument("--trainer", choices=("packed", "keras"),
                        help="the workers' trainer (default: the study default, packed)")
    opts = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        os.chdir(folder)
        bk = argparse.Namespace(trials=opts.bookkeeping_trials, epochs=opts.epochs)
        rows = []
        for label, storage_of in (("SQLite", lambda: f"sqlite:///{folder / 'bk.db'}"),
                                  ("PostgreSQL", None)):
            for with_mlflow in (False, True):
                if storage_of is None:
                    with fresh_pg() as storage, fresh_pg() as tracking:
                        ms = bookkeeping(bk, storage, tracking if with_mlflow else None)
                else:
                    (folder / "bk.db").unlink(missing_ok=True)
                    ms = bookkeeping(bk, storage_of(),
                                     f"sqlite:///{folder / 'mlflow.db'}" if with_mlflow else None)
                rows.append((label, "on" if with_mlflow else "off", ms))
        print(f"\nbookkeeping per trial ({opts.epochs} epochs, {bk.trials} trials, no training)")
        print("| storage | MLflow | ms per trial |\n| --- | --- | ---: |")
        for label, flag, ms in rows:
            print(f"| {label} | {flag} | {ms:.1f} |")
        one = run_workers(opts, 1, folder)
        two = run_workers(opts, 2, folder)
        print(f"\n`regsearch run --workers N` on PostgreSQL, {opts.trials} trials x "
              f"{opts.epochs} epochs (digits, Dense 64-64-64, trainer "
              f"{opts.trainer or 'packed (default)'})")
        print("| workers | wall s | trials/s | vs 1 worker |\n| --- | ---: | ---: | ---: |")
        for count, seconds in ((1, one), (2, two)):
            print(f"| {count} | {seconds:.1f} | {opts.trials / seconds:.3f} | "
                  f"{one / seconds:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
