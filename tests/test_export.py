"""`regsearch export`: the best configuration as a document, Python code, a trained .keras
model taking raw features, and an MLflow model; each error case one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import regsearch
from clitools import cli, show, sqlite_url, study_dict, write_study

pytestmark = pytest.mark.slow

#: Runs without regsearch (any import of it fails): what a user's machine has.
LOAD_AND_PREDICT = r'''
import sys
sys.modules["regsearch"] = None
import keras, numpy as np
model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(model.predict(x, verbose=0)))
print(keras.backend.backend())
'''

#: Builds the exported Python file's model without regsearch and describes its layers.
BUILD_FROM_CODE = r'''
import json, runpy, sys
sys.modules["regsearch"] = None
import numpy as np
made = runpy.run_path(sys.argv[1])
model = made["build_model"]()
layers = []
for layer in model.layers:
    config = layer.get_config()
    kind = type(layer).__name__
    entry = {"kind": kind}
    if kind == "Dense":
        reg = config["kernel_regularizer"]
        entry.update(units=config["units"], activation=config["activation"],
                     regularizer=None if reg is None else [reg["class_name"], reg["config"]])
    elif kind == "Dropout":
        entry["rate"] = config["rate"]
    layers.append(entry)
rng = np.random.default_rng(0)
x = rng.normal(size=(40, model.input_shape[1])).astype("float32")
classes = model.output_shape[1]
y = rng.integers(0, classes, size=40) if classes > 1 else rng.normal(size=40)
trained = made["train"](x, y, verbose=0)
print(json.dumps({"layers": layers, "predicted": list(trained.predict(x[:2], verbose=0).shape)}))
'''


def _environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A confirmed classification study with a test split and a regression study."""
    folder = tmp_path_factory.mktemp("export")
    storage = sqlite_url(folder, "s.db")
    tracking = sqlite_url(folder, "mlflow.db")
    classify = study_dict("export-digits", storage, data={"builtin": "digits",
                                                          "test_fraction": 0.2},
                          search={"n_trials": 4, "pruner": "none"}, confirm={"top": 2,
                                                                             "seeds": 2})
    classify["mlflow"] = {"tracking_uri": tracking}
    regress = study_dict("export-diabetes", storage, data={"builtin": "diabetes"},
                         model={"hidden_units": [8]}, train={"epochs": 4, "batch_size": 32})
    regress["mlflow"] = {"tracking_uri": tracking}
    results = {spec["name"]: regsearch.search(spec) for spec in (classify, regress)}
    return {"folder": folder, "storage": storage, "mlflow": tracking, "results": results}


def _export(studies: dict[str, Any], name: str, fmt: str, out: Path | None = None,
            **options: Any) -> Any:
    return regsearch.export(name, fmt, out=out, storage=studies["storage"], **options)


def test_yaml_and_json_round_trip_into_the_reported_configuration(studies, tmp_path) -> None:
    from regsearch.exports import configuration, read_document

    result = studies["results"]["export-digits"]
    best = result.best
    assert best["source"] == "confirmation"
    for fmt in ("yaml", "json"):
        done = _export(studies, "export-digits", fmt, tmp_path / f"best.{fmt}")
        doc = read_document(done.paths[0])
        assert doc == done.document
        assert doc["study"] == {"name": "export-digits", "spec_hash": doc["study"]["spec_hash"],
                                "trial": best["trial"], "chosen_by": "confirmation"}
        made = configuration(doc)
        reported = regsearch.RegConfig(**best["config"])
        assert made.config.regularizer == reported.regularizer
        assert made.config.effective() == reported.effective()
        assert made.config.dropout == reported.dropout
        assert made.epochs == best["best_epoch"]
        assert made.hidden_units == (16,) and made.task == "multiclass"
        assert made.output_units == 10 and made.batch_size == 128
        assert doc["scores"]["confirmed"]["seeds"] == 2
        assert doc["scores"]["confirmed"]["mean"] == pytest.approx(best["value"])
        assert len(doc["preprocessing"]["feature_mean"]) == 64
        assert doc["versions"]["keras"] and doc["versions"]["regsearch"]
    assert (read_document(tmp_path / "best.yaml") == read_document(tmp_path / "best.json"))


