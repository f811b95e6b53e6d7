"""MLflow writes after the search: `regsearch sync` rebuilding runs from the ledger, and the
study's parent run receiving exported models and reports."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from regsearch.recorders.ledger import Ledger
from regsearch.recorders.mlflow import MlflowWriter
from regsearch.recorders.mlflow_process import problem_line
from regsearch.states import State
from regsearch.storage import mask_url


def sync_study(name: str, storage_url: str, tracking_uri: str, *, uid: str | None = None,
               unsynced_only: bool = False) -> tuple[int, int]:
    """Write into MLflow every finished trial the ledger has and MLflow lacks.

    Returns (runs written, runs already there). Runs are matched by their trial tag, so
    running it twice, or after a partial live write, never duplicates a trial; a run left
    unfinished (its process died) is written anew. `unsynced_only` checks only the trials
    the ledger does not know to be in MLflow (after a run), not every trial (`regsearch
    sync`: the store may be new or may have lost runs). `uid`: the study's id, which the
    experiment must carry.
    """
    from regsearch.errors import RegsearchError
    from regsearch.storage import require_existing

    require_existing(storage_url)
    ledger = Ledger(storage_url)
    info = ledger.study_info(name)
    if info is None:
        there = ", ".join(ledger.study_names()) or "none"
        raise RegsearchError(f"no study named {name!r} in the ledger at "
                             f"{mask_url(storage_url)} (studies there: {there})")
    try:
        writer = MlflowWriter(tracking_uri)
        experiment_id = writer.experiment(name, uid)
        parent_id = writer.parent_run(experiment_id, info, storage_url)
    except RegsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any fault of the server ends sync with one line
        raise RegsearchError(f"MLflow at {mask_url(tracking_uri)} is not reachable "
                             f"({problem_line(exc)}); start it and run sync again") from None
    written = kept = 0
    for record in ledger.records(name, unsynced_only=unsynced_only):
        if record.state == State.RUNNING:
            continue
        try:
            run_id, created = writer.write_trial(experiment_id, parent_id, record,
                                                 info["metric"])
        except Exception as exc:  # noqa: BLE001 - as above, with the count written so far
            raise RegsearchError(f"MLflow at {mask_url(tracking_uri)} failed while writing "
                                 f"trial {record.number} ({problem_line(exc)}); {written} runs "
                                 "were written; run sync again") from None
        ledger.set_mlflow(name, {record.number: run_id}, synced=True)
        written, kept = written + created, kept + (not created)
    best = ledger.best(name, info["direction"])
    if best is not None:
        writer.set_best(parent_id, best, info["metric"], info["direction"], settle=True)
    writer.end_parent(experiment_id, parent_id)
    return written, kept


def open_parent(name: str, storage_url: str, tracking_uri: str,
                uid: str | None) -> tuple[MlflowWriter, str, str]:
    """For writes after the search (`export`, `report`): the writer, the study's experiment
    and its parent run, made if missing (a study recorded with MLflow off)."""
    from regsearch.errors import RegsearchError

    ledger = Ledger(storage_url)
    try:
        info = ledger.study_info(name)
    finally:
        ledger.engine.dispose()
    if info is None:
        raise RegsearchError(f"no study named {name!r} in the ledger at {mask_url(storage_url)}")
    writer = MlflowWriter(tracking_uri)
    experiment_id = writer.experiment(name, uid)
    return writer, experiment_id, writer.parent_run(experiment_id, info, storage_url)


def log_to_parent(name: str, storage_url: str, tracking_uri: str, uid: str | None,
                  paths: Iterable[Path], folder: str) -> str:
    """Files as artifacts of the study's parent run, under `folder`; returns the run's id."""
    from regsearch.errors import RegsearchError

    try:
        writer, experiment_id, parent_id = open_parent(name, storage_url, tracking_uri, uid)
        for path in paths:
            writer.client.log_artifact(parent_id, str(path), folder)
        writer.end_parent(experiment_id, parent_id)
    except RegsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - any fault of the store or server: one line
        raise RegsearchError(f"MLflow at {mask_url(tracking_uri)} failed while logging "
                             f"{folder} ({problem_line(exc)})") from None
    return parent_id
