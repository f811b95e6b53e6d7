"""A new SQLite database starts as a copy of an empty one a library made once per version.

Optuna and MLflow create a new database's tables through their schema tooling (alembic: its
import, its migration scripts read from disk, MLflow's many migrations run one by one),
which costs a new search far more than opening an existing database. The empty database is made
by the library itself, at the head revision it checks, and kept in regsearch's cache
(`compile_cache.cache_root`, one folder per library version) beside the compiled programs.

Only an optimisation: anything that goes wrong here (no cache, a read-only disk, a damaged
copy, a library function that moved) leaves the database to the library, which creates it
as it always does.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from regsearch import compile_cache


@dataclass(frozen=True)
class EmptyDatabase:
    """How one library's empty database is made and recognised."""

    folder: str  # in the cache: the library and its version, e.g. "optuna-5.1.0"
    name: str
    create: Callable[[Path], None]  # the library creates its tables in this new file
    is_empty: Callable[[sqlite3.Connection], bool]  # its tables are there, with no rows


def seed_new_database(target: Path | None, kind: EmptyDatabase) -> bool:
    """Put a copy of `kind`'s empty database at `target` (a SQLite database's file, None
    for other databases) if no file is there yet.

    Returns whether it did. An existing file is never touched; two processes seeding the
    same new database at once leave one copy (the file appears whole, by a hard link).
    """
    try:
        if target is None or str(target).startswith("file:") or target.exists():
            return False
        template = _template(kind)
        if template is None:
            return False
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.seed")
        shutil.copyfile(template, partial)
        try:
            os.link(partial, target)
        except FileExistsError:
            return False
        finally:
            partial.unlink(missing_ok=True)
        return True
    except Exception:  # noqa: BLE001 - the library creates the database itself instead
        return False


def _template(kind: EmptyDatabase) -> Path | None:
    """The cached empty database, made now if missing or damaged; None without a cache."""
    root = compile_cache.cache_root()
    if root is None:
        return None
    folder = root / kind.folder
    template = folder / kind.name
    if template.exists() and _intact(template, kind):
        return template
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{kind.name}.{uuid.uuid4().hex}"  # PIDs repeat across containers
    try:
        kind.create(partial)
        os.replace(partial, template)
    finally:
        partial.unlink(missing_ok=True)
    return template


def _intact(path: Path, kind: EmptyDatabase) -> bool:
    """A readable SQLite file, stamped with a schema revision, that `kind` calls empty."""
    try:
        with closing(sqlite3.connect(path)) as db:
            ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            revision = db.execute("SELECT version_num FROM alembic_version").fetchone()
            return ok and bool(revision) and kind.is_empty(db)
    except sqlite3.Error:
        return False
