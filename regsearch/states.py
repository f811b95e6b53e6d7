"""A trial's state as regsearch records it, and why a trial that never finished was killed.

One vocabulary for the trainers, the ledger, MLflow and the display. The values are the
strings the ledger stores, so a `State` compares equal to what a database returns.
"""

from __future__ import annotations

from enum import StrEnum

from optuna.trial import TrialState


class State(StrEnum):
    PLANNED = "planned"  # a confirmation run not trained yet
    RUNNING = "running"
    COMPLETE = "complete"
    PRUNED = "pruned"
    FAILED = "failed"


#: A finished trial's state as Optuna records it, and back.
OPTUNA_STATE = {State.COMPLETE: TrialState.COMPLETE, State.PRUNED: TrialState.PRUNED,
                State.FAILED: TrialState.FAIL}
FROM_OPTUNA = {optuna_state: state for state, optuna_state in OPTUNA_STATE.items()}


class KillReason(StrEnum):
    """Why a trial ended without finishing: its process was stopped or lost, which is
    not a failure of the configuration (MLflow shows such runs as KILLED)."""

    INTERRUPTED = "interrupted by the user"
    STOPPED = "its worker was stopped (SIGTERM); re-queued"
    ABANDONED = "its process ended while the trial was running"
    DIED = "its worker stopped sending heartbeats (killed or lost)"

    @classmethod
    def of(cls, reason: str | None) -> KillReason | None:
        """The kill reason a recorded failure reason begins with (a note may follow), or
        None for a trial that failed by itself."""
        return next((kill for kill in cls if (reason or "").startswith(kill.value)), None)
