"""Search quality against peers at the same wall clock, judged on held-out test rows.

For each data set a test split (30 % of the rows) is held out from everything; every
contestant searches the rest for `--budget` seconds and names a configuration:

  regsearch-holdout   regsearch (packed trainer), train/validation split, then confirmation;
                      answers twice: its single-seed best and its confirmed winner
  regsearch-folds     the same with `data: {folds: 5}`; again two answers
  optuna-tpe          Optuna TPE, one `model.fit` per trial (the usual script)
  kt-bayesian         KerasTuner BayesianOptimization over the same space
  kt-hyperband        KerasTuner Hyperband over the same space
  regsearch-kt-bayesian, regsearch-kt-hyperband
                      the same KerasTuner oracles as regsearch's engine (`engine:
                      keras_tuner`): packed trainer, confirmation; again two answers
  default             no search: no regularizer, no dropout

regsearch gets 75 % of the budget for its search and spends the rest confirming; its wall
clock is reported as used. Every named configuration is then trained again by one shared
script (regsearch's reference trainer: a standard `fit`, best epoch restored on the
validation split) with `--retrain-seeds` seeds on the same train/validation split, and
scored on the test rows. Reported per answer: the test score (mean over seeds), the
reported validation score minus the re-trained validation score (optimism), the wall clock.
Each search is repeated with `--study-seeds` seeds; the table shows mean ± sd over them.

    .venv/bin/python tests/benchmarks/search_quality.py --budget 40 --out /tmp/quality.json
    .venv/bin/python tests/benchmarks/search_quality.py --datasets wine --study-seeds 1 --budget 10

Contestants run one at a time, each in its own process (`--contestant` re-invokes this
file), and results are appended to `--out` as they come, so an interrupted run resumes.
Timings mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DATASETS = ("breast-cancer", "wine", "digits-small", "wide-synthetic", "wide-regression",
            "diabetes")
CONTESTANTS = ("regsearch-holdout", "regsearch-folds", "optuna-tpe", "kt-bayesian",
               "kt-hyperband", "regsearch-kt-bayesian", "regsearch-kt-hyperband", "default")
EPOCHS, BATCH, HIDDEN, LEARNING_RATE = 30, 32, [64, 64], 0.001
TEST_FRACTION = 0.3


# --------------------------------------------------------------------------- data

def make_data(name: str, folder: Path) -> tuple[Path, Path, str]:
    """(pool file, test file, task) for a data set: the test rows are held out here, once,
    with a fixed seed, so every contestant and every study seed sees the same ones."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name == "breast-cancer":
        x, y = datasets.load_breast_cancer(return_X_y=True)
    elif name == "wine":
        x, y = datasets.load_wine(return_X_y=True)
    elif name == "digits-small":  # few rows for 64 features
        x, y = datasets.load_digits(return_X_y=True)
        x, y = x[:450], y[:450]
    elif name == "wide-synthetic":  # more features than 300 rows can support
        x, y = datasets.make_classification(n_samples=300, n_features=400, n_informative=8,
                                            n_redundant=0, flip_y=0.05, random_state=7)
    elif name == "wide-regression":
        x, y = datasets.make_regression(n_samples=300, n_features=150, n_informative=10,
                                        noise=20.0, random_state=7)
    elif name == "diabetes":
        x, y = datasets.load_diabetes(return_X_y=True)
    else:
        raise SystemExit(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    task = "regression" if name in ("wide-regression", "diabetes") else "classification"
    pool_x, test_x, pool_y, test_y = train_test_split(
        x, y, test_size=TEST_FRACTION, random_state=11,
        stratify=None if task == "regression" else y)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for part, (px, py) in (("pool", (pool_x, pool_y)), ("test", (test_x, test_y))):
        path = folder / f"{name}-{part}.csv"
        columns = [f"f{i}" for i in range(px.shape[1])]
        import pandas as pd

        frame = pd.DataFrame(px, columns=columns)
        frame["target"] = py
        frame.to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1], task


def study(name: str, pool: Path, seed: int, folder: Path, **extra: Any) -> dict[str, Any]:
    """The regsearch study every contestant's split and space come from."""
    return {"name": name, "seed": seed,
            "data": {"file": str(pool), "target": "target", **extra.pop("data", {})},
            "model": {"hidden_units": HIDDEN},
            "train": {"epochs": EPOCHS, "batch_size": BATCH, "learning_rate": LEARNING_RATE},
            "search": {"pruner": "median", **extra.pop("search", {})},
            "storage": f"sqlite:///{folder / 'study.db'}", "mlflow": {"enabled": False},
            **extra}


