"""Workers SIGKILLed at many points of a launcher's run, on PostgreSQL and MariaDB.

Each case starts `regsearch run --workers 3` on fresh databases with one or two fault
points armed (`regsearch.faults`): the first worker to reach a point dies there, as the OOM
killer or a preempted machine would do it, and the others go on. Afterwards the study must
hold exactly its budget of finished trials, none running or waiting, and the ledger and
MLflow must say what Optuna says about every trial.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from regsearch.states import KillReason
from servers import (counted, ledger_rows, mlflow_runs, regsearch, role, trials_of,
                     write_study)

pytestmark = [pytest.mark.slow, pytest.mark.server]

BUDGET = 12
STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
          TrialState.FAIL: "failed"}

#: (server, fault points, pack size): every point on both servers, at two pack sizes each;
#: `reap` needs a worker dead first, so it comes with another point.
CASES = [
    ("postgresql", "ask", 1), ("postgresql", "epoch", 4), ("postgresql", "tell", 4),
    ("postgresql", "mlflow", 1), ("postgresql", "epoch,reap", 3),
    ("mysql", "ask", 4), ("mysql", "epoch", 1), ("mysql", "tell", 1),
    ("mysql", "mlflow", 4), ("mysql", "ask,reap", 3),
]


def assert_records_agree(storage: str, mlflow: str, name: str) -> None:
    """Exactly the budget, none left running or waiting, no duplicate; the ledger holds
    every trial with Optuna's state and value; one closed MLflow run per trial."""
    trials = trials_of(storage, name)
    shown = [(t.number, t.state.name, t.value, t.user_attrs.get("fail_reason")) for t in trials]
    done = counted(trials)
    assert len(done) == BUDGET, shown
    assert all(t.state == TrialState.COMPLETE for t in done), shown
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], shown
    # A failed trial is one whose worker died; it did not spend budget.
    for trial in trials:
        if trial.state == TrialState.FAIL:
            assert trial.user_attrs.get("uncounted") is True, shown
            assert trial.user_attrs["fail_reason"].startswith(tuple(KillReason)), shown
    rows = ledger_rows(storage, name, "state", "value")
    assert sorted(rows) == [t.number for t in trials], (rows, shown)
    for trial in trials:
        state, value = rows[trial.number]
        assert state == STATES[trial.state], (trial.number, rows[trial.number], shown)
        assert (value is None and trial.value is None) or math.isclose(value, trial.value), \
            (trial.number, rows[trial.number], trial.value)
    runs = role(mlflow_runs(mlflow, name), "trial")
    numbers = [int(run.data.tags["regsearch.trial"]) for run in runs]
    assert sorted(numbers) == [t.number for t in trials], (sorted(numbers), shown)
    status = {int(run.data.tags["regsearch.trial"]): run.info.status for run in runs}
    for trial in trials:
        expected = "FINISHED" if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) \
            else "KILLED"
        assert status[trial.number] == expected, (trial.number, status[trial.number], shown)
    [parent] = role(mlflow_runs(mlflow, name), "parent")
    assert parent.info.status == "FINISHED"
    best = max(t.value for t in done)
    assert parent.data.metrics["best_accuracy"] == pytest.approx(best, abs=1e-12)


@pytest.mark.parametrize("kind,points,pack", CASES,
                         ids=[f"{k}-{p.replace(',', '+')}-pack{n}" for k, p, n in CASES])
def test_a_worker_killed_at_any_point_leaves_a_whole_study(tmp_path: Path, fresh_db: Any,
                                                           kind: str, points: str,
                                                           pack: int) -> None:
    storage, mlflow = fresh_db(kind), fresh_db("postgresql")
    study = write_study(tmp_path, "killed", trials=BUDGET, epochs=3, pack_size=pack,
                        heartbeat_interval=1, grace_period=6)
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    proc = regsearch(tmp_path, "run", study.name, "--workers", 3, storage=storage,
                     mlflow=mlflow, extra_env={"REGSEARCH_FAULT": points,
                                               "REGSEARCH_FAULT_TOKENS": str(tokens)})
    output = proc.stdout + proc.stderr
    hit = sorted(p.name for p in tokens.iterdir())
    assert hit == sorted(points.split(",")), output  # every armed point killed a worker
    assert proc.returncode == 0, output
    assert output.count("was killed (signal 9); the other workers finished the study") == \
        len(hit), output
    assert "Traceback" not in output, output
    # The launcher's progress never counts a dead worker's trial as done ("27 of 24").
    shown = [int(n) for n in re.findall(r"regsearch: (\d+) of 12 trials done", output)]
    assert shown and max(shown) == BUDGET and shown == sorted(shown), output
    assert_records_agree(storage, mlflow, "killed")
