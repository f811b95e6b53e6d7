"""Many worker processes on one study: PostgreSQL and MariaDB, budgets, deaths, SIGTERM.

Every test makes fresh databases on the real servers (a study's and MLflow's), starts real
`regsearch` processes and reads back the Optuna storage, the ledger and MLflow.
"""

from __future__ import annotations

import signal
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from regsearch import driver, liveness, opening
from regsearch.liveness import UNCOUNTED
from regsearch.states import KillReason
from regsearch.study_file import load_spec
from regsearch.trainers import make_trainer
from servers import (TIMEOUT, Relay, assert_one_gpu_per_worker, check_agreement, counted,
                     init_and_start_worker, ledger_rows, ledger_run_id, mlflow_runs,
                     mlflow_trials, regsearch, role, trials_of, wait_for_running, write_study)

pytestmark = [pytest.mark.slow, pytest.mark.server]

# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("kind,trainer", [("postgresql", None), ("mysql", "keras")])
def test_four_workers_spend_exactly_the_budget(tmp_path, fresh_db, kind, trainer) -> None:
    storage, mlflow = fresh_db(kind), fresh_db("postgresql")
    # A long grace period: 4 workers on 2 cores are slow, never dead.
    study = write_study(tmp_path, "four", trials=10, trainer=trainer, heartbeat_interval=2,
                        grace_period=120)
    proc = regsearch(tmp_path, "run", study.name, "--workers", 4, storage=storage,
                     mlflow=mlflow)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 workers on the CPU" in proc.stderr
    assert "10 of 10 trials done" in proc.stderr
    trials = check_agreement(storage, mlflow, "four", 10)
    assert len(trials) == 10  # none extra: the budget lock kept every worker within it


def test_eight_workers_at_once_on_a_fresh_database(tmp_path, fresh_db) -> None:
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "eight", trials=8, epochs=1, trainer="keras",
                        heartbeat_interval=2, grace_period=120)
    proc = regsearch(tmp_path, "run", study.name, "--workers", 8, storage=storage,
                     mlflow=mlflow)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exited with code" not in proc.stderr, proc.stderr
    assert "regsearch: error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    trials = check_agreement(storage, mlflow, "eight", 8)
    # Workers that start together must not all propose the same point.
    assert len({tuple(sorted(t.params.items())) for t in trials}) > 1


def test_gpu_workers_each_get_their_own_device(tmp_path, fresh_db) -> None:
    """`--gpus 0,1` on this GPU-less machine, its two GPUs simulated with
    CUDA_VISIBLE_DEVICES (what the launcher reads before `nvidia-smi -L`): TensorFlow trains
    on the CPU, but each worker is still started with its own CUDA_VISIBLE_DEVICES, which
    its MLflow runs record."""
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "gpus", trials=4, epochs=1, trainer="keras",
                        heartbeat_interval=2, grace_period=120)
    proc = regsearch(tmp_path, "run", study.name, "--gpus", "0,1", storage=storage,
                     mlflow=mlflow, extra_env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 workers on GPUs 0, 1" in proc.stderr
    check_agreement(storage, mlflow, "gpus", 4)
    assert_one_gpu_per_worker(mlflow, "gpus", {"0", "1"})


def test_workers_started_side_by_side_claim_one_gpu_each(tmp_path, fresh_db) -> None:
    """Compose replicas each see every GPU of the host; `--claim-gpu` gives each its own.
    Two GPUs are simulated with CUDA_VISIBLE_DEVICES (TensorFlow trains on the CPU here)."""
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "claims", trials=4, epochs=2, trainer="keras",
                        heartbeat_interval=2, grace_period=120)
    init = regsearch(tmp_path, "init", study.name, storage=storage, mlflow=mlflow)
    assert init.returncode == 0, init.stdout + init.stderr
    both = {"extra_env": {"CUDA_VISIBLE_DEVICES": "0,1"}}
    claim = ["worker", study.name, "--claim-gpu", tmp_path / "gpu-locks"]
    workers = [regsearch(tmp_path, *claim, storage=storage, mlflow=mlflow, wait=False, **both)
               for _ in range(2)]
    # Each says which GPU it took before it imports TensorFlow.
    first_lines = sorted(w.stdout.readline().strip() for w in workers)
    assert first_lines == ["regsearch: worker on GPU 0", "regsearch: worker on GPU 1"]
    third = regsearch(tmp_path, *claim, storage=storage, mlflow=mlflow, **both)
    assert third.returncode == 2, third.stdout + third.stderr
    assert third.stderr.strip() == (
        f"regsearch: error: --claim-gpu {tmp_path / 'gpu-locks'}: all 2 GPUs (0, 1) are taken "
        "by other workers; run at most one worker per GPU")
    for worker in workers:
        output, _ = worker.communicate(timeout=TIMEOUT)
        assert worker.returncode == 0, output
    check_agreement(storage, mlflow, "claims", 4)
    assert_one_gpu_per_worker(mlflow, "claims", {"0", "1"})


