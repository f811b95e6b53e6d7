"""A new SQLite study database starts as a copy of an empty one Optuna made (`sqlite_seed`).

The seeding itself (a damaged or unwritable cache, an existing file, two processes at once)
is shared with MLflow's stores and tested in `test_mlflow_store.py`; these tests check that
Optuna takes the copy as its own and that anything without one is left to Optuna, and that
a `~` in a SQLite URL names one file for every part that opens it (`expand_home`).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import optuna
import pytest

from regsearch import compile_cache
from regsearch.storage import expand_home, open_storage, sqlite_file


@pytest.fixture
def cache(cache_root: Path) -> Path:
    return cache_root / f"optuna-{optuna.__version__}" / "empty-study.db"


def _url(path: Path) -> str:
    return f"sqlite:///{path}"


def _studies(path: Path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [name for (name,) in db.execute("SELECT study_name FROM studies")]


def _run_and_reload(path: Path, name: str, trials: int = 3) -> int:
    """Trials in a study of the database at `path`, then its trial count as Optuna's own
    full open (its tables' and schema revision's checks) reads it back."""
    storage = open_storage(_url(path))
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True)
    study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=trials)
    storage.engine.dispose()
    checked = optuna.storages.RDBStorage(_url(path))
    try:
        return len(optuna.load_study(study_name=name, storage=checked).trials)
    finally:
        checked.engine.dispose()


def _mark(path: Path, value: int | None = None) -> int:
    """SQLite's user_version of the file (set first if `value`): neither library uses it."""
    with closing(sqlite3.connect(path)) as db:
        if value is not None:
            db.execute(f"PRAGMA user_version = {value}")
        return db.execute("PRAGMA user_version").fetchone()[0]


def test_a_new_study_database_is_a_copy_of_the_cached_empty_one(cache: Path,
                                                               tmp_path: Path) -> None:
    assert _run_and_reload(tmp_path / "a" / "s.db", "a") == 3
    assert cache.is_file() and _studies(cache) == []
    _mark(cache, 4242)
    made = cache.stat().st_mtime_ns
    assert _run_and_reload(tmp_path / "b" / "s.db", "b") == 3
    assert cache.stat().st_mtime_ns == made  # copied, not made again
    assert _mark(tmp_path / "b" / "s.db") == 4242  # the copy, not a database Optuna made
    assert _studies(tmp_path / "b" / "s.db") == ["b"]


def test_a_path_is_seeded_where_sqlite_opens_it(cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Given as written, `sqlite:///~/s.db` is `./~/s.db` to SQLite (the entry points write
    a home folder out first, `expand_home`): a copy at the home folder's `s.db` would leave
    Optuna an empty file opened as if it had its tables."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "~").mkdir()  # SQLite makes no folders
    storage = open_storage("sqlite:///~/s.db")
    optuna.create_study(storage=storage, study_name="here").optimize(
        lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
    storage.engine.dispose()
    assert _studies(tmp_path / "~" / "s.db") == ["here"]
    assert not (tmp_path / "home" / "s.db").exists()


def test_an_existing_study_database_is_opened_not_replaced(cache: Path, tmp_path: Path) -> None:
    database = tmp_path / "s.db"
    assert _run_and_reload(database, "kept") == 3
    assert _run_and_reload(database, "kept", trials=2) == 5
    assert _studies(database) == ["kept"]


@pytest.mark.parametrize("case", ["cache off", "cache unwritable"])
def test_without_a_copy_optuna_creates_the_database(case: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "cache off":
        monkeypatch.setenv(compile_cache.ENV, "off")
    else:
        (tmp_path / "file").write_text("")
        monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "file" / "cache"))
    assert _run_and_reload(tmp_path / "s.db", "made") == 3


@pytest.mark.parametrize("url", [
    "sqlite:////abs/s.db", "sqlite:///runs/s.db", "sqlite://", "sqlite:///:memory:",
    "postgresql+psycopg://alice:se~cret@host/~db", "http://127.0.0.1:5000", "mlruns",
    "file:///tmp/mlruns",
])
def test_urls_without_a_sqlite_home_folder_are_unchanged(url: str) -> None:
    assert expand_home(url) == url


def test_a_sqlite_home_folder_is_written_out(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_home("sqlite:///~/runs/s.db") == f"sqlite:///{tmp_path}/runs/s.db"
    assert expand_home("sqlite:///~/s.db?timeout=5") == f"sqlite:///{tmp_path}/s.db?timeout=5"
    assert sqlite_file(expand_home("sqlite:///~/s.db")) == tmp_path / "s.db"
