"""A new local MLflow SQLite store starts as a copy of an empty one, made once per MLflow version.

MLflow creates a new SQL store's tables by running its schema migrations in order, which
costs a search that records into a new store CPU time from its first epochs; opening a
copy skips them. The copy is MLflow's own migrated schema (`regsearch.sqlite_seed`); its default
experiment is left out, so MLflow adds it on the first open with this store's own artifact
location.
"""

from __future__ import annotations

import sqlite3
from importlib import metadata
from pathlib import Path

from regsearch.sqlite_seed import EmptyDatabase, seed_new_database
from regsearch.storage import sqlite_file


def seed_new_store(tracking_uri: str) -> bool:
    """Put an empty, migrated store at a local SQLite `tracking_uri` that has none yet;
    whether it did. Anything that goes wrong leaves the store to MLflow."""
    try:
        target = sqlite_file(tracking_uri)
        kind = EmptyDatabase(f"mlflow-{metadata.version('mlflow')}", "empty-store.db",
                             _create, _is_empty)
    except Exception:  # noqa: BLE001 - a URL, or an install, that is MLflow's to judge
        return False
    return seed_new_database(target, kind)


def _create(path: Path) -> None:
    import sqlalchemy

    from regsearch.recorders.mlflow_batch import initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        initialize_tables(engine)
    finally:
        engine.dispose()  # the last connection closed: SQLite folds a WAL back into the file


def _is_empty(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
