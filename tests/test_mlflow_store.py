"""A new local MLflow store starts as a copy of an empty, migrated one kept in the cache.

Every MLflow test that records into a new SQLite store goes through the copy as well (the
test session shares one cache); these tests check the copy itself, and that anything wrong
with it leaves the store to MLflow.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from importlib import metadata
from pathlib import Path

import pytest

from regsearch import compile_cache
from regsearch.recorders.mlflow import MlflowWriter
from regsearch.recorders.mlflow_store import seed_new_store

pytestmark = [pytest.mark.slow]


@pytest.fixture
def cache(cache_root: Path) -> Path:
    return cache_root / f"mlflow-{metadata.version('mlflow')}" / "empty-store.db"


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _experiments(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT name, artifact_location FROM experiments").fetchall()


def _usable(path: Path) -> None:
    """MLflow opens the store (its schema check passes) and a run's metric round-trips."""
    writer = MlflowWriter(_url(path))
    experiment = writer.experiment("study")
    run = writer.client.create_run(experiment)
    writer.client.log_metric(run.info.run_id, "value", 0.5)
    assert writer.client.get_run(run.info.run_id).data.metrics == {"value": 0.5}


def test_a_new_store_is_a_copy_of_the_cached_empty_store(cache: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    assert seed_new_store(_url(first))
    assert cache.is_file()
    assert _experiments(cache) == []  # MLflow adds its default experiment on the first open
    made = cache.stat().st_mtime_ns
    assert seed_new_store(_url(second))
    assert cache.stat().st_mtime_ns == made  # copied, not made again
    for store in (first, second):
        opened = int(time.time() * 1000)
        _usable(store)
        assert [name for name, _ in _experiments(store)] == ["Default", "study"]
        with closing(sqlite3.connect(store)) as db:  # made by this open, for this store
            (created,), = db.execute("SELECT creation_time FROM experiments WHERE name = "
                                     "'Default'").fetchall()
        assert created >= opened
    assert sorted(p.name for p in second.parent.iterdir() if "seed" in p.name) == []


def test_an_existing_store_is_never_replaced(cache: Path, tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    MlflowWriter(_url(store)).experiment("kept")
    before = store.read_bytes()
    assert not seed_new_store(_url(store))
    assert store.read_bytes() == before
    assert "kept" in dict(_experiments(store))


def test_a_damaged_cached_store_is_made_again(cache: Path, tmp_path: Path) -> None:
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"not a database")
    store = tmp_path / "mlflow.db"
    assert seed_new_store(_url(store))
    assert _experiments(cache) == []
    _usable(store)


@pytest.mark.parametrize("case", ["cache off", "cache unwritable", "not sqlite"])
def test_without_a_copy_mlflow_creates_the_store_itself(case: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    store = tmp_path / "mlflow.db"
    if case == "cache off":
        monkeypatch.setenv(compile_cache.ENV, "off")
    elif case == "cache unwritable":
        (tmp_path / "file").write_text("")
        monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "file" / "cache"))
    if case == "not sqlite":
        assert not seed_new_store("http://127.0.0.1:1")
        assert not seed_new_store("sqlite:///:memory:")
        return
    started = time.time()
    assert not seed_new_store(_url(store))
    assert not store.exists()
    _usable(store)
    assert store.stat().st_mtime >= started


def test_the_writer_process_seeds_its_stores(cache: Path, tmp_path: Path) -> None:
    """As the writer process runs it: every SQLite engine of that process in WAL mode."""
    seed = ("import sys, sqlalchemy\n"
            "from regsearch.storage import tune_sqlite\n"
            "from regsearch.recorders.mlflow_store import seed_new_store\n"
            "tune_sqlite(sqlalchemy.Engine)\n"
            "print(seed_new_store(sys.argv[1]))\n")
    for name in ("a", "b"):
        store = tmp_path / name / "mlflow.db"
        done = subprocess.run([sys.executable, "-c", seed, _url(store)], capture_output=True,
                              text=True, timeout=120, env=dict(os.environ))
        assert done.stdout.strip() == "True", done.stderr
        _usable(store)
    assert _experiments(cache) == []
