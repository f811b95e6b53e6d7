"""Throughput of a regularization search, end to end, recording included.

Contestants, on the same data, model, space and budget (N trials x E epochs, no pruning):

  user-script   what users write today: an Optuna study (seeded TPE, SQLite storage) whose
                objective builds the Keras model, calls `model.fit(validation_data=...)`,
                returns the validation accuracy and logs one MLflow run per trial
  keras-tuner   KerasTuner `RandomSearch` over the same space (its own trial files)
  regsearch     regsearch with the reference trainer (`trainer: keras`), ledger + MLflow on
  packed        regsearch with `trainer: packed`, its XLA compile cache empty (a first run)
  packed-warm   the same again, finding the programs `packed` compiled in its cache (any later
                run, worker or recycled worker with the same model, pack size and batch)

Each contestant runs in a fresh subprocess (this file re-invoked with `--contestant NAME`),
one after the other, so no TensorFlow state, thread pool or cache carries over. Its wall time
starts after `import keras` (common to all) and covers everything else: importing the search
and tracking libraries, loading data, graph building, training, storage and MLflow writes
(regsearch waits for its background MLflow writer to drain). Process time, interpreter and
TensorFlow start-up included, is reported beside it.

A matmul probe (its own subprocess) measures the machine's dense float32 FLOP/s; a contestant's
useful FLOP/s counts only the model's dense-kernel work, 6 FLOPs per weight per training
sample (2 forward, 4 backward), over the epochs the trials ran. For the packed trainer it is
given three ways: over the wall time, over its training calls (first epoch included), and
over its epochs after the first, the compiled program's rate in the search (compile excluded,
as model FLOP utilization is usually quoted).

    .venv/bin/python tests/benchmarks/throughput.py                   # 64 trials x 20 epochs
    .venv/bin/python tests/benchmarks/throughput.py --trials 4 --epochs 2 --only regsearch,packed
    .venv/bin/python tests/benchmarks/throughput.py --out results.json
    .venv/bin/python tests/benchmarks/throughput.py --only user-script,packed,packed-warm --repeat 5

`--repeat N` runs packed-warm N times and reports the median run with the range: on a shared
2-core machine one packed search varies by a third between runs minutes apart, its ratio to
the user script with it.

Timings mean something only on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Callable
import itertools

if TYPE_CHECKING:
    import keras

    from regsearch.data import Dataset
    from regsearch.space import RegConfig
    from regsearch.spec import StudySpec

CONTESTANTS = ("user-script", "keras-tuner", "regsearch", "packed", "packed-warm")
BASELINE = "user-script"
REPEATED = "packed-warm"  # `--repeat`: the contestant whose runs vary most against its length
PROBE = "matmul"
SEED = 42
FLOPS_PER_WEIGHT_SAMPLE = 6  # 2 forward (multiply-add) + 4 backward (input and weight grads)
MATMUL_N = 1024
PACKAGES = ("tensorflow-cpu", "tensorflow", "keras", "optuna", "mlflow", "keras-tuner", "numpy")


# --------------------------------------------------------------------------- shared set-up

def study_dict(opts: argparse.Namespace, workdir: Path, trainer: str = "keras") -> dict:
    """The one definition of the benchmark problem; every contestant reads its settings here."""
    return {
        "name": f"bench-{trainer}",
        "seed": SEED,
        "data": {"builtin": opts.data, "validation_fraction": 0.2},
        "model": {"hidden_units": list(opts.hidden), "activation": "relu"},
        "space": {"regularizers": ["none", "l1", "l2", "l1_l2"],
                  "strength": {"low": 1.0e-6, "high": 1.0e-1},
                  "dropout": {"low": 0.0, "high": 0.5}},
        "train": {"epochs": opts.epochs, "batch_size": opts.batch_size, "optimizer": "adam",
                  "learning_rate": 0.003},
        "objective": {"metric": "accuracy"},
        "search": {"sampler": "tpe", "pruner": "none", "n_trials": opts.trials,
                   **({"pack_size": opts.pack_size} if opts.pack_size else {})},
        "storage": f"sqlite:///{workdir / 'study.db'}",
        "mlflow": {"tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}"},
        "trainer": trainer,
        "confirm": None,  # the search alone, as the peers run it
    }


def load_spec_and_data(opts: argparse.Namespace, workdir: Path) -> tuple[StudySpec, Dataset]:
    """The validated spec and the split, standardized data (same split for everyone)."""
    from regsearch.data import load_dataset
    from regsearch.study_file import parse_spec

    spec = parse_spec(study_dict(opts, workdir), source="throughput.py")
    return spec, load_dataset(spec.data, seed=spec.seed, task=spec.model.task)


def compiled_model(spec: StudySpec, data: Dataset, config: RegConfig) -> keras.Model:
    """What a user writes: Dense + kernel_regularizer + Dropout, Adam, accuracy."""
    import keras

    from regsearch.model import DATA_LOSS, build_model

    model = build_model(config, n_features=data.n_features, output_units=data.output_units,
                        task=data.task, hidden_units=spec.model.hidden_units,
                        activation=spec.model.activation)
    optimizer = keras.optimizers.get({"class_name": spec.train.optimizer,
                                      "config": {"learning_rate": spec.train.learning_rate}})
    model.compile(optimizer=optimizer, loss=DATA_LOSS[data.task], metrics=["accuracy"])
    return model


def fit_args(spec: StudySpec, data: Dataset) -> dict[str, Any]:
    """The `fit` arguments users pass (KerasTuner forwards the same ones to `fit`)."""
    return {"x": data.x_train, "y": data.y_train, "epochs": spec.train.epochs,
            "batch_size": spec.train.batch_size, "validation_data": (data.x_val, data.y_val),
            "verbose": 0}


def dense_weights(spec: StudySpec, data: Dataset) -> int:
    """Kernel weights of one model (biases left out: they add no multiply-adds)."""
    widths = [data.n_features, *spec.model.hidden_units, data.output_units]
    return sum(a * b for a, b in itertools.pairwise(widths))


def result(spec: StudySpec, data: Dataset, *, trials: int, epochs_run: int,
           best: float | None, **extra: Any) -> dict[str, Any]:
    return {"trials": trials, "epochs_run": epochs_run, "best_val_accuracy": best,
            "n_train": len(data.x_train), "dense_weights": dense_weights(spec, data),
            **extra}


# --------------------------------------------------------------------------- contestants

def run_user_script(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Optuna + model.fit + one MLflow run per trial, as in the Optuna/MLflow tutorials."""
    import mlflow
    import optuna

    from regsearch.space import suggest

    spec, data = load_spec_and_data(opts, workdir)
    mlflow.set_tracking_uri(spec.mlflow.tracking_uri)
    mlflow.set_experiment("user-script")

    def objective(trial: optuna.Trial) -> float:
        config = suggest(trial, spec.space)  # suggest_categorical / suggest_float(log=True)
        history = compiled_model(spec, data, config).fit(**fit_args(spec, data)).history
        best = max(history["val_accuracy"])
        with mlflow.start_run(run_name=f"trial-{trial.number}"):
            mlflow.log_params(config.params())
            mlflow.log_metrics({"val_accuracy": best,
                                "final_val_accuracy": history["val_accuracy"][-1],
                                "final_val_loss": history["val_loss"][-1],
                                "final_loss": history["loss"][-1]})
        return best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="user-script", direction="maximize",
                                storage=spec.storage,
                                sampler=optuna.samplers.TPESampler(seed=spec.seed))
    study.optimize(objective, n_trials=spec.search.n_trials)
    return result(spec, data, trials=len(study.trials),
                  epochs_run=len(study.trials) * spec.train.epochs, best=study.best_value)