def split(raw: dict[str, Any]) -> tuple[Any, Any]:
    from regsearch.data import load_dataset
    from regsearch.study_file import parse_spec

    spec = parse_spec(raw, source="search_quality.py")
    return spec, load_dataset(spec.data, seed=spec.seed)


# --------------------------------------------------------------------------- contestants

def regsearch_contestant(raw: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    """A regsearch search with its timeout, then its confirmation: two answers."""
    from regsearch import driver, opening, results
    from regsearch.space import RegConfig
    from regsearch.trainers import make_trainer

    raw = {**raw, "search": {**raw["search"], "timeout": 0.75 * budget},
           "confirm": {"top": 5, "seeds": 5}}
    spec, _ = split(raw)
    run = opening.open_run(spec)
    driver.run_study(run, make_trainer(run))
    summary = results.study_summary(run.study, run.storage_url)
    single = summary.get("search_best") or summary["best"]
    answers = [{"answer": "single-seed best", "config": single["config"],
                "reported": single["value"], "trials": len(run.study.trials)}]
    if summary.get("confirmation"):
        answers.append({"answer": "confirmed", "config": summary["best"]["config"],
                        "reported": summary["best"]["value"], "trials": len(run.study.trials),
                        "verdict": summary["confirmation"]["verdict"]})
    assert all(RegConfig(**a["config"]) for a in answers)
    return answers


def _objective(task: str) -> tuple[str, str]:
    return ("val_accuracy", "max") if task == "classification" else ("val_rmse", "min")


def _compiled(spec: Any, data: Any, config: Any) -> Any:
    """What a user writes: Dense + kernel_regularizer + Dropout, Adam, a penalty-free metric."""
    import keras

    from regsearch.model import DATA_LOSS, build_model

    model = build_model(config, n_features=data.n_features, output_units=data.output_units,
                        task=data.task, hidden_units=spec.model.hidden_units,
                        activation=spec.model.activation)
    metric = ("accuracy" if data.task != "regression"
              else keras.metrics.RootMeanSquaredError(name="rmse"))
    model.compile(optimizer=keras.optimizers.Adam(spec.train.learning_rate),
                  loss=DATA_LOSS[data.task], metrics=[metric])
    return model


def _fit_args(spec: Any, data: Any) -> dict[str, Any]:
    from regsearch.trainers.keras import fit_targets

    return {"x": data.x_train, "y": fit_targets(data.task, data.y_train),
            "epochs": spec.train.epochs, "batch_size": spec.train.batch_size, "verbose": 0,
            "validation_data": (data.x_val, fit_targets(data.task, data.y_val))}


def optuna_contestant(raw: dict[str, Any], budget: float) -> list[dict[str, Any]]:
    import optuna

    from regsearch.space import suggest

    spec, data = split(raw)
    key, direction = _objective("regression" if data.task == "regression" else "classification")

    def objective(trial: optuna.Trial) -> float:
        history = _compiled(spec, data, suggest(trial, spec.space)).fit(
            **_fit_args(spec, data)).history[key]
        return max(history) if direction == "max" else min(history)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if direction == "max" else "minimize",
                                sampler=optuna.samplers.TPESampler(seed=spec.seed))
    study.optimize(objective, timeout=budget)
    from regsearch.space import from_params

    return [{"answer": "best", "config": from_params(study.best_params).as_dict(),
             "reported": _units(study.best_value, data), "trials": len(study.trials)}]


