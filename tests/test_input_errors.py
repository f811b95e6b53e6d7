"""Bad input on the command line, in the environment and in study files: each is one line
naming the value and the fix, exit 2, and nothing written (the folder and the databases
are listed before and after)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from clitools import (ENV, TIMEOUT, assert_user_error, cli, show, sqlite_url, study_dict,
                      write_study)

pytestmark = [pytest.mark.slow]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        return sorted(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def refused(folder: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI; it must be a user error that leaves `folder` as it was."""
    before = listing(folder)
    proc = subprocess.run([sys.executable, "-m", "regsearch", *args], cwd=folder,
                          env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=TIMEOUT)
    line = assert_user_error(proc)
    assert listing(folder) == before, show(proc)
    return line


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return write_study(tmp_path, study_dict("inputs", sqlite_url(tmp_path, "runs/s.db")))


# --------------------------------------------------------------------------- flags

@pytest.mark.parametrize("args, message", [
    (["--timeout", "-5"], "argument --timeout: must be > 0, got -5"),
    (["--timeout", "nan"], "argument --timeout: must be a finite number, got nan"),
    (["--trials", "0"], "argument --trials: must be an integer in [1, 10000000], got 0"),
    (["--trials", "2.5"], "argument --trials: expected an integer, got 2.5"),
    (["--workers", "0"], "argument --workers: must be >= 1, got 0"),
    (["--workers", "two"], "argument --workers: expected an integer, got 'two'"),
    (["--gpus", "0"], "--gpus: no GPU found (nvidia-smi -L lists none); use --workers N"),
    (["--mlflow", "ftp://u:pw@host/x"], "--mlflow: MLflow cannot record to a 'ftp' URI"),
    (["--storage", "mysql+mysqldb://root@127.0.0.1/test"],
     "the database driver for 'mysql+mysqldb' is not installed; pip install mysqlclient, or "
     "use mysql+pymysql://... with pip install 'regsearch[mysql]'"),
    (["--storage", "foo://x/y"], "storage: foo://x/y: unknown database 'foo'"),
    (["--storage", "postgresql+psycopg://u:pw@127.0.0.1:1/x"],
     "cannot open storage postgresql+psycopg://u:***@127.0.0.1:1/x"),
])
def test_bad_flags_are_one_line_and_write_nothing(tmp_path: Path, study: Path,
                                                  args: list[str], message: str) -> None:
    line = refused(tmp_path, "run", study.name, *args)
    assert message in line, line
    assert "pw@" not in line and "usage:" not in line


@pytest.mark.parametrize("variable, value, message", [
    ("REGSEARCH_STORAGE", "::::", "REGSEARCH_STORAGE: got '::::', which is not a SQLAlchemy URL"),
    ("REGSEARCH_MLFLOW", "ftp://x/y", "REGSEARCH_MLFLOW: MLflow cannot record to a 'ftp' URI"),
])
def test_bad_environment_values_are_checked_as_the_study_file_field(
        tmp_path: Path, study: Path, variable: str, value: str, message: str) -> None:
    assert message in refused(tmp_path, "run", study.name, env={variable: value})


@pytest.mark.parametrize("how", ["flag", "environment", "another spelling"])
def test_mlflow_in_the_studys_own_database_is_refused(tmp_path: Path, how: str) -> None:
    (tmp_path / "runs").mkdir()
    study = write_study(tmp_path, study_dict("same-db", "sqlite:///runs/s.db"))
    same = {"flag": "sqlite:///runs/s.db", "environment": "sqlite:///runs/s.db",
            "another spelling": f"sqlite:///{tmp_path / 'runs' / 's.db'}"}[how]
    if how == "environment":
        line = refused(tmp_path, "run", study.name, env={"REGSEARCH_MLFLOW": same})
    else:
        line = refused(tmp_path, "run", study.name, "--mlflow", same)
    assert "is the study's own database" in line and "alembic_version" in line, line