def run_keras_tuner(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """KerasTuner RandomSearch; strengths are conditional on the regularizer type."""
    import keras_tuner as kt

    from regsearch.space import RegConfig

    spec, data = load_spec_and_data(opts, workdir)
    space = spec.space

    def strength(hp: kt.HyperParameters, name: str) -> float:
        value = hp.Float(name, space.strength.low, space.strength.high, sampling="log",
                         parent_name="regularizer", parent_values=[name, "l1_l2"])
        return value or 0.0  # None while its parent condition is inactive

    def build(hp: kt.HyperParameters) -> keras.Model:
        kind = hp.Choice("regularizer", list(space.regularizers))
        config = RegConfig(kind, l1=strength(hp, "l1"), l2=strength(hp, "l2"),
                           dropout=hp.Float("dropout", space.dropout.low, space.dropout.high))
        return compiled_model(spec, data, config)

    tuner = _random_search_class(kt)(
        build, objective="val_accuracy", max_trials=spec.search.n_trials, seed=spec.seed,
        directory=str(workdir / "kt"), project_name="bench", overwrite=True)
    tuner.search(**fit_args(spec, data))
    done = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    best = tuner.oracle.get_best_trials(1)
    return result(spec, data, trials=len(done), epochs_run=len(done) * spec.train.epochs,
                  best=best[0].score if best else None)


def _random_search_class(kt: Any) -> type:
    """`RandomSearch`, or where TensorBoard is missing, one that does not import it.

    On the TensorFlow backend KerasTuner imports TensorBoard before every trial only to
    patch TensorBoard callbacks; this benchmark passes none, so skipping that changes
    nothing else (tensorflow-cpu does not install TensorBoard).
    """
    try:
        import tensorboard  # noqa: F401

        return kt.RandomSearch
    except ImportError:
        class RandomSearch(kt.RandomSearch):
            def _configure_tensorboard_dir(self, callbacks: list, trial: Any,
                                           execution: int = 0) -> None:
                assert not any(type(c).__name__ == "TensorBoard" for c in callbacks)
        return RandomSearch


class TimedTrainer:
    """Passes every call to a trainer and adds up the seconds spent in its training calls.

    A packed trainer's epochs are also kept one by one, (seconds, members trained), so that
    its rate once compiled can be told from its first epoch, which traces the program and
    compiles it (or loads it from the cache).
    """

    TIMED = ("train", "assign", "run_epoch")

    def __init__(self, trainer: Any) -> None:
        self._trainer, self.seconds = trainer, 0.0
        self.epochs: list[tuple[float, int]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trainer, name)  # AttributeError keeps `hasattr` truthful
        if name not in self.TIMED:
            return attr

        def timed(*args: Any, **kwargs: Any) -> Any:
            members = len(self._trainer.occupied()) if name == "run_epoch" else 0
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                seconds = time.perf_counter() - started
                self.seconds += seconds
                if members:
                    self.epochs.append((seconds, members))
        return timed

    def epoch_figures(self) -> dict[str, Any]:
        """The first epoch's seconds; member-epochs and seconds of all the others."""
        if len(self.epochs) < 2:
            return {}
        (first, _), rest = self.epochs[0], self.epochs[1:]
        return {"first_epoch_s": first, "compiled_s": sum(s for s, _ in rest),
                "compiled_member_epochs": sum(m for _, m in rest)}


def run_regsearch(opts: argparse.Namespace, workdir: Path, trainer: str = "keras"
                  ) -> dict[str, Any]:
    """The Python API: open_run + run_study, ledger and MLflow recording on."""
    from regsearch import driver, opening
    from regsearch.errors import SpecError
    from regsearch.study_file import parse_spec
    from regsearch.trainers import make_trainer

    try:
        spec = parse_spec(study_dict(opts, workdir, trainer), source="throughput.py")
    except SpecError as exc:
        return {"skipped": "not available yet", "why": str(exc)}
    run = opening.open_run(spec)
    try:
        timed = TimedTrainer(make_trainer(run))
    except ValueError as exc:  # the spec knows the name but make_trainer does not yet
        return {"skipped": "not available yet", "why": str(exc)}
    driver.run_study(run, timed)
    trials = [t for t in run.study.get_trials(deepcopy=False) if t.state.is_finished()]
    values = [t.value for t in trials if t.value is not None]
    return result(spec, run.data, trials=len(trials),
                  epochs_run=sum(int(t.user_attrs.get("epochs_run", 0)) for t in trials),
                  best=max(values) if values else None, training_s=timed.seconds,
                  states=_count(t.state.name.lower() for t in trials), **timed.epoch_figures())


def run_packed(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    return run_regsearch(opts, workdir, trainer="packed")


def run_matmul_probe(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Dense float32 n x n @ n x n, through NumPy and keras.ops; best of several blocks."""
    import keras
    import numpy as np

    n = MATMUL_N
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ka, kb = keras.ops.convert_to_tensor(a), keras.ops.convert_to_tensor(b)
    out = {"n": n, "numpy_gflops": _gflops(lambda: a @ b, n),
           "keras_gflops": _gflops(lambda: keras.ops.convert_to_numpy(keras.ops.matmul(ka, kb)),
                                   n)}
    out["best_gflops"] = max(out["numpy_gflops"], out["keras_gflops"])
    out["backend"] = keras.backend.backend()
    return out


def _gflops(step: Callable[[], Any], n: int, blocks: int = 5, block_s: float = 0.4) -> float:
    step()  # warm-up: thread pools, first-call dispatch
    best = 0.0
    for _ in range(blocks):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < block_s:
            step()
            count += 1
        best = max(best, 2 * n**3 * count / elapsed / 1e9)
    return best


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "user-script": run_user_script,
    "keras-tuner": run_keras_tuner,
    "regsearch": run_regsearch,
    "packed": run_packed,
    "packed-warm": run_packed,
    PROBE: run_matmul_probe,
}


def child(opts: argparse.Namespace) -> int:
    """One contestant in this fresh process; its result goes to `--result` as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    imported = time.perf_counter()
    import keras  # noqa: F401  - TensorFlow start-up, common to all, outside the timed region

    imported = time.perf_counter() - imported
    with tempfile.TemporaryDirectory(prefix=f"bench-{opts.contestant}-") as tmp:
        workdir = Path(tmp)
        os.chdir(workdir)  # anything a library drops in the working directory stays in tmp
        started = time.perf_counter()
        out = RUNNERS[opts.contestant](opts, workdir)
        out["wall_s"] = time.perf_counter() - started
        out["keras_import_s"] = imported
        out.update(_recorded(opts.contestant, workdir))
        os.chdir("/")
    Path(opts.result).write_text(json.dumps(out))
    return 0


def _recorded(contestant: str, workdir: Path) -> dict[str, Any]:
    """After the clock stops: how many trial runs reached MLflow (a check on the timing)."""
    if contestant not in ("user-script", "regsearch", "packed", "packed-warm") or \
            not (workdir / "mlflow.db").exists():
        return {}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id], max_results=50000)]
    return {"mlflow_runs": sum(run.data.tags.get("regsearch.role") != "parent" for run in runs)}


