"""`regsearch ui` in a real browser: the page it prints is the study's leaderboard, and
the study's report opens from its parent run.

A tiny study is recorded into a local MLflow store, `regsearch ui` serves it, and headless
Chromium renders the pages. Needs Chromium, which .ci/run installs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient

from regsearch import driver, opening
from regsearch.trainers import make_trainer
from ui_screenshot import find_chromium, page_text, render

pytestmark = [
    pytest.mark.slow,
    pytest.mark.server,
    pytest.mark.skipif(find_chromium() is None,
                       reason="needs Chromium (`chromium` on PATH or /usr/bin/chromium); "
                              ".ci/run installs it"),
]

# The check-circle icon MLflow draws beside a FINISHED run (a failed or killed one differs).
FINISHED_ICON = 'd="M11.53 6.53 7 11.06 4.47 8.53l1.06-1.06L7 8.94l3.47-3.47z"'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, log: Path, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`regsearch ui` exited {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"`regsearch ui` did not answer {url} in {limit:.0f}s:\n{log.read_text()[-3000:]}")


def _stop(server: subprocess.Popen) -> None:
    """The whole process group: `mlflow server` and its workers outlive a signalled parent."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def _serving(uri: str, folder: Path, *study: str) -> Iterator[tuple[str, dict[str, str]]]:
    """`regsearch ui [STUDY]` on the store `uri`, on a free local port, until the block
    ends: the base URL, and the study pages it printed."""
    base = f"http://127.0.0.1:{_free_port()}"
    log = folder / "ui.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "regsearch", "ui", *study, "--mlflow", uri, "--host",
             "127.0.0.1", "--port", base.rsplit(":", 1)[1]], stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_up(f"{base}/health", server, log)
        printed = log.read_text().split("(Ctrl-C to stop)")[1].splitlines()
        pages = dict(line.strip().split(": ", 1) for line in printed
                     if line.startswith("  ") and ": http" in line)
        yield base, pages
    finally:
        _stop(server)


def _assert_png(path: Path, size: tuple[int, int]) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == size
    assert len(data) > 30_000, f"{path} is {len(data)} bytes: a blank page?"


def test_the_printed_page_is_the_studys_leaderboard(make_spec, tmp_path: Path) -> None:
    """`regsearch ui NAME` prints the study's page: MLflow's model-training layout, every
    run flat, sorted by the objective with the configuration's columns; pruned trials are
    FINISHED (no failure icon). Without the view, the trials fold under the parent run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(mlflow={"tracking_uri": uri}, train__epochs=4,
                     search={"n_trials": 8, "pruner": "hyperband"})
    study_run = opening.open_run(spec)
    driver.run_study(study_run, make_trainer(study_run))

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    trials = {n: r for n, r in runs.items() if r.data.tags["regsearch.role"] == "trial"}
    assert len(trials) == 8 and all(n.startswith("t000") for n in trials), sorted(runs)
    pruned = [n for n, r in trials.items() if r.data.tags["regsearch.state"] == "pruned"]
    assert pruned and all(trials[n].info.status == "FINISHED" for n in pruned), sorted(runs)

    with _serving(uri, tmp_path, "tiny") as (base, pages):
        page = pages["tiny"]
        assert page == (f"{base}/#/experiments/{experiment.experiment_id}/runs?"
                        "workflowType=machine_learning&viewStateShareKey=regsearch"), pages
        board_dom = render(page, tmp_path / "leaderboard.png")
        runs_page = page.split("&")[0]  # the runs page without the view
        nested_dom = render(runs_page, tmp_path / "experiment-nested.png")

    def link(name: str) -> str:
        return f'href="#/experiments/{experiment.experiment_id}/runs/{runs[name].info.run_id}"'

    board = page_text(board_dom)
    assert "Token Usage" not in board and "Runs" in board, board[:2000]  # not GenAI's pages
    assert "Sort: best_accuracy" in board, board[:2000]
    for column in ("best_accuracy", "final_val_loss", "dropout", "log10_strength"):
        assert column in board, (column, board[:2000])
    # every run a row, in the objective's order; the unranked (pruned) ones after the rest
    order = sorted(runs, key=lambda name: board_dom.find(link(name)))
    assert all(board_dom.find(link(name)) >= 0 for name in runs), board[:3000]
    scores = [runs[name].data.metrics.get("best_accuracy") for name in order]
    ranked = [score for score in scores if score is not None]
    assert scores[:len(ranked)] == ranked and ranked == sorted(ranked, reverse=True), order
    assert board_dom.count(FINISHED_ICON) == len(runs), "a run is drawn as not finished"

    nested = page_text(nested_dom)
    assert "Token Usage" not in nested and "9 matching runs" in nested, nested[:2000]
    assert link("tiny") in nested_dom
    assert not any(link(name) in nested_dom for name in trials), "trial runs are not nested"

    for png in ("leaderboard.png", "experiment-nested.png"):
        _assert_png(tmp_path / png, (1600, 1000))
    if os.environ.get("REGSEARCH_SCREENSHOT_DIR"):
        keep = Path(os.environ["REGSEARCH_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        for png in ("leaderboard.png", "experiment-nested.png"):
            shutil.copy(tmp_path / png, keep / png)


def _drawn(png: Path, colour: tuple[int, int, int], tolerance: int) -> int:
    """How many pixels of the screenshot have this figure colour."""
    import matplotlib.image
    import numpy as np

    pixels = matplotlib.image.imread(png)[:, :, :3] * 255
    return int(np.all(np.abs(pixels - np.array(colour)) <= tolerance, axis=-1).sum())


def test_ui_opens_the_study_report_from_the_parent_runs_artifacts(make_spec,
                                                                  tmp_path: Path) -> None:
    import regsearch

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(mlflow={"tracking_uri": uri}, search={"n_trials": 6, "pruner": "none"},
                     space={"regularizers": ["l1", "l1_l2"]})
    regsearch.search(spec)
    done = regsearch.report(spec.name, out=tmp_path / "report", storage=spec.storage)
    assert done.mlflow_run is not None
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(spec.name).experiment_id

    with _serving(uri, tmp_path) as (base, pages):
        assert list(pages) == [spec.name], pages  # without a NAME: every study's page
        page = (f"{base}/#/experiments/{experiment_id}/runs/{done.mlflow_run}/artifacts/"
                "report/report.html")
        dom = render(page, tmp_path / "report-in-mlflow.png", window=(1600, 2400))
    assert 'class="mlflow-html-iframe"' in dom  # MLflow shows the HTML artifact inline
    assert "report/report.html" in page_text(dom)
    # the report's figures are drawn inside it: tab10 blue (l1) and green (l1_l2) points;
    # MLflow's own blue (#2272b4) is 3-5 off the figures', hence the tight tolerance
    shot = tmp_path / "report-in-mlflow.png"
    assert _drawn(shot, (0x1F, 0x77, 0xB4), 2) > 20
    assert _drawn(shot, (0x2C, 0xA0, 0x2C), 12) > 20
    if os.environ.get("REGSEARCH_SCREENSHOT_DIR"):
        keep = Path(os.environ["REGSEARCH_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "report-in-mlflow.png")
