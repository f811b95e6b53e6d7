"""Shared fixtures: small, fast study specs and storage URLs for every SQL backend."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Compiled XLA programs go to a folder of this test session (inherited by the processes tests
# start), not the user's ~/.cache; within the session, packed tests share compiles as users do.
if "REGSEARCH_COMPILE_CACHE" not in os.environ:
    os.environ["REGSEARCH_COMPILE_CACHE"] = tempfile.mkdtemp(prefix="regsearch-xla-")
    atexit.register(shutil.rmtree, os.environ["REGSEARCH_COMPILE_CACHE"], ignore_errors=True)

from regsearch.spec import StudySpec
from regsearch.study_file import parse_spec


def tiny_study(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A digits study that trains in well under a second per trial."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {"builtin": "digits"},
        "model": {"hidden_units": [16]},
        "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.01},
        "search": {"n_trials": 4, "pruner": "none"},
        "storage": f"sqlite:///{tmp_path / 'study.db'}",
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "confirm": None,  # tests of confirmation turn it on
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder of this test alone (compiled programs, empty databases), made on use."""
    from regsearch import compile_cache

    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def regsearch_warnings() -> Iterator[list[str]]:
    """The warnings regsearch logs during the test (through `logging.getLogger("regsearch")`,
    from any thread), in order."""
    import logging

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    seen: list[str] = []
    handler = Collect(logging.WARNING)
    logger = logging.getLogger("regsearch")
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def make_spec(tmp_path: Path) -> Callable[..., StudySpec]:
    """`make_spec(train__epochs=5, space__regularizers=["l2"])` -> a validated spec."""
    def make(**overrides: Any) -> StudySpec:
        return parse_spec(tiny_study(tmp_path, **overrides), source="tiny.yaml", base=tmp_path)
    return make


@pytest.fixture
def fresh_db() -> Iterator[Any]:
    """`fresh_db("postgresql" | "mysql")` -> the URL of an empty database made on that
    server for this test (skipped when its URL variable is unset), dropped afterwards."""
    from servers import FreshDatabases

    made = FreshDatabases()
    try:
        yield made
    finally:
        made.drop()
