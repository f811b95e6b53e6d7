"""regsearch: search Keras regularization (type, strength, dropout) with Optuna.

The public API, resolved lazily so that `regsearch validate` never imports TensorFlow::

    result = regsearch.search("studies/digits-quick.yaml", trials=30)
    print(result.best_config, result.best["value"])
    later = regsearch.load("digits-quick", storage="sqlite:///runs/regsearch.db")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "search": "regsearch.api",
    "load": "regsearch.api",
    "StudyResult": "regsearch.api",
    "export": "regsearch.api",
    "report": "regsearch.api",
    "load_spec": "regsearch.study_file",
    "parse_spec": "regsearch.study_file",
    "StudySpec": "regsearch.spec",
    "load_dataset": "regsearch.data",
    "Dataset": "regsearch.data",
    "RegConfig": "regsearch.space",
    "build_model": "regsearch.model",
    "open_run": "regsearch.opening",
    "run_study": "regsearch.driver",
    "make_trainer": "regsearch.trainers",
    "summarize": "regsearch.results",
    "RegsearchError": "regsearch.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name == "__version__":  # pyproject.toml is its one home
        from importlib.metadata import version

        return version("regsearch")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'regsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
