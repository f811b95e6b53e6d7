"""Opening the SQL storage that holds the Optuna study, with errors a user can act on."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from regsearch.errors import StorageError

_DRIVER_EXTRAS = {"psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql",
                  "MySQLdb": "mysql"}


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe to print and to record."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url`; a SQLite file's folder is created if needed."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        _make_folder(Path(parsed.database), url)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    except ModuleNotFoundError as exc:
        extra = _DRIVER_EXTRAS.get(exc.name or "", "postgres or mysql")
        raise StorageError(f"storage {mask_url(url)}: the database driver {exc.name!r} is not "
                           f"installed; install it with: pip install 'regsearch[{extra}]'") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {_first_line(exc)}; check that "
                           "the database server is running and the URL is right") from None


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def engine_kwargs(url: str) -> dict:
    """The same connection settings for Optuna's engine and the ledger's."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 30}}
    # Pre-ping recovers from a server restart between trials instead of failing a tell().
    return {"pool_pre_ping": True}


def _make_folder(database: Path, url: str) -> None:
    try:
        database.expanduser().parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"storage {mask_url(url)}: cannot create the folder "
                           f"{database.parent}: {exc.strerror}") from None


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
