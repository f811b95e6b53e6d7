"""`export --format mlflow`: the refit model logged to the study's MLflow parent run, and
registered as a new model version when asked."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regsearch.exports import Chosen, ExportError, versions
from regsearch.storage import mask_url

if TYPE_CHECKING:
    from regsearch.data import Dataset
    from regsearch.refit import Refit

#: Tags of a registered version: which study and trial it came from.
STUDY_TAG, TRIAL_TAG, HASH_TAG = "regsearch.study", "regsearch.trial", "regsearch.spec_hash"


def log_model(chosen: Chosen, done: Refit, doc: dict[str, Any], data: Dataset, *,
              storage_url: str, tracking_uri: str,
              register: str | None) -> tuple[str, str | None]:
    """(the logged model's URI, "NAME version N" when registered)."""
    import mlflow
    from mlflow.entities import Metric, RunTag
    from mlflow.models import infer_signature

    from regsearch.recorders.mlflow_sync import open_parent
    from regsearch.recorders.mlflow_process import problem_line
    from regsearch.refit import raw_features
    from regsearch.trainers.keras import predict

    name = chosen.spec.name
    example = raw_features(data, data.x_val[:5])
    trial = "default" if chosen.trial is None else str(chosen.trial)
    pinned = [f"{package}=={version}" for package, version in
              (("keras", versions()["keras"]), ("tensorflow", versions()["tensorflow"]))
              if version]
    # Through the writer's client, not MLflow's fluent API: an export sets no process-wide
    # tracking URI or active run for the caller (a notebook) to inherit.
    try:
        writer, experiment_id, parent_id = open_parent(name, storage_url, tracking_uri,
                                                       chosen.uid)
        client = writer.client
        artifact = f"model_{'default' if chosen.trial is None else f'trial_{trial}'}"
        with tempfile.TemporaryDirectory() as folder:
            # saved first, then logged: `log_model` writes the input example before the
            # model's folder exists
            local = Path(folder) / artifact
            local.mkdir()
            mlflow.keras.save_model(done.model, str(local), input_example=example,
                                    pip_requirements=pinned,
                                    signature=infer_signature(example, predict(done.model,
                                                                               example)))
            client.log_artifacts(parent_id, str(local), artifact)
        client.log_dict(parent_id, doc, f"{artifact}_configuration.json")
        client.log_batch(parent_id, metrics=[
            Metric(f"refit_{part}_{chosen.metric}", value, int(time.time() * 1000), 0)
            for part, value in (("validation", done.validation), ("test", done.test))
            if value is not None], tags=[RunTag("regsearch.exported_trial", trial),
                                         RunTag("regsearch.export_refit", done.rows)])
        writer.end_parent(experiment_id, parent_id)
        uri = f"runs:/{parent_id}/{artifact}"
        if register is None:
            return uri, None
        tags = {STUDY_TAG: name, TRIAL_TAG: trial, HASH_TAG: chosen.spec.spec_hash}
        version = _register(client, register, f"{client.get_run(parent_id).info.artifact_uri}"
                                              f"/{artifact}", parent_id, tags)
        return uri, f"{register} version {version}"
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a store or server fault: one line
        raise ExportError(f"MLflow at {mask_url(tracking_uri)} failed while logging the model "
                          f"({problem_line(exc)})") from None


def _register(client: Any, model_name: str, source: str, run_id: str,
              tags: dict[str, str]) -> str:
    """A new version of `model_name` (made if missing) from the logged model's folder."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    return str(client.create_model_version(model_name, source, run_id=run_id,
                                           tags=tags).version)
