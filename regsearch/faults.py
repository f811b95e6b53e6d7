"""Named points where a test can have the process killed, to hit windows timing cannot.

`REGSEARCH_FAULT=POINT[:N][,POINT[:N]...]` SIGKILLs the process the N-th time (default:
the first) it reaches POINT, as the kernel's OOM killer or a preempted machine would. With
`REGSEARCH_FAULT_TOKENS=DIR`, processes sharing DIR take turns: only the first to reach a
point's N-th pass dies there (it leaves DIR/POINT behind), so one launcher run can lose one
worker at a point while the others go on. Unset, a point costs one dictionary lookup.

The points: `ask` (a batch of trials created, their start not yet in the ledger), `epoch`
(between epochs), `tell` (told to Optuna, not yet to the ledger), `reap` (a dead worker's
trials failed, not yet re-queued), `mlflow` (in the MLflow writer, a batch of trial ends
about to be written: the worker and its writer die together).
"""

from __future__ import annotations

import os
import signal
from functools import cache
from pathlib import Path

ENV, TOKENS_ENV = "REGSEARCH_FAULT", "REGSEARCH_FAULT_TOKENS"
POINTS = ("ask", "epoch", "tell", "reap", "mlflow")
_passes: dict[str, int] = {}


@cache
def _armed() -> dict[str, int]:
    """{point: the pass that kills}, from the environment."""
    armed = {}
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        name, _, nth = item.strip().partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown point {name!r}; the points are {POINTS}")
        armed[name] = int(nth or 1)
    return armed


def point(name: str, *, with_parent: bool = False) -> None:
    """Die here if armed for this pass; `with_parent` kills the parent process first."""
    armed = _armed()
    if name not in armed:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] != armed[name] or not _take_token(name):
        return
    if with_parent:
        os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def _take_token(name: str) -> bool:
    folder = os.environ.get(TOKENS_ENV)
    if not folder:
        return True
    try:
        os.close(os.open(Path(folder) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
