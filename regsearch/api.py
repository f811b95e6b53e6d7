"""The Python way in: `search` runs a study as `regsearch run` does; `load` reads one back;
`export` takes its best home.

Both return a `StudyResult`: plain data (the best configuration, the leaderboard, the
default it is measured against, the confirmation), holding no database connection or
MLflow writer, so it can be kept, pickled or printed in a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regsearch.errors import SpecError
from regsearch.space import RegConfig
from regsearch.spec import DEFAULT_STORAGE, StudySpec
from regsearch.study_file import check_field

if TYPE_CHECKING:
    from regsearch.exports import Exported
    from regsearch.study_report import Report as StudyReport

StudyInput = str | Path | StudySpec | dict[str, Any]


@dataclass(frozen=True)
class StudyResult:
    """A study's answer, read from its storage after the search (or by `load`)."""

    study_name: str
    metric: str
    direction: str
    #: the reported best (the confirmed winner when the study was confirmed): its config,
    #: value, best epoch, validation loss, and test score when the study holds out a test
    best: dict[str, Any] | None
    #: the top complete trials, best first (ranked by the objective, ties by val_loss)
    leaderboard: list[dict[str, Any]]
    #: the unregularized yardstick, and the best's gain over it
    default: dict[str, Any] | None
    gain_over_default: float | None
    #: counts of trials by state: complete, pruned, fail, running
    trials: dict[str, int]
    warnings: list[str]
    confirmation: dict[str, Any] | None
    summary: dict[str, Any] = field(repr=False)

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> StudyResult:
        return cls(study_name=summary["study"], metric=summary["metric"],
                   direction=summary["direction"], best=summary["best"],
                   leaderboard=summary["top"], default=summary["default"],
                   gain_over_default=summary["gain_over_default"], trials=summary["trials"],
                   warnings=summary["warnings"], confirmation=summary["confirmation"],
                   summary=summary)

    @property
    def best_config(self) -> RegConfig | None:
        """The best regularization (type, l1, l2, dropout), None before any trial is done."""
        return RegConfig(**self.best["config"]) if self.best else None

    def render(self, fmt: str = "table") -> str:
        """As `regsearch best` prints it: "table", "json" or "yaml"."""
        from regsearch import results

        return results.render(self.summary, fmt)


def search(study: StudyInput, *, trials: int | None = None, timeout: float | None = None,
           storage: str | None = None, mlflow: str | None = None) -> StudyResult:
    """Run (or continue) a study until its budget or timeout is spent, then confirm it as
    its file asks, exactly as `regsearch run` does; the MLflow writer and the databases it
    opened are closed before it returns.

    `study` is a study file's path, YAML text, a mapping, or a `StudySpec`; `trials`,
    `timeout`, `storage` and `mlflow` override the study's and are checked as its fields
    are (a `SpecError` names the argument and the rule).
    """
    from regsearch import driver, opening, results
    from regsearch.trainers import make_trainer

    spec = _spec(study)
    checked = {name: _checked("search", path, value, name) for name, path, value in (
        ("trials", "search.n_trials", trials), ("timeout", "search.timeout", timeout),
        ("storage", "storage", storage), ("mlflow", "mlflow.tracking_uri", mlflow))}
    run = opening.open_run(spec, n_trials=checked["trials"], timeout=checked["timeout"],
                           storage=checked["storage"], mlflow=checked["mlflow"])
    try:
        driver.run_study(run, make_trainer(run))
        summary = results.study_summary(run.study, run.storage_url)
    finally:
        opening.close_run(run)
    return StudyResult.from_summary(summary)


def load(name: str, *, storage: str = DEFAULT_STORAGE, top: int = 5) -> StudyResult:
    """An existing study's answer, read only (nothing is created or changed)."""
    from regsearch import results
    from regsearch.storage import open_storage

    url = _checked("load", "storage", storage)
    rdb = open_storage(url, must_exist=True)
    try:
        study = results.load_study(name, url, storage=rdb)
        return StudyResult.from_summary(results.study_summary(study, url, top=top))
    finally:
        rdb.engine.dispose()


def export(name: str, format: str, *, out: str | Path | None = None,
           storage: str = DEFAULT_STORAGE, trial: int | None = None, refit: str = "train",
           force: bool = False, mlflow: str | None = None,
           register: str | None = None) -> Exported:
    """Export a study's reported best (the confirmed one when confirmed), or `trial`, as
    `regsearch export` does: `format` is yaml, json, python, keras or mlflow. Returns what
    was written, the configuration document, and for keras/mlflow the refit's scores
    (`result.document["refit"]`); yaml/json/python without `out` come back as `.text`."""
    from regsearch import exports

    url = _checked("export", "storage", storage)
    tracking = _checked("export", "mlflow.tracking_uri", mlflow, "mlflow")
    return exports.export(name, format, storage_url=url, out=Path(out) if out else None,
                          trial=trial, rows=refit, force=force, tracking_uri=tracking,
                          register=register)


def report(name: str, *, out: str | Path | None = None, storage: str = DEFAULT_STORAGE,
           mlflow: str | bool | None = None) -> StudyReport:
    """Draw a study's report as `regsearch report` does: `out`/report.html (default
    reports/NAME) and a PNG per figure, logged to the study's MLflow parent run (`mlflow`:
    a tracking URI, None for the study's own, False for none)."""
    from regsearch import results, study_report

    url = _checked("report", "storage", storage)
    tracking: str | None = None
    if isinstance(mlflow, str):
        tracking = _checked("report", "mlflow.tracking_uri", mlflow, "mlflow")
    elif mlflow is None:
        spec = results.stored_spec(name, url)
        tracking = spec.mlflow.tracking_uri if spec.mlflow.enabled else None
    return study_report.build(name, url, Path(out) if out else Path("reports") / name,
                              tracking_uri=tracking)


def _spec(study: StudyInput) -> StudySpec:
    from regsearch.study_file import load_spec, parse_spec, parse_spec_text

    if isinstance(study, StudySpec):
        return study
    if isinstance(study, dict):
        return parse_spec(study, source="<study mapping>")
    if isinstance(study, Path) or ("\n" not in study and study.endswith((".yaml", ".yml"))):
        return load_spec(study)
    return parse_spec_text(study)


def _checked(function: str, path: str, value: Any, argument: str | None = None) -> Any:
    """An argument checked as the study-file field `path` is."""
    if value is None:
        return None
    try:
        return check_field(path, value)
    except ValueError as bad:
        raise SpecError(f"regsearch.{function}()", argument or path, str(bad)) from None
