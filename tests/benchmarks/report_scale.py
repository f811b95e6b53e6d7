"""How long `regsearch report` takes, and how large its page is, for a large study.

A study of N trials (default 10,000) is written straight into Optuna's storage and the
ledger (random configurations, 20 epochs each, a smooth objective of strength and dropout
plus noise), then the report is drawn; prints the seconds and the sizes.

    .venv/bin/python tests/benchmarks/report_scale.py [--trials 10000]
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from datetime import timedelta
from pathlib import Path


def fabricate(folder: Path, trials: int) -> tuple[str, str]:
    """(study name, storage URL) of a finished study with `trials` trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from regsearch import opening
    from regsearch.recorders.ledger import Ledger, TrialRecord
    from regsearch.space import RegConfig, suggest
    from regsearch.states import State
    from regsearch.study_file import parse_spec
    from regsearch.trainers.base import EpochMetrics
    from regsearch.recorders.tables import now

    storage = f"sqlite:///{folder / 'scale.db'}"
    spec = parse_spec({"name": "scale", "data": {"builtin": "digits"}, "storage": storage,
                       "mlflow": {"enabled": False}, "confirm": None})
    run = opening.open_run(spec)
    opening.close_run(run)
    study = optuna.load_study(study_name="scale", storage=storage)
    kinds = ["none", "l1", "l2", "l1_l2"]
    strength = FloatDistribution(1e-6, 1e-1, log=True)
    rng = random.Random(0)
    frozen, records = [], []
    for number in range(trials):
        kind = "none" if number == 0 else rng.choice(kinds)
        l1 = rng.uniform(-6, -1) if kind in ("l1", "l1_l2") else None
        l2 = rng.uniform(-6, -1) if kind in ("l2", "l1_l2") else None
        dropout = 0.0 if number == 0 else rng.uniform(0, 0.5)
        params: dict[str, object] = {"regularizer": kind, "dropout": dropout}
        distributions: dict[str, object] = {"regularizer": CategoricalDistribution(kinds),
                                            "dropout": FloatDistribution(0.0, 0.5)}
        for key, exponent in (("l1", l1), ("l2", l2)):
            if exponent is not None:
                params[key], distributions[key] = 10 ** exponent, strength
        best = 0.97 - 0.01 * abs((l2 or l1 or -9) + 4) - 0.02 * dropout + rng.gauss(0, 0.004)
        curve = [EpochMetrics(epoch=e, train_loss=1 / e, val_loss=0.2 + 1 / (2 * e),
                              val_metric=best - 0.1 / e, penalty=0.01) for e in range(1, 21)]
        attrs = {"best_epoch": 20, "val_loss": 0.225}
        if number == 0:  # the default, enqueued by open_run: trained first
            default = study.ask()
            suggest(default, spec.space)  # the enqueued default's fixed parameters
            for key, value in attrs.items():
                default.set_user_attr(key, value)
            for m in curve:
                default.report(m.val_metric, m.epoch)
            study.tell(default, best)
        else:
            frozen.append(optuna.trial.create_trial(
                params=params, distributions=distributions, value=best, user_attrs=attrs,
                intermediate_values={m.epoch: m.val_metric for m in curve}))
        config = RegConfig(kind, l1=float(params.get("l1", 0.0)),
                           l2=float(params.get("l2", 0.0)), dropout=dropout)
        finished = now()
        records.append(TrialRecord(
            "scale", number, State.COMPLETE, config, value=best,
            summary={"best_epoch": 20, "val_loss": 0.225,
                     "train_eval_loss": 0.225 - 0.1 / (1 + 1e3 * max(config.l1, config.l2)),
                     "near_zero_share": math.exp(
                -1 / max(config.l1, 1e-9) * 1e-4)},
            epochs=tuple(curve), started=finished - timedelta(seconds=1), finished=finished))
    study.add_trials(frozen)
    ledger = Ledger(storage)
    try:
        ledger.mend("scale", records)
    finally:
        ledger.engine.dispose()
    return "scale", storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="write the study here and reuse it if there")
    parser.add_argument("--profile", action="store_true", help="cProfile the drawing")
    args = parser.parse_args()
    from regsearch.study_report import build

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if (folder / "scale.db").exists():
            name, storage = "scale", f"sqlite:///{folder / 'scale.db'}"
        else:
            name, storage = fabricate(folder, args.trials)
        made = time.perf_counter() - started
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.runcall(build, name, storage, folder / "report")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        started = time.perf_counter()
        done = build(name, storage, folder / "report")
        drawn = time.perf_counter() - started
        page = done.html.stat().st_size
        pngs = sum(p.stat().st_size for p in done.pngs)
        print(f"{args.trials} trials: study written in {made:.1f} s; report drawn in "
              f"{drawn:.1f} s; report.html {page / 1e6:.2f} MB, {len(done.pngs)} PNGs "
              f"{pngs / 1e6:.2f} MB")
        for figure in done.figures:
            print(f"  {figure.name}: {sum(map(len, figure.series.values()))} points"
                  + (f"; {figure.note}" if figure.note else ""))


if __name__ == "__main__":
    main()