# --------------------------------------------------------------------------- parent

def spawn(name: str, opts: argparse.Namespace, compile_cache: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-result-") as tmp:
        result_file = Path(tmp) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--contestant", name,
                   "--result", str(result_file), "--trials", str(opts.trials),
                   "--epochs", str(opts.epochs), "--batch-size", str(opts.batch_size),
                   "--data", opts.data, "--hidden", ",".join(map(str, opts.hidden)),
                   *(["--pack-size", str(opts.pack_size)] if opts.pack_size else [])]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1",
               "REGSEARCH_COMPILE_CACHE": str(compile_cache)}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=not opts.verbose, text=True)
        process_s = time.perf_counter() - started
        if done.returncode != 0 or not result_file.exists():
            tail = "\n".join(((done.stdout or "") + (done.stderr or "")).splitlines()[-25:])
            return {"error": f"exit code {done.returncode}", "log_tail": tail,
                    "process_s": process_s}
        out = json.loads(result_file.read_text())
        out["process_s"] = process_s
        return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        info = dict(line.split(":", 1) for line in
                    Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        # Under a hypervisor the name may be generic ("AMD EPYC"): family/model tell more.
        cpu = (f"{info.get('model name', cpu)} (family {info.get('cpu family', '?')} "
               f"model {info.get('model', '?')}, {info.get('cpu MHz', '?')} MHz)")
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(),
            "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
            "versions": versions}


