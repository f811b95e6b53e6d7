"""The best configuration and a leaderboard, read back from the study's storage."""

from __future__ import annotations

import json
import math
from typing import Any
from collections.abc import Sequence

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from regsearch.opening import DEFAULT_ATTR, METRIC_ATTR, SPEC_ATTR, TASK_ATTR
from regsearch.model import OUTPUT_ACTIVATION, regularizer_source
from regsearch import confirm
from regsearch.errors import RegsearchError
from regsearch.recorders.confirmations import ConfirmationRecord, read_records
from regsearch.objective import BOUNDED_METRICS, difference_text, ranked
from regsearch.space import RegConfig, from_params
from regsearch.spec import StudySpec
from regsearch.trainers.base import DIVERGED
from regsearch.storage import mask_url, open_storage

def load_study(name: str, storage_url: str,
               storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """An existing study by name; a missing one is an error listing what is there."""
    storage = storage or open_storage(storage_url, must_exist=True)
    names = sorted(optuna.study.get_all_study_names(storage))
    if name not in names:
        there = ", ".join(names[:10]) if names else "none"
        raise RegsearchError(f"no study named {name!r} in {mask_url(storage_url)} "
                             f"(studies there: {there}); pass --storage if it lives elsewhere")
    return optuna.load_study(study_name=name, storage=storage)


def summarize(study: optuna.Study, top: int = 5,
              confirmations: Sequence[ConfirmationRecord] = ()) -> dict[str, Any]:
    """Plain data (JSON/YAML-ready) about a study: counts, the whole best configuration,
    the default it is measured against, warnings, top-k; with a complete confirmation,
    its results, and its winner as the best."""
    trials = study.get_trials(deepcopy=False)
    direction = study.direction.name.lower()
    metric = study.user_attrs.get(METRIC_ATTR, "value")
    ranked = _ranked(trials, direction)
    counts = {state.name.lower(): sum(1 for t in trials if t.state == state)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                            TrialState.RUNNING)}
    default = next((t for t in ranked if t.user_attrs.get(DEFAULT_ATTR)), None)
    best = _describe(ranked[0]) if ranked else None
    gain = (_gain(direction, _value(ranked[0]), _value(default))
            if ranked and default is not None else None)
    summary = {
        "study": study.study_name,
        "metric": metric,
        "direction": direction,
        "trials": counts,
        "model": _model(study),
        "best": best,
        "default": _describe(default) if default is not None else None,
        "gain_over_default": gain,
        "warnings": _warnings(ranked[0], metric, direction, _model(study)) if ranked else [],
        "top": [_describe(t) for t in ranked[:top]],
        "confirmation": None,
    }
    confirmed = confirm.results(confirmations, confirm.stored_plan(study), direction)
    if confirmed:
        _add_confirmation(summary, confirmed, {t.number: t for t in ranked})
    return summary


def stored_spec(name: str, storage_url: str) -> StudySpec:
    """A study's spec as its ledger keeps it (passwords masked: an MLflow URI that held one
    is off unless given again)."""
    from dataclasses import replace

    from regsearch.recorders.ledger import Ledger
    from regsearch.study_file import parse_spec
    from regsearch.storage import require_existing

    require_existing(storage_url)
    ledger = Ledger(storage_url)
    try:
        found = ledger.study_info(name)
        there = ", ".join(ledger.study_names()) or "none"
    finally:
        ledger.engine.dispose()
    if found is None:
        raise RegsearchError(f"no study named {name!r} in {mask_url(storage_url)} "
                             f"(studies there: {there}); pass --storage if it lives elsewhere")
    raw = {**found["spec"], "storage": storage_url}
    spec = parse_spec(raw, source=f"the stored spec of {name}")
    if "***" in spec.mlflow.tracking_uri:
        spec = replace(spec, mlflow=replace(spec.mlflow, enabled=False))
    return spec


def study_summary(study: optuna.Study, storage_url: str, top: int = 5) -> dict[str, Any]:
    """`summarize` with the study's confirmation runs from its ledger (read only)."""
    return summarize(study, top, read_records(storage_url, study.study_name))


