"""MLflow's writes in a child process, off the training process's interpreter.

MLflow's client and its SQL tracking store are Python: importing them, creating a new
store's tables, and starting and ending each trial's run all take interpreter time. On
the recorder's thread that time is taken from training (one interpreter lock) and the
import delays the first pack; in a child process it runs beside training on another core.

`WriterProcess` is a stand-in for `MlflowWriter`: each method call is one request to the
child and waits for its reply (on the recorder's thread, never the training loop). A
failure in the child comes back as `WriterFailed` with MLflow's one-line problem; a child
that is gone (killed, crashed, failed to start) fails every later call the same way.

    python -m regsearch.recorders.mlflow_process TRACKING_URI   # the child; requests on stdin
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from typing import Any, BinaryIO
from collections.abc import Callable

from regsearch import faults
from regsearch.storage import mask_url, tune_sqlite


class WriterFailed(Exception):
    """An MLflow call that failed in the writer process; `problem` is safe to print."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def problem_line(exc: BaseException) -> str:
    """One line about an MLflow failure, safe to print (its URLs carry passwords)."""
    if isinstance(exc, WriterFailed):
        return exc.problem
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return mask_url(f"{type(exc).__name__}: {text}")


class WriterProcess:
    """`MlflowWriter`'s methods, run by a child process started now (its import overlaps
    whatever the parent does next). Calls are not thread-safe: one thread makes them."""

    def __init__(self, tracking_uri: str) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, tracking_uri], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        self.process, self.requests, self.replies = process, process.stdin, process.stdout

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("_"):
            raise AttributeError(method)
        return lambda *args, **kwargs: self._call(method, args, kwargs)

    def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        try:
            pickle.dump((method, args, kwargs), self.requests)
            self.requests.flush()
            ok, value = pickle.load(self.replies)
        except (EOFError, OSError, pickle.UnpicklingError):
            raise WriterFailed(f"the MLflow writer process ended (exit code "
                               f"{self.process.poll()})") from None
        if not ok:
            raise WriterFailed(value)
        return value

    def close(self, timeout: float = 10.0) -> None:
        """End the child once it has answered what was asked; kill it after `timeout`."""
        try:
            self.requests.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def abandon(self) -> None:
        """Stop sending requests without waiting: the child ends once it has opened the
        store (never killed half-way through creating it)."""
        try:
            self.requests.close()
        except OSError:
            pass

    def kill(self) -> None:
        """Stop the child now; a call waiting on it fails with `WriterFailed`."""
        self.process.kill()
        self.process.wait()


def serve(tracking_uri: str, requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer `(method, args, kwargs)` requests with `(ok, value or problem)` until EOF.

    MLflow is imported and its store opened (a new SQLite store creates its tables)
    before the first request: the parent is then still building its model and tracing its
    first epoch on one core, so this runs on the other instead of beside the training.
    A store that fails here is tried again, and reported, at the first request."""
    writer = _opened(tracking_uri)
    while True:
        try:
            method, args, kwargs = pickle.load(requests)
        except (EOFError, pickle.UnpicklingError):  # closed, or cut off by the parent's death
            return
        if method == "finish_trials":  # the worker and its writer die with runs unended
            faults.point("mlflow", with_parent=True)
        try:
            if writer is None:
                writer = _new_writer(tracking_uri)
            reply = (True, getattr(writer, method)(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every failure goes back as one line
            reply = (False, problem_line(exc))
        try:
            pickle.dump(reply, replies)
            replies.flush()
        except (BrokenPipeError, ConnectionResetError):
            return  # the parent is gone (killed): nobody is left to answer


def _new_writer(tracking_uri: str) -> Any:
    from regsearch.recorders.mlflow import MlflowWriter  # MLflow's import: seconds

    return MlflowWriter(tracking_uri)


def _opened(tracking_uri: str) -> Any:
    """An `MlflowWriter` whose store is open, or None if that failed (for now)."""
    try:
        writer = _new_writer(tracking_uri)
        writer.client.search_experiments(max_results=1)  # opens (and creates) the store
        return writer
    except Exception:  # noqa: BLE001 - the first request meets it again, and reports it
        return None


def main() -> None:
    # Ctrl-C reaches the whole process group; the parent decides when writing stops (it
    # drains what is queued, then closes stdin), so the child ignores it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import sqlalchemy

    from regsearch.presentation import quiet_libraries, show_warnings

    quiet_libraries()
    show_warnings()  # the writer's own warnings (a store refusing batches), as the CLI shows them

    tune_sqlite(sqlalchemy.Engine)  # a local SQLite store (MLflow's own engine)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not reach replies
    serve(sys.argv[1], sys.stdin.buffer, replies)
    # Every request was answered after its write, so nothing is left to flush; MLflow's
    # exit handlers and the interpreter's teardown would only hold up the parent's close.
    try:
        replies.close()
    except OSError:
        pass  # the parent died with a reply unread
    os._exit(0)


if __name__ == "__main__":
    main()
