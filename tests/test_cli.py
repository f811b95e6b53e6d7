"""End-to-end tests of the `regsearch` command line, each run in a subprocess.

Every TensorFlow start costs seconds, so a 3-trial study is run once per module
(`finished_study`) and each test that needs one copies its SQLite file into its own
`tmp_path`. Errors that happen before TensorFlow is imported (spec, data, storage, study
mismatch) must print exactly one `regsearch: error:` line, so stderr is compared whole.
"""

from __future__ import annotations

import argparse

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from clitools import ENV, TIMEOUT, assert_user_error, cli, show, sqlite_url, study_dict, write_study

pytestmark = [pytest.mark.slow]

INTERRUPTED = "interrupted by the user"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
CONSOLE_SCRIPT = Path(sys.executable).with_name("regsearch")

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------- helpers

def trials_of(url: str, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=True)


def counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that spend budget: finished, except those the user interrupted (or that a
    dead process abandoned: those carry the `uncounted` user attr)."""
    return [t for t in trials
            if t.state in FINISHED and t.user_attrs.get("fail_reason") != INTERRUPTED
            and not t.user_attrs.get("uncounted")]


def snapshot(trials: list[FrozenTrial]) -> list[tuple]:
    return [(t.number, t.state, t.params, t.value, t.user_attrs) for t in trials]


@dataclass
class Finished:
    """A study of 3 finished trials, made once; tests copy it with `copy_to`."""

    folder: Path
    spec: dict[str, Any]
    run: subprocess.CompletedProcess
    trials: list[FrozenTrial]

    @property
    def name(self) -> str:
        return self.spec["name"]

    def copy_to(self, folder: Path) -> tuple[dict[str, Any], str]:
        """The same study, storage copied into `folder`: (spec pointing at it, its URL)."""
        shutil.copy(self.folder / "s.db", folder / "s.db")
        url = sqlite_url(folder)
        return {**self.spec, "storage": url}, url


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> Finished:
    folder = tmp_path_factory.mktemp("finished")
    spec = study_dict("e2e-digits", sqlite_url(folder))
    study_file = write_study(folder, spec)
    proc = cli(folder, "run", study_file.name)
    assert proc.returncode == 0, show(proc)
    return Finished(folder, spec, proc, trials_of(spec["storage"], spec["name"]))


# --------------------------------------------------------------------------- run

def test_run_completes_and_records_three_trials(finished_study: Finished) -> None:
    proc = finished_study.run
    assert "best: trial #" in proc.stdout, show(proc)
    assert "3 complete, 0 pruned, 0 failed, 0 running" in proc.stdout, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    # Non-TTY progress: one line per trial on stderr.
    for number in range(3):
        assert f"trial {number} complete" in proc.stderr, show(proc)
    assert "0 of 3 trials already done" in proc.stderr, show(proc)

    trials = finished_study.trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials), snapshot(trials)
    for t in trials:
        assert t.value is not None and 0.0 <= t.value <= 1.0, snapshot(trials)
        assert t.user_attrs.get("epochs_run") == 3, t.user_attrs
        assert {"regularizer", "dropout"} <= set(t.params), t.params
        assert 0.0 <= t.params["dropout"] <= 0.5, t.params
    best = max(trials, key=lambda t: t.value)
    assert f"best: trial #{best.number} " in proc.stdout, show(proc)
    # Nothing is written to the default storage when the study names its own.
    assert not (finished_study.folder / "runs" / "regsearch.db").exists()


# --------------------------------------------------------------------------- best

def test_best_in_table_json_and_yaml(finished_study: Finished, tmp_path: Path) -> None:
    _, url = finished_study.copy_to(tmp_path)
    name = finished_study.name
    complete = [t for t in finished_study.trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number))

    as_json = cli(tmp_path, "best", name, "--storage", url, "--format", "json")
    assert as_json.returncode == 0, show(as_json)
    summary = json.loads(as_json.stdout)
    assert summary["study"] == name
    assert summary["metric"] == "accuracy" and summary["direction"] == "maximize"
    assert summary["trials"] == {"complete": 3, "pruned": 0, "fail": 0, "running": 0}
    assert summary["best"]["value"] == pytest.approx(best.value, abs=1e-12)
    assert summary["best"]["trial"] == best.number
    assert summary["best"]["config"]["dropout"] == pytest.approx(best.params["dropout"])
    assert len(summary["top"]) == 3  # --top defaults to 5; only 3 trials exist
    values = [row["value"] for row in summary["top"]]
    assert values == sorted(values, reverse=True)

    as_yaml = cli(tmp_path, "best", name, "--storage", url, "--format", "yaml")
    assert as_yaml.returncode == 0, show(as_yaml)
    assert yaml.safe_load(as_yaml.stdout) == summary

    table = cli(tmp_path, "best", name, "--storage", url, "--top", "2")
    assert table.returncode == 0, show(table)
    lines = table.stdout.splitlines()
    assert f"best: trial #{best.number}  accuracy={best.value:.4f}" in table.stdout, show(table)
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["rank", "trial"])
    rows = [line for line in lines[header + 1:] if line.strip()]
    assert len(rows) == 2, show(table)
    assert rows[0].split()[:2] == ["1", str(best.number)], show(table)
    assert rows[1].split()[0] == "2", show(table)

    top2 = json.loads(cli(tmp_path, "best", name, "--storage", url, "--format", "json",
                          "--top", "2").stdout)
    assert [row["trial"] for row in top2["top"]] == [row["trial"] for row in summary["top"][:2]]


def test_best_takes_the_study_file_and_f_for_format(finished_study: Finished,
                                                   tmp_path: Path) -> None:
    """`best STUDY_FILE` reads the file's name and storage, as `run` does; `-f` is
    `--format`."""
    spec, url = finished_study.copy_to(tmp_path)
    study_file = write_study(tmp_path, spec, "mine.yaml")
    by_name = cli(tmp_path, "best", spec["name"], "--storage", url, "--format", "json")
    by_file = cli(tmp_path, "best", study_file.name, "-f", "json")
    assert by_file.returncode == 0, show(by_file)
    assert json.loads(by_file.stdout) == json.loads(by_name.stdout)
    # a flag still wins over the file's storage: here, a database without the study
    assert_user_error(cli(tmp_path, "best", study_file.name, "--storage",
                          sqlite_url(finished_study.folder, "none.db")), "no study database")


def test_every_option_shows_its_default_and_commands_name_their_environment() -> None:
    from regsearch.cli import build_parser

    parser = build_parser()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(subcommands.choices) >= {"run", "best", "export", "report", "ui", "sync"}
    for name, command in subcommands.choices.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                shown = f"(default: {action.default})"
                assert shown in text, (name, action.option_strings, text)
        options = {o for a in command._actions for o in a.option_strings}
        if "--storage" in options:
            assert "environment: REGSEARCH_STORAGE" in text, (name, text)
        if "--mlflow" in options:
            assert "REGSEARCH_MLFLOW" in text.split("environment:")[-1], (name, text)
        if name in ("run", "worker"):
            assert "KERAS_BACKEND" in text and "CUDA_VISIBLE_DEVICES" in text, text
    assert "-f" in {o for a in subcommands.choices["export"]._actions for o in a.option_strings}


# --------------------------------------------------------------------------- resume

def test_second_run_with_more_trials_continues_the_study(finished_study: Finished,
                                                         tmp_path: Path) -> None:
    spec, url = finished_study.copy_to(tmp_path)
    study_file = write_study(tmp_path, spec)
    before = snapshot(finished_study.trials)

    proc = cli(tmp_path, "run", study_file.name, "--trials", "5")
    assert proc.returncode == 0, show(proc)
    assert "3 of 5 trials already done" in proc.stderr, show(proc)
    assert "trial 3 complete" in proc.stderr and "trial 4 complete" in proc.stderr, show(proc)
    assert "trial 0 " not in proc.stderr, show(proc)  # nothing re-run
    assert "5 complete, 0 pruned, 0 failed, 0 running" in proc.stdout, show(proc)

    summaries = optuna.get_all_study_summaries(url)
    assert [s.study_name for s in summaries] == [finished_study.name]  # same study, not a new one
    trials = trials_of(url, finished_study.name)
    assert len(trials) == 5 and len(counted(trials)) == 5, snapshot(trials)
    assert snapshot(trials[:3]) == before
    for t in trials[3:]:
        assert t.state == TrialState.COMPLETE and 0.0 <= t.value <= 1.0, snapshot(trials)


# --------------------------------------------------------------------------- spec changed

def test_rerunning_a_spent_study_answers_without_training(finished_study: Finished,
                                                         tmp_path: Path) -> None:
    """The summary at once (no data or TensorFlow loaded), and how to extend the budget."""
    spec, url = finished_study.copy_to(tmp_path)
    study_file = write_study(tmp_path, spec)
    again = cli(tmp_path, "run", study_file.name)
    assert again.returncode == 0, show(again)
    assert "its budget is spent (3 of 3 trials); to add 3 more: regsearch run study.yaml " \
           "--trials 6" in again.stderr, show(again)
    assert "loading the data and TensorFlow" not in again.stderr, show(again)
    best = cli(tmp_path, "best", spec["name"], "--storage", url)
    assert again.stdout == best.stdout, show(again)
    assert [t.number for t in trials_of(url, spec["name"])] == [0, 1, 2]  # nothing new


@pytest.mark.parametrize(("change", "field"), [
    ({"space": {"dropout": {"low": 0.0, "high": 0.4}}}, "space.dropout.high"),
    ({"model": {"hidden_units": [32]}}, "model.hidden_units"),
])
def test_changed_spec_is_refused(finished_study: Finished, tmp_path: Path,
                                 change: dict[str, Any], field: str) -> None:
    spec, url = finished_study.copy_to(tmp_path)
    changed = write_study(tmp_path, {**spec, **change}, "changed.yaml")
    before = snapshot(finished_study.trials)

    proc = cli(tmp_path, "run", changed.name)
    assert_user_error(proc, field, repr(finished_study.name), "changed.yaml")
    assert snapshot(trials_of(url, finished_study.name)) == before

    debug = cli(tmp_path, "run", changed.name, "--debug")
    assert debug.returncode != 0, show(debug)
    assert "Traceback" in debug.stderr and "StudyMismatchError" in debug.stderr, show(debug)
    assert field in debug.stderr, show(debug)
    assert snapshot(trials_of(url, finished_study.name)) == before


def test_global_debug_before_the_subcommand_shows_the_traceback(tmp_path: Path) -> None:
    """`--debug` is global: given before the subcommand it must not be reset by it."""
    proc = cli(tmp_path, "--debug", "validate", "nope.yaml")
    assert proc.returncode != 0, show(proc)
    assert "Traceback" in proc.stderr and "SpecError" in proc.stderr, show(proc)


# --------------------------------------------------------------------------- Ctrl-C

class StderrReader:
    """Collects a child's stderr lines on a thread, so the test can wait for one."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    def wait_for(self, prefix: str, proc: subprocess.Popen, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.startswith(prefix) for line in self.lines):
                return True
            if proc.poll() is not None:
                self._thread.join(5)
                return any(line.startswith(prefix) for line in self.lines)
            time.sleep(0.1)
        return False

    def first(self, prefix: str) -> str:
        return next(line for line in self.lines if line.startswith(prefix))

    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