def test_a_study_file_with_a_key_given_twice_names_both_lines(tmp_path: Path) -> None:
    (tmp_path / "twice.yaml").write_text("name: twice\ndata: {builtin: digits}\ntrain:\n"
                                         "  epochs: 3\n  batch_size: 64\n  epochs: 5\n")
    line = refused(tmp_path, "run", "twice.yaml")
    assert line == ("regsearch: error: twice.yaml: line 6: key 'epochs' is given twice "
                    "(lines 4 and 6); keep one of them")


def test_an_unknown_subcommand_is_one_line_without_the_usage_block(tmp_path: Path) -> None:
    line = refused(tmp_path, "runn", "x.yaml")
    assert "invalid choice: 'runn'" in line and "see `regsearch --help`" in line


# --------------------------------------------------------------------------- servers

@pytest.mark.server
def test_a_worker_on_a_database_without_a_study_leaves_no_tables(tmp_path: Path,
                                                                 fresh_db: Any) -> None:
    storage = fresh_db("postgresql")
    study = write_study(tmp_path, study_dict("lonely", storage))
    line = refused(tmp_path, "worker", study.name, "--mlflow", sqlite_url(tmp_path, "m.db"))
    assert "does not exist" in line and "create it first with `regsearch init`" in line, line
    assert tables(storage) == []
    assert "no study" in refused(tmp_path, "best", "lonely", "--storage", storage)
    assert tables(storage) == []


def test_mlflow_holding_another_study_of_the_same_name_is_refused(tmp_path: Path) -> None:
    """The same `name:` against a second storage (here: another dropout range) while MLflow
    stays on the first study's store: refused before anything is written."""
    first = tmp_path / "first"
    first.mkdir()
    mlflow = sqlite_url(tmp_path, "mlflow.db")
    spec = study_dict("twin", sqlite_url(first, "s.db"), mlflow={"tracking_uri": mlflow},
                      search={"n_trials": 1})
    ran = cli(first, "run", write_study(first, spec).name)
    assert ran.returncode == 0, show(ran)
    second = tmp_path / "second"
    second.mkdir()
    for change in ({}, {"space": {"dropout": {"low": 0.0, "high": 0.3}}}):
        write_study(second, {**spec, "storage": sqlite_url(second, "s.db"), **change})
        before = listing(tmp_path)
        line = refused(second, "run", "study.yaml")
        assert "has an experiment 'twin' that holds another study of that name" in line, line
        assert "give this study a new `name:`" in line
        assert listing(tmp_path) == before
    runs = sa.create_engine(mlflow)
    with runs.connect() as conn:  # the first study's trial and parent, nothing else
        assert conn.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 2
    runs.dispose()


# --------------------------------------------------------------------------- output

def test_best_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`regsearch best NAME --format json | head`: the reader is gone before the output."""
    url = sqlite_url(tmp_path)
    study = write_study(tmp_path, study_dict("piped", url, search={"n_trials": 2},
                                             mlflow={"enabled": False}))
    assert cli(tmp_path, "run", study.name).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "regsearch", "best", "piped", "--storage",
                             url, "--format", "json"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # as `head` does once it has read its lines
    err = proc.stderr.read()
    proc.wait(timeout=TIMEOUT)
    assert err == "", err  # no "internal error", no BrokenPipeError
    assert proc.returncode == 141, err  # as a Unix tool cut off by SIGPIPE


def test_a_study_whose_every_trial_diverges_says_so_on_a_clean_stderr(tmp_path: Path) -> None:
    """The members' penalties overflow NumPy before they are found non-finite: no warning
    of NumPy's may reach the terminal, only what regsearch says."""
    spec = study_dict("boom", sqlite_url(tmp_path), data={"builtin": "breast_cancer"},
                      train={"epochs": 2, "optimizer": "sgd", "learning_rate": 1e4},
                      search={"n_trials": 3})
    proc = cli(tmp_path, "run", write_study(tmp_path, spec).name)
    assert proc.returncode == 2, show(proc)
    errors = [line for line in proc.stderr.splitlines()
              if not line.startswith(("study ", "  data: ", "trial "))]
    assert errors == ["regsearch: error: all 3 trials of 'boom' diverged (their loss became "
                      "NaN or infinite); lower train.learning_rate (now 10000), e.g. to 1000, "
                      "or use optimizer: adam, then run again with a new `name:`"], show(proc)


