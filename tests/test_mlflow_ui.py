"""`regsearch ui` in a real browser: a study's parent run and its nested trial runs show up.

A tiny study is recorded into a local MLflow store, `regsearch ui` serves it, and headless
Chromium renders the experiment's runs page. Needs Chromium, which .ci/run installs.
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

TRIALS = ("trial-0000", "trial-0001", "trial-0002")
# MLflow 3 opens `#/experiments/<id>` on its GenAI overview; the runs table is the `runs` tab.
# It nests child runs (collapsed) under their parent only in its default order; sorting by
# name lists every run flat, so the trials become visible rows.
RUNS_PAGE = "{base}/#/experiments/{id}/runs"
FLAT_RUNS_PAGE = RUNS_PAGE + "?orderByKey=tags.%60mlflow.runName%60&orderByAsc=true"


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
def _serving(uri: str, folder: Path) -> Iterator[str]:
    """`regsearch ui` on the store `uri`, on a free local port, until the block ends: the
    base URL."""
    base = f"http://127.0.0.1:{_free_port()}"
    log = folder / "ui.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "regsearch", "ui", "--mlflow", uri, "--host", "127.0.0.1",
             "--port", base.rsplit(":", 1)[1]], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        _wait_until_up(f"{base}/health", server, log)
        yield base
    finally:
        _stop(server)


def _assert_png(path: Path, size: tuple[int, int]) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == size
    assert len(data) > 30_000, f"{path} is {len(data)} bytes: a blank page?"


def test_ui_shows_the_study_run_and_its_trial_runs(make_spec, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = make_spec(mlflow={"tracking_uri": uri}, search={"n_trials": 3, "pruner": "none"})
    study_run = opening.open_run(spec)
    driver.run_study(study_run, make_trainer(study_run))

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    assert sorted(runs) == ["tiny", *TRIALS]
    parent_id = runs["tiny"].info.run_id
    assert all(runs[t].data.tags["mlflow.parentRunId"] == parent_id for t in TRIALS)

    with _serving(uri, tmp_path) as base:
        nested_dom = render(RUNS_PAGE.format(base=base, id=experiment_id),
                            tmp_path / "experiment-nested.png")
        flat_dom = render(FLAT_RUNS_PAGE.format(base=base, id=experiment_id),
                          tmp_path / "experiment.png")

    def link(name: str) -> str:
        return f'href="#/experiments/{experiment_id}/runs/{runs[name].info.run_id}"'

    # Default view: one row, the study's parent run, with the three trials folded under it.
    nested = page_text(nested_dom)
    assert "Training runs" in nested and "4 matching runs" in nested, nested[:2000]
    assert link("tiny") in nested_dom and ">tiny<" in nested_dom
    assert not any(link(t) in nested_dom for t in TRIALS), "trial runs are not nested"

    # Flat view: every run is a row linking to its run page, in name order.
    flat = page_text(flat_dom)
    assert "4 matching runs" in flat, flat[:2000]
    assert all(f" {t} " in f" {flat} " for t in TRIALS), flat[:2000]
    rows = [flat_dom.find(link(name)) for name in ("tiny", *TRIALS)]
    assert -1 not in rows and rows == sorted(rows), "runs missing or out of name order"

    for png in ("experiment.png", "experiment-nested.png"):
        _assert_png(tmp_path / png, (1600, 1000))
    if os.environ.get("REGSEARCH_SCREENSHOT_DIR"):
        keep = Path(os.environ["REGSEARCH_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        for png in ("experiment.png", "experiment-nested.png"):
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

    with _serving(uri, tmp_path) as base:
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
