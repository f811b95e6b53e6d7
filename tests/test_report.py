"""`regsearch report`: the figures hold the study's data, the page opens offline in a
browser with every figure drawn, and it is an artifact of the study's MLflow parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

import regsearch
from clitools import assert_user_error, cli, sqlite_url, study_dict, write_study
from ui_screenshot import find_chromium, render

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("report")
    storage, tracking = sqlite_url(folder, "s.db"), sqlite_url(folder, "mlflow.db")
    every = study_dict("report-all", storage, search={"n_trials": 12, "pruner": "median",
                                                      "sampler": "random"},
                       confirm={"top": 2, "seeds": 2})
    one = study_dict("report-l2", storage, space={"regularizers": ["l2"]},
                     search={"n_trials": 4, "pruner": "none"})
    for spec in (every, one):
        spec["mlflow"] = {"tracking_uri": tracking}
        regsearch.search(spec)
    return {"folder": folder, "storage": storage, "mlflow": tracking}


def _finished_by_type(storage: str, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in optuna.load_study(study_name=name, storage=storage).get_trials():
        if trial.state.name in ("COMPLETE", "PRUNED") and trial.params["regularizer"] != "none":
            kind = trial.params["regularizer"]
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def _ledger_losses(storage: str, name: str) -> dict[int, tuple[float, float]]:
    """{trial: (val_loss, train_eval_loss)} of the finished trials, read with plain SQL."""
    import sqlalchemy as sa

    engine = sa.create_engine(storage)
    try:
        with engine.connect() as conn:
            return {n: (v, t) for n, v, t in conn.execute(sa.text(
                "SELECT t.number, t.val_loss, t.train_eval_loss FROM regsearch_trials t "
                "JOIN regsearch_studies s ON s.id = t.study_id WHERE s.name = :name "
                "AND t.state IN ('complete', 'pruned')"), {"name": name})}
    finally:
        engine.dispose()


def test_figures_hold_the_study_data(studies, tmp_path: Path) -> None:
    done = regsearch.report("report-all", out=tmp_path, storage=studies["storage"],
                            mlflow=False)
    figures = {f.name: f for f in done.figures}
    path = figures["regularization_path"]
    assert {k: len(v) for k, v in path.series.items()} == _finished_by_type(
        studies["storage"], "report-all")
    result = regsearch.load("report-all", storage=studies["storage"])
    (default,) = [c for c in result.confirmation["configurations"] if c["default"]]
    score = default["score"]
    assert path.band == pytest.approx((score["mean"] - score["sd"], score["mean"] + score["sd"]))
    gap = figures["generalization_gap"]
    assert {k: len(v) for k, v in gap.series.items()} == _finished_by_type(
        studies["storage"], "report-all")
    rows = _ledger_losses(studies["storage"], "report-all")
    assert all(train is not None for _, train in rows.values())  # every finished trial
    default_trial = result.default["trial"]
    val_loss, train_eval_loss = rows[default_trial]
    assert gap.band == pytest.approx((val_loss - train_eval_loss,) * 2)
    confirmed = figures["confirmation"].series
    assert len(confirmed) == len(result.confirmation["configurations"])
    assert confirmed["default"] == [(pytest.approx(score["low"]), pytest.approx(score["high"]))]
    shown = {p.name for p in done.pngs}
    assert shown == {f"{f.name}.png" for f in done.figures if f.figure is not None}
    assert "regularization_path.png" in shown and "importance.png" in shown
    text = done.html.read_text()
    assert text.count('src="data:image/png;base64,') == len(done.pngs)
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert "regularization did not measurably help" in text or "gain over the default" in text
    assert done.mlflow_run is None


def test_a_study_of_one_regularizer_type_says_what_it_cannot_draw(studies,
                                                                 tmp_path: Path) -> None:
    done = regsearch.report("report-l2", out=tmp_path, storage=studies["storage"],
                            mlflow=False)
    figures = {f.name: f for f in done.figures}
    assert figures["sparsity"].figure is None
    assert "no trial with an L1 factor" in figures["sparsity"].note
    assert figures["confirmation"].figure is None and "not confirmed" in figures[
        "confirmation"].note
    assert list(figures["regularization_path"].series) == ["l2"]
    page = done.html.read_text()
    assert "no trial with an L1 factor" in page and "regsearch confirm report-l2" in page


def test_the_page_opens_offline_with_every_figure_drawn(studies, tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("needs Chromium; .ci/run installs it")
    import matplotlib.image

    done = regsearch.report("report-all", out=tmp_path / "r", storage=studies["storage"],
                            mlflow=False)
    shot = tmp_path / "report.png"
    console: list[str] = []
    dom = render(done.html.resolve().as_uri(), shot, window=(1000, 6000), console=console)
    assert console == []  # no script error, nothing else written to the console
    assert dom.count("<img") == len(done.pngs)
    pixels = matplotlib.image.imread(shot)[:, :, :3]
    # the series colours of the figures (matplotlib's tab10 blue, red, green) are drawn
    for colour in ((0x1F, 0x77, 0xB4), (0x2C, 0xA0, 0x2C)):
        match = np.all(np.abs(pixels * 255 - np.array(colour)) < 12, axis=-1)
        assert match.sum() > 50, f"colour {colour} barely on the page: figures not drawn?"
    blank = np.all(pixels > 0.97, axis=-1).mean()
    assert blank < 0.9, f"{blank:.0%} of the page is white"


def test_the_console_check_sees_a_page_error(tmp_path: Path) -> None:
    """The report page's empty console means something: an error there is caught."""
    if find_chromium() is None:
        pytest.skip("needs Chromium; .ci/run installs it")
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('drawn badly'); missing();</script>"
                    "</body></html>")
    console: list[str] = []
    render(page.resolve().as_uri(), console=console, budget_ms=1000)
    assert any("drawn badly" in line for line in console), console
    assert any("missing is not defined" in line for line in console), console