def test_workers_need_an_existing_study_and_sqlite_takes_one_process(tmp_path,
                                                                     fresh_db) -> None:
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "lonely", trials=2)
    proc = regsearch(tmp_path, "worker", study.name, storage=storage, mlflow=mlflow)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "regsearch init" in proc.stderr
    assert "Traceback" not in proc.stderr
    sqlite = f"sqlite:///{tmp_path / 's.db'}"
    proc = regsearch(tmp_path, "run", study.name, "--workers", 2, storage=sqlite,
                     mlflow=mlflow)
    assert proc.returncode == 2 and "postgresql" in proc.stderr, proc.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was written


def test_a_second_process_on_a_running_sqlite_study_is_refused(tmp_path) -> None:
    """Not only the launcher: a second `run` or `worker` on a SQLite study in use by another
    process stops at once with what to do, and the first one is not disturbed."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    mlflow = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Long enough to outlast both refused commands' start-up (100 epochs ended first in CI).
    study = write_study(tmp_path, "single", trials=2, epochs=300, trainer="keras")
    first = regsearch(tmp_path, "run", study.name, storage=storage, mlflow=mlflow, wait=False)
    wait_for_running(storage, "single")
    for command in ("run", "worker"):
        second = regsearch(tmp_path, command, study.name, storage=storage, mlflow=mlflow)
        assert second.returncode == 2, second.stdout + second.stderr
        errors = [line for line in second.stderr.splitlines() if "error" in line.lower()
                  and "round-off errors" not in line]  # TensorFlow's oneDNN notice
        assert errors == [
            f"regsearch: error: storage {storage}: another regsearch process is using this "
            "SQLite study, and SQLite holds one process at a time; wait for it, or share the "
            "study between processes through a server database "
            "(--storage postgresql+psycopg://user@host/db)"], second.stderr
        assert "Traceback" not in second.stderr
    output, _ = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, output
    trials = trials_of(storage, "single")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # none failed or added
    assert sorted(ledger_rows(storage, "single")) == [0, 1]


def test_a_killed_workers_trial_is_failed_rerun_and_its_mlflow_run_killed(tmp_path,
                                                                         fresh_db) -> None:
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "killed", trials=3, epochs=60, trainer="keras")
    doomed = init_and_start_worker(tmp_path, study, storage, mlflow)
    victim = wait_for_running(storage, "killed")
    # MLflow's writer process may start the trial's run seconds after the trial starts
    # (it imports MLflow first); the run must exist to be closed as KILLED.
    # The ledger names the run once it exists (read there: a second MLflow client on a
    # store the worker may still be creating could race its schema migrations).
    deadline = time.monotonic() + 120
    while not ledger_run_id(storage, "killed", victim.number):
        assert time.monotonic() < deadline, "the trial's MLflow run was never started"
        time.sleep(0.3)
    doomed.kill()
    doomed.wait()
    survivor = regsearch(tmp_path, "worker", study.name, storage=storage, mlflow=mlflow)
    assert survivor.returncode == 0, survivor.stdout + survivor.stderr
    trials = check_agreement(storage, mlflow, "killed", 3)
    dead = next(t for t in trials if t.number == victim.number)
    assert dead.state == TrialState.FAIL and dead.user_attrs.get(UNCOUNTED)
    assert dead.user_attrs["fail_reason"].startswith(KillReason.DIED)
    rerun = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(rerun) == 1 and rerun[0].params == victim.params
    assert rerun[0].state == TrialState.COMPLETE
    assert ledger_rows(storage, "killed")[victim.number][0] == "failed"
    assert mlflow_trials(mlflow, "killed")[victim.number] == ["KILLED"]


@pytest.mark.parametrize("kind", ["postgresql", "mysql"])
def test_a_trial_whose_process_died_before_its_first_heartbeat_is_rerun(tmp_path, fresh_db,
                                                                        kind) -> None:
    """A process can die between creating a trial and its first heartbeat for it (seen: the
    database cut just then). Optuna's reaper looks only at trials with a heartbeat, so the
    budget waited for that trial forever; now it is failed and re-queued like a dead
    worker's once this process has seen it unbeaten for the grace period. Its start time,
    written with the creating machine's clock and time zone, does not count: here one looks
    three hours old and one three hours ahead."""
    url = fresh_db(kind)
    path = write_study(tmp_path, "unbeaten", trials=2, heartbeat_interval=1, grace_period=2)
    path.write_text(path.read_text() + "mlflow:\n  enabled: false\n")
    run = opening.open_run(load_spec(path), storage=url)
    orphans = [run.study.ask(), run.study.ask()]  # created, never beaten: a dead process's
    for orphan in orphans:
        orphan.suggest_float("dropout", 0.0, 0.5)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for orphan, hours in zip(orphans, (-3, 3)):
            start = orphan.datetime_start + timedelta(hours=hours)
            conn.execute(sa.text("UPDATE trials SET datetime_start = :s WHERE trial_id = :i"),
                         {"s": start, "i": orphan._trial_id})
    engine.dispose()
    liveness.reap_dead(run)
    # not yet past the grace period by this process's clock, whatever the start times say
    assert [t.state for t in run.study.get_trials()] == [TrialState.RUNNING] * 2
    time.sleep(2.5)
    liveness.reap_dead(run)
    trials = run.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert all(t.user_attrs["fail_reason"].startswith(KillReason.DIED) for t in trials[:2])
    assert sorted(t.params["dropout"] for t in trials[2:]) == \
        sorted(o.params["dropout"] for o in orphans)
    assert driver.run_study(run, make_trainer(run)) is False
    trials = run.study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2


def test_sigterm_ends_a_worker_in_its_grace_period_and_requeues_its_trial(tmp_path,
                                                                         fresh_db) -> None:
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    # packed: a pack of 1; enough epochs that the trial is still training at the signal
    # (60 took under 2 s once the epoch became one compiled program)
    study = write_study(tmp_path, "stopped", trials=2, epochs=1000)
    worker = init_and_start_worker(tmp_path, study, storage, mlflow)
    victim = wait_for_running(storage, "stopped")
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    output, _ = worker.communicate(timeout=60)
    assert time.monotonic() - started < 30, output
    assert worker.returncode == 143, output
    assert "re-queued" in output and "Traceback" not in output, output
    trials = trials_of(storage, "stopped")
    stopped = next(t for t in trials if t.number == victim.number)
    assert stopped.state == TrialState.FAIL and stopped.user_attrs.get(UNCOUNTED)
    assert stopped.user_attrs["fail_reason"] == KillReason.STOPPED
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == victim.params
    assert ledger_rows(storage, "stopped")[victim.number] == ("failed", KillReason.STOPPED)
    assert mlflow_trials(mlflow, "stopped")[victim.number] == ["KILLED"]
    # A new worker runs the re-queued trial first and finishes the study.
    again = regsearch(tmp_path, "worker", study.name, storage=storage, mlflow=mlflow)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = check_agreement(storage, mlflow, "stopped", 2)
    assert [t.params for t in trials if t.system_attrs.get("failed_trial") == victim.number] \
        == [victim.params]


def test_database_going_away_fails_clearly_loses_nothing_and_run_continues(tmp_path,
                                                                          fresh_db) -> None:
    direct, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    url = sa.make_url(direct)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    study = write_study(tmp_path, "away", trials=4, epochs=25, trainer="keras")
    proc = regsearch(tmp_path, "run", study.name, storage=through, mlflow=mlflow, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            finished = counted(trials_of(direct, "away"))
        except KeyError:
            finished = []
        if finished:
            break
        time.sleep(0.3)
    before = {t.number: (t.state, t.value, t.params) for t in counted(trials_of(direct, "away"))}
    assert before, "no trial finished before the cut"
    relay.cut()
    output, _ = proc.communicate(timeout=240)
    assert proc.returncode == 2, output
    assert "lost the database" in output and "run the same command again" in output, output
    assert "Traceback" not in output, output
    # Nothing recorded is lost or changed: read the database directly.
    after = {t.number: (t.state, t.value, t.params) for t in trials_of(direct, "away")}
    assert all(after[n] == before[n] for n in before), (before, after)
    ledger = ledger_rows(direct, "away")
    assert all(ledger[n][0] == "complete" for n in before), ledger
    relay.restore()
    again = regsearch(tmp_path, "run", study.name, storage=through, mlflow=mlflow)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = check_agreement(direct, mlflow, "away", 4)
    assert all({t.number: (t.state, t.value, t.params) for t in trials}[n] == before[n]
               for n in before)


class CutsTheDatabase:
    """The real trainer, but the database goes away before the second trial trains, and
    only then may the MLflow thread (held at a gate so far) start its work."""

    def __init__(self, trainer: Any, relay: Relay, gate: threading.Event) -> None:
        self.trainer, self.relay, self.gate, self.calls = trainer, relay, gate, 0

    def train(self, config: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == 2:
            self.relay.cut()
            self.gate.set()
        return self.trainer.train(config, **kwargs)


def test_mlflow_lagging_behind_a_lost_database_still_records_the_finished_trials(
        tmp_path, fresh_db, monkeypatch) -> None:
    """CI once caught the MLflow thread still opening the study when the database went:
    its ledger read failed, was taken for an MLflow failure, and no run was written for a
    trial the study had completed."""
    monkeypatch.chdir(tmp_path)  # the store's default artifacts (./mlruns) go here
    from regsearch.errors import StorageError
    from regsearch.recorders.mlflow_live import MlflowRecorder

    direct, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    url = sa.make_url(direct)
    relay = Relay(url.host or "127.0.0.1", url.port or 5432)
    through = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    spec = load_spec(write_study(tmp_path, "lag", trials=3, epochs=2, trainer="keras"))
    run = opening.open_run(spec, storage=through, mlflow=mlflow)
    (recorder,) = [r for r in run.recorders if isinstance(r, MlflowRecorder)]
    gate = threading.Event()
    recorder.tasks.put(gate.wait)  # MLflow lags: nothing of it is done before the cut
    try:
        with pytest.raises(StorageError, match="lost the database"):
            driver.run_study(run, CutsTheDatabase(make_trainer(run), relay, gate))
    finally:
        gate.set()
        relay.restore()
    assert recorder.failed is None  # MLflow itself never failed
    [done] = counted(trials_of(direct, "lag"))
    assert mlflow_trials(mlflow, "lag")[done.number] == ["FINISHED"]


def test_a_worker_recycles_its_process_after_its_quota(tmp_path, fresh_db) -> None:
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "recycled", trials=3, epochs=2, trainer="keras",
                        recycle_after=1)
    worker = init_and_start_worker(tmp_path, study, storage, mlflow)
    output, _ = worker.communicate(timeout=TIMEOUT)
    assert worker.returncode == 0, output
    # Trials 0 and 1 each end a process; the third process ends with the budget.
    assert output.count("worker recycled after 1 trials") == 2, output
    assert "worker done: the study has 3 of 3 trials" in output, output
    check_agreement(storage, mlflow, "recycled", 3)


def test_three_workers_confirm_the_study_exactly_once(tmp_path, fresh_db) -> None:
    """Every worker finds the search over at the same moment; one takes the confirmation
    lock and confirms, the others leave. Each configuration and seed is trained once."""
    storage, mlflow = fresh_db("postgresql"), fresh_db("postgresql")
    study = write_study(tmp_path, "confirmed", trials=6, confirm={"top": 2, "seeds": 2},
                        heartbeat_interval=2, grace_period=120)
    proc = regsearch(tmp_path, "run", study.name, "--workers", 3, storage=storage,
                     mlflow=mlflow)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("regsearch: confirming") == 1, proc.stderr
    rows = sa.create_engine(storage)
    with rows.connect() as conn:
        confirmed = conn.exec_driver_sql(
            "SELECT config_key, seed_index, state, mlflow_run_id FROM regsearch_confirmations"
        ).all()
    rows.dispose()
    configs = {key for key, *_ in confirmed}
    assert len(configs) in (2, 3) and len(confirmed) == 2 * len(configs)
    assert len({(key, seed) for key, seed, *_ in confirmed}) == len(confirmed)
    assert all(state == "complete" and run_id for *_, state, run_id in confirmed), confirmed
    runs = role(mlflow_runs(mlflow, "confirmed"), "confirmation")
    assert sorted(r.info.run_id for r in runs) == sorted(run_id for *_, run_id in confirmed)
    assert "best, confirmed over 2 seeds" in proc.stdout, proc.stdout