def repeated(name: str, opts: argparse.Namespace, compile_cache: Path) -> dict[str, Any]:
    """`packed-warm` `--repeat` times (one run of the others): the median run by wall time,
    with every run under "runs". A failed run is the result, so that it is seen."""
    runs = [spawn(name, opts, compile_cache)
            for _ in range(opts.repeat if name == REPEATED else 1)]
    failed = [run for run in runs if "wall_s" not in run]
    if len(runs) == 1 or failed:
        return failed[0] if failed else runs[0]
    ordered = sorted(runs, key=lambda run: run["wall_s"])
    return {**ordered[(len(ordered) - 1) // 2], "runs": runs}


def derive(results: dict[str, dict[str, Any]], probe: dict[str, Any]) -> None:
    """trials/s, ratio to the user script, useful FLOP/s and share of the matmul rate."""
    base = results.get(BASELINE, {}).get("wall_s")
    peak = probe.get("best_gflops")
    outs = [*results.values(), *(run for out in results.values() for run in out.get("runs", []))]
    for out in outs:
        if "wall_s" not in out:
            continue
        out["trials_per_s"] = out["trials"] / out["wall_s"]
        out["speedup_vs_user_script"] = base / out["wall_s"] if base else None
        per_trial_epoch = out["n_train"] * FLOPS_PER_WEIGHT_SAMPLE * out["dense_weights"]
        out["useful_gflop"] = out["epochs_run"] * per_trial_epoch / 1e9
        work = {"wall": out["useful_gflop"], "training": out["useful_gflop"],
                "compiled": out.get("compiled_member_epochs", 0) * per_trial_epoch / 1e9}
        for basis, gflop in work.items():
            seconds = out.get(f"{basis}_s")
            if seconds:
                rate = gflop / seconds
                out[f"useful_gflops_{basis}"] = rate
                out[f"pct_of_matmul_{basis}"] = 100 * rate / peak if peak else None


def render(report: dict[str, Any]) -> str:
    m, probe, setup = report["machine"], report["matmul"], report["setup"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), "
        f"Python {m['python']}, keras backend {probe.get('backend', m['keras_backend'])}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"problem: {setup['data']}, Dense {setup['hidden']} + output, {setup['trials']} trials x "
        f"{setup['epochs']} epochs, batch {setup['batch_size']}, no pruning, recording on",
    ]
    if "best_gflops" in probe:
        lines.append(f"matmul {probe['n']}x{probe['n']} float32: numpy "
                     f"{probe['numpy_gflops']:.1f} GFLOP/s, keras.ops "
                     f"{probe['keras_gflops']:.1f} GFLOP/s (reference: the higher)")
    else:
        lines.append(f"matmul probe failed: {probe.get('error')}")
    ran = {n: out for n, out in report["results"].items() if "wall_s" in out}
    table = _table(
        ("contestant", "trials", "wall s", "trials/s", "x user", "best acc", "process s"),
        [(name, out["trials"], f"{out['wall_s']:.1f}", f"{out['trials_per_s']:.3f}",
          _fmt(out["speedup_vs_user_script"], "{:.2f}x"), _fmt(out["best_val_accuracy"], "{:.4f}"),
          f"{out['process_s']:.1f}") for name, out in ran.items()])
    lines += ["", *table]
    for name, out in report["results"].items():
        if "skipped" in out:
            lines.append(f"{name}: {out['skipped']}")
        elif "error" in out:
            lines.append(f"{name}: FAILED ({out['error']})\n{out.get('log_tail', '')}")
    if ran:
        weights, samples = (next(iter(ran.values()))[k] for k in ("dense_weights", "n_train"))
        per_epoch = weights * samples * FLOPS_PER_WEIGHT_SAMPLE / 1e9
        lines += ["", f"useful work: {weights:,} dense weights x {samples:,} training samples "
                      f"x {FLOPS_PER_WEIGHT_SAMPLE} FLOPs = {per_epoch:.4f} GFLOP per trial-epoch"]
        lines += _table(
            ("contestant", "epochs run", "GFLOP", "GFLOP/s wall", "% matmul", "train s",
             "GFLOP/s train", "% matmul", "1st epoch s", "GFLOP/s compiled", "% matmul"),
            [(name, out["epochs_run"], f"{out['useful_gflop']:.1f}",
              f"{out['useful_gflops_wall']:.3f}", _fmt(out.get("pct_of_matmul_wall"), "{:.3f}"),
              _fmt(out.get("training_s"), "{:.1f}"),
              _fmt(out.get("useful_gflops_training"), "{:.3f}"),
              _fmt(out.get("pct_of_matmul_training"), "{:.3f}"),
              _fmt(out.get("first_epoch_s"), "{:.2f}"),
              _fmt(out.get("useful_gflops_compiled"), "{:.3f}"),
              _fmt(out.get("pct_of_matmul_compiled"), "{:.3f}")) for name, out in ran.items()])
    lines += ["",
              "wall s: after `import keras`, to the last record written (imports of optuna/"
              "mlflow/keras_tuner, data, graphs, training, storage, MLflow); process s: the "
              "whole subprocess, TensorFlow start-up included; x user: user-script wall / "
              "contestant wall (higher is faster); train s: seconds inside the regsearch "
              "trainer's train/assign/run_epoch calls; 1st epoch s: the packed trainer's "
              "first epoch (it traces the epoch program and compiles it or loads it from the "
              "cache); compiled: its other epochs, in the search, recording running beside "
              "them (the rate usually quoted as model FLOP utilization, compile excluded)."]
    for name, out in ran.items():
        if "runs" in out:
            lines.append(f"{name}: median of {len(out['runs'])} runs; " + "; ".join(
                f"{label} {_span([run.get(key) for run in out['runs']], pattern)}"
                for label, key, pattern in (("wall s", "wall_s", "{:.1f}"),
                                            ("x user", "speedup_vs_user_script", "{:.2f}x"),
                                            ("% matmul in training", "pct_of_matmul_training",
                                             "{:.1f}"),
                                            ("% matmul compiled", "pct_of_matmul_compiled",
                                             "{:.1f}"))))
    for name, out in ran.items():
        notes = []
        if "mlflow_runs" in out:
            notes.append(f"{out['mlflow_runs']} MLflow trial runs")
        if "states" in out:
            notes.append("states " + ", ".join(f"{k} {v}" for k, v in out["states"].items()))
        if notes:
            lines.append(f"{name}: " + "; ".join(notes))
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    cells = [tuple(map(str, header))] + [tuple(map(str, row)) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))
    return [line(cells[0]), "-" * len(line(cells[0]))] + [line(row) for row in cells[1:]]


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _span(values: list[float | None], pattern: str) -> str:
    known = sorted(v for v in values if v is not None)
    return f"{_fmt(known[0], pattern)} to {_fmt(known[-1], pattern)}" if known else "-"


