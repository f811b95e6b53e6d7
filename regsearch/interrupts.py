"""Ctrl-C that lands where it is safe: between batches and between trials.

A KeyboardInterrupt raised inside TensorFlow's tracing or a weakref callback is swallowed
or turned into an unrelated error; so the first Ctrl-C only sets a flag that trainers and
the driver check at safe points. A second Ctrl-C raises at once.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_requested = threading.Event()


def check() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C was pressed."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def deferred_sigint() -> Iterator[None]:
    """Within the block, Ctrl-C is deferred to the next `check()`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
