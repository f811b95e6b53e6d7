"""The best configuration and a leaderboard, read back from the study's storage."""

from __future__ import annotations

import json
import math
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from regsearch.driver import METRIC_ATTR
from regsearch.errors import RegsearchError
from regsearch.space import RegConfig, from_params
from regsearch.spec import StudySpec
from regsearch.trainers.base import DIVERGED
from regsearch.storage import mask_url, open_storage

def load_study(name: str, storage_url: str) -> optuna.Study:
    """An existing study by name; a missing one is an error listing what is there."""
    storage = open_storage(storage_url, must_exist=True)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(
        storage, include_best_trial=False))
    if name not in names:
        there = ", ".join(names[:10]) if names else "none"
        raise RegsearchError(f"no study named {name!r} in {mask_url(storage_url)} "
                             f"(studies there: {there}); pass --storage if it lives elsewhere")
    return optuna.load_study(study_name=name, storage=storage)


def summarize(study: optuna.Study, top: int = 5) -> dict[str, Any]:
    """Plain data (JSON/YAML-ready) about a study: counts, best config, top-k."""
    trials = study.get_trials(deepcopy=False)
    ranked = _ranked(trials, study.direction == optuna.study.StudyDirection.MAXIMIZE)
    counts = {state.name.lower(): sum(1 for t in trials if t.state == state)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                            TrialState.RUNNING)}
    return {
        "study": study.study_name,
        "metric": study.user_attrs.get(METRIC_ATTR, "value"),
        "direction": study.direction.name.lower(),
        "trials": counts,
        "best": _describe(ranked[0]) if ranked else None,
        "top": [_describe(t) for t in ranked[:top]],
    }


def raise_if_all_diverged(study: optuna.Study, spec: StudySpec) -> None:
    """A study whose every trial diverged has no answer: say so, and what to change."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    failed = [t for t in finished if t.state == TrialState.FAIL]
    diverged = [t for t in failed if DIVERGED in (t.user_attrs.get("fail_reason") or "")]
    if not diverged or len(diverged) != len(failed) or len(failed) != len(finished):
        return
    rate = spec.train.learning_rate
    raise RegsearchError(
        f"all {len(diverged)} trials of {study.study_name!r} diverged (their loss became "
        f"NaN or infinite); lower train.learning_rate (now {rate:g}), e.g. to {rate / 10:g}"
        + ("" if spec.train.optimizer == "adam" else ", or use optimizer: adam")
        + ", then run again with a new `name:`")


def _ranked(trials: list[FrozenTrial], maximize: bool) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    return sorted(done, key=lambda t: (-t.value if maximize else t.value, t.number))


def _describe(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "value": trial.value,
        "config": from_params(trial.params).as_dict(),
        "best_epoch": attrs.get("best_epoch"),
        "penalty": attrs.get("penalty"),
        "test_metric": attrs.get("test_metric"),
    }


def keras_snippet(config: RegConfig) -> str:
    """The lines a user pastes into their own model."""
    reg = {
        "none": "None",
        "l1": f"keras.regularizers.L1({config.l1:.3g})",
        "l2": f"keras.regularizers.L2({config.l2:.3g})",
        "l1_l2": f"keras.regularizers.L1L2(l1={config.l1:.3g}, l2={config.l2:.3g})",
    }[config.regularizer]
    return (f"keras.layers.Dense(units, activation=..., kernel_regularizer={reg}), "
            f"keras.layers.Dropout({config.dropout:.3g})")


def render(summary: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(summary, indent=2)
    if fmt == "yaml":
        return yaml.safe_dump(summary, sort_keys=False).rstrip()
    return _table(summary)


def _table(summary: dict[str, Any]) -> str:
    metric, counts = summary["metric"], summary["trials"]
    head = (f"study {summary['study']}: {metric} ({summary['direction']}); "
            f"{counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['fail']} failed, {counts['running']} running")
    best = summary["best"]
    if best is None:
        return head + "\nno completed trial yet"
    config = RegConfig(**best["config"])
    lines = [head,
             f"best: trial #{best['trial']}  {metric}={best['value']:.4f}  {config.describe()}"
             f"  (epoch {best['best_epoch']})",
             f"in Keras: {keras_snippet(config)}",
             "",
             f"{'rank':>4}  {'trial':>5}  {metric:>13}  {'regularizer':<11}  {'l1':>8}  "
             f"{'l2':>8}  {'dropout':>7}  {'epoch':>5}"]
    for rank, row in enumerate(summary["top"], start=1):
        c = row["config"]
        lines.append(f"{rank:>4}  {row['trial']:>5}  {row['value']:>13.4f}  "
                     f"{c['regularizer']:<11}  {_strength(c['l1']):>8}  "
                     f"{_strength(c['l2']):>8}  {c['dropout']:>7.3f}  {row['best_epoch']!s:>5}")
    return "\n".join(lines)


def _strength(value: float) -> str:
    return f"{value:.2e}" if value else "-"
