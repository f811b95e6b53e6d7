"""Helpers for tests on the real database servers: fresh databases, `regsearch` processes,
and readers of what Optuna, the ledger and MLflow hold afterwards.

Tests import these by module name (pytest puts `tests/` on the path); the `fresh_db`
fixture is in `conftest.py`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import FrozenTrial, TrialState

from regsearch.liveness import UNCOUNTED

SERVERS = {"postgresql": "REGSEARCH_TEST_POSTGRES_URL", "mysql": "REGSEARCH_TEST_MYSQL_URL"}
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 600


# --------------------------------------------------------------------------- fixtures

def _server(kind: str) -> sa.URL:
    url = os.environ.get(SERVERS[kind])
    if not url:
        pytest.skip(f"{SERVERS[kind]} is not set")
    return sa.make_url(url)


class FreshDatabases:
    """Empty databases made on a server for one test, dropped afterwards."""

    def __init__(self) -> None:
        self.made: list[tuple[sa.URL, str]] = []

    def __call__(self, kind: str) -> str:
        admin = _server(kind)
        name = f"rs_{uuid.uuid4().hex[:10]}"
        engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
        engine.dispose()
        self.made.append((admin, name))
        return admin.set(database=name).render_as_string(hide_password=False)

    def drop(self) -> None:
        for admin, name in self.made:
            engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
            force = " WITH (FORCE)" if admin.get_backend_name() == "postgresql" else ""
            with engine.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
            engine.dispose()


def write_study(folder: Path, name: str, *, trials: int, epochs: int = 3,
                trainer: str | None = None, pack_size: int | None = None,
                confirm: dict[str, int] | None = None, **workers: Any) -> Path:
    spec: dict[str, Any] = {
        "name": name, "seed": 5, "data": {"builtin": "digits"},
        "model": {"hidden_units": [16]},
        "train": {"epochs": epochs, "batch_size": 128, "learning_rate": 0.01},
        "search": {"n_trials": trials, "pruner": "none"},
        "workers": {"heartbeat_interval": 1, "grace_period": 4, **workers},
        "confirm": confirm,  # None (off) unless a test is about confirmation
    }
    if trainer:
        spec["trainer"] = trainer
    if pack_size:
        spec["search"]["pack_size"] = pack_size
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def regsearch(folder: Path, *args: Any, storage: str, mlflow: str, wait: bool = True,
              extra_env: dict[str, str] | None = None, **popen: Any) -> Any:
    env = {**ENV, "REGSEARCH_STORAGE": storage, "REGSEARCH_MLFLOW": mlflow, **(extra_env or {})}
    command = [sys.executable, "-m", "regsearch", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **popen)
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


def init_and_start_worker(folder: Path, study: Path, storage: str,
                          mlflow: str) -> subprocess.Popen:
    """`regsearch init` (checked), then one `regsearch worker` left running."""
    init = regsearch(folder, "init", study.name, storage=storage, mlflow=mlflow)
    assert init.returncode == 0, init.stdout + init.stderr
    return regsearch(folder, "worker", study.name, storage=storage, mlflow=mlflow, wait=False)


def trials_of(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=True)


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state.is_finished() and not t.user_attrs.get(UNCOUNTED)]


def ledger_rows(url: str, name: str, *columns: str) -> dict[int, tuple[Any, ...]]:
    """Trial number -> its ledger row's `columns` (default: state and reason)."""
    columns = columns or ("state", "reason")
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                f"SELECT t.number, {', '.join('t.' + c for c in columns)} FROM regsearch_trials "
                "t JOIN regsearch_studies s ON s.id = t.study_id WHERE s.name = :n"), {"n": name})
            return {number: tuple(rest) for number, *rest in rows}
    finally:
        engine.dispose()


