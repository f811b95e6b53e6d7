"""Confirmation: the top configurations and the default, trained again over fresh seeds.

A search's best is the luckiest of many one-seed scores. After it, the `top` distinct
configurations (ranked by `regsearch.objective`) and the unregularized default are trained
again with `seeds` fresh seeds each (new initialisation, shuffling and dropout noise; the
same splits), as packs. They are ranked by their mean (ties by the mean validation data
loss); each gets mean ± sd and a 95 % interval, and its gain over the default a paired
interval (the same seeds train every configuration). The winner becomes the study's
reported best. When the winner's gain over the default is not clearly above zero, that is
the answer: regularization did not measurably help on this data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterable, Sequence

from optuna.trial import FrozenTrial, TrialState

from regsearch import space
from regsearch.objective import difference_text, ranked
from regsearch.protocols import PackTrainer, Trainer
from regsearch.recorders.confirmations import (ConfirmationRecord, Confirmations,
                                               PlannedRun, config_key)
from regsearch.states import State
from regsearch.stats import Estimate, estimate, paired_gain
from regsearch.trainers.base import EpochMetrics, TrialOutcome

if TYPE_CHECKING:
    from regsearch.opening import StudyRun
    from regsearch.spec import ConfirmSpec

PLAN_ATTR = "regsearch_confirm_plan"  # study user attr: the configurations and seeds confirmed


def confirm_seed(study_seed: int, index: int) -> int:
    """The seed of a confirmation run: fixed by the study seed, apart from every trial's."""
    return (study_seed * 1_000_003 + (1 << 30) + index) % (2**31 - 1)


def plan(trials: Iterable[FrozenTrial], direction: str, settings: ConfirmSpec,
         study_seed: int) -> list[PlannedRun]:
    """The runs to make: the `top` distinct complete configurations and the default, each
    with every seed; the default once even when it is among the top."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                and math.isfinite(t.value)]
    chosen: dict[str, tuple[space.RegConfig, int | None]] = {}
    for trial in ranked(direction, complete,
                        lambda t: (t.value, t.user_attrs.get("val_loss"), t.number)):
        config = space.from_params(trial.params)
        chosen.setdefault(config_key(config), (config, trial.number))
        if len(chosen) == settings.top:
            break
    default_key = config_key(space.DEFAULT)
    if default_key not in chosen:
        default_trial = next((t.number for t in complete
                              if config_key(space.from_params(t.params)) == default_key), None)
        chosen[default_key] = (space.DEFAULT, default_trial)
    return [PlannedRun(config, index, confirm_seed(study_seed, index), trial,
                       key == default_key)
            for index in range(settings.seeds) for key, (config, trial) in chosen.items()]


def stored_plan(study: Any) -> dict[str, Any] | None:
    """{"keys": [...], "seeds": R} of the study's last confirmation, if any."""
    return study.user_attrs.get(PLAN_ATTR)


# --------------------------------------------------------------------------- running

Trained = Callable[[list[tuple[PlannedRun, TrialOutcome]]], None]


def train(runs: Sequence[PlannedRun], trainer: Trainer, ended: Trained) -> None:
    """Train the runs seed by seed (a pack's members share their batches and dropout noise,
    so a seed's configurations are compared on the same draws), calling `ended` per batch."""
    for index in sorted({run.seed_index for run in runs}):
        batch = [run for run in runs if run.seed_index == index]
        if isinstance(trainer, PackTrainer):
            _train_packed(batch, trainer, ended)
        else:
            for run in batch:
                ended([(run, trainer.train(run.config, seed=run.seed, prune=_never))])


def _train_packed(batch: list[PlannedRun], trainer: PackTrainer, ended: Trained) -> None:
    trainer.reseed(batch[0].seed)
    waiting, active = list(batch), dict[int, PlannedRun]()
    while waiting or active:
        for _slot in trainer.free_slots():
            if not waiting:
                break
            run = waiting.pop(0)
            active[trainer.assign(run.config, seed=run.seed, prune=_never)] = run
        finished = trainer.run_epoch()
        if finished:
            ended([(active.pop(slot), outcome) for slot, outcome in finished.items()])


def _never(_metrics: EpochMetrics) -> bool:
    return False