def keras_tuner_contestant(raw: dict[str, Any], budget: float, kind: str,
                           folder: Path) -> list[dict[str, Any]]:
    import keras_tuner as kt

    from regsearch.space import RegConfig

    spec, data = split(raw)
    space = spec.space
    key, direction = _objective("regression" if data.task == "regression" else "classification")

    def strength(hp: Any, name: str) -> float:
        return hp.Float(name, space.strength.low, space.strength.high, sampling="log",
                        parent_name="regularizer", parent_values=[name, "l1_l2"]) or 0.0

    def build(hp: Any) -> Any:
        config = RegConfig(hp.Choice("regularizer", list(space.regularizers)),
                           l1=strength(hp, "l1"), l2=strength(hp, "l2"),
                           dropout=hp.Float("dropout", space.dropout.low, space.dropout.high))
        return _compiled(spec, data, config)

    deadline = time.monotonic() + budget
    base = kt.BayesianOptimization if kind == "bayesian" else kt.Hyperband

    class Timed(base):  # type: ignore[misc, valid-type]
        """Stops starting trials once the budget is spent (KerasTuner has no timeout)."""

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            if time.monotonic() > deadline:
                self.oracle.max_trials = len(self.oracle.trials)

        def _configure_tensorboard_dir(self, callbacks: list, trial: Any,
                                       execution: int = 0) -> None:
            pass  # tensorflow-cpu installs no TensorBoard; this benchmark passes none

    objective = kt.Objective(key, direction)
    options = ({"max_trials": 10_000} if kind == "bayesian" else
               {"max_epochs": spec.train.epochs, "hyperband_iterations": 100})
    tuner = Timed(build, objective=objective, seed=spec.seed, directory=str(folder / "kt"),
                  project_name=kind, overwrite=True, **options)
    tuner.search(**_fit_args(spec, data))
    best = tuner.oracle.get_best_trials(1)[0]
    values = best.hyperparameters.values
    config = RegConfig(values["regularizer"], l1=values.get("l1") or 0.0,
                       l2=values.get("l2") or 0.0, dropout=values["dropout"])
    l1, l2 = config.effective()  # KerasTuner keeps a strength the type does not use
    config = RegConfig(config.regularizer, l1=l1, l2=l2, dropout=config.dropout)
    done = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    return [{"answer": "best", "config": config.as_dict(),
             "reported": _units(best.score, data), "trials": len(done)}]


def _units(value: float, data: Any) -> float:
    """A Keras RMSE on the standardized target, in the target's own units."""
    return value * data.target_std if data.task == "regression" else value


# --------------------------------------------------------------------------- retraining