def _add_confirmation(summary: dict[str, Any], confirmed: list[confirm.Confirmed],
                      trials: dict[int, FrozenTrial]) -> None:
    """The confirmed winner becomes the best; the single-seed best is kept beside it."""
    metric, direction = summary["metric"], summary["direction"]
    winner = confirmed[0]
    source = trials.get(winner.trial) if winner.trial is not None else None
    search_best = summary["best"]
    summary["search_best"] = search_best
    summary["best"] = {
        "trial": winner.trial, "value": winner.score.mean, "config": winner.config.as_dict(),
        "best_epoch": winner.epochs,
        "val_loss": winner.val_loss.mean, "penalty": None,
        "test_metric": winner.test.mean if winner.test else None,
        "source": "confirmation", "confirmed": winner.as_dict(),
        "single_seed_value": source.value if source else None,
    }
    summary["confirmation"] = {
        "seeds": winner.score.n, "verdict": confirm.verdict(confirmed, metric),
        "configurations": [c.as_dict() for c in confirmed]}
    warnings = summary["warnings"]
    if source is not None and not winner.score.includes(_value(source)) and \
            _gain(direction, _value(source), winner.score.high if direction == "maximize"
                  else winner.score.low) > 0:
        warnings.append(f"trial #{winner.trial}'s search score {source.value:.4f} lies beyond "
                        "its confirmed 95 % interval "
                        f"[{winner.score.low:.4f}, {winner.score.high:.4f}]: a lucky seed")
    if search_best is not None and winner.trial != search_best["trial"]:
        name = "the default" if winner.trial is None else f"trial #{winner.trial}"
        warnings.append(f"the confirmed winner ({name}) is not the search's single-seed #1 "
                        f"(trial #{search_best['trial']})")


def _value(trial: FrozenTrial) -> float:
    """A complete trial's objective (the only trials ranked)."""
    assert trial.value is not None
    return trial.value


def _gain(direction: str, value: float, default: float) -> float:
    """How much better than the default (positive: better, in the metric's units)."""
    return value - default if direction == "maximize" else default - value


def _model(study: optuna.Study) -> dict[str, Any]:
    """What the study trains beside the regularization: the rest of a user's model code."""
    identity = study.user_attrs.get(SPEC_ATTR, {})
    model, train = identity.get("model", {}), identity.get("train", {})
    task = study.user_attrs.get(TASK_ATTR) or model.get("task")
    return {"hidden_units": list(model.get("hidden_units", [])),
            "activation": model.get("activation"), "task": task,
            "output_activation": OUTPUT_ACTIVATION.get(task) if task else None,
            "optimizer": train.get("optimizer"), "learning_rate": train.get("learning_rate"),
            "batch_size": train.get("batch_size"), "epochs": train.get("epochs")}


def _warnings(best: FrozenTrial, metric: str, direction: str,
              model: dict[str, Any]) -> list[str]:
    """What a careful user checks before trusting a single-seed best."""
    out = []
    epoch, epochs = best.user_attrs.get("best_epoch"), model.get("epochs")
    if epoch is not None and epoch == epochs:
        out.append(f"the best epoch is the last one ({epoch} of {epochs}): more epochs may "
                   "help; raise train.epochs")
    scores = [best.intermediate_values[k] for k in sorted(best.intermediate_values)]
    if epoch is not None and len(scores) > epoch:
        peak, last = scores[epoch - 1], scores[-1]
        drop = _gain(direction, peak, last)
        bounded = metric in BOUNDED_METRICS
        if (bounded and drop >= 0.1) or (not bounded and drop >= 0.5 * abs(peak)):
            out.append(f"{metric} fell from {peak:.4f} (epoch {epoch}) to {last:.4f} (epoch "
                       f"{len(scores)}): training is unstable after its best epoch")
    return out


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


def _ranked(trials: list[FrozenTrial], direction: str) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
            and math.isfinite(t.value)]
    return ranked(direction, done,
                  lambda t: (t.value, t.user_attrs.get("val_loss"), t.number))


def _describe(trial: FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        "trial": trial.number,
        "value": trial.value,
        "config": from_params(trial.params).as_dict(),
        "best_epoch": attrs.get("best_epoch"),
        "val_loss": attrs.get("val_loss"),
        "penalty": attrs.get("penalty"),
        "test_metric": attrs.get("test_metric"),
    }


def keras_snippet(config: RegConfig, model: dict[str, Any] | None = None) -> str:
    """The lines a user pastes into their own model: one hidden layer's Dense and Dropout."""
    model = model or {}
    units = sorted(set(model.get("hidden_units") or []))
    size = str(units[0]) if len(units) == 1 else "units"
    activation = f'"{model["activation"]}"' if model.get("activation") else "..."
    dense = (f"keras.layers.Dense({size}, activation={activation}, "
             f"kernel_regularizer={regularizer_source(config)})")
    return dense + (f", keras.layers.Dropout({config.dropout:.3g})" if config.dropout else "")