def test_trial_option_exports_that_trial(studies) -> None:
    import optuna

    from regsearch.exports import configuration
    from regsearch.space import from_params

    trials = optuna.load_study(study_name="export-digits",
                               storage=studies["storage"]).get_trials()
    other = next(t for t in trials if t.state.name == "COMPLETE"
                 and t.number != studies["results"]["export-digits"].best["trial"])
    done = _export(studies, "export-digits", "json", trial=other.number)
    doc = json.loads(done.text)
    assert doc["study"]["trial"] == other.number and doc["study"]["chosen_by"] == "trial"
    assert configuration(doc).config.effective() == from_params(other.params).effective()
    assert doc["training"]["epochs"] == other.user_attrs["best_epoch"]
    assert doc["scores"]["validation"] == other.value


def test_python_file_builds_the_trained_model_layer_by_layer(studies, tmp_path) -> None:
    from regsearch.exports import choose

    done = _export(studies, "export-digits", "python", tmp_path / "model.py")
    proc = subprocess.run([sys.executable, "-c", BUILD_FROM_CODE, str(done.paths[0])],
                          capture_output=True, text=True, env=_environment(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    built = json.loads(proc.stdout.strip().splitlines()[-1])
    assert built["predicted"] == [2, 10]
    chosen = choose("export-digits", studies["storage"])
    expected = _regsearch_layers(chosen.config, hidden=(16,), activation="relu", outputs=10,
                                 task="multiclass")
    assert [layer for layer in built["layers"] if layer["kind"] != "Normalization"] == expected
    assert built["layers"][0]["kind"] == "Normalization"


def _regsearch_layers(config: Any, *, hidden: tuple[int, ...], activation: str, outputs: int,
                      task: str) -> list[dict[str, Any]]:
    """The layers regsearch trains for `config`, described as BUILD_FROM_CODE does."""
    from regsearch.model import build_model

    model = build_model(config, n_features=64, output_units=outputs, task=task,
                        hidden_units=hidden, activation=activation)
    layers = []
    for layer in model.layers:
        config_ = layer.get_config()
        kind = type(layer).__name__
        entry: dict[str, Any] = {"kind": kind}
        if kind == "Dense":
            reg = config_["kernel_regularizer"]
            entry.update(units=config_["units"], activation=config_["activation"],
                         regularizer=None if reg is None else [reg["class_name"],
                                                               reg["config"]])
        elif kind == "Dropout":
            entry["rate"] = config_["rate"]
        layers.append(entry)
    return json.loads(json.dumps(layers))


@pytest.mark.parametrize("name", ["export-digits", "export-diabetes"])
def test_keras_file_takes_raw_features_and_scores_as_recorded(studies, tmp_path,
                                                             name: str) -> None:
    from regsearch.exports import choose, load_data, sidecar
    from regsearch.refit import raw_features

    out = tmp_path / "best.keras"
    done = _export(studies, name, "keras", out)
    assert done.paths == (out, sidecar(out))
    stored = json.loads(sidecar(out).read_text())["refit"]
    assert stored == done.document["refit"] and stored["rows"] == "train"
    data = load_data(choose(name, studies["storage"]))
    x_raw = raw_features(data, data.x_val)
    assert not np.allclose(x_raw, data.x_val, atol=0.1)  # the user's units, not the study's
    np.save(tmp_path / "x.npy", x_raw)
    predictions = {}
    for backend in ("tensorflow", "jax"):
        proc = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(out),
                               str(tmp_path / "x.npy"), str(tmp_path / f"{backend}.npy")],
                              capture_output=True, text=True, timeout=300,
                              env=_environment(KERAS_BACKEND=backend))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == backend
        predictions[backend] = np.load(tmp_path / f"{backend}.npy")
    np.testing.assert_allclose(predictions["jax"], predictions["tensorflow"], rtol=1e-4,
                               atol=1e-5)
    predicted = predictions["tensorflow"]
    if data.task == "regression":  # in the target's own units, scored as users do
        y_raw = data.y_val * data.target_std + data.target_mean
        rmse = float(np.sqrt(np.mean((predicted[:, 0] - y_raw) ** 2)))
        assert rmse == pytest.approx(stored["validation"], rel=1e-4)
        assert abs(y_raw.mean()) > 10  # raw units indeed (diabetes targets ~ 150)
    else:
        accuracy = float(np.mean(predicted.argmax(axis=1) == data.y_val))
        assert accuracy == pytest.approx(stored["validation"], abs=1e-6)
        assert stored["test"] is not None


