"""The report's figures drawn by Optuna's own code: its optimization history, and its
parameter importances over one log-strength axis."""

from __future__ import annotations

import math
import typing
from typing import TYPE_CHECKING, Any

from regsearch.states import State
from regsearch.study_report import Drawn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from regsearch.recorders.ledger import TrialRecord


def history(study: Any, metric: str) -> Drawn:
    """Optuna's own optimization-history plot."""
    import optuna

    figure = _optuna_figure(optuna.visualization.matplotlib.plot_optimization_history, study,
                            metric, height=3.6)
    return Drawn("history", "Optimization history (Optuna)", figure)


def _optuna_figure(plot: Any, study: Any, metric: str, *, height: float) -> Figure:
    """One of Optuna's matplotlib plots (experimental in Optuna: its warning is left out),
    sized as the report's own figures."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axis = plot(study, target_name=metric)
    figure = typing.cast("Figure", axis.figure)
    figure.set_size_inches(7.5, height)
    return figure


#: Trials an importance estimate uses at most; more are sampled (and the figure says so).
IMPORTANCE_TRIALS = 2000


def importance(finished: list[TrialRecord], study: Any, metric: str) -> Drawn:
    """Optuna's parameter importances over one log-strength axis (l1 and l2 are separate
    conditional parameters in the study, which would split a strength's importance)."""
    import random

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    title = "Parameter importances (Optuna, fANOVA), strength on one log axis"
    drawn = Drawn("importance", title, None)
    complete = [r for r in finished if r.state == State.COMPLETE]
    if len(complete) < 2:
        drawn.note = "fewer than two complete trials: no importance to estimate"
        return drawn
    if len(complete) > IMPORTANCE_TRIALS:
        complete = random.Random(0).sample(complete, IMPORTANCE_TRIALS)
        drawn.note = f"estimated on {IMPORTANCE_TRIALS} trials sampled at random"
    strengths = [math.log10(x) for x in (r.config.strength for r in complete) if x]
    floor = min(strengths, default=-6.0)
    kinds = sorted({r.config.regularizer for r in complete})
    dropouts = [r.config.dropout for r in complete]
    distributions = {
        "regularizer": CategoricalDistribution(kinds),
        "log10_strength": FloatDistribution(floor, max(strengths, default=floor) + 1e-9),
        "dropout": FloatDistribution(min(dropouts), max(dropouts) + 1e-9)}
    derived = optuna.create_study(direction=study.direction)
    derived.add_trials([optuna.trial.create_trial(
        params={"regularizer": r.config.regularizer, "dropout": r.config.dropout,
                "log10_strength": math.log10(r.config.strength or 10 ** floor)},
        distributions=distributions, value=r.value) for r in complete])
    try:
        drawn.figure = _optuna_figure(optuna.visualization.matplotlib.plot_param_importances,
                                      derived, metric, height=3.0)
    except (ValueError, RuntimeError) as exc:
        drawn.note = f"Optuna could not estimate importances here ({exc})"
        return drawn
    drawn.note = " ".join(filter(None, [drawn.note, "a trial without a regularizer is placed "
                                        "at the weakest strength tried"]))
    return drawn