def _model_line(model: dict[str, Any], best_epoch: int | None) -> str:
    units = "-".join(map(str, model.get("hidden_units") or [])) or "?"
    return (f"model: Dense {units} {model.get('activation')}, "
            f"{model.get('output_activation') or 'linear'} output; "
            f"{model.get('optimizer')} learning_rate={model.get('learning_rate')}, batch "
            f"{model.get('batch_size')}, {best_epoch} epochs (the best of "
            f"{model.get('epochs')})")


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
    model = summary.get("model") or {}
    confirmation = summary.get("confirmation")
    if confirmation:
        score = best["confirmed"]["score"]
        name = "the default" if best["trial"] is None else f"trial #{best['trial']}"
        lines = [head, f"best, confirmed over {score['n']} seeds: {name}  {metric}="
                       f"{score['mean']:.4f} ± {score['sd']:.4f} (95 % interval "
                       f"{score['low']:.4f} to {score['high']:.4f})  {config.describe()}",
                 f"verdict: {confirmation['verdict']}"]
    else:
        lines = [head, f"best: trial #{best['trial']}  {metric}={best['value']:.4f}  "
                       f"{config.describe()}  (epoch {best['best_epoch']})"]
    lines += [_model_line(model, best["best_epoch"]),
              f"in Keras: {keras_snippet(config, model)}"]
    default = summary.get("default")
    if confirmation:
        lines += ["", *_confirmation_table(confirmation, metric)]
    elif default is not None:
        lines.append(f"default (no regularizer, no dropout): trial #{default['trial']}  "
                     f"{metric}={default['value']:.4f}; the best is "
                     f"{difference_text(summary['gain_over_default'], metric)} better")
    lines += [f"warning: {text}" for text in summary.get("warnings", [])]
    tested = any(row.get("test_metric") is not None for row in summary["top"])
    lines += ["", f"{'rank':>4}  {'trial':>5}  {metric:>13}  {'val_loss':>8}  "
                  f"{'regularizer':<11}  {'l1':>8}  {'l2':>8}  {'dropout':>7}  {'epoch':>5}"
              + (f"  {'test ' + metric:>13}" if tested else "")]
    for rank, row in enumerate(summary["top"], start=1):
        c = row["config"]
        loss = f"{row['val_loss']:.4f}" if row.get("val_loss") is not None else "-"
        test = row.get("test_metric")
        lines.append(f"{rank:>4}  {row['trial']:>5}  {row['value']:>13.4f}  {loss:>8}  "
                     f"{c['regularizer']:<11}  {_strength(c['l1']):>8}  "
                     f"{_strength(c['l2']):>8}  {c['dropout']:>7.3f}  {row['best_epoch']!s:>5}"
                     + ((f"  {test:>13.4f}" if test is not None else f"  {'-':>13}")
                        if tested else ""))
    return "\n".join(lines)


def _confirmation_table(confirmation: dict[str, Any], metric: str) -> list[str]:
    rows = confirmation["configurations"]
    tested = any(row["test"] for row in rows)
    lines = [f"confirmation ({confirmation['seeds']} seeds each; gain: paired by seed, over "
             "the default):",
             f"{'rank':>4}  {'trial':>7}  {metric + ' mean':>13}  {'sd':>7}  "
             f"{'95 % interval':>17}  {'gain over default':>28}  {'configuration':<36}"
             + (f"  {'test ' + metric:>13}" if tested else "")]
    for rank, row in enumerate(rows, start=1):
        score, gain, test = row["score"], row["gain_over_default"], row["test"]
        trial = "default" if row["default"] else f"#{row['trial']}"
        gain_text = ("-" if gain is None else f"{difference_text(gain['mean'], metric)} "
                     f"[{difference_text(gain['low'], metric).split()[0]}, "
                     f"{difference_text(gain['high'], metric).split()[0]}]")
        lines.append(f"{rank:>4}  {trial:>7}  {score['mean']:>13.4f}  {score['sd']:>7.4f}  "
                     f"{score['low']:>8.4f}-{score['high']:<8.4f}  {gain_text:>28}  "
                     f"{RegConfig(**row['config']).describe():<36}"
                     + (f"  {test['mean']:>13.4f}" if tested and test else ""))
    return lines


def _strength(value: float) -> str:
    return f"{value:.2e}" if value else "-"