def confirm_study(run: StudyRun, trainer: Trainer, say: Callable[[str], None]) -> bool:
    """Confirm the study if no other process is doing it; whether this process did.

    What is confirmed is planned from the search as it stands now and stored with the
    study; runs that ended before (an interrupted confirmation, or a study that grew) are
    kept, so each configuration and seed is trained once."""
    settings = run.spec.confirm
    if settings is None:
        return False
    records = Confirmations(run.ledger)
    with records.lock(run.spec.name) as mine:
        if not mine:  # another process is confirming it
            return False
        runs = plan(run.study.get_trials(deepcopy=False), run.objective.direction, settings,
                    run.spec.seed)
        if not runs:
            return False
        run.study.set_user_attr(PLAN_ATTR, {"keys": sorted({r.key for r in runs}),
                                            "seeds": settings.seeds})
        records.plan(run.spec.name, runs)
        done = {(r.run.key, r.run.seed_index) for r in records.records(run.spec.name)
                if r.state != State.PLANNED}
        todo = [r for r in runs if (r.key, r.seed_index) not in done]
        if todo:
            configs = len({r.key for r in runs})
            plural = "s" if configs > 1 else ""
            say(f"confirming {configs} configuration{plural} (the search's top {settings.top} "
                f"and the default) with {settings.seeds} fresh seeds each: {len(todo)} runs"
                + (f", {len(done)} done before" if done else ""))

        def ended(batch: list[tuple[PlannedRun, TrialOutcome]]) -> None:
            records.ended(run.spec.name, batch)
            for recorder in run.recorders:
                recorder.confirmations_ended(batch)

        train(todo, trainer, ended)
        confirmed = results(records.records(run.spec.name), stored_plan(run.study),
                            run.objective.direction)
        if confirmed:
            sentence = verdict(confirmed, run.objective.metric)
            if todo:
                say(f"confirmed: {sentence}")
            for recorder in run.recorders:
                recorder.confirmed(confirmed[0].as_dict(), sentence)
    return True


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Confirmed:
    """One configuration's confirmation: its score and loss over seeds, its gain over the
    default (paired by seed), and its test score if the study holds out a test split."""

    config: space.RegConfig
    trial: int | None
    is_default: bool
    score: Estimate
    val_loss: Estimate
    test: Estimate | None
    gain: Estimate | None
    failed: int
    epochs: int | None  # the median best epoch over the seeds: how long to train it

    def as_dict(self) -> dict[str, Any]:
        def interval(e: Estimate | None) -> dict[str, float] | None:
            return None if e is None or e.n == 0 else {
                "mean": e.mean, "sd": e.sd, "low": e.low, "high": e.high, "n": e.n}
        return {"config": self.config.as_dict(), "trial": self.trial,
                "default": self.is_default, "score": interval(self.score),
                "val_loss": interval(self.val_loss), "test": interval(self.test),
                "gain_over_default": interval(self.gain), "failed": self.failed,
                "epochs": self.epochs}


def results(records: Sequence[ConfirmationRecord], stored: dict[str, Any] | None,
            direction: str) -> list[Confirmed]:
    """The stored plan's configurations, best first (by mean, ties by mean val_loss); empty
    until every planned run of it has ended."""
    if not stored:
        return []
    keys, seeds = set(stored["keys"]), stored["seeds"]
    mine = [r for r in records if r.run.key in keys and r.run.seed_index < seeds]
    if len(mine) < len(keys) * seeds or any(r.state == State.PLANNED for r in mine):
        return []
    by_key: dict[str, list[ConfirmationRecord]] = {}
    for record in mine:
        by_key.setdefault(record.run.key, []).append(record)
    default_key = config_key(space.DEFAULT)
    baseline = {r.run.seed_index: r.value for r in by_key.get(default_key, [])
                if r.value is not None}
    out = []
    for key, group in by_key.items():
        scored = {r.run.seed_index: r.value for r in group if r.value is not None}
        tests = [r.test_metric for r in group if r.test_metric is not None]
        first = group[0].run
        out.append(Confirmed(
            config=first.config, trial=first.trial, is_default=key == default_key,
            score=estimate(list(scored.values())),
            val_loss=estimate([r.val_loss for r in group if r.val_loss is not None]),
            test=estimate(tests) if tests else None,
            gain=None if key == default_key else paired_gain(direction, scored, baseline),
            failed=sum(r.state == State.FAILED for r in group),
            epochs=_median([r.best_epoch for r in group if r.best_epoch is not None])))
    scored_out = [c for c in out if c.score.n]
    return ranked(direction, scored_out, lambda c: (c.score.mean, c.val_loss.mean, 0)) + \
        [c for c in out if not c.score.n]


def _median(values: list[int]) -> int | None:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def verdict(confirmed: Sequence[Confirmed], metric: str) -> str:
    """The recommendation in one sentence."""
    if not confirmed:
        return "not confirmed yet"
    winner = confirmed[0]
    if winner.is_default:
        return ("regularization did not measurably help on this data: the default (no "
                "regularizer, no dropout) ranks first after confirmation")
    gain = winner.gain
    if gain is None or gain.n < 2 or gain.low <= 0:
        return ("regularization did not measurably help on this data: the best "
                f"configuration's gain over the default ({_interval(gain, metric)}) is within "
                "the seeds' noise, and the default is as good")
    return (f"{winner.config.describe()} beats the default by {_interval(gain, metric)} "
            f"over {gain.n} seeds")


def _interval(gain: Estimate | None, metric: str) -> str:
    if gain is None or gain.n < 2:
        return "unknown"
    return (f"{difference_text(gain.mean, metric)}, 95 % interval "
            f"[{difference_text(gain.low, metric)}, {difference_text(gain.high, metric)}]")