def _default_sigint() -> None:
    """A child started from a background job inherits SIGINT ignored; Python then never
    turns Ctrl-C into KeyboardInterrupt. Give the child the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_marks_the_trial_failed_and_a_rerun_continues(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    # One trial at a time, so "the running trial" is one (packs: tests/test_driver_packed.py).
    spec = study_dict("e2e-interrupt", url, train={"epochs": 40},
                      search={"n_trials": 50}, trainer="keras")
    study_file = write_study(tmp_path, spec)
    proc = subprocess.Popen([sys.executable, "-m", "regsearch", "run", study_file.name],
                            cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        reader = StderrReader(proc)
        assert reader.wait_for("trial 0 ", proc, timeout=150), reader.text()
        # Interrupt trial 1 mid-fit: its start (tf.function tracing) and end (gc) are
        # windows where TensorFlow can mangle or swallow the KeyboardInterrupt.
        took = re.search(r"epochs, ([0-9.]+) (ms|s)\]", reader.first("trial 0 "))
        seconds = float(took.group(1)) / (1000 if took.group(2) == "ms" else 1) if took else 6
        time.sleep(max(1.5, 0.5 * seconds))
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        proc.wait(timeout=30)  # not communicate(): the reader thread owns stderr
        waited = time.monotonic() - started
        stdout = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = reader.text()
    proc.stdout.close()
    proc.stderr.close()
    context = f"exit {proc.returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    assert proc.returncode == 130, context
    assert waited < 30, context
    assert "interrupted" in stderr and "Traceback" not in stderr, context
    assert "best: trial #" not in stdout, context

    trials = trials_of(url, spec["name"])
    assert not [t for t in trials if t.state == TrialState.RUNNING], snapshot(trials)
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == INTERRUPTED]
    assert len(interrupted) == 1, snapshot(trials)
    assert interrupted[0].state == TrialState.FAIL
    assert interrupted[0].number == trials[-1].number  # the one that was running
    done = counted(trials)
    assert len(done) >= 1 and all(t.state == TrialState.COMPLETE for t in done), snapshot(trials)
    assert f"{len(done)} of 50 trials are recorded" in stderr, context
    before = snapshot(trials)

    budget = len(done) + 1
    rerun = cli(tmp_path, "run", study_file.name, "--trials", str(budget))
    assert rerun.returncode == 0, show(rerun)
    assert f"{len(done)} of {budget} trials already done" in rerun.stderr, show(rerun)
    assert "best: trial #" in rerun.stdout, show(rerun)
    after = trials_of(url, spec["name"])
    assert len(counted(after)) == budget, snapshot(after)
    assert len(after) == budget + 1  # the interrupted trial stays, outside the budget
    assert snapshot(after[:len(before)]) == before
    assert not [t for t in after if t.state == TrialState.RUNNING]


# The CLI, but with Ctrl-C delivered (a real SIGINT to itself) while trial 0's parameters
# are being suggested: after `study.ask()` created the trial, before training starts.
_INTERRUPT_WHILE_SUGGESTING = """
import os, signal, sys
from regsearch import cli, driver

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
suggest = driver.space.suggest

