"""What the command line shows: libraries' routine notices left out, warnings as one line.

Importing regsearch changes no process-wide setting; the CLI calls `quiet_libraries` once,
and a notebook user of `regsearch.search` keeps their own logging.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

#: Loggers whose INFO lines (a line per trial or per migration) would drown the progress
#: display.
NOISY_LOGGERS = ("optuna", "mlflow", "alembic")


def quiet_libraries() -> None:
    """Optuna's, MLflow's and Alembic's loggers at WARNING, in this process and (MLflow
    sets its level from the environment whenever it is imported) in its children."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _Stderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (tests and tools swap it),
    above the progress bar if one is drawn."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record))
        except (OSError, ValueError):  # a closed or broken stderr, as logging allows
            self.handleError(record)


def say(line: str) -> None:
    """A line on stderr that a progress bar drawn there (tqdm's) does not swallow: the bar
    is cleared, the line written, the bar drawn again below it."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def show_warnings() -> None:
    """What the package logs as a warning reaches the terminal as one line of its own."""
    logger = logging.getLogger("regsearch")
    if not any(isinstance(handler, _Stderr) for handler in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("regsearch: warning: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
