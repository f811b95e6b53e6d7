"""The seams: what the driver asks of a trainer and an engine, and what it tells a listener.

A trainer turns a configuration into per-epoch metrics and an outcome. Every trainer
implements `Trainer` (one configuration at a time); one that trains many at once in slots
(the packed trainer) also implements `PackTrainer`, and the driver then keeps its slots
busy. A third trainer implements `Trainer` and nothing else.

An engine (Optuna's samplers, or KerasTuner's oracles) proposes the trials. A listener
(the ledger, MLflow, the progress display) is told what happens, in order, and must not
raise: recorders turn their failures into warnings. Subclass `Listener` to get a no-op for
each event you do not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from regsearch.space import RegConfig
    from regsearch.trainers.base import EpochMetrics, PruneCheck, TrialOutcome

Started = tuple[int, "RegConfig"]  # (trial number, config)
Ended = tuple[int, "RegConfig", "TrialOutcome"]


@runtime_checkable
class Trainer(Protocol):
    def train(self, config: RegConfig, *, seed: int, prune: PruneCheck) -> TrialOutcome:
        """Train `config` with `seed` to its end (epochs, early stop, `prune`, divergence)."""
        ...


@runtime_checkable
class PackTrainer(Trainer, Protocol):
    """Trains many configurations at once, one per slot; a finished slot is refilled."""

    def reseed(self, seed: int) -> None:
        """Start the shared batch order over from `seed` (confirmation runs)."""
        ...

    def free_slots(self) -> list[int]: ...

    def assign(self, config: RegConfig, *, seed: int, prune: PruneCheck) -> int:
        """Start `config` in a free slot; the slot."""
        ...

    def run_epoch(self) -> dict[int, TrialOutcome]:
        """One epoch of every busy slot; the outcomes of the slots that finished."""
        ...


class Engine(Protocol):
    """Proposes the study's trials and learns from them (`regsearch.engines`). The driver
    asks Optuna for each trial; an engine that proposes its own queues them first."""

    def queue(self, run: Any, wanted: int) -> int | None:
        """Under the study's lock, before up to `wanted` asks: queue what the engine
        proposes; how many trials may be asked now (None: it has nothing more, ever)."""
        ...

    def started(self, trial: Any) -> int | None:
        """A trial was asked (`optuna.Trial`); the epochs it trains, None for the study's."""
        ...

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> bool:
        """A trial's epoch, its objective penalty-free; whether the engine stops the trial."""
        ...

    def trials_ended(self, run: Any) -> None:
        """Trials were told to Optuna: the engine learns how they ended."""
        ...


class Listener(Protocol):
    """Told what happens, in order. Trials start and end in batches (a pack's slots fill
    together, and its trials often end in the same epoch), so a recorder can write a batch
    in one transaction."""

    def study_opened(self, run: Any) -> None:
        """Before any trial: `run` is the driver's `StudyRun`."""
        return None

    def trials_started(self, started: list[Started]) -> None: ...

    def epoch_ended(self, number: int, metrics: EpochMetrics) -> None: ...

    def trials_ended(self, ended: list[Ended]) -> None: ...

    def trials_killed(self, numbers: list[int]) -> None:
        """Trials of a process that died or was stopped were failed by this one."""
        return None

    def confirmations_ended(self, batch: list[tuple[Any, TrialOutcome]]) -> None:
        """Confirmation runs (`confirm.PlannedRun`, outcome) that finished."""
        return None

    def confirmed(self, winner: dict[str, Any], verdict: str) -> None:
        """The confirmation is complete: its winner and what it means."""
        return None

    def close(self) -> None:
        """The run is over (or interrupted): flush what is queued."""
        return None
