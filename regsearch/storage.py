"""Opening the SQL storage that holds the Optuna study, with errors a user can act on."""

from __future__ import annotations

import fcntl
import re
import sqlite3
from pathlib import Path
from contextlib import contextmanager
from collections.abc import Iterator

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url

from regsearch.errors import StorageError
from regsearch.sqlite_seed import EmptyDatabase, seed_new_database

#: What to install for a SQLAlchemy dialect+driver that is missing.
_DRIVER_INSTALL = {"postgresql+psycopg": "pip install 'regsearch[postgres]'",
                   "mysql+pymysql": "pip install 'regsearch[mysql]'",
                   "mysql+mysqldb": "pip install mysqlclient, or use mysql+pymysql://... with "
                                    "pip install 'regsearch[mysql]'",
                   "postgresql+psycopg2": "pip install psycopg2-binary, or use "
                                          "postgresql+psycopg://... with pip install "
                                          "'regsearch[postgres]'"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433}
#: Schemes of the MLflow tracking URIs regsearch can write to (besides database URLs and paths).
MLFLOW_SCHEMES = ("http", "https", "file", "databricks")
_DATABASES = ("sqlite", "postgresql", "mysql", "mariadb", "mssql")


#: What a lost or unreachable database raises through SQLAlchemy and Optuna.
DATABASE_ERRORS = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                   optuna.exceptions.StorageInternalError)

_PASSWORD_IN_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)([^@\s]+)(@)")


def mask_url(url: str | URL) -> str:
    """`url` (or any text holding URLs, such as an error) with each password as ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return _PASSWORD_IN_URL.sub(r"\1***\3", url)


def check_storage_url(url: str, where: str = "storage") -> URL:
    """`url` parsed, with its database driver importable; nothing is connected or written.

    Every command checks this first, so a typo or a missing driver is one line at once.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"{where}: {mask_url(url)!r} is not a SQLAlchemy URL; use e.g. "
                           "sqlite:///runs/regsearch.db or "
                           "postgresql+psycopg://user@host/db") from None
    try:
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:
        raise StorageError(f"{where}: {mask_url(url)}: unknown database "
                           f"{parsed.drivername!r}; use sqlite:///..., "
                           "postgresql+psycopg://... or mysql+pymysql://...") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        name = f"{parsed.get_backend_name()}+{parsed.get_driver_name()}"
        fix = _DRIVER_INSTALL.get(name) or (
            f"install the {parsed.get_driver_name()!r} package, or use "
            + ("postgresql+psycopg://... with pip install 'regsearch[postgres]'"
               if parsed.get_backend_name() == "postgresql"
               else "mysql+pymysql://... with pip install 'regsearch[mysql]'"))
        raise StorageError(f"{where}: {mask_url(url)}: the database driver for {name!r} is "
                           f"not installed; {fix}") from None
    return parsed


def check_tracking_uri(uri: str, where: str = "mlflow.tracking_uri") -> None:
    """A URI MLflow can record to: a database URL, http(s), file or a plain path.

    Another scheme is a configuration error, not an outage to warn about during the run."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else ""
    if scheme and scheme not in (*MLFLOW_SCHEMES, *_DATABASES):
        raise StorageError(f"{where}: {mask_url(uri)}: MLflow cannot record to a {scheme!r} "
                           "URI; use http(s)://host:port for a tracking server or a database "
                           "URL such as sqlite:///runs/mlflow.db")
    if scheme in _DATABASES:
        check_storage_url(uri, where)


def same_database(first: str, second: str) -> bool:
    """Whether two URLs name one database, however spelled (relative or absolute SQLite
    paths, a default port written out or left out, driver names)."""
    try:
        a, b = make_url(first), make_url(second)
    except sqlalchemy.exc.ArgumentError:
        return False
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        one, other = sqlite_file(first), sqlite_file(second)
        return one is not None and other is not None and one.resolve() == other.resolve()
    default = _DEFAULT_PORTS.get(a.get_backend_name())
    return ((_host(a.host), a.port or default, a.database)
            == (_host(b.host), b.port or default, b.database))


def _host(host: str | None) -> str:
    host = (host or "localhost").lower()
    return "localhost" if host in ("127.0.0.1", "::1", "localhost") else host


def open_storage(url: str, *, must_exist: bool = False,
                 heartbeat: tuple[int, int] | None = None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url`; a SQLite file's folder is created if needed.

    With `must_exist` (read-only commands) a missing SQLite file is an error, not a new file.
    `heartbeat` is (interval, grace period) in seconds, for studies shared by processes.
    """
    check_storage_url(url)
    database = sqlite_file(url)
    if database is not None:
        if must_exist:
            require_existing(url)
        _make_folder(database, url)
    elif must_exist:
        require_study_tables(url)
    # A new SQLite study is a copy of an empty one this Optuna version made: its tables and
    # schema revision are Optuna's own, so neither needs making or checking again.
    seeded = not must_exist and seed_new_database(database, _EMPTY_STUDY)
    try:
        interval, grace = heartbeat or (None, None)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url),
                                             heartbeat_interval=interval, grace_period=grace,
                                             skip_compatibility_check=seeded,
                                             skip_table_creation=seeded or must_exist)
        tune_sqlite(storage.engine)
        return storage
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {first_line(exc)}; check that "
                           "the database server is running and the URL is right") from None


