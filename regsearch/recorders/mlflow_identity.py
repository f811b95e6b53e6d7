"""Which study an MLflow experiment belongs to, checked before a study starts.

MLflow names an experiment after its study, so two studies of the same name (another
storage, another search space) would share one experiment and one parent run. Each study
carries a random id (Optuna user attr) that regsearch writes on the experiment as the tag
`regsearch.study_uid`; a study whose id differs from its experiment's is refused, as a
changed spec is. The check runs before anything is written and without importing MLflow
(seconds): a database store is read with SQLAlchemy, a tracking server through MLflow's
REST API. An unreachable server cannot be checked here; the writer checks again when it
opens the experiment (`MlflowWriter.experiment`).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import sqlalchemy as sa

from regsearch.errors import StudyMismatchError
from regsearch.storage import is_sqlite, mask_url, sqlite_file

UID_TAG, HASH_TAG = "regsearch.study_uid", "regsearch.spec_hash"
_TIMEOUT = 5.0


def experiment_tags(tracking_uri: str, name: str) -> dict[str, str] | None:
    """The tags of the experiment `name` (None: no such experiment, or not knowable now)."""
    scheme = tracking_uri.split("://", 1)[0].lower() if "://" in tracking_uri else ""
    if scheme in ("http", "https"):
        return _tags_over_rest(tracking_uri, name)
    if scheme and scheme not in ("file", "databricks"):
        return _tags_in_database(tracking_uri, name)
    return None


def check_owner(tracking_uri: str, name: str, uid: str, tags: dict[str, str] | None) -> None:
    """Refuse when the experiment `name` holds another study's runs."""
    owner = (tags or {}).get(UID_TAG)  # none: a new experiment, or one made before ids
    if owner is not None and owner != uid:
        raise StudyMismatchError(
            f"MLflow at {mask_url(tracking_uri)} has an experiment {name!r} that holds "
            f"another study of that name (study id {owner}, this one {uid}; another storage "
            "or a study made afresh); give this study a new `name:`, record it in another "
            "MLflow store (--mlflow), or delete that experiment")


def _tags_in_database(tracking_uri: str, name: str) -> dict[str, str] | None:
    if is_sqlite(tracking_uri):
        database = sqlite_file(tracking_uri)
        if database is None or not database.is_file():
            return None  # a new store: nothing to collide with, and nothing made here
        # read-only: closing the last connection of a WAL file would otherwise write it
        tracking_uri = f"sqlite:///file:{database.resolve()}?mode=ro&uri=true"
    engine = sa.create_engine(tracking_uri)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("experiments"):
                return None
            found = conn.execute(sa.text("SELECT experiment_id FROM experiments "
                                         "WHERE name = :name"), {"name": name}).first()
            if found is None:
                return None
            rows = conn.execute(sa.text("SELECT key, value FROM experiment_tags "
                                        "WHERE experiment_id = :id"), {"id": found[0]})
            return {key: value for key, value in rows}
    except sa.exc.SQLAlchemyError:
        return None  # the writer meets the same problem, and reports it as MLflow's
    finally:
        engine.dispose()


def _tags_over_rest(tracking_uri: str, name: str) -> dict[str, str] | None:
    parts = urllib.parse.urlsplit(tracking_uri)
    query = urllib.parse.urlencode({"experiment_name": name})
    base = parts._replace(netloc=(parts.hostname or "") + (f":{parts.port}" if parts.port else ""))
    request = urllib.request.Request(
        f"{base.geturl().rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}")
    if parts.username:  # as MLflow's client sends a URL's user and password
        secret = f"{urllib.parse.unquote(parts.username)}:" \
                 f"{urllib.parse.unquote(parts.password or '')}"
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(secret.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as reply:
            experiment = json.load(reply).get("experiment", {})
    except urllib.error.HTTPError as exc:
        return {} if exc.code == 404 else None
    except (OSError, ValueError):
        return None
    return {tag["key"]: tag["value"] for tag in experiment.get("tags", [])}
