"""`regsearch report`: why the best won, in pictures, as one self-contained HTML file.

Figures are drawn with matplotlib from the ledger (every trial, its epochs and its
confirmation runs) and Optuna's own plotting code where it has one; each is also written
as a PNG. The HTML embeds them, so it opens offline from a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regsearch.errors import RegsearchError
from regsearch.objective import BOUNDED_METRICS
from regsearch.states import State

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from regsearch.recorders.ledger import TrialRecord

TOP = 5  # configurations the summary lists (and whose learning curves are drawn)
#: Colours of the regularizer types, the same in every figure.
COLOURS = {"none": "#7f7f7f", "l1": "#1f77b4", "l2": "#d62728", "l1_l2": "#2ca02c"}


@dataclass
class Drawn:
    """A figure and what it plots (what the tests and the captions read)."""

    name: str
    title: str
    figure: Figure | None
    note: str = ""  # why a figure is missing or what it aggregates
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    band: tuple[float, float] | None = None  # the default's score, low to high


@dataclass(frozen=True)
class Report:
    """What `regsearch report` wrote, and where it logged it."""

    html: Path
    pngs: tuple[Path, ...]
    figures: tuple[Drawn, ...]
    mlflow_run: str | None = None  # the parent run holding them as artifacts


def build(name: str, storage_url: str, out: Path, *,
          tracking_uri: str | None = None) -> Report:
    """Write `out`/report.html and one PNG per figure, and log them to the study's MLflow
    parent run when `tracking_uri` is given; returns what was drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from regsearch import results
    from regsearch.opening import UID_ATTR
    from regsearch.recorders.ledger import Ledger
    from regsearch.report_optuna import history, importance
    from regsearch.report_page import page
    from regsearch.report_trials import study_in_memory
    from regsearch.storage import open_storage

    storage = open_storage(storage_url, must_exist=True)
    stored = results.load_study(name, storage_url, storage)
    ledger = Ledger(storage_url)
    try:
        records = list(ledger.records(name, epochs=False))
        study = study_in_memory(stored, storage, records, top=TOP)
        summary = results.study_summary(study, storage_url, top=TOP)
        shown = _curve_trials(summary)
        with_epochs = {r.number: r for r in ledger.records(name, numbers=shown)}
        info = ledger.study_info(name) or {"spec": {}}
    finally:
        ledger.engine.dispose()
    finished = [r for r in records if r.state in (State.COMPLETE, State.PRUNED)
                and r.value is not None and math.isfinite(r.value)]
    if not finished:
        raise RegsearchError(f"study {name!r} has no complete or pruned trial to draw "
                             f"({len(records)} failed or running); run it first")
    metric = summary["metric"]
    drawn = [_path(finished, summary, metric), _dropout(finished, metric),
             _gap(finished, summary), _sparsity(finished), _curves(shown, with_epochs),
             history(study, metric), importance(finished, study, metric),
             _confirmation(summary, metric)]
    out.mkdir(parents=True, exist_ok=True)
    try:
        images = {figure.name: _png(figure.figure) for figure in drawn
                  if figure.figure is not None}
    finally:
        plt.close("all")
    pngs = [out / f"{figure_name}.png" for figure_name in images]
    for path, image in zip(pngs, images.values()):
        path.write_bytes(image)
    html_path = out / "report.html"
    html_path.write_text(page(summary, info, records, drawn, images,
                              results.render(summary, "table")), encoding="utf-8")
    run_id = None
    if tracking_uri:
        from regsearch.recorders.mlflow_sync import log_to_parent

        run_id = log_to_parent(name, storage_url, tracking_uri, study.user_attrs.get(UID_ATTR),
                               [html_path, *pngs], "report")
    return Report(html_path, tuple(pngs), tuple(drawn), run_id)


def _png(figure: Figure) -> bytes:
    """The figure as the PNG both the page and its file hold."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _units(metric: str) -> str:
    return f"{metric} (0-1, higher is better)" if metric in BOUNDED_METRICS else metric


def _default_band(summary: dict[str, Any]) -> tuple[float, float] | None:
    """The default's confirmed mean ± sd, or its single-seed score."""
    confirmation = summary.get("confirmation")
    if confirmation:
        for row in confirmation["configurations"]:
            if row["default"]:
                score = row["score"]
                return score["mean"] - score["sd"], score["mean"] + score["sd"]
    default = summary.get("default")
    return (default["value"], default["value"]) if default else None


