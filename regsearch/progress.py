"""Progress for long searches: a bar on a terminal, one line per trial in a log."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from regsearch.protocols import Listener
from regsearch.opening import StudyRun
from regsearch.space import RegConfig
from regsearch.objective import ranks_above
from regsearch.spec import UNLIMITED, trials_of
from regsearch.states import State
from regsearch.trainers.base import EpochMetrics, TrialOutcome


class Progress(Listener):
    """A `protocols.Listener` that shows trials done, best so far and time left."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.bar = None
        self.best: tuple[float, int] | None = None  # (value, trial number)
        self._best_rank: tuple[float, float | None] | None = None
        self.direction = "maximize"
        self.metric = "value"
        self.started = time.monotonic()
        self.timeout: float | None = None

    def study_opened(self, run: StudyRun) -> None:
        self.metric, self.timeout = run.objective.metric, run.timeout
        self.direction = run.objective.direction
        done = run.done
        self._say(f"study {run.spec.name}: {run.data.description}; "
                  f"{trials_of(done, run.budget)} already done")
        if self.stream.isatty():
            from tqdm import tqdm

            total = None if run.budget >= UNLIMITED else run.budget
            self.bar = tqdm(total=total, initial=min(done, run.budget), unit="trial",
                            file=self.stream, dynamic_ncols=True)

    def trials_started(self, started: list[tuple[int, RegConfig]]) -> None:
        pass

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None:
        pass

    def trials_ended(self, ended: list[tuple[int, RegConfig, TrialOutcome]]) -> None:
        for number, config, outcome in ended:
            self._trial_ended(number, config, outcome)

    def _trial_ended(self, number: int, config: RegConfig, outcome: TrialOutcome) -> None:
        if outcome.state == State.COMPLETE and outcome.value is not None:
            loss = outcome.summary()["val_loss"]
            if ranks_above(self.direction, (outcome.value, loss), self._best_rank):
                self.best, self._best_rank = (outcome.value, number), (outcome.value, loss)
        best = f"best {self.metric}={self.best[0]:.4f} (#{self.best[1]})" if self.best else ""
        if self.bar is not None:
            self.bar.set_postfix_str(best + self._time_left(), refresh=False)
            self.bar.update(1)
            return
        value = f"{self.metric}={outcome.value:.4f}" if outcome.value is not None else ""
        why = f" ({outcome.reason})" if outcome.reason else ""
        self._say(f"trial {number} {outcome.state}{why}: {value} {config.describe()} "
                  f"[{outcome.epochs_run} epochs, {outcome.seconds:.1f}s]; {best}"
                  f"{self._time_left()}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def _time_left(self) -> str:
        if not self.timeout:
            return ""
        left = max(0.0, self.timeout - (time.monotonic() - self.started))
        return f", {left:.0f}s of timeout left"

    def _say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