def test_refit_on_train_and_validation_rows(studies, tmp_path) -> None:
    done = _export(studies, "export-diabetes", "keras", tmp_path / "all.keras",
                   refit="train+val")
    assert done.document["refit"]["rows"] == "train+val"
    first = _export(studies, "export-diabetes", "keras", tmp_path / "train.keras")
    assert first.document["refit"]["validation"] != done.document["refit"]["validation"]


def test_mlflow_format_registers_a_version_that_loads_and_predicts(studies) -> None:
    _registers_and_loads(studies, studies["mlflow"], "export-local")


@pytest.mark.server
def test_mlflow_format_on_a_tracking_server(studies, tmp_path) -> None:
    from test_mlflow import MlflowServer, free_port

    server = MlflowServer(tmp_path, free_port())
    server.start()
    try:
        _registers_and_loads(studies, server.uri, "export-server")
    finally:
        server.stop()


def _registers_and_loads(studies: dict[str, Any], tracking: str, model_name: str) -> None:
    import mlflow

    from regsearch.exports import choose

    done = _export(studies, "export-digits", "mlflow", mlflow=tracking, register=model_name)
    assert done.registered == f"{model_name} version 1"
    client = mlflow.MlflowClient(tracking_uri=tracking)
    version = client.get_model_version(model_name, "1")
    chosen = choose("export-digits", studies["storage"])
    assert version.tags["regsearch.study"] == "export-digits"
    assert version.tags["regsearch.trial"] == str(chosen.trial)
    parent = client.get_run(version.run_id)
    assert parent.data.tags["regsearch.role"] == "parent"
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["refit_validation_accuracy"] == pytest.approx(
        done.document["refit"]["validation"])
    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model(f"models:/{model_name}/1")
    rng = np.random.default_rng(0)
    predicted = np.asarray(model.predict(rng.uniform(0, 16, size=(3, 64)).astype("float32")))
    assert predicted.shape == (3, 10)
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-4)


# --------------------------------------------------------------------------- errors

def test_each_error_is_one_line_and_exit_2(studies, tmp_path) -> None:
    from clitools import assert_user_error

    folder, storage = studies["folder"], studies["storage"]
    assert_user_error(cli(folder, "export", "nope", "--format", "yaml", "--storage", storage),
                      "no study named 'nope'")
    assert_user_error(cli(folder, "export", "export-digits", "--format", "yaml", "--storage",
                          storage, "--trial", "999"), "has no trial #999")
    existing = tmp_path / "taken.yaml"
    existing.write_text("mine\n")
    assert_user_error(cli(folder, "export", "export-digits", "--format", "yaml", "--storage",
                          storage, "--out", str(existing)), "exists; pass --force")
    assert existing.read_text() == "mine\n"
    proc = cli(folder, "export", "export-digits", "--format", "yaml", "--storage", storage,
               "--out", str(existing), "--force")
    assert proc.returncode == 0, show(proc)
    assert "regsearch_export: 1" in existing.read_text()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_user_error(cli(folder, "export", "export-digits", "--format", "keras", "--storage",
                          storage, "--out", str(blocker / "m.keras")), "does not exist")
    assert_user_error(cli(folder, "export", "export-digits", "--format", "json", "--storage",
                          storage, "--out", "/proc/best.json"), "cannot write into /proc")
    assert_user_error(cli(folder, "export", "export-digits", "--format", "yaml", "--storage",
                          storage, "--register", "x"), "--register needs --format mlflow")
    assert_user_error(cli(folder, "export", "export-digits", "--format", "keras", "--storage",
                          storage, "--out", str(tmp_path / "m.h5")), "ends in .keras")

    empty = study_dict("export-empty", sqlite_url(tmp_path, "e.db"))
    write_study(tmp_path, empty, "empty.yaml")
    assert cli(tmp_path, "init", "empty.yaml").returncode == 0
    assert_user_error(cli(tmp_path, "export", "export-empty", "--format", "json", "--storage",
                          sqlite_url(tmp_path, "e.db")), "has no complete trial yet")
