"""Ctrl-C and SIGTERM that land where it is safe: between batches and between trials.

A KeyboardInterrupt raised inside TensorFlow's tracing or a weakref callback is swallowed
or turned into an unrelated error; so the first signal only sets a flag that trainers and
the driver check at safe points. A second one raises at once.

SIGTERM (what `docker stop` and the launcher send) raises `Stopped`, a KeyboardInterrupt,
so every path that cleans up after Ctrl-C cleans up after it too; the driver also re-queues
the trials a stopped worker was running.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any
from collections.abc import Iterator


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM)."""


_requested: dict[str, type[KeyboardInterrupt]] = {}


def check() -> None:
    """Raise here if Ctrl-C was pressed (KeyboardInterrupt) or SIGTERM came (Stopped)."""
    if _requested:
        raise _requested["kind"]


def request(kind: type[KeyboardInterrupt] = KeyboardInterrupt) -> None:
    """What the signal handler does: the next `check()` raises `kind`."""
    _requested.setdefault("kind", kind)


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are deferred to the next `check()`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        kind = Stopped if signum == signal.SIGTERM else KeyboardInterrupt
        if _requested:
            raise kind
        request(kind)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _requested.clear()