def parent(opts: argparse.Namespace) -> int:
    chosen = opts.only or list(CONTESTANTS)
    report: dict[str, Any] = {
        "machine": machine(),
        "setup": {"data": opts.data, "hidden": list(opts.hidden), "trials": opts.trials,
                  "epochs": opts.epochs, "batch_size": opts.batch_size, "seed": SEED},
        "results": {},
    }
    # One compile cache for this run, empty at the start: `packed` fills it, `packed-warm` reads.
    with tempfile.TemporaryDirectory(prefix="bench-xla-") as cache:
        print("matmul probe ...", file=sys.stderr, flush=True)
        report["matmul"] = spawn(PROBE, opts, Path(cache))
        for name in chosen:
            print(f"{name} ...", file=sys.stderr, flush=True)
            report["results"][name] = out = repeated(name, opts, Path(cache))
            if "skipped" in out:
                print(f"{name}: {out['skipped']}", file=sys.stderr, flush=True)
            elif "wall_s" in out:
                print(f"{name}: {out['wall_s']:.1f} s", file=sys.stderr, flush=True)
    derive(report["results"], report["matmul"])
    print(render(report))
    if opts.out:
        Path(opts.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {opts.out}")
    failed = [n for n, out in report["results"].items() if "error" in out]
    return 1 if failed or "error" in report["matmul"] else 0


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTESTANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown contestant(s) {unknown}; "
                                         f"choose from {', '.join(CONTESTANTS)}")
    if "packed-warm" in names and "packed" not in names[:names.index("packed-warm")]:
        raise argparse.ArgumentTypeError("packed-warm reads the cache packed fills: "
                                         "list packed before it")
    return names


def _units(text: str) -> tuple[int, ...]:
    return tuple(int(u) for u in text.split(","))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default="digits", help="a regsearch built-in data set")
    parser.add_argument("--hidden", type=_units, default=(64, 64, 64),
                        help="hidden Dense widths, comma-separated (default 64,64,64)")
    parser.add_argument("--only", type=_names,
                        help=f"comma-separated subset of: {', '.join(CONTESTANTS)}")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of packed-warm; the median is reported, with the range")
    parser.add_argument("--out", help="write the full results as JSON here")
    parser.add_argument("--pack-size", type=int, default=None,
                        help="packed trainer's pack size (default: regsearch's own choice)")
    parser.add_argument("--verbose", action="store_true", help="show the contestants' output")
    parser.add_argument("--contestant", choices=[*CONTESTANTS, PROBE], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    return child(opts) if opts.contestant else parent(opts)


if __name__ == "__main__":
    sys.exit(main())
