"""What the command line shows: libraries' routine notices left out, warnings as one line.

Importing regsearch changes no process-wide setting; the CLI calls `quiet_libraries` once,
and a notebook user of `regsearch.search` keeps their own logging.
"""

from __future__ import annotations

import logging
import os
import sys

#: Loggers whose INFO lines (a line per trial or per migration) would drown the progress
#: display.
NOISY_LOGGERS = ("optuna", "mlflow", "alembic")


def quiet_libraries() -> None:
    """Optuna's, MLflow's and Alembic's loggers at WARNING, in this process and (MLflow
    sets its level from the environment whenever it is imported) in its children."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def show_warnings() -> None:
    """What the package logs as a warning reaches the terminal as one line of its own."""
    logger = logging.getLogger("regsearch")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("regsearch: warning: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
