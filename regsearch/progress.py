"""Progress for long searches: a bar on a terminal, one line per trial in a log.

The bar moves with every epoch (a running trial counts as the share of its epochs done),
counts only trials that spend budget (not ones a Ctrl-C or a dead worker cut off), shows how
trials ended, and names the best as the final summary ranks it: over every trial of the
study, this process's and earlier or other processes' alike.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from optuna.trial import TrialState

from regsearch.protocols import Listener
from regsearch.opening import StudyRun
from regsearch.space import RegConfig
from regsearch.objective import ranks_above
from regsearch.spec import UNLIMITED, trials_of
from regsearch.states import KillReason, State
from regsearch.trainers.base import EpochMetrics, TrialOutcome

Rank = tuple[float, float | None]  # (objective, validation loss): `regsearch.objective`


class Progress(Listener):
    """A `protocols.Listener` that shows trials done, how they ended, the best so far and
    time left."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar = None
        self.best: tuple[float, int] | None = None  # (value, trial number)
        self._best_rank: Rank | None = None
        self.direction = "maximize"
        self.metric = "value"
        self.started = time.monotonic()
        self.timeout: float | None = None
        self.epochs = 1  # the most a trial trains
        self.done = 0.0  # trials that spent budget, this process's and before
        self.running: dict[int, int] = {}  # trial -> its epochs so far
        self.ended = {State.COMPLETE: 0, State.PRUNED: 0, State.FAILED: 0}

    def study_opened(self, run: StudyRun) -> None:
        self.metric, self.timeout = run.objective.metric, run.timeout
        self.direction = run.objective.direction
        self.epochs = max(1, run.spec.train.epochs)
        self.done = run.done
        for trial in run.study.get_trials(deepcopy=False):
            if trial.value is not None and trial.state == TrialState.COMPLETE:
                self._consider(trial.number, (trial.value, trial.user_attrs.get("val_loss")))
        search = run.spec.search
        engine = (f"; KerasTuner's {search.sampler} oracle proposes them"
                  if search.engine == "keras_tuner" else "")
        self._say(f"study {run.spec.name}: {trials_of(run.done, run.budget)} already done"
                  f"{engine}")
        self._say(f"  data: {run.data.description}")
        if self.stream.isatty():
            from tqdm import tqdm

            total = None if run.budget >= UNLIMITED else run.budget
            self.bar = tqdm(total=total, initial=min(run.done, run.budget), unit="trial",
                            file=self.stream, dynamic_ncols=True, postfix=self._postfix(),
                            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}"
                                       "{postfix}]")
            self._refresh()

    def trials_started(self, started: list[tuple[int, RegConfig]]) -> None:
        for number, _ in started:
            self.running[number] = 0

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None:
        self.running[number] = metrics.epoch
        if self.bar is not None:
            self._refresh()

    def trials_ended(self, ended: list[tuple[int, RegConfig, TrialOutcome]]) -> None:
        for number, config, outcome in sorted(ended, key=lambda item: item[0]):
            self._trial_ended(number, config, outcome)
        if self.bar is not None:
            self._refresh()

    def trials_killed(self, numbers: list[int]) -> None:
        for number in numbers:
            self.running.pop(number, None)

    def _trial_ended(self, number: int, config: RegConfig, outcome: TrialOutcome) -> None:
        self.running.pop(number, None)
        if KillReason.of(outcome.reason) is not None:
            return  # cut off, not finished: it spent no budget and is not a result
        self.done += 1
        self.ended[State(outcome.state)] += 1
        if outcome.state == State.COMPLETE and outcome.value is not None:
            self._consider(number, (outcome.value, outcome.summary()["val_loss"]))
        if self.bar is None:
            self._say(f"trial {number} {_how(outcome)}: {_score(self.metric, outcome)}"
                      f"{config.describe()} [{outcome.epochs_run} epochs, "
                      f"{_duration(outcome.seconds)}]; {self._best_text()}{self._time_left()}")

    def _consider(self, number: int, rank: Rank) -> None:
        if ranks_above(self.direction, rank, self._best_rank):
            self.best, self._best_rank = (rank[0], number), rank

    def _best_text(self) -> str:
        return (f"search best {self.metric}={self.best[0]:.4f} (#{self.best[1]})" if self.best
                else "no complete trial yet")

    def _refresh(self) -> None:
        """The bar at the trials done plus the running ones' share of their epochs."""
        assert self.bar is not None
        share = sum(min(e, self.epochs) / self.epochs for e in self.running.values())
        self.bar.n = round(self.done + share, 2)
        self.bar.set_postfix_str(self._postfix(), refresh=False)
        self.bar.refresh()

    def _postfix(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in self.ended.items())
        return f"{counts}; {self._best_text()}{self._time_left()}"

    def close(self) -> None:
        if self.bar is not None:
            self.running.clear()  # trials cut off now (Ctrl-C) are not progress
            self._refresh()
            self.bar.close()

    def _time_left(self) -> str:
        if not self.timeout:
            return ""
        left = max(0.0, self.timeout - (time.monotonic() - self.started))
        return f", {left:.0f}s of timeout left"

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _how(outcome: TrialOutcome) -> str:
    """How a trial ended, its reason once: "pruned at epoch 5", "complete (early stopping
    at epoch 9)", "failed (loss is NaN)"."""
    reason = outcome.reason or ""
    if reason.startswith(outcome.state):
        return reason
    return f"{outcome.state} ({reason})" if reason else str(outcome.state)


def _score(metric: str, outcome: TrialOutcome) -> str:
    return f"{metric}={outcome.value:.4f} " if outcome.value is not None else ""


def _duration(seconds: float) -> str:
    """A trial's training time: its own, or its share of a pack's."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