def test_the_report_summarizes_the_study_as_regsearch_best_does(studies) -> None:
    """Most trials come from the ledger's rows, the top ones and the default from Optuna;
    the summary is the one the whole Optuna study gives."""
    from optuna.trial import TrialState

    from regsearch import results
    from regsearch.recorders.ledger import Ledger
    from regsearch.report_trials import study_in_memory
    from regsearch.storage import open_storage

    url = studies["storage"]
    storage = open_storage(url, must_exist=True)
    for name in ("report-all", "report-l2"):
        stored = results.load_study(name, url, storage)
        ledger = Ledger(url)
        try:
            records = list(ledger.records(name, epochs=False))
        finally:
            ledger.engine.dispose()
        fast = study_in_memory(stored, storage, records, top=3)
        summary = results.study_summary(stored, url, top=3)
        assert results.study_summary(fast, url, top=3) == summary
        assert [(t.number, t.state, t.value) for t in fast.get_trials()] == [
            (t.number, t.state, t.value) for t in stored.get_trials()
            if t.state != TrialState.WAITING]
        from_ledger = sum(not t.params for t in fast.get_trials())
        if name == "report-all":  # trial 0 is the default: it and the top 3 from Optuna
            assert from_ledger == len(records) - len({0, *(t["trial"] for t in summary["top"])})
        else:  # no default (one type, no "none"): the whole study from Optuna
            assert from_ledger == 0


def test_report_is_an_artifact_of_the_parent_run(studies, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    proc = cli(tmp_path, "report", "report-all", "--storage", studies["storage"],
               "--mlflow", studies["mlflow"], "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote " in proc.stdout and "parent run" in proc.stdout
    client = MlflowClient(tracking_uri=studies["mlflow"])
    experiment = client.get_experiment_by_name("report-all")
    (parent,) = client.search_runs([experiment.experiment_id],
                                   "tags.`regsearch.role` = 'parent'")
    names = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report.html" in names and "regularization_path.png" in names
    assert parent.info.status == "FINISHED"


def test_nothing_to_draw_is_one_line_and_exit_2(tmp_path: Path) -> None:
    storage = sqlite_url(tmp_path, "e.db")
    write_study(tmp_path, study_dict("report-empty", storage), "empty.yaml")
    assert cli(tmp_path, "init", "empty.yaml").returncode == 0
    assert_user_error(cli(tmp_path, "report", "report-empty", "--storage", storage,
                          "--no-mlflow"), "has no complete or pruned trial to draw")
    assert not (tmp_path / "reports").exists()
    assert_user_error(cli(tmp_path, "report", "nope", "--storage", storage, "--no-mlflow"),
                      "no study named 'nope'")
