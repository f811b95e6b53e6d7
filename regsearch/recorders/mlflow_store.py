"""A new local MLflow SQLite store starts as a copy of an empty one, made once per MLflow version.

MLflow creates a new SQL store's tables by running its schema migrations in order: opening
a new store took 1.17-1.33 s of CPU in a fresh process, opening a copy 0.65-0.76 s (the rest
is MLflow loading its migration scripts to check the schema, as on every open; measured on a
2-core machine). That time is taken from the first epochs of a search that records into a
new store. The copy is MLflow's own migrated schema, made by MLflow itself, at the head
revision it checks on every open; its default experiment is left out, so MLflow adds it on
the first open with this store's own artifact location. The empty store is kept
in regsearch's cache (`compile_cache.cache_root`), beside the compiled programs.

Only an optimisation: anything that goes wrong here (no cache, a read-only disk, a private
MLflow function that moved, a damaged copy) leaves the store to MLflow, which creates it as
it always does.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from importlib import metadata
from pathlib import Path

from regsearch import compile_cache
from regsearch.storage import sqlite_file

_NAME = "empty-store.db"


def seed_new_store(tracking_uri: str) -> bool:
    """Put an empty, migrated store at a local SQLite `tracking_uri` that has none yet.

    Returns whether it did. An existing file is never touched; two processes seeding the
    same new store at once leave one copy (the file appears whole, by a hard link).
    """
    try:
        target = sqlite_file(tracking_uri)
        if target is None or str(target).startswith("file:") or target.exists():
            return False
        template = _template()
        if template is None:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.seed")
        shutil.copyfile(template, partial)
        try:
            os.link(partial, target)
        except FileExistsError:
            return False
        finally:
            partial.unlink(missing_ok=True)
        return True
    except Exception:  # noqa: BLE001 - MLflow creates the store itself instead
        return False


def _template() -> Path | None:
    """The cached empty store, made now if missing or damaged; None without a cache."""
    root = compile_cache.cache_root()
    if root is None:
        return None
    folder = root / f"mlflow-{metadata.version('mlflow')}"
    template = folder / _NAME
    if template.exists() and _intact(template):
        return template
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{_NAME}.{os.getpid()}"
    partial.unlink(missing_ok=True)
    _create(partial)
    os.replace(partial, template)
    return template


def _create(path: Path) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()  # the last connection closed: SQLite folds a WAL back into the file


def _intact(path: Path) -> bool:
    """A readable SQLite file with MLflow's tables, a schema revision and no experiment."""
    try:
        with closing(sqlite3.connect(path)) as db:
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone()
            experiments = db.execute("SELECT count(*) FROM experiments").fetchone()[0]
        return ok and bool(revision) and experiments == 0
    except sqlite3.Error:
        return False
