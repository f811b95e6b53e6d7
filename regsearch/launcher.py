"""`regsearch run --workers N | --gpus LIST`: one machine, several worker processes.

The launcher creates everything once (schemas, study, MLflow experiment) so that workers
starting together never race to create them, then starts `regsearch worker` processes and
shows the study's progress, read from the database they share. The storage URL reaches the
workers through the environment (`REGSEARCH_STORAGE`), never a command line `ps` shows.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from optuna.trial import TrialState

from regsearch import driver, liveness, opening
from regsearch.devices import gpu_environment, visible_gpus
from regsearch.errors import SpecError, StorageError
from regsearch.objective import ranked
from regsearch.spec import UNLIMITED, StudySpec, trials_of
from regsearch.storage import is_sqlite, mask_url

log = logging.getLogger("regsearch")

POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class Plan:
    """Which processes to start: one per GPU, or N on the CPU."""

    gpus: tuple[str, ...] = ()
    cpu_workers: int = 0

    @property
    def count(self) -> int:
        return len(self.gpus) or self.cpu_workers

    def environment(self, index: int) -> dict[str, str]:
        """A worker's environment: its GPU (memory growth on), or a share of the cores."""
        env = dict(os.environ)
        # N workers would each print TensorFlow's start-up INFO lines; warnings still show.
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        if self.gpus:
            return {**env, **gpu_environment(self.gpus[index])}
        threads = str(max(1, (os.cpu_count() or 1) // self.count))
        env.update(CUDA_VISIBLE_DEVICES="-1", TF_NUM_INTRAOP_THREADS=threads,
                   OMP_NUM_THREADS=threads)
        return env


def plan(workers: int | None, gpus: str | None) -> Plan:
    if gpus is None:
        return Plan(cpu_workers=workers or 1)
    wanted = tuple(g.strip() for g in gpus.split(",")) if gpus != "all" else ()
    if gpus != "all" and not all(g.isdigit() for g in wanted):
        raise SpecError("--gpus", "", f"expected 'all' or GPU indices such as 0,2,3, got "
                        f"{gpus!r}")
    present = visible_gpus()
    if not present:
        raise SpecError("--gpus", "", "no GPU found (nvidia-smi -L lists none); use "
                        "--workers N for CPU workers")
    missing = [g for g in wanted if g not in present]
    if missing:
        raise SpecError("--gpus", "", f"no GPU {', '.join(missing)} on this machine (nvidia-smi "
                        f"-L lists {', '.join(present)}); pick from those, or use --gpus all")
    found = wanted or present
    if workers is not None and workers != len(found):
        raise SpecError("--workers", "", f"{workers} workers for {len(found)} GPUs: there is "
                        "one worker per GPU; leave out --workers")
    return Plan(gpus=found)


def launch(study_file: str, spec: StudySpec, workers: Plan, *, storage: str | None,
           mlflow: str | None, trials: int | None, timeout: float | None) -> int:
    """Prepare the study once, run the workers, report; the exit code of the worst worker."""
    url = storage or spec.storage
    if is_sqlite(url) and workers.count > 1:
        raise StorageError(f"storage {mask_url(url)}: SQLite holds one writing process at a "
                           f"time, and {workers.count} workers were asked for; pass a server "
                           "database, e.g. --storage postgresql+psycopg://user@host/db "
                           "(see the README, 'Launching on a GPU box')")
    run = opening.open_run(spec, n_trials=trials, timeout=timeout, storage=url, mlflow=mlflow)
    driver.prepare(run)
    command = [sys.executable, "-m", "regsearch", "worker", study_file]
    command += ["--trials", str(run.budget)]
    command += ["--timeout", str(timeout)] if timeout else []
    env_extra = {"REGSEARCH_STORAGE": url, **({"REGSEARCH_MLFLOW": mlflow} if mlflow else {})}
    procs = [subprocess.Popen(command, env={**workers.environment(i), **env_extra})
             for i in range(workers.count)]
    gpus = "GPU" + ("s " if len(workers.gpus) > 1 else " ") + ", ".join(workers.gpus)
    print(f"regsearch: {_count(workers.count, 'worker')} on "
          f"{gpus if workers.gpus else 'the CPU'}; study {spec.name}, budget "
          f"{'until the timeout' if run.budget >= UNLIMITED else f'{run.budget} trials'}, "
          f"storage {mask_url(url)}", file=sys.stderr, flush=True)
    return _supervise(run, procs)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _supervise(run: opening.StudyRun, procs: list[subprocess.Popen]) -> int:
    """Report progress until every worker exits; pass Ctrl-C / SIGTERM on as SIGTERM."""
    stopping: list[float] = []

    def stop(_signum: int, _frame: object) -> None:
        if not stopping:
            stopping.append(time.monotonic())
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    shown = None
    try:
        while any(proc.poll() is None for proc in procs):
            time.sleep(POLL_SECONDS)
            if stopping and time.monotonic() - stopping[0] > STOP_GRACE_SECONDS:
                for proc in procs:
                    proc.kill()
            shown = _report(run, shown)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _mend(run)
    _report(run, shown)
    if stopping:
        print("regsearch: stopped; running trials were re-queued; run the same command to "
              "continue", file=sys.stderr)
        return 130
    complete = _complete(run)
    for index, proc in enumerate(procs):
        if proc.returncode == 0:
            continue
        how = (f"was killed (signal {-proc.returncode})" if proc.returncode < 0
               else f"exited with code {proc.returncode}")
        then = ("; the other workers finished the study" if complete
                else " (its messages are above)")
        print(f"regsearch: worker {index} {how}{then}", file=sys.stderr)
    if complete:
        _summary(run)
    return 0 if complete else 1


def _summary(run: opening.StudyRun) -> None:
    """The study's result, as a single-process run prints it."""
    from regsearch import results

    try:
        summary = results.study_summary(run.study, run.storage_url)
    except Exception as exc:  # noqa: BLE001 - `regsearch best` shows it later
        log.warning("cannot read the result (%s); run `regsearch best %s`",
                    mask_url(str(exc)), run.spec.name)
        return
    print(results.render(summary, "table"), flush=True)
    if run.spec.confirm is not None and summary["confirmation"] is None:
        print(f"regsearch: the confirmation did not finish; run `regsearch confirm "
              f"{run.spec.name}` to complete it", file=sys.stderr)


def _mend(run: opening.StudyRun) -> None:
    """Once the workers are gone: the records of trials a killed worker left half-written
    (the ledger from Optuna, MLflow from the ledger)."""
    from regsearch.repair import reconcile

    try:
        mended, written, _ = reconcile(run.spec.name, run.storage_url, run.tracking_uri,
                                       unsynced_only=True)
    except Exception as exc:  # noqa: BLE001 - `regsearch sync` does it later, and says why
        log.warning("could not mend the records (%s); run `regsearch sync %s`",
                    mask_url(str(exc)), run.spec.name)
        return
    if mended or written:
        print(f"regsearch: mended the records a killed worker left: {mended} ledger rows, "
              f"{written} MLflow runs", file=sys.stderr)


def _complete(run: opening.StudyRun) -> bool:
    """The budget is spent and no trial runs or waits."""
    try:
        trials = run.study.get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - the workers said what is wrong with the database
        return False
    unfinished = (TrialState.RUNNING, TrialState.WAITING)
    return liveness.count_done(trials) >= run.budget and not any(
        t.state in unfinished for t in trials)


def _report(run: opening.StudyRun, shown: tuple | None) -> tuple | None:
    """One line whenever the number of finished trials or the best value changes."""
    try:
        trials = run.study.get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - the workers say what is wrong with the database
        return shown
    complete = [t for t in trials if t.value is not None and t.state == TrialState.COMPLETE]
    top = ranked(run.objective.direction, complete,
                 lambda t: (t.value, t.user_attrs.get("val_loss"), t.number))[:1]
    best = (top[0].value, top[0].number) if top else None
    state = (liveness.count_done(trials), best)
    if state != shown:
        text = f", best {run.objective.metric}={best[0]:.4f} (#{best[1]})" if best else ""
        print(f"regsearch: {trials_of(state[0], run.budget)} done{text}", file=sys.stderr,
              flush=True)
    return state
