"""MLflow as a view of the ledger: what lands there, outages, `regsearch sync`, stale runs.

Studies run through the real CLI in subprocesses and MLflow is read back from another
process, so nothing here depends on state shared inside one interpreter. The server tests
start a real `mlflow server` on a free local port and kill it in the middle of a study.
Password checks use a secret that must never appear in MLflow or in anything printed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
import itertools

pytestmark = [pytest.mark.slow]

SECRET = "s3cretPW"
CLI_TIMEOUT = 240  # seconds for one CLI call; a hang fails the test instead of blocking CI
# Pruning is a normal end (FINISHED, its state in a tag); KILLED is for stopped processes.
STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "failed": "FAILED"}
OPTUNA_STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                TrialState.FAIL: "failed"}
EPOCH_KEYS = ("train_loss", "val_loss", "val_{metric}", "penalty")
WARNING = "regsearch: warning: MLflow"

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- helpers

def child_env() -> dict[str, str]:
    """The environment of every subprocess; no MLflow settings leak in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1",
               # the job runner (huey workers) only slows the server's start-up here
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    return env


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def study_file(folder: Path, name: str, *, storage: str, tracking_uri: str,
               data: str = "digits", train: dict[str, Any] | None = None,
               search: dict[str, Any] | None = None) -> Path:
    spec = {
        "name": name,
        "seed": 3,
        "data": {"builtin": data},
        "model": {"hidden_units": [16]},
        "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.01, **(train or {})},
        "search": {"n_trials": 3, "pruner": "none", **(search or {})},
        "storage": storage,
        "mlflow": {"tracking_uri": tracking_uri},
        "confirm": None,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def cli(cwd: Path, *args: Any, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regsearch", *map(str, args)], cwd=cwd,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def show(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def trials_of(storage: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Watched:
    """A CLI run in the background; its stderr lines are collected with their arrival times."""

    def __init__(self, cwd: Path, *args: Any) -> None:
        self.stdout_path = cwd / f"stdout-{time.monotonic_ns()}.txt"
        self._stdout = self.stdout_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "regsearch", *map(str, args)],
                                     cwd=cwd, env=child_env(), stdout=self._stdout,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[tuple[float, str]] = []
        self.done = False
        self.ended_at = math.inf  # when stderr closed: the process has ended
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.cond.notify_all()
        with self.cond:
            self.done, self.ended_at = True, time.monotonic()
            self.cond.notify_all()

    def wait_line(self, prefix: str, timeout: float) -> float:
        """The arrival time of the first stderr line starting with `prefix`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, line in self.lines:
                    if line.startswith(prefix):
                        return at
                left = deadline - time.monotonic()
                if self.done or left <= 0:
                    raise AssertionError(f"no stderr line {prefix!r} "
                                         f"(exit {self.proc.poll()}):\n{self.stderr}")
                self.cond.wait(left)

    def line_time(self, prefix: str) -> float:
        return next(at for at, line in self.lines if line.startswith(prefix))

    def finish(self, timeout: float = CLI_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"run did not end within {timeout}s:\n{self.stderr}") from None
        self.reader.join(10)
        self._stdout.close()
        return code

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no finally blocks, no drain, as in a crash
        self.finish()

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()


class MlflowServer:
    """`mlflow server` on 127.0.0.1 in its own process group, so the test can kill it whole."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen | None = None
        self.log = folder / "server.log"

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        command = [sys.executable, "-m", "mlflow", "server",
                   "--backend-store-uri", sqlite_url(self.folder / "srv.db"),
                   "--default-artifact-root", str(self.folder / "art"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(command, cwd=self.folder, env=child_env(), stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"mlflow server not healthy in {timeout}s:\n"
                             f"{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server and its workers (the process group this test created)."""
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)  # workers that outlived the leader
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            pass

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # pgid == pid: start_new_session=True
        except ProcessLookupError:
            pass


# Runs in its own interpreter: what any MLflow user would see, with no state from this one.
READER = r'''
import json, sys
import mlflow
from mlflow import MlflowClient

out_path, uri, names = sys.argv[1], sys.argv[2], sys.argv[3:]
mlflow.set_tracking_uri(uri)
client = MlflowClient(uri)
out = {}
for name in names:
    experiment = client.get_experiment_by_name(name)
    runs = []
    if experiment is not None:
        for run in mlflow.search_runs(experiment_names=[name], output_format="list"):
            info, data = run.info, run.data
            history = {}
            for key in data.metrics:
                points = client.get_metric_history(info.run_id, key)
                history[key] = sorted([m.step, m.value] for m in points)
            artifacts = [f.path for f in client.list_artifacts(info.run_id)]
            spec_yaml = (mlflow.artifacts.load_text(f"runs:/{info.run_id}/spec.yaml")
                         if "spec.yaml" in artifacts else None)
            runs.append({"run_id": info.run_id, "status": info.status,
                         "run_name": info.run_name, "tags": dict(data.tags),
                         "params": dict(data.params), "metrics": dict(data.metrics),
                         "history": history, "artifacts": artifacts, "spec_yaml": spec_yaml})
    out[name] = {"experiment_id": experiment and experiment.experiment_id, "runs": runs}
with open(out_path, "w") as f:
    json.dump(out, f)
'''


def read_mlflow(folder: Path, tracking_uri: str, *names: str) -> dict[str, Any]:
    """MLflow as seen from a separate process: {study: {experiment_id, runs: [...]}}."""
    script, out = folder / "read_mlflow.py", folder / f"mlflow-{time.monotonic_ns()}.json"
    script.write_text(READER)
    proc = subprocess.run([sys.executable, str(script), str(out), tracking_uri, *names],
                          cwd=folder, env=child_env(), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, show(proc)
    return json.loads(out.read_text())


def parents(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in view["runs"] if r["tags"].get("regsearch.role") == "parent"]


def children(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in view["runs"] if r["tags"].get("regsearch.role") == "trial"]


def by_trial(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {int(r["tags"]["regsearch.trial"]): r for r in runs}
    assert len(out) == len(runs), "more than one run for a trial"
    return out


def same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def client_runs(tracking_uri: str, study: str) -> list[Any]:
    """Active runs of a study's experiment, read with MlflowClient in this process."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no MLflow experiment {study!r}"
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def trial_runs(tracking_uri: str, study: str) -> list[Any]:
    return [r for r in client_runs(tracking_uri, study)
            if r.data.tags.get("regsearch.role") == "trial"]


def trial_numbers(runs: list[Any]) -> list[int]:
    return sorted(int(r.data.tags["regsearch.trial"]) for r in runs)


# =========================================================================== 1. what lands

@dataclass
class Recorded:
    folder: Path
    storage: str
    tracking_uri: str
    specs: dict[str, dict[str, Any]]
    trials: dict[str, list[FrozenTrial]]
    view: dict[str, Any]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Two CLI studies in one storage and one MLflow store, read back by another process.

    `hb` (digits, hyperband) has complete and pruned trials; `boom` (diabetes, SGD with a
    learning rate of 1e6) diverges at once, so its trials fail.
    """
    folder = tmp_path_factory.mktemp("recorded")
    storage, tracking = sqlite_url(folder / "study.db"), sqlite_url(folder / "ml.db")
    hb = study_file(folder, "hb", storage=storage, tracking_uri=tracking,
                    train={"epochs": 6}, search={"n_trials": 8, "pruner": "hyperband"})
    boom = study_file(folder, "boom", storage=storage, tracking_uri=tracking, data="diabetes",
                      train={"optimizer": "sgd", "learning_rate": 1.0e6},
                      search={"n_trials": 2})
    for path in (hb, boom):
        proc = cli(folder, "run", path.name)
        if path is boom:  # every trial diverged: recorded, and said to be an error
            assert proc.returncode == 2 and "all 2 trials of 'boom' diverged" in proc.stderr, \
                show(proc)
        else:
            assert proc.returncode == 0, show(proc)
        assert WARNING not in proc.stderr, show(proc)
    specs = {p.stem: yaml.safe_load(p.read_text()) for p in (hb, boom)}
    trials = {name: trials_of(storage, name) for name in specs}
    return Recorded(folder, storage, tracking, specs, trials,
                    read_mlflow(folder, tracking, *specs))


def test_one_experiment_and_one_finished_parent_run_per_study(recorded: Recorded) -> None:
    from regsearch.storage import mask_url

    for name, spec in recorded.specs.items():
        view = recorded.view[name]
        assert view["experiment_id"] is not None, f"no experiment named {name!r}"
        found = parents(view)
        assert len(found) == 1, [r["tags"] for r in found]
        parent = found[0]
        assert parent["status"] == "FINISHED"
        assert parent["run_name"] == name
        assert parent["tags"]["regsearch.study"] == name
        assert "mlflow.parentRunId" not in parent["tags"]
        params = parent["params"]
        assert params["name"] == name
        assert params["train.epochs"] == str(spec["train"]["epochs"])
        assert params["train.optimizer"] == spec["train"].get("optimizer", "adam")
        assert params["search.pruner"] == spec["search"]["pruner"]
        assert params["search.n_trials"] == str(spec["search"]["n_trials"])
        assert params["data.builtin"] == spec["data"]["builtin"]
        assert params["storage"] == mask_url(recorded.storage)
        assert (params["metric"], params["direction"]) == (
            {"hb": ("accuracy", "maximize"), "boom": ("rmse", "minimize")}[name])
        # The spec as an artifact, loadable as the study file it came from.
        assert "spec.yaml" in parent["artifacts"]
        artifact = yaml.safe_load(parent["spec_yaml"])
        assert artifact["name"] == name
        assert artifact["train"]["epochs"] == spec["train"]["epochs"]
        assert artifact["search"]["pruner"] == spec["search"]["pruner"]
        assert artifact["data"]["builtin"] == spec["data"]["builtin"]


def test_one_nested_child_run_per_trial_with_its_params(recorded: Recorded) -> None:
    from regsearch import space

    for name, trials in recorded.trials.items():
        view = recorded.view[name]
        parent_id = parents(view)[0]["run_id"]
        runs = by_trial(children(view))
        assert sorted(runs) == [t.number for t in trials]
        assert len(view["runs"]) == len(trials) + 1  # nothing but parent and children
        for t in trials:
            run = runs[t.number]
            config = space.from_params(t.params)
            assert run["run_name"] == config.short_name(t.number)
            assert run["run_name"].startswith(f"t{t.number:04d} ")
            assert run["tags"]["mlflow.parentRunId"] == parent_id
            assert run["tags"]["regsearch.study"] == name
            params = run["params"]
            logged = {"regularizer", "l1", "l2", "dropout"}
            if config.regularizer != "none":  # one log axis for every type
                logged.add("log10_strength")
                assert float(params["log10_strength"]) == pytest.approx(
                    math.log10(config.strength), abs=1e-4)
            assert set(params) == logged, params
            assert params["regularizer"] == config.regularizer
            for key in ("l1", "l2", "dropout"):
                assert float(params[key]) == getattr(config, key), (t.number, key, params)


def test_trial_states_map_to_run_statuses(recorded: Recorded) -> None:
    seen = set()
    for name, trials in recorded.trials.items():
        runs = by_trial(children(recorded.view[name]))
        objective = "best_" + {"hb": "accuracy", "boom": "rmse"}[name]
        for t in trials:
            run, state = runs[t.number], OPTUNA_STATE[t.state]
            seen.add(state)
            tags = run["tags"]
            assert tags["regsearch.state"] == state, (name, t.number, tags)
            assert run["status"] == STATUS[state], (name, t.number, run["status"])
            assert tags["regsearch.recorded"] == "true"
            reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("stop_reason") or ""
            assert tags.get("regsearch.reason", "") == reason  # no empty tag
            assert tags["mlflow.note.content"].startswith(f"Trial {t.number} of study {name}: ")
            assert (objective in run["metrics"]) == (state == "complete")  # ranked ones only
            if state == "complete":
                assert same(run["metrics"][objective], t.value)
            if state == "failed":
                assert "diverged" in reason
            if state == "pruned":
                assert reason.startswith("pruned at epoch")
    assert seen == {"complete", "pruned", "failed"}, seen


def test_per_epoch_metric_histories(recorded: Recorded) -> None:
    for name, trials in recorded.trials.items():
        metric = {"hb": "accuracy", "boom": "rmse"}[name]
        runs = by_trial(children(recorded.view[name]))
        for t in trials:
            run, epochs = runs[t.number], t.user_attrs["epochs_run"]
            assert epochs >= 1
            assert run["metrics"]["final_epochs_run"] == epochs
            for key in (k.format(metric=metric) for k in EPOCH_KEYS):
                steps = [step for step, _ in run["history"][key]]
                assert steps == list(range(1, epochs + 1)), (name, t.number, key, steps)
            if t.state == TrialState.COMPLETE:
                best_epoch = t.user_attrs["best_epoch"]
                assert run["metrics"]["final_best_epoch"] == best_epoch
                at_best = dict(map(tuple, run["history"][f"val_{metric}"]))[best_epoch]
                assert same(at_best, t.value)
            if t.state == TrialState.PRUNED:
                assert epochs < recorded.specs[name]["train"]["epochs"]


def test_best_tags_follow_the_optuna_best_trial(recorded: Recorded) -> None:
    from regsearch import space

    best = optuna.load_study(study_name="hb", storage=recorded.storage).best_trial
    parent = parents(recorded.view["hb"])[0]
    tags = parent["tags"]
    config = space.from_params(best.params)
    assert tags["best.trial"] == str(best.number)
    assert tags["best.regularizer"] == config.regularizer
    assert (float(tags["best.l1"]), float(tags["best.l2"]), float(tags["best.dropout"])) == (
        config.l1, config.l2, config.dropout)
    assert same(parent["metrics"]["best_accuracy"], best.value)
    # One point per improvement, one step each, rising: the last is the tagged best's.
    points = parent["history"]["best_accuracy"]
    assert [step for step, _ in points] == list(range(len(points)))
    values = [v for _, v in points]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert same(values[-1], best.value)
    # A study without a complete trial has no best.
    boom = parents(recorded.view["boom"])[0]
    assert not any(k.startswith("best") for k in boom["tags"]), boom["tags"]
    assert "best_rmse" not in boom["metrics"]


def test_sync_rebuilds_mlflow_into_an_empty_store(recorded: Recorded, tmp_path: Path) -> None:
    shutil.copy(recorded.folder / "study.db", tmp_path / "study.db")
    storage, fresh = sqlite_url(tmp_path / "study.db"), sqlite_url(tmp_path / "fresh.db")
    proc = cli(tmp_path, "sync", "hb", "--storage", storage, "--mlflow", fresh)
    assert proc.returncode == 0, show(proc)
    n = len(recorded.trials["hb"])
    assert f"synced hb: {n} trial runs written to MLflow, 0 already there" in proc.stdout, \
        show(proc)
    view = read_mlflow(tmp_path, fresh, "hb")["hb"]
    assert sorted(by_trial(children(view))) == [t.number for t in recorded.trials["hb"]]


def test_sync_mends_the_ledger_from_optuna_and_mlflow_from_the_ledger(
        recorded: Recorded, tmp_path: Path) -> None:
    """What a killed worker leaves: a finished trial still `running` in the ledger, one
    trial without a run, one run never ended (its writer died mid-write)."""
    from mlflow import MlflowClient

    from regsearch.recorders.ledger import Ledger

    for name in ("study.db", "ml.db"):
        shutil.copy(recorded.folder / name, tmp_path / name)
    storage, tracking = sqlite_url(tmp_path / "study.db"), sqlite_url(tmp_path / "ml.db")
    complete = [t for t in recorded.trials["hb"] if t.state == TrialState.COMPLETE]
    broken, gone, unended = complete[0], complete[1], complete[2]
    ledger = Ledger(storage)
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE regsearch_trials SET state = 'running', value = NULL "
                             f"WHERE number = {broken.number} AND study_id = "
                             "(SELECT id FROM regsearch_studies WHERE name = 'hb')")
    client = MlflowClient(tracking)
    runs = {int(r.data.tags["regsearch.trial"]): r for r in trial_runs(tracking, "hb")}
    client.delete_run(runs[gone.number].info.run_id)
    client.delete_tag(runs[unended.number].info.run_id, "regsearch.recorded")
    client.update_run(runs[unended.number].info.run_id, status="RUNNING")
    earlier = complete[3]  # as an earlier regsearch recorded it: whole, under the old tag
    client.delete_tag(runs[earlier.number].info.run_id, "regsearch.recorded")
    client.set_tag(runs[earlier.number].info.run_id, "regsearch.complete", "true")

    proc = cli(tmp_path, "sync", "hb", "--storage", storage, "--mlflow", tracking)
    assert proc.returncode == 0, show(proc)
    n = len(recorded.trials["hb"])
    assert f"synced hb: 2 trial runs written to MLflow, {n - 2} already there; 1 ledger rows " \
           "mended from Optuna" in proc.stdout, show(proc)
    row = next(r for r in ledger.records("hb") if r.number == broken.number)
    assert (row.state, row.value) == ("complete", broken.value)
    after = trial_runs(tracking, "hb")
    assert trial_numbers(after) == [t.number for t in recorded.trials["hb"]]  # one each
    status = {int(r.data.tags["regsearch.trial"]): r.info.status for r in after}
    assert status[gone.number] == status[unended.number] == "FINISHED"
    kept = [r for r in after if r.data.tags["regsearch.trial"] == str(earlier.number)]
    assert [r.info.run_id for r in kept] == [runs[earlier.number].info.run_id]  # not rewritten
    assert "RUNNING" not in status.values()
    ledger.engine.dispose()


def test_sync_failing_midway_is_one_masked_user_error(recorded: Recorded, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    from mlflow.exceptions import MlflowException

    from regsearch import cli
    from regsearch.recorders.ledger import Ledger
    from regsearch.recorders.mlflow import MlflowWriter

    shutil.copy(recorded.folder / "study.db", tmp_path / "study.db")
    storage = sqlite_url(tmp_path / "study.db")
    Ledger(storage).set_mlflow("hb", {3: None}, synced=False)  # one trial MLflow lacks

    def server_gone(*args: Any, **kwargs: Any) -> Any:  # what an HTTP store raises
        raise MlflowException(f"API request to http://alice:{SECRET}@127.0.0.1:5000/api/2.0/"
                              "mlflow/runs/create failed with exception ConnectionError")
    monkeypatch.setattr(MlflowWriter, "write_trial", server_gone)
    code = cli.main(["sync", "hb", "--storage", storage,
                     "--mlflow", sqlite_url(tmp_path / "ml.db")])
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and err.startswith("regsearch: error: "), err


def test_the_parent_run_ends_only_when_no_trial_of_any_worker_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers share a study: the first to stop must not end the study's parent run
    while the other still trains; the last one ends it; a resumed study reopens it."""
    from regsearch.recorders.mlflow import MlflowWriter
    from regsearch.recorders.mlflow_live import GPU, WORKER, worker_tags
    from regsearch.space import RegConfig

    writer = MlflowWriter(sqlite_url(tmp_path / "ml.db"))
    experiment = writer.experiment("shared")
    info = {"name": "shared", "spec_hash": "h", "spec": {"name": "shared"},
            "metric": "accuracy", "direction": "maximize"}
    parent = writer.parent_run(experiment, info, sqlite_url(tmp_path / "s.db"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # as the launcher sets it for GPU 3
    other = writer.start_trial(experiment, parent, "shared", 7, RegConfig("l2", l2=1e-3),
                               tags=worker_tags())

    writer.end_parent(experiment, parent)  # the first worker stops; trial 7 still runs
    assert writer.client.get_run(parent).info.status == "RUNNING"
    writer.client.set_terminated(other, "FINISHED")  # the other worker finishes trial 7...
    writer.end_parent(experiment, parent)  # ...and stops
    assert writer.client.get_run(parent).info.status == "FINISHED"
    assert writer.parent_run(experiment, info, "") == parent  # resumed: same run, running
    assert writer.client.get_run(parent).info.status == "RUNNING"

    tags = writer.client.get_run(other).data.tags
    assert tags[WORKER] == f"{socket.gethostname()}:{os.getpid()}"
    assert tags[GPU] == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # a CPU worker names no GPU
    assert GPU not in worker_tags()


def test_the_parents_best_is_the_best_any_worker_found(tmp_path: Path) -> None:
    """Workers finish trials out of order and each knows only its own: a worse result never
    replaces a better one, and the point MLflow shows (the highest step) is the best."""
    from regsearch.recorders.ledger import TrialRecord
    from regsearch.recorders.mlflow import MlflowWriter
    from regsearch.space import RegConfig

    writer = MlflowWriter(sqlite_url(tmp_path / "ml.db"))
    experiment = writer.experiment("shared")
    info = {"name": "shared", "spec_hash": "h", "spec": {"name": "shared"},
            "metric": "accuracy", "direction": "maximize"}
    parent = writer.parent_run(experiment, info, "")

    def finished(number: int, value: float) -> TrialRecord:
        return TrialRecord(study_name="shared", number=number, state="complete",
                           config=RegConfig("l2", l2=1e-3 * number, dropout=0.1), value=value)

    for number, value in ((5, 0.98), (3, 0.99), (7, 0.97)):  # worker A: 5 and 7; B: 3
        writer.set_best(parent, finished(number, value), "accuracy", "maximize")
    run = writer.client.get_run(parent)
    assert run.data.metrics["best_accuracy"] == 0.99
    assert run.data.tags["best.trial"] == "3" and float(run.data.tags["best.l2"]) == 3e-3
    history = writer.client.get_metric_history(parent, "best_accuracy")
    assert [(p.step, p.value) for p in history] == [(0, 0.98), (1, 0.99)]

    # Two workers' writes crossed: one read the history before the other's point landed, so
    # the tags name trial 9 while the shown point is trial 3's. A stopping worker settles it
    # from the study's own best, once.
    from mlflow.entities import Metric, RunTag

    writer.client.log_batch(parent, metrics=[Metric("best_accuracy", 0.95, 0, 1)],
                            tags=[RunTag("best.trial", "9")])
    for _ in range(2):
        writer.set_best(parent, finished(3, 0.99), "accuracy", "maximize", settle=True)
    run = writer.client.get_run(parent)
    assert (run.data.tags["best.trial"], run.data.metrics["best_accuracy"]) == ("3", 0.99)
    assert len(writer.client.get_metric_history(parent, "best_accuracy")) == 3  # tags only

    # A tie on the objective won on validation loss renames the best without a new point.
    writer.set_best(parent, dataclasses.replace(finished(8, 0.99), summary={"val_loss": 0.01}),
                    "accuracy", "maximize")
    run = writer.client.get_run(parent)
    assert run.data.tags["best.trial"] == "8"
    assert len(writer.client.get_metric_history(parent, "best_accuracy")) == 3


# =========================================================================== 2. outage

@dataclass
class Outage:
    folder: Path
    name: str
    storage: str
    n_trials: int
    run: Watched
    run_code: int
    killed_at: float
    syncs: list[subprocess.CompletedProcess]
    after_sync: list[list[Any]]  # all active runs of the study after each sync
    twin: subprocess.CompletedProcess  # another study of the same name, same server


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Outage:
    """A study logging to a live server that is killed after trial 1, restarted, synced twice."""
    folder = tmp_path_factory.mktemp("outage")
    server = MlflowServer(folder, free_port())
    name, n_trials = "outage", 8
    storage = sqlite_url(folder / "study.db")
    path = study_file(folder, name, storage=storage,
                      tracking_uri=sqlite_url(folder / "unused-mlflow.db"),
                      train={"epochs": 4, "batch_size": 64}, search={"n_trials": n_trials})
    # The password only checks masking; the server has no authentication and ignores it.
    uri = f"http://alice:{SECRET}@127.0.0.1:{server.port}"
    try:
        server.start()
        run = Watched(folder, "run", path.name, "--mlflow", uri)
        try:
            run.wait_line("trial 1 ", CLI_TIMEOUT)
            server.kill()
            killed_at = time.monotonic()
            code = run.finish()
        finally:
            if run.proc.poll() is None:
                run.kill()
        server.start()
        syncs, after = [], []
        for _ in range(2):
            syncs.append(cli(folder, "sync", name, "--storage", storage, "--mlflow", uri))
            after.append(client_runs(server.uri, name))
        twin = folder / "twin"
        twin.mkdir()
        twin_path = study_file(twin, name, storage=sqlite_url(twin / "study.db"),
                               tracking_uri=sqlite_url(twin / "unused-mlflow.db"))
        refused = cli(twin, "run", twin_path.name, "--mlflow", uri)
        after.append(client_runs(server.uri, name))
        return Outage(folder, name, storage, n_trials, run, code, killed_at, syncs, after,
                      refused)
    finally:
        server.stop()


@pytest.mark.server
def test_study_survives_a_dead_server_with_one_warning_and_no_stall(outage: Outage) -> None:
    run = outage.run
    assert outage.run_code == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    trials = trials_of(outage.storage, outage.name)
    assert len(trials) == outage.n_trials
    assert all(t.state == TrialState.COMPLETE for t in trials)
    warnings = [line for _, line in run.lines if line.startswith(WARNING)]
    assert len(warnings) == 1, run.stderr
    assert f"regsearch sync {outage.name}" in warnings[0]
    assert run.line_time(WARNING) >= outage.killed_at - 0.5
    # Trials after the kill take as long as before it: MLflow never blocks training.
    per_trial = run.line_time("trial 1 ") - run.line_time("trial 0 ")
    times = [outage.killed_at] + [run.line_time(f"trial {n} ")
                                  for n in range(2, outage.n_trials)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 3 * per_trial + 10, (per_trial, gaps)
    assert run.ended_at - outage.killed_at < 60, (run.ended_at - outage.killed_at, gaps)


@pytest.mark.server
def test_sync_backfills_every_trial_once_and_is_idempotent(outage: Outage) -> None:
    first, second = outage.syncs
    assert first.returncode == 0, show(first)
    assert second.returncode == 0, show(second)
    numbers = list(range(outage.n_trials))
    for everything in outage.after_sync[:2]:
        runs = [r for r in everything if r.data.tags.get("regsearch.role") == "trial"]
        assert trial_numbers(runs) == numbers  # each trial exactly once
        assert len(everything) == len(runs) + 1  # and one parent
        for r in runs:
            assert r.data.tags["regsearch.recorded"] == "true", r.data.tags
            assert r.data.tags["regsearch.state"] == "complete"
            assert r.info.status == "FINISHED"
            assert r.data.metrics["final_epochs_run"] == 4
    assert f"synced {outage.name}: 0 trial runs written to MLflow, {outage.n_trials} already " \
           "there" in second.stdout, show(second)
    assert "synced outage: 0 trial runs written" not in first.stdout, show(first)
    assert sorted(r.info.run_id for r in outage.after_sync[0]) == \
        sorted(r.info.run_id for r in outage.after_sync[1])
    # The one parent is finished and names the study's best trial, which sync filled in.
    best = optuna.load_study(study_name=outage.name, storage=outage.storage).best_trial
    parent = next(r for r in outage.after_sync[1]
                  if r.data.tags.get("regsearch.role") == "parent")
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best.trial"] == str(best.number)
    assert same(parent.data.metrics["best_accuracy"], best.value)


@pytest.mark.server
def test_another_study_of_the_same_name_is_refused_by_the_server(outage: Outage) -> None:
    """The same `name:` in another storage while MLflow stays on this server: refused
    before anything is written, instead of mixing two studies in one experiment."""
    proc = outage.twin
    assert proc.returncode == 2, show(proc)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("regsearch: error: MLflow at "
                                                                 "http://alice:***@"), show(proc)
    assert "has an experiment 'outage' that holds another study of that name" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout
    assert sorted(p.name for p in (outage.folder / "twin").iterdir()) == ["outage.yaml"]
    assert sorted(r.info.run_id for r in outage.after_sync[-1]) == \
        sorted(r.info.run_id for r in outage.after_sync[-2])


@pytest.mark.server
def test_outage_warning_masks_the_password(outage: Outage) -> None:
    warning = next(line for _, line in outage.run.lines if line.startswith(WARNING))
    assert "alice:***@" in warning
    assert SECRET not in outage.run.stderr


@pytest.mark.server
def test_mlflow_prints_nothing_on_stdout(outage: Outage) -> None:
    for sync in outage.syncs:
        assert sync.stdout.splitlines() == [
            line for line in sync.stdout.splitlines() if line.startswith("synced ")], show(sync)
        assert len(sync.stdout.splitlines()) == 1, show(sync)
    assert "View run" not in outage.run.stdout
    assert SECRET not in outage.run.stdout + "".join(s.stdout for s in outage.syncs)


# =========================================================================== 3. stale runs

def test_a_killed_run_is_closed_as_killed_when_the_study_is_reopened(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from regsearch import liveness
    from regsearch.recorders.ledger import Ledger

    name = "stale"
    storage, tracking = sqlite_url(tmp_path / "study.db"), sqlite_url(tmp_path / "ml.db")
    path = study_file(tmp_path, name, storage=storage, tracking_uri=tracking,
                      train={"epochs": 1200, "batch_size": 32}, search={"n_trials": 2})
    # 1200 epochs: trial 1 trains for seconds, long enough to be killed while it runs (the
    # packed epoch is one compiled program and a light one: 400 ended in 1.4 s in CI)
    run = Watched(tmp_path, "run", path.name)
    try:
        run.wait_line("trial 0 ", CLI_TIMEOUT)
        # Trial 1 is training; the ledger names its MLflow run once that run exists.
        ledger, stale_id = Ledger(storage), None
        deadline = time.monotonic() + 30
        while stale_id is None and time.monotonic() < deadline:
            record = {r.number: r for r in list(ledger.records(name))}.get(1)
            if record is not None and record.state == "running" and record.mlflow_run_id:
                stale_id = record.mlflow_run_id
            else:
                time.sleep(0.05)
        assert stale_id, f"trial 1 never got an MLflow run:\n{run.stderr}"
        time.sleep(0.5)
        run.kill()
    finally:
        if run.proc.poll() is None:
            run.kill()
    assert not any(line.startswith("trial 1 ") for _, line in run.lines), run.stderr
    assert [t.state for t in trials_of(storage, name)] == [TrialState.COMPLETE,
                                                           TrialState.RUNNING]
    client = MlflowClient(tracking)
    stale = client.get_run(stale_id)
    assert stale.info.status == "RUNNING"
    assert stale.data.tags["regsearch.trial"] == "1"
    assert stale.data.tags["regsearch.state"] == "running"

    proc = cli(tmp_path, "run", path.name)
    assert proc.returncode == 0, show(proc)
    assert "1 of 2 trials already done" in proc.stderr, show(proc)
    assert WARNING not in proc.stderr, show(proc)

    stale = client.get_run(stale_id)
    assert stale.info.status == "KILLED"
    assert stale.data.tags["regsearch.state"] == "killed"
    trials = trials_of(storage, name)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE]
    assert "process ended" in trials[1].user_attrs["fail_reason"]
    assert liveness.count_done(trials) == 2  # the abandoned trial spent no budget
    records = {r.number: r for r in Ledger(storage).records(name)}
    assert {n: r.state for n, r in records.items()} == {0: "complete", 1: "failed",
                                                        2: "complete"}
    assert "process ended" in records[1].reason
    runs = client_runs(tracking, name)
    assert [r.info.status for r in runs if r.data.tags.get("regsearch.role") == "parent"] == [
        "FINISHED"]
    status = {int(r.data.tags["regsearch.trial"]): r.info.status for r in runs
              if r.data.tags.get("regsearch.role") == "trial"}
    assert status == {0: "FINISHED", 1: "KILLED", 2: "FINISHED"}

    # sync completes the abandoned trial's run from the ledger; still one run per trial.
    proc = cli(tmp_path, "sync", name, "--storage", storage, "--mlflow", tracking)
    assert proc.returncode == 0, show(proc)
    runs = trial_runs(tracking, name)
    assert trial_numbers(runs) == [0, 1, 2]
    assert all(r.data.tags["regsearch.recorded"] == "true" for r in runs)
    abandoned = next(r for r in runs if r.data.tags["regsearch.trial"] == "1")
    assert abandoned.info.status == "KILLED"  # its process was lost: as the reopening said
    assert "process ended" in abandoned.data.tags["regsearch.reason"]


# =========================================================================== 4. passwords

@pytest.mark.parametrize("url, masked", [
    (f"postgresql+psycopg://bob:{SECRET}@db.example:5432/studies",
     "postgresql+psycopg://bob:***@db.example:5432/studies"),
    (f"postgresql://bob:{SECRET}@db.example/studies?sslmode=require",
     "postgresql://bob:***@db.example/studies?sslmode=require"),
    (f"mysql+pymysql://root:{SECRET}@localhost/db", "mysql+pymysql://root:***@localhost/db"),
    (f"http://alice:{SECRET}@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
    (f"https://alice:{SECRET}@mlflow.example/path", "https://alice:***@mlflow.example/path"),
    ("https://alice:p%40ss%3Aw@mlflow.example", "https://alice:***@mlflow.example"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("postgresql://bob@db.example/studies", "postgresql://bob@db.example/studies"),
    ("sqlite:////tmp/x/study.db", "sqlite:////tmp/x/study.db"),
    ("sqlite:///runs/mlflow.db", "sqlite:///runs/mlflow.db"),
])
def test_mask_url(url: str, masked: str) -> None:
    from regsearch.storage import mask_url

    assert mask_url(url) == masked


def test_mask_url_of_a_sqlalchemy_url() -> None:
    from sqlalchemy.engine import make_url

    from regsearch.storage import mask_url

    assert mask_url(make_url(f"postgresql+psycopg://bob:{SECRET}@db/studies")) == \
        "postgresql+psycopg://bob:***@db/studies"


class ScriptedTrainer:
    """Complete trials with the given values, in order; no TensorFlow."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def train(self, config: Any, *, seed: int, prune: Any, keep_model: bool = False) -> Any:
        from regsearch.trainers.base import EpochMetrics, TrialOutcome

        value = self.values.pop(0)
        metrics = EpochMetrics(epoch=1, train_loss=0.5, val_loss=0.5, val_metric=value,
                               penalty=0.0)
        prune(metrics)
        return TrialOutcome(state="complete", value=value, best_epoch=1, history=[metrics],
                            seconds=0.01)


def run_in_process(spec: Any, trainer: ScriptedTrainer, **kwargs: Any) -> Any:
    from regsearch import driver, opening
    from regsearch.recorders.mlflow_live import MlflowRecorder

    run = opening.open_run(spec, **kwargs)
    driver.run_study(run, trainer)
    recorders = [r for r in run.recorders if isinstance(r, MlflowRecorder)]
    assert len(recorders) == 1 and recorders[0].failed is None, recorders
    return run


def parent_run(tracking_uri: str, study: str) -> Any:
    found = [r for r in client_runs(tracking_uri, study)
             if r.data.tags.get("regsearch.role") == "parent"]
    assert len(found) == 1, found
    return found[0]


def test_passwords_in_the_study_file_never_reach_mlflow(make_spec, tmp_path: Path) -> None:
    import mlflow

    from regsearch.storage import mask_url

    spec = make_spec(storage=f"postgresql+psycopg://bob:{SECRET}@db.invalid:5432/studies",
                     mlflow={"tracking_uri": f"http://alice:{SECRET}@mlflow.invalid:5000"})
    storage, tracking = sqlite_url(tmp_path / "real.db"), sqlite_url(tmp_path / "ml.db")
    run_in_process(spec, ScriptedTrainer(0.9), n_trials=1, storage=storage, mlflow=tracking)
    parent = parent_run(tracking, spec.name)
    assert parent.data.params["storage"] == mask_url(storage)
    for key, value in {**parent.data.params, **parent.data.tags}.items():
        assert SECRET not in value, (key, value)
    text = mlflow.artifacts.load_text(f"{parent.info.artifact_uri}/spec.yaml")
    assert SECRET not in text, text


# =========================================================================== 5. resuming

def test_resumed_study_keeps_the_best_of_earlier_runs(make_spec) -> None:
    spec = make_spec()
    run_in_process(spec, ScriptedTrainer(0.9), n_trials=1)
    run_in_process(spec, ScriptedTrainer(0.5), n_trials=2)
    parent = parent_run(spec.mlflow.tracking_uri, spec.name)
    assert parent.data.tags["best.trial"] == "0"
    assert parent.data.metrics["best_accuracy"] == 0.9


# =========================================================================== 6. writer process

def test_the_training_process_never_imports_mlflow(make_spec, tmp_path: Path) -> None:
    """MLflow's import and writes run in the writer process; all runs still land."""
    spec_path = tmp_path / "tiny.json"
    spec_path.write_text(json.dumps({
        "name": "apart", "data": {"builtin": "digits"}, "model": {"hidden_units": [8]},
        "train": {"epochs": 1, "batch_size": 256}, "search": {"n_trials": 3}, "confirm": None,
        "storage": sqlite_url(tmp_path / "study.db"),
        "mlflow": {"tracking_uri": sqlite_url(tmp_path / "mlflow.db")}}))
    script = (
        "import sys\n"
        "from regsearch import driver, opening\n"
        "from regsearch.study_file import load_spec\n"
        "from regsearch.trainers import make_trainer\n"
        f"run = opening.open_run(load_spec({str(spec_path)!r}))\n"
        "driver.run_study(run, make_trainer(run))\n"
        "print('mlflow imported:', 'mlflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=child_env(), timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mlflow imported: False" in done.stdout, done.stdout
    runs = client_runs(sqlite_url(tmp_path / "mlflow.db"), "apart")
    trials = [r for r in runs if r.data.tags.get("regsearch.role") == "trial"]
    assert sorted(int(r.data.tags["regsearch.trial"]) for r in trials) == [0, 1, 2]
    assert all(r.info.status == "FINISHED" and r.data.tags.get("regsearch.recorded") == "true"
               for r in trials)


class KillsTheWriter(ScriptedTrainer):
    """Kills the MLflow writer process before its second trial trains."""

    def __init__(self, recorder: Any, *values: float) -> None:
        super().__init__(*values)
        self.recorder, self.calls = recorder, 0

    def train(self, config: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.recorder.tasks.join()  # the first trial's writes are in MLflow
            self.recorder.writer.kill()
        return super().train(config, **kwargs)


def test_a_dead_writer_process_is_one_warning_and_the_study_goes_on(
        make_spec, tmp_path: Path, regsearch_warnings: list[str]) -> None:
    from regsearch import driver, opening
    from regsearch.recorders.mlflow_live import MlflowRecorder

    spec = make_spec()
    storage, tracking = sqlite_url(tmp_path / "study.db"), sqlite_url(tmp_path / "ml.db")
    run = opening.open_run(spec, n_trials=4, storage=storage, mlflow=tracking)
    (recorder,) = [r for r in run.recorders if isinstance(r, MlflowRecorder)]
    driver.run_study(run, KillsTheWriter(recorder, 0.5, 0.6, 0.7, 0.8))
    assert [t.state for t in trials_of(storage, spec.name)] == [TrialState.COMPLETE] * 4
    assert recorder.failed is not None and "writer process ended" in recorder.failed
    warnings = [w for w in regsearch_warnings if w.startswith("MLflow at")]
    assert len(warnings) == 1 and f"regsearch sync {spec.name}" in warnings[0], warnings
    runs = client_runs(tracking, spec.name)
    assert [r.data.tags["regsearch.trial"] for r in runs
            if r.data.tags.get("regsearch.recorded") == "true"] == ["0"]
    # what MLflow missed is in the ledger: sync writes the three trials after the kill
    from regsearch.recorders.mlflow_sync import sync_study

    assert sync_study(spec.name, storage, tracking) == (3, 1)


def test_the_writer_process_opens_a_new_store_before_its_first_request(tmp_path: Path) -> None:
    """Creating a SQLite store's tables (~1 s) happens while the parent builds its model,
    not when the first run is written."""
    from regsearch.recorders.mlflow_process import WriterProcess

    database = tmp_path / "early.db"
    writer = WriterProcess(sqlite_url(database))
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while not database.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert database.exists(), "no store was created before the first request"
        assert writer.experiment("early")  # and it serves requests on that store
        # its commits wait for no full fsync (WAL, synchronous=NORMAL), as the study's
        with sqlite3.connect(database) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        writer.close()


def test_a_store_the_writer_process_cannot_open_fails_its_first_request(
        tmp_path: Path) -> None:
    """The early opening keeps no failure to itself: the first call reports it, masked."""
    from regsearch.recorders.mlflow_process import WriterFailed, WriterProcess

    writer = WriterProcess(f"http://alice:{SECRET}@127.0.0.1:{free_port()}")
    try:
        with pytest.raises(WriterFailed) as failed:
            writer.experiment("nowhere")
        problem = failed.value.problem
        assert "alice:***@127.0.0.1" in problem and "Max retries exceeded" in problem, problem
        assert SECRET not in problem and "\n" not in problem
    finally:
        writer.close()


def test_the_writer_process_ends_quietly_when_its_parent_is_gone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker SIGKILLed while its writer answers: the reply's pipe is broken, and the
    writer ends without a traceback on the launcher's stderr (nor hangs on a cut request)."""
    import io
    import pickle

    from regsearch.recorders import mlflow_process

    class Answers:
        def ping(self) -> int:
            return 1

    monkeypatch.setattr(mlflow_process, "_opened", lambda _uri: Answers())
    read_end, write_end = os.pipe()
    os.close(read_end)  # the parent is dead: nobody reads the replies
    replies = os.fdopen(write_end, "wb")
    requests = io.BytesIO(pickle.dumps(("ping", (), {})) * 2)
    mlflow_process.serve("sqlite:///unused.db", requests, replies)  # returns, no raise
    assert requests.tell() < len(requests.getvalue())  # it stopped at the broken reply
    cut = io.BytesIO(pickle.dumps(("ping", (), {}))[:-3])
    mlflow_process.serve("sqlite:///unused.db", cut, replies)  # a request cut short: ends
    with pytest.raises(BrokenPipeError):  # what `main` guards: the unread reply stays
        replies.close()


class WatchesEpochTwo:
    """A listener that, at the second epoch of the first trial, reads MLflow as it is then."""

    def __init__(self, recorder: Any, tracking: str, study: str) -> None:
        self.recorder, self.tracking, self.study = recorder, tracking, study
        self.seen: dict[str, Any] | None = None

    def study_opened(self, run: Any) -> None: ...
    def trials_started(self, started: Any) -> None: ...
    def trials_ended(self, ended: Any) -> None: ...

    def epoch_ended(self, number: int, metrics: Any) -> None:
        if number != 0 or metrics.epoch != 2:
            return
        from mlflow import MlflowClient

        self.recorder.tasks.join()  # what the recorder has sent so far is in MLflow
        [run] = [r for r in trial_runs(self.tracking, self.study)
                 if r.data.tags["regsearch.trial"] == "0"]
        history = MlflowClient(self.tracking).get_metric_history(run.info.run_id,
                                                                 "val_accuracy")
        self.seen = {"status": run.info.status, "steps": sorted(p.step for p in history)}


@pytest.mark.parametrize("trainer", ["packed", "keras"])
def test_a_running_trials_epochs_reach_mlflow_while_it_trains(make_spec, tmp_path: Path,
                                                              trainer: str) -> None:
    """Sent every `epochs_every` seconds (0 here: every epoch); each epoch lands once."""
    from mlflow import MlflowClient

    from regsearch import driver, opening
    from regsearch.recorders.mlflow_live import MlflowRecorder
    from regsearch.trainers import make_trainer

    spec = make_spec(trainer=trainer, train__epochs=4)
    storage, tracking = sqlite_url(tmp_path / "study.db"), sqlite_url(tmp_path / "ml.db")
    run = opening.open_run(spec, n_trials=3, storage=storage, mlflow=tracking)
    (recorder,) = [r for r in run.recorders if isinstance(r, MlflowRecorder)]
    recorder.epochs_every = 0.0
    watch = WatchesEpochTwo(recorder, tracking, spec.name)
    driver.run_study(run, make_trainer(run), [watch])
    assert watch.seen == {"status": "RUNNING", "steps": [1, 2]}
    client = MlflowClient(tracking)
    runs = trial_runs(tracking, spec.name)
    assert sorted(r.data.tags["regsearch.trial"] for r in runs) == ["0", "1", "2"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["regsearch.recorded"] == "true"
        for key in ("train_loss", "val_loss", "val_accuracy", "penalty"):
            steps = [p.step for p in client.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == [1, 2, 3, 4], (key, steps)