def interrupted_suggest(trial, space):
    os.kill(os.getpid(), signal.SIGINT)  # the handler raises KeyboardInterrupt right here
    return suggest(trial, space)

driver.space.suggest = interrupted_suggest
sys.exit(cli.main(sys.argv[1:]))
"""


def test_ctrl_c_before_training_starts_still_marks_the_trial(tmp_path: Path) -> None:
    """Once `study.ask()` made the trial, any exit (here: Ctrl-C while suggesting) must
    tell it FAIL/interrupted, never leave it RUNNING."""
    url = sqlite_url(tmp_path)
    study_file = write_study(tmp_path, study_dict("e2e-early-interrupt", url))
    proc = subprocess.run([sys.executable, "-c", _INTERRUPT_WHILE_SUGGESTING, "run",
                           study_file.name], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 130, show(proc)
    assert "interrupted" in proc.stderr, show(proc)
    trials = trials_of(url, "e2e-early-interrupt")
    assert len(trials) == 1, snapshot(trials)
    assert trials[0].state == TrialState.FAIL, snapshot(trials)
    assert trials[0].user_attrs.get("fail_reason") == INTERRUPTED, snapshot(trials)


# --------------------------------------------------------------------------- user errors

def test_missing_invalid_and_unknown_study_files(tmp_path: Path) -> None:
    assert_user_error(cli(tmp_path, "run", "nope.yaml"), "nope.yaml", "no such study file")
    assert_user_error(cli(tmp_path, "validate", "nope.yaml"), "nope.yaml")

    (tmp_path / "broken.yaml").write_text("name: x\ndata: {builtin: digits\n", encoding="utf-8")
    assert_user_error(cli(tmp_path, "run", "broken.yaml"), "broken.yaml", "invalid YAML",
                      "line ")

    spec = study_dict("unknown-key", sqlite_url(tmp_path))
    spec["model"] = {"hidden_unit": [16]}
    write_study(tmp_path, spec, "unknown.yaml")
    assert_user_error(cli(tmp_path, "run", "unknown.yaml"), "unknown.yaml",
                      "model.hidden_unit", "unknown key", "hidden_units")
    assert not (tmp_path / "s.db").exists()
    assert not (tmp_path / "runs").exists()


def test_every_problem_of_a_study_file_is_one_error_line(tmp_path: Path) -> None:
    spec = study_dict("many-problems", sqlite_url(tmp_path))
    spec["model"] = {"hidden_unit": [16], "activation": "relu6"}
    spec["train"] = {"epochs": 0}
    write_study(tmp_path, spec, "many.yaml")
    proc = cli(tmp_path, "run", "many.yaml")
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    lines = proc.stderr.splitlines()
    assert [line.split(": ")[3] for line in lines] == [
        "model.hidden_unit", "model.activation", "train.epochs"], show(proc)
    assert all(line.startswith("regsearch: error: many.yaml: ") for line in lines), show(proc)
    assert not (tmp_path / "s.db").exists()


def test_schema_command_prints_the_shipped_schema(tmp_path: Path) -> None:
    proc = cli(tmp_path, "schema")
    assert proc.returncode == 0, show(proc)
    shipped = Path(__file__).parents[1] / "studies" / "regsearch.schema.json"
    assert proc.stdout == shipped.read_text(encoding="utf-8")
    assert json.loads(proc.stdout)["properties"]["name"]["pattern"]


def test_csv_with_nan_features_is_refused_before_any_storage(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b,label\n1.0,2.0,0\n3.0,,1\n5.0,6.0,0\n7.0,8.0,1\n"
                                       "9.0,1.0,0\n2.0,3.0,1\n", encoding="utf-8")
    spec = study_dict("nan-data", sqlite_url(tmp_path, "sub/s.db"))
    spec["data"] = {"file": "data.csv", "target": "label"}
    write_study(tmp_path, spec)
    assert_user_error(cli(tmp_path, "run", "study.yaml"), "data.csv", "row 1", "'b'",
                      "missing or infinite")
    assert not (tmp_path / "sub").exists()  # data is checked before storage is touched
    assert_user_error(cli(tmp_path, "validate", "study.yaml"), "data.csv", "row 1")


def test_unreachable_postgres_fails_fast_without_leaking_the_password(tmp_path: Path) -> None:
    write_study(tmp_path, study_dict("pg", sqlite_url(tmp_path)))
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    for args in (("run", "study.yaml", "--storage", url), ("best", "pg", "--storage", url)):
        started = time.monotonic()
        proc = cli(tmp_path, *args, timeout=60)
        elapsed = time.monotonic() - started
        assert elapsed < 30, f"{args[0]} took {elapsed:.1f}s\n{show(proc)}"
        assert_user_error(proc, "postgresql+psycopg://u:***@127.0.0.1:1/x")
        assert "secret" not in proc.stderr + proc.stdout, show(proc)
    assert not (tmp_path / "s.db").exists()


def test_best_for_a_missing_study_lists_the_existing_ones(finished_study: Finished,
                                                          tmp_path: Path) -> None:
    _, url = finished_study.copy_to(tmp_path)
    assert_user_error(cli(tmp_path, "best", "no-such-study", "--storage", url),
                      "'no-such-study'", "studies there: e2e-digits", url)


@pytest.mark.parametrize("command", [["best", "e2e-digits"], ["sync", "e2e-digits"]])
def test_read_only_commands_refuse_a_missing_database_and_create_none(
        tmp_path: Path, command: list[str]) -> None:
    url = sqlite_url(tmp_path, "typo/s.db")
    assert_user_error(cli(tmp_path, *command, "--storage", url),
                      "no study database at", "run a study first, or pass --storage")
    assert not (tmp_path / "typo").exists()


def test_ui_refuses_a_missing_store_and_an_unknown_study(finished_study: Finished,
                                                        tmp_path: Path) -> None:
    """As `best` does: a typo must not serve (and create) an empty store."""
    missing = sqlite_url(tmp_path, "typo/mlflow.db")
    assert_user_error(cli(tmp_path, "ui", "--mlflow", missing), "no MLflow store at",
                      "run a study first, or pass --mlflow")
    assert not (tmp_path / "typo").exists()
    store = sqlite_url(finished_study.folder, "runs/mlflow.db")
    assert (finished_study.folder / "runs" / "mlflow.db").is_file()
    assert_user_error(cli(tmp_path, "ui", "nope", "--mlflow", store), "no study named 'nope'",
                      finished_study.name)


def test_sync_names_a_missing_study_and_an_unreachable_mlflow(finished_study: Finished,
                                                             tmp_path: Path) -> None:
    _, url = finished_study.copy_to(tmp_path)
    assert_user_error(cli(tmp_path, "sync", "no-such-study", "--storage", url),
                      "no study named 'no-such-study'", "studies there: e2e-digits")
    dead = "http://alice:hunter2@127.0.0.1:1"
    line = assert_user_error(cli(tmp_path, "sync", "e2e-digits", "--storage", url,
                                 "--mlflow", dead),
                             "MLflow at http://alice:***@127.0.0.1:1 is not reachable",
                             "start it and run sync again")
    assert "hunter2" not in line


def test_validate_a_good_file_writes_nothing(tmp_path: Path) -> None:
    write_study(tmp_path, study_dict("valid", sqlite_url(tmp_path, "sub/s.db")))
    proc = cli(tmp_path, "validate", "study.yaml")
    assert proc.returncode == 0, show(proc)
    assert proc.stdout.startswith("ok: valid (study.yaml): builtin:digits"), show(proc)
    assert "objective accuracy (maximize)" in proc.stdout, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


# --------------------------------------------------------------------------- entry points

def test_help_via_module_and_console_script(tmp_path: Path) -> None:
    module = cli(tmp_path, "--help")
    assert module.returncode == 0, show(module)
    assert "usage: regsearch" in module.stdout
    for command in ("run", "validate", "best"):
        assert command in module.stdout

    assert CONSOLE_SCRIPT.exists(), f"no console script at {CONSOLE_SCRIPT}"
    script = subprocess.run([str(CONSOLE_SCRIPT), "run", "--help"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert script.returncode == 0, show(script)
    assert "usage: regsearch run" in script.stdout and "--trials" in script.stdout

    bad = subprocess.run([str(CONSOLE_SCRIPT), "run", "x.yaml", "--trials", "0"], cwd=tmp_path,
                         env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert_user_error(bad, "--trials", "must be an integer in [1, 10000000], got 0")


def test_a_home_folder_in_urls_means_the_home_folder(tmp_path: Path) -> None:
    """`~` in a SQLite URL (flag or study file) is the home folder, as in a shell, for the
    study, its lock and MLflow alike; SQLite alone would open `./~/...` where it ran."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    write_study(work, study_dict("tilde", "sqlite:///~/runs/s.db",
                                 mlflow={"tracking_uri": "sqlite:///~/runs/m.db"}))
    env = {**ENV, "HOME": str(home)}
    init = subprocess.run([sys.executable, "-m", "regsearch", "init", "study.yaml"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert init.returncode == 0, show(init)
    assert f"ready in sqlite:///{home}/runs/s.db" in init.stdout
    assert [s.study_name for s in optuna.get_all_study_summaries(
        sqlite_url(home / "runs"), include_best_trial=False)] == ["tilde"]
    assert (home / "runs" / "m.db").is_file()
    flagged = subprocess.run([sys.executable, "-m", "regsearch", "sync", "tilde", "--storage",
                              "sqlite:///~/runs/s.db", "--mlflow", "sqlite:///~/runs/m.db"],
                             cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert flagged.returncode == 0, show(flagged)
    assert not (work / "~").exists()


def test_version_is_the_installed_metadata_and_pyprojects(capsys: pytest.CaptureFixture) -> None:
    import importlib.metadata
    import tomllib

    from regsearch import cli as regsearch_cli

    with pytest.raises(SystemExit) as ended:
        regsearch_cli.main(["--version"])
    assert ended.value.code == 0
    installed = importlib.metadata.version("regsearch")
    assert capsys.readouterr().out.strip() == f"regsearch {installed}"
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert project["project"]["version"] == installed


def test_the_extra_the_gp_error_names_exists() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert any(dep.startswith("torch") for dep in extras["gp"])
    samplers_text = (Path(__file__).parents[1] / "regsearch" / "samplers.py").read_text()
    assert "pip install 'regsearch[gp]'" in samplers_text