def _new(title: str, *, rows: int = 1) -> tuple[Figure, Any]:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, 1, figsize=(7.5, 3.6 * rows), squeeze=False)
    figure.suptitle(title)
    return figure, axes[:, 0]


def _path(finished: list[TrialRecord], summary: dict[str, Any], metric: str) -> Drawn:
    title = "Regularization path: the objective against strength"
    drawn = Drawn("regularization_path", title, None, band=_default_band(summary))
    for record in finished:
        x = record.config.strength
        if x is not None:
            drawn.series.setdefault(record.config.regularizer, []).append((x, record.value or 0))
    if not drawn.series:
        drawn.note = "no trial with a regularizer: nothing to draw against strength"
        return drawn
    figure, (top, bottom) = _new(title, rows=2)
    for kind in sorted(drawn.series):
        records = [r for r in finished if r.config.regularizer == kind and r.config.strength]
        for state, filled in ((State.COMPLETE, True), (State.PRUNED, False)):
            chosen = [r for r in records if r.state == state]
            if not chosen:
                continue
            style = {"color": COLOURS[kind], "s": 22,
                     "facecolors": COLOURS[kind] if filled else "none",
                     "label": f"{kind} ({state})"}
            top.scatter([r.config.strength for r in chosen], [r.value for r in chosen], **style)
            loss = [(r.config.strength, r.summary.get("val_loss")) for r in chosen
                    if r.summary.get("val_loss") is not None]
            bottom.scatter([p[0] for p in loss], [p[1] for p in loss], **style)
    if drawn.band is not None:
        low, high = drawn.band
        top.axhspan(low, high if high > low else low + 1e-9, color="#999999", alpha=0.3,
                    label="default (no regularizer)")
        top.axhline((low + high) / 2, color="#555555", linewidth=1)
    for axis, label in ((top, _units(metric)), (bottom, "validation data loss")):
        axis.set_xscale("log")
        axis.set_xlabel("strength (l1_l2: geometric mean of L1 and L2)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    top.legend(fontsize=7, loc="best")
    drawn.figure = figure
    return drawn


def _dropout(finished: list[TrialRecord], metric: str) -> Drawn:
    title = "The objective against the dropout rate"
    figure, (axis,) = _new(title)
    drawn = Drawn("dropout", title, figure)
    for record in finished:
        drawn.series.setdefault(record.config.regularizer, []).append(
            (record.config.dropout, record.value or 0))
    _scatter_by_type(axis, drawn.series)
    axis.set_xlabel("dropout rate")
    axis.set_ylabel(_units(metric))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, title="regularizer")
    return drawn


def _scatter_by_type(axis: Any, series: dict[str, list[tuple[float, float]]]) -> None:
    """(x, y) points, one colour per regularizer type."""
    for kind, points in sorted(series.items()):
        axis.scatter([p[0] for p in points], [p[1] for p in points], s=18,
                     color=COLOURS[kind], label=kind)


def gap(record: TrialRecord) -> float | None:
    """Validation minus training data loss at the best epoch, both with dropout off
    (positive: the model fits its training rows better than unseen ones)."""
    train, val = record.summary.get("train_eval_loss"), record.summary.get("val_loss")
    return None if train is None or val is None else float(val) - float(train)