def retrain(raw: dict[str, Any], test: Path, config: dict[str, Any],
            seeds: int) -> dict[str, Any]:
    """The shared re-training: the reference trainer with `seeds` seeds on the study's
    split; validation and test scores of each seed."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from regsearch.objective import resolve_objective
    from regsearch.space import RegConfig
    from regsearch.trainers.keras import KerasTrainer

    spec, data = split({**raw, "confirm": None})
    frame = pd.read_csv(test)
    x = ((frame.drop(columns="target").to_numpy(np.float64) - data.feature_mean)
         / data.feature_std).astype(np.float32)
    y = frame["target"].to_numpy()
    if data.task == "regression":
        y = ((y - data.target_mean) / data.target_std).astype(np.float32)
    else:
        y = np.array([data.class_names.index(str(int(v))) for v in y], np.int64)
    data = dataclasses.replace(data, x_test=x, y_test=y)
    objective = resolve_objective(spec, data.task)
    trainer = KerasTrainer(spec, data, metric=objective.metric, direction=objective.direction)
    outcomes = [trainer.train(RegConfig(**config), seed=1000 + s, prune=lambda _m: False)
                for s in range(seeds)]
    return {"val": [o.value for o in outcomes], "test": [o.test_metric for o in outcomes]}


# --------------------------------------------------------------------------- one process

def contestant_main(args: argparse.Namespace) -> None:
    """`--contestant NAME`: one search, its answers re-trained; JSON on stdout."""
    folder = Path(args.workdir)
    pool, test, _ = make_data(args.dataset, folder / "data")
    raw = study(f"q-{args.dataset}", pool, args.study_seed, folder)
    if args.contestant == "regsearch-folds":
        raw["data"]["folds"] = 5
    if args.contestant.startswith("regsearch-kt-"):  # KerasTuner's oracle picks the epochs
        raw["search"] = {"engine": "keras_tuner",
                         "sampler": args.contestant.removeprefix("regsearch-kt-")}
    started = time.monotonic()
    runners: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "regsearch-holdout": lambda: regsearch_contestant(raw, args.budget),
        "regsearch-folds": lambda: regsearch_contestant(raw, args.budget),
        "regsearch-kt-bayesian": lambda: regsearch_contestant(raw, args.budget),
        "regsearch-kt-hyperband": lambda: regsearch_contestant(raw, args.budget),
        "optuna-tpe": lambda: optuna_contestant(raw, args.budget),
        "kt-bayesian": lambda: keras_tuner_contestant(raw, args.budget, "bayesian", folder),
        "kt-hyperband": lambda: keras_tuner_contestant(raw, args.budget, "hyperband", folder),
        "default": lambda: [{"answer": "untuned", "reported": None, "trials": 0,
                             "config": {"regularizer": "none", "l1": 0.0, "l2": 0.0,
                                        "dropout": 0.0}}],
    }
    answers = runners[args.contestant]()
    wall = time.monotonic() - started
    holdout = {**raw, "data": {k: v for k, v in raw["data"].items() if k != "folds"}}
    for answer in answers:
        answer.update(wall_s=wall, **retrain(holdout, test, answer["config"],
                                             args.retrain_seeds))
    print(json.dumps(answers))


# --------------------------------------------------------------------------- the table

def summarize(results: list[dict[str, Any]]) -> list[str]:
    """Per data set and answer: test score, optimism and wall clock, mean ± sd over study
    seeds; the difference to the default's test score."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        regression = rows[0]["regression"]
        unit = "rmse" if regression else "accuracy, points"
        scale = 1.0 if regression else 100.0
        default = [statistics.mean(r["test"]) for r in rows if r["contestant"] == "default"]
        sign = -1.0 if regression else 1.0  # differences below: positive is better
        lines += ["", f"{dataset} (test {unit}; {'lower' if regression else 'higher'} is "
                      "better; 'better than default' and optimism: positive = better / "
                      "reported above re-trained)",
                  f"{'contestant':<34} {'test':>15} {'better than default':>19} "
                  f"{'optimism':>15} {'trials':>7} {'wall s':>7}"]
        for name in dict.fromkeys((r["contestant"], r["answer"]) for r in rows):
            mine = [r for r in rows if (r["contestant"], r["answer"]) == name]
            tests = [scale * statistics.mean(r["test"]) for r in mine]
            optimism = [sign * scale * (r["reported"] - statistics.mean(r["val"]))
                        for r in mine if r["reported"] is not None]
            versus = (sign * (statistics.mean(tests) - scale * statistics.mean(default))
                      if default else math.nan)
            lines.append(f"{name[0] + ' / ' + name[1]:<34} {_pm(tests):>15} {versus:>+19.2f} "
                         f"{_pm(optimism) if optimism else '-':>15} "
                         f"{statistics.mean(r['trials'] for r in mine):>7.0f} "
                         f"{statistics.mean(r['wall_s'] for r in mine):>7.1f}")
    return lines


def _pm(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--contestants", default=",".join(CONTESTANTS))
    parser.add_argument("--study-seeds", type=int, default=3)
    parser.add_argument("--retrain-seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds per search")
    parser.add_argument("--out", default="search_quality.json")
    parser.add_argument("--contestant", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--study-seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contestant:
        contestant_main(args)
        return
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    done = {(r["dataset"], r["contestant"], r["study_seed"]) for r in results}
    for dataset in args.datasets.split(","):
        for seed in range(args.study_seeds):
            for contestant in args.contestants.split(","):
                if (dataset, contestant, seed) in done:
                    continue
                with tempfile.TemporaryDirectory() as work:
                    proc = subprocess.run(
                        [sys.executable, __file__, "--contestant", contestant, "--dataset",
                         dataset, "--study-seed", str(seed), "--budget", str(args.budget),
                         "--retrain-seeds", str(args.retrain_seeds), "--workdir", work],
                        capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{dataset} {contestant} seed {seed} failed:\n{proc.stderr[-3000:]}",
                          file=sys.stderr)
                    continue
                regression = dataset in ("wide-regression", "diabetes")
                for answer in json.loads(proc.stdout.strip().splitlines()[-1]):
                    results.append({"dataset": dataset, "contestant": contestant,
                                    "study_seed": seed, "regression": regression, **answer})
                out.write_text(json.dumps(results, indent=1))
                print(f"{dataset} {contestant} seed {seed}: done", file=sys.stderr, flush=True)
    print("\n".join(summarize(results)))


if __name__ == "__main__":
    main()