def _create_study_database(path: Path) -> None:
    optuna.storages.RDBStorage(f"sqlite:///{path}").engine.dispose()


def _has_no_study(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT count(*) FROM studies").fetchone()[0] == 0


_EMPTY_STUDY = EmptyDatabase(f"optuna-{optuna.__version__}", "empty-study.db",
                             _create_study_database, _has_no_study)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL, as SQLite opens it (a `~` in it is a folder of
    that name: `expand_home` writes the home folder out where URLs come in); None for other
    databases and in-memory ones."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def expand_home(url: str) -> str:
    """`url` with a SQLite file's leading `~` written out as the home folder.

    SQLite opens `sqlite:///~/runs/s.db` as the relative path `~/runs/s.db`, under a folder
    named `~` wherever the command ran; whoever writes `~` means their home folder, as in
    a shell. Study files, flags and `opening.open_run` pass every URL through here. Other
    URLs (servers, MLflow's `http://` and paths) come back unchanged.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return url
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or not database.startswith("~"):
        return url
    return parsed.set(database=str(Path(database).expanduser())).render_as_string(
        hide_password=False)


def require_existing(url: str) -> None:
    """Read-only commands must not leave an empty SQLite file behind a typo."""
    database = sqlite_file(url)
    if database is not None and not database.is_file():
        raise StorageError(f"no study database at {database}; run a study first, or pass "
                           "--storage with the URL it was run with")


def require_existing_store(uri: str) -> None:
    """`require_existing` for an MLflow store: serving a typo would create an empty one."""
    database = sqlite_file(uri) if uri.startswith("sqlite:") else None
    if database is not None and not database.is_file():
        raise StorageError(f"no MLflow store at {database}; run a study first, or pass "
                           "--mlflow with the URI it was recorded to")


def has_study_tables(url: str) -> bool:
    """Whether a server database holds Optuna's tables; an unreachable one is an error."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs(url))
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot open storage {mask_url(url)}: {first_line(exc)}; check "
                           "that the database server is running and the URL is right") from None
    finally:
        engine.dispose()


def require_study_tables(url: str) -> None:
    """A server database that never held a study is refused without creating Optuna's
    tables in it (read-only commands and workers joining a study)."""
    if not has_study_tables(url):
        raise StorageError(f"no study in {mask_url(url)} (it holds no Optuna tables); create "
                           "the study first with `regsearch init` (or `regsearch run`) on its "
                           "study file, or pass --storage with the URL it was run with")


@contextmanager
def hold_sqlite(url: str) -> Iterator[None]:
    """An exclusive lock on a SQLite study while this process runs trials of it.

    SQLite serves one writing process well; a second `run` or worker on the same file would
    interleave trials and fail on locks, so it is refused at once with what to do instead.
    """
    database = sqlite_file(url)
    if database is None:
        yield
        return
    _make_folder(database, url)
    handle = open(f"{database}.lock", "w")  # noqa: SIM115 - held until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StorageError(f"storage {url}: another regsearch process is using this SQLite "
                           "study, and SQLite holds one process at a time; wait for it, or "
                           "share the study between processes through a server database "
                           "(--storage postgresql+psycopg://user@host/db)") from None
    try:
        yield
    finally:
        handle.close()


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def engine_kwargs(url: str) -> dict:
    """The same connection settings for Optuna's engine and the ledger's."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 30}}
    # Pre-ping recovers from a server restart between trials instead of failing a tell().
    return {"pool_pre_ping": True}


def tune_sqlite(engine: sqlalchemy.Engine | type[sqlalchemy.Engine]) -> None:
    """WAL and synchronous=NORMAL: a commit no longer waits for a full fsync.

    Bookkeeping is a few commits per trial and epoch, and each waited for a full fsync on
    a default SQLite file. Durability stays: a power cut can lose the last commits, never
    corrupt the file. Given the `Engine` class, every SQLite engine the process makes is
    tuned (the MLflow writer process, where MLflow makes its engine itself).
    """
    if isinstance(engine, sqlalchemy.Engine) and engine.dialect.name != "sqlite":
        return

    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            # Switching needs the file alone for a moment: while another reader (an
            # `mlflow ui`) holds it, this connection stays as it is and a later one switches.
            try:
                dbapi_connection.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:
                pass
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    if isinstance(engine, sqlalchemy.Engine):
        engine.dispose()  # connections made before the listener get it on reconnect


def _make_folder(database: Path, url: str) -> None:
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"storage {mask_url(url)}: cannot create the folder "
                           f"{database.parent}: {exc.strerror}") from None


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