def test_small_splits_are_warned_about_with_their_row_counts(tmp_path: Path) -> None:
    (tmp_path / "tiny.csv").write_text("a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n9,1,0\n")
    spec = study_dict("tiny", sqlite_url(tmp_path))
    spec["data"] = {"file": "tiny.csv", "target": "label"}
    proc = cli(tmp_path, "validate", write_study(tmp_path, spec).name)
    assert proc.returncode == 0, show(proc)
    assert proc.stderr.splitlines() == [
        f"regsearch: warning: {tmp_path / 'tiny.csv'}: small splits (train 4 / validation 1 / "
        "test 0 rows): one validation row moves the score by 100.0 points, so trials barely "
        "differ from noise; add rows or raise validation_fraction"], show(proc)


def test_a_semicolon_separated_csv_gets_the_separator_named(tmp_path: Path) -> None:
    rows = "\n".join(f"{i};{i % 3};{i % 2}" for i in range(40))
    (tmp_path / "semi.csv").write_text(f"a;b;label\n{rows}\n")
    spec = study_dict("semi", sqlite_url(tmp_path))
    spec["data"] = {"file": "semi.csv", "target": "label"}
    line = refused(tmp_path, "validate", write_study(tmp_path, spec).name)
    assert "look separated by ';', not commas" in line, line
    assert "pandas.read_csv(path, sep=';').to_csv(path, index=False)" in line, line


# --------------------------------------------------------------------------- grids

def test_a_huge_grid_starts_at_once_and_an_interrupted_grid_is_finished(tmp_path: Path) -> None:
    """Grid points are made as trials need them: a million-point grid holds only the
    trials run, and a grid stopped half-way is completed, each point once, when resumed."""
    url = sqlite_url(tmp_path)
    huge = study_dict("huge", url, search={"sampler": "grid", "grid_size": 100,
                                           "n_trials": 2}, mlflow={"enabled": False})
    proc = cli(tmp_path, "run", write_study(tmp_path, huge, "huge.yaml").name)
    assert proc.returncode == 0, show(proc)
    assert len(optuna.load_study(study_name="huge", storage=url).trials) == 2

    small = study_dict("small", url, search={"sampler": "grid", "grid_size": 2,
                                             "n_trials": None},
                       space={"regularizers": ["none", "l2"]}, mlflow={"enabled": False})
    path = write_study(tmp_path, small, "small.yaml")
    half = cli(tmp_path, "run", path.name, "--trials", "3")
    assert half.returncode == 0, show(half)
    rest = cli(tmp_path, "run", path.name)  # the whole grid: 2 + 4 points
    assert rest.returncode == 0, show(rest)
    trials = optuna.load_study(study_name="small", storage=url).trials
    points = sorted((t.params["regularizer"], t.params.get("l2", 0.0), t.params["dropout"])
                    for t in trials)
    assert len(points) == 6 == len(set(points)), points
    assert all(t.state == TrialState.COMPLETE for t in trials)


# --------------------------------------------------------------------------- Ctrl-C

def test_ctrl_c_of_a_packed_run_counts_the_trials_it_failed(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    spec = study_dict("packed-stop", url, train={"epochs": 2000},
                      search={"n_trials": 8, "pack_size": 4}, mlflow={"enabled": False})
    proc = subprocess.Popen([sys.executable, "-m", "regsearch", "run",
                             write_study(tmp_path, spec).name], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                study = optuna.load_study(study_name="packed-stop", storage=url)
                if sum(t.state == TrialState.RUNNING for t in study.trials) == 4:
                    break
            except (KeyError, sa.exc.OperationalError):
                pass
            time.sleep(0.3)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert ("interrupted; 0 of 8 trials are recorded and the 4 running trials were marked "
            "failed (not counted)") in err, err
    trials = optuna.load_study(study_name="packed-stop", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 4