def _gap(finished: list[TrialRecord], summary: dict[str, Any]) -> Drawn:
    title = "Generalization gap: validation minus training data loss (dropout off)"
    drawn = Drawn("generalization_gap", title, None)
    measured = [r for r in finished if gap(r) is not None]
    for record in measured:
        x = record.config.strength
        if x is not None:
            drawn.series.setdefault(record.config.regularizer, []).append((x, gap(record) or 0))
    if not drawn.series:
        drawn.note = ("no trial with a regularizer has its training loss measured with dropout "
                      "off (ledgers written before regsearch's schema version 2 lack it)"
                      if len(measured) < len(finished) else
                      "no trial with a regularizer: nothing to draw against strength")
        return drawn
    figure, (axis,) = _new(title)
    _scatter_by_type(axis, drawn.series)
    default = summary.get("default")
    by_number = {r.number: r for r in measured}
    if default is not None and default["trial"] in by_number:
        level = gap(by_number[default["trial"]]) or 0.0
        drawn.band = (level, level)
        axis.axhline(level, color="#555555", linestyle="--", linewidth=1,
                     label=f"default #{default['trial']} (no regularizer)")
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.set_xscale("log")
    axis.set_xlabel("strength (l1_l2: geometric mean of L1 and L2)")
    axis.set_ylabel("validation - training data loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    left_out = len(finished) - len(measured)
    if left_out:
        drawn.note = (f"{left_out} trials without a training loss measured with dropout off "
                      "(recorded before regsearch's schema version 2) are left out")
    drawn.figure = figure
    return drawn


def _sparsity(finished: list[TrialRecord]) -> Drawn:
    title = "Sparsity: the share of near-zero weights against L1 strength"
    drawn = Drawn("sparsity", title, None)
    for record in finished:
        l1 = record.config.effective()[0]
        share = record.summary.get("near_zero_share")
        if l1 > 0 and share is not None:
            drawn.series.setdefault(record.config.regularizer, []).append((l1, float(share)))
    if not drawn.series:
        drawn.note = "no trial with an L1 factor: the study searched no l1 or l1_l2"
        return drawn
    figure, (axis,) = _new(title)
    _scatter_by_type(axis, drawn.series)
    axis.set_xscale("log")
    axis.set_xlabel("L1 factor")
    axis.set_ylabel("share of hidden weights near zero")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    drawn.figure = figure
    return drawn


def _curve_trials(summary: dict[str, Any]) -> list[int]:
    """The trials whose learning curves are drawn: the top ones and the default."""
    wanted = [row["trial"] for row in summary["top"]]
    if summary.get("default") is not None:
        wanted.append(summary["default"]["trial"])
    return list(dict.fromkeys(wanted))


def _curves(numbers: list[int], by_number: dict[int, TrialRecord]) -> Drawn:
    title = "Learning curves: the top configurations and the default"
    shown = [by_number[n] for n in numbers if n in by_number and by_number[n].epochs]
    drawn = Drawn("learning_curves", title, None)
    if not shown:
        drawn.note = "no trial has recorded epochs"
        return drawn
    figure, (axis,) = _new(title)
    for record in shown:
        epochs = [e.epoch for e in record.epochs]
        colour = COLOURS[record.config.regularizer]
        label = f"#{record.number} {record.config.regularizer}"
        axis.plot(epochs, [e.val_loss for e in record.epochs], color=colour, label=label)
        axis.plot(epochs, [e.train_loss for e in record.epochs], color=colour,
                  linestyle=":", alpha=0.7)
        drawn.series[label] = [(float(e.epoch), float(e.val_loss)) for e in record.epochs]
    axis.set_xlabel("epoch")
    axis.set_ylabel("data loss (solid: validation, dotted: training)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    drawn.figure = figure
    return drawn


def _confirmation(summary: dict[str, Any], metric: str) -> Drawn:
    title = "Confirmation: each configuration's mean and 95 % interval over fresh seeds"
    confirmation = summary.get("confirmation")
    drawn = Drawn("confirmation", title, None)
    if not confirmation:
        drawn.note = "the study was not confirmed (`regsearch confirm NAME`)"
        return drawn
    rows = confirmation["configurations"]
    figure, (axis,) = _new(title)
    for index, row in enumerate(rows):
        score = row["score"]
        label = "default" if row["default"] else f"#{row['trial']}"
        colour = COLOURS[row["config"]["regularizer"]]
        axis.errorbar([score["mean"]], [index], xerr=[[score["mean"] - score["low"]],
                                                     [score["high"] - score["mean"]]],
                      fmt="o", color=colour, capsize=3)
        if row["test"]:
            axis.scatter([row["test"]["mean"]], [index], marker="x", color="black")
        drawn.series[label] = [(score["low"], score["high"])]
    axis.set_yticks(range(len(rows)),
                    ["default" if r["default"] else f"#{r['trial']}" for r in rows])
    axis.invert_yaxis()
    axis.set_xlabel(f"{_units(metric)} (x: test mean)")
    axis.grid(alpha=0.3)
    drawn.figure = figure
    return drawn