def ledger_run_id(url: str, name: str, number: int) -> str | None:
    """The MLflow run id the ledger holds for a trial (None until its run exists)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT t.mlflow_run_id FROM regsearch_trials t JOIN regsearch_studies s "
                "ON s.id = t.study_id WHERE s.name = :n AND t.number = :k"),
                {"n": name, "k": number}).scalar()
    finally:
        engine.dispose()


def mlflow_runs(tracking_uri: str, name: str) -> list[Any]:
    """Every run of the study's experiment: the parent and the trials."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    return list(client.search_runs([experiment.experiment_id], max_results=1000))


def role(runs: list[Any], name: str) -> list[Any]:
    return [r for r in runs if r.data.tags.get("regsearch.role") == name]


def mlflow_trials(tracking_uri: str, name: str) -> dict[int, list[str]]:
    """Trial number -> statuses of its MLflow runs."""
    out: dict[int, list[str]] = {}
    for run in role(mlflow_runs(tracking_uri, name), "trial"):
        out.setdefault(int(run.data.tags["regsearch.trial"]), []).append(run.info.status)
    return out


def wait_for_running(url: str, name: str, timeout: float = 240) -> FrozenTrial:
    """The first trial seen RUNNING once all its parameters are chosen (its ledger row is
    written after the last `suggest`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = [t for t in trials_of(url, name) if t.state == TrialState.RUNNING]
            started = ledger_rows(url, name) if running else {}
        except (KeyError, sa.exc.ProgrammingError):  # study or ledger not created yet
            running, started = [], {}
        ready = [t.number for t in running if t.number in started]
        if ready:
            return next(t for t in trials_of(url, name) if t.number == ready[0])
        time.sleep(0.3)
    raise AssertionError(f"no trial of {name} started within {timeout}s")


def check_agreement(url: str, mlflow: str, name: str, budget: int) -> list[FrozenTrial]:
    """Exactly `budget` trials spent budget, all complete; ledger and MLflow agree."""
    trials = trials_of(url, name)
    done = counted(trials)
    assert len(done) == budget, [(t.number, t.state, t.user_attrs) for t in trials]
    assert all(t.state == TrialState.COMPLETE for t in done)
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    ledger = ledger_rows(url, name)
    assert sorted(ledger) == sorted(t.number for t in trials)
    for trial in trials:
        expected = {TrialState.COMPLETE: "complete", TrialState.FAIL: "failed"}[trial.state]
        assert ledger[trial.number][0] == expected, (trial.number, ledger[trial.number])
    runs = mlflow_trials(mlflow, name)
    for trial in done:
        assert runs.get(trial.number) == ["FINISHED"], (trial.number, runs.get(trial.number))
    everything = mlflow_runs(mlflow, name)
    # Ended by the last worker to stop, not the first; its best is the study's best, not
    # one worker's.
    [parent] = role(everything, "parent")
    assert parent.info.status == "FINISHED"
    best = max(t.value for t in done)
    assert parent.data.metrics["best_accuracy"] == pytest.approx(best, abs=1e-12)
    assert [t.value for t in trials if t.number == int(parent.data.tags["best.trial"])] == \
        [parent.data.metrics["best_accuracy"]]
    for run in role(everything, "trial"):  # each names the process that ran it
        assert re.fullmatch(r"[^:]+:\d+", run.data.tags["regsearch.worker"]), run.data.tags
    return trials


def assert_one_gpu_per_worker(mlflow: str, name: str, gpus: set[str]) -> None:
    """From the trials' MLflow tags: each process trained on one GPU, no GPU on two."""
    gpu_of: dict[str, set[str]] = {}
    for run in role(mlflow_runs(mlflow, name), "trial"):
        gpu_of.setdefault(run.data.tags["regsearch.worker"], set()).add(
            run.data.tags["regsearch.gpu"])
    assert all(len(used) == 1 for used in gpu_of.values()), gpu_of
    seen = [next(iter(used)) for used in gpu_of.values()]
    assert set(seen) <= gpus and len(seen) == len(set(seen)), gpu_of


class Relay:
    """A TCP relay in front of the real database server that can be cut and restored, so
    that the database goes away for a study's processes without touching the server."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.sockets: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        try:  # shutdown wakes the thread blocked in accept(); close alone would not
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
