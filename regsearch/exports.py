"""Taking the best home: which trial a study reports, and its complete configuration.

The configuration document (`--format yaml|json`) holds everything needed to rebuild and
retrain the model without regsearch: the data and its split, the preprocessing statistics,
the network, the regularization, the training, the objective and the scores. `code` writes
it as a standalone Python file, `refit` as a trained Keras model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from optuna.trial import TrialState

from regsearch.errors import RegsearchError
from regsearch.model import DATA_LOSS, OUTPUT_ACTIVATION
from regsearch.space import RegConfig, from_params
from regsearch.spec import STRENGTHS, StudySpec

if TYPE_CHECKING:
    from regsearch.data import Dataset

FORMATS = ("yaml", "json", "python", "keras", "mlflow")
REFITS = ("train", "train+val")
#: The version of the document's layout; a reader refuses another.
DOCUMENT_VERSION = 1


class ExportError(RegsearchError):
    """A study, a trial or an output path that cannot be exported."""


@dataclass(frozen=True)
class Chosen:
    """The trial to export: the study's reported best unless one was named."""

    spec: StudySpec
    trial: int | None  # None: the unregularized default, when confirmation chose it
    config: RegConfig
    epochs: int  # how long to train it: its best epoch (the median over seeds, confirmed)
    source: str  # "confirmation", "search" or "trial" (named with --trial)
    metric: str
    direction: str
    task: str
    scores: dict[str, Any]
    uid: str | None = None  # the study's id, which its MLflow experiment carries


def choose(name: str, storage_url: str, trial: int | None = None) -> Chosen:
    """The study's reported best (the confirmed one when it was confirmed), or `trial`."""
    from regsearch import results
    from regsearch.opening import UID_ATTR

    study = results.load_study(name, storage_url)
    uid = study.user_attrs.get(UID_ATTR)
    spec = results.stored_spec(name, storage_url)
    summary = results.study_summary(study, storage_url, top=1)
    metric, direction = summary["metric"], summary["direction"]
    task = summary["model"]["task"]
    if trial is not None:
        return replace(_named_trial(study, spec, trial, metric, direction, task), uid=uid)
    best = summary["best"]
    if best is None:
        raise ExportError(f"study {name!r} has no complete trial yet; run it first "
                          f"(`regsearch run`), then export")
    confirmed = best.get("confirmed")
    scores = {"validation": best.get("single_seed_value", best["value"]) if confirmed
              else best["value"], "test": best.get("test_metric"),
              "confirmed": _confirmed_scores(confirmed)}
    epochs = int(best["best_epoch"] or spec.train.epochs)
    return Chosen(spec, best["trial"], RegConfig(**best["config"]), epochs,
                  "confirmation" if confirmed else "search", metric, direction, task, scores,
                  uid)


def _named_trial(study: Any, spec: StudySpec, number: int, metric: str, direction: str,
                 task: str) -> Chosen:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        last = max(trials) if trials else None
        raise ExportError(f"study {study.study_name!r} has no trial #{number} (trials are "
                          f"numbered 0 to {last}); see `regsearch best {study.study_name}`")
    found = trials[number]
    if found.state != TrialState.COMPLETE:
        raise ExportError(f"trial #{number} of {study.study_name!r} did not complete "
                          f"({found.state.name.lower()}); export a complete trial")
    epochs = found.user_attrs.get("best_epoch") or spec.train.epochs
    return Chosen(spec, number, from_params(found.params), int(epochs), "trial", metric,
                  direction, task, {"validation": found.value,
                                    "test": found.user_attrs.get("test_metric"),
                                    "confirmed": None})


def _confirmed_scores(confirmed: dict[str, Any] | None) -> dict[str, Any] | None:
    if not confirmed:
        return None
    score = confirmed["score"]
    test = confirmed.get("test")
    return {"seeds": score["n"], "mean": score["mean"], "sd": score["sd"],
            "low": score["low"], "high": score["high"],
            "test_mean": test["mean"] if test else None}


def load_data(chosen: Chosen) -> Dataset:
    """The study's data, split and standardized exactly as its trials saw it."""
    from regsearch.data import load_dataset

    return load_dataset(chosen.spec.data, seed=chosen.spec.seed, task=chosen.task)


def document(chosen: Chosen, data: Dataset) -> dict[str, Any]:
    """The complete configuration, as plain data (the `yaml` and `json` formats)."""
    spec, config = chosen.spec, chosen.config
    source = spec.data
    regression = data.task == "regression"
    return {
        "regsearch_export": DOCUMENT_VERSION,
        "study": {"name": spec.name, "spec_hash": spec.spec_hash, "trial": chosen.trial,
                  "chosen_by": chosen.source},
        "versions": versions(),
        "data": {
            "source": source.describe(), "builtin": source.builtin, "file": source.file,
            "target": source.target,
            "synthetic": None if source.synthetic is None else
            _plain(source.synthetic.__dict__),
            "validation_fraction": source.validation_fraction,
            "test_fraction": source.test_fraction, "split_seed": spec.seed,
            "task": data.task, "features": list(data.feature_names),
            "classes": list(data.class_names)},
        "preprocessing": {
            "feature_mean": _floats(data.feature_mean),
            "feature_scale": _floats(data.feature_std),
            "target_mean": float(data.target_mean) if regression else None,
            "target_scale": float(data.target_std) if regression else None},
        "model": {"hidden_units": list(spec.model.hidden_units),
                  "activation": spec.model.activation,
                  "output_units": data.output_units,
                  "output_activation": OUTPUT_ACTIVATION[data.task]},
        "regularization": {"type": config.regularizer,
                           **{k: float(v) for k, v in zip(("l1", "l2"), config.effective())},
                           "dropout": float(config.dropout)},
        "training": {"optimizer": spec.train.optimizer,
                     "learning_rate": spec.train.learning_rate,
                     "batch_size": spec.train.batch_size, "epochs": chosen.epochs,
                     "loss": DATA_LOSS[data.task], "seed": spec.seed},
        "objective": {"metric": chosen.metric, "direction": chosen.direction},
        "scores": chosen.scores,
    }


def versions() -> dict[str, str | None]:
    """regsearch's, Keras's and TensorFlow's installed versions (None: not installed)."""
    def installed(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {"regsearch": installed("regsearch"), "keras": installed("keras"),
            "tensorflow": installed("tensorflow", "tensorflow-cpu")}


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


def _plain(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if not k.startswith("_")}


def render(doc: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


@dataclass(frozen=True)
class Configuration:
    """An exported document read back: the configuration it rebuilds."""

    config: RegConfig
    hidden_units: tuple[int, ...]
    activation: str
    task: str
    output_units: int
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int


def read_document(path: str | Path) -> dict[str, Any]:
    """A `yaml` or `json` export (JSON is YAML too); refuses another layout version."""
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("regsearch_export") != DOCUMENT_VERSION:
        raise ExportError(f"{path}: not a regsearch export of layout {DOCUMENT_VERSION}")
    return doc


def configuration(doc: dict[str, Any]) -> Configuration:
    """What a document says to build and train."""
    reg, model, train = doc["regularization"], doc["model"], doc["training"]
    strengths = {k: reg[k] for k in STRENGTHS[reg["type"]]}
    return Configuration(RegConfig(reg["type"], dropout=reg["dropout"], **strengths),
                         tuple(model["hidden_units"]), model["activation"],
                         doc["data"]["task"], model["output_units"], train["optimizer"],
                         train["learning_rate"], train["batch_size"], train["epochs"])


@dataclass(frozen=True)
class Exported:
    """What an export wrote: the files, the document, and the refit's scores if any."""

    format: str
    paths: tuple[Path, ...]
    document: dict[str, Any]
    text: str | None = None  # the yaml/json/python text, when it went to stdout
    model_uri: str | None = None  # mlflow: the logged model
    registered: str | None = None  # mlflow: "NAME version N"


def check_output(path: Path, *, force: bool) -> None:
    """Before anything is trained: an existing file needs `force`; the folder must take it."""
    import tempfile

    if path.is_dir():
        raise ExportError(f"{path}: is a folder; give a file name, e.g. {path / 'best.keras'}")
    if path.exists() and not force:
        raise ExportError(f"{path}: exists; pass --force to replace it, or choose another "
                          "--out")
    folder = path.parent
    if not folder.is_dir():
        raise ExportError(f"{path}: the folder {folder} does not exist; create it first")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".regsearch-export-"):
            pass
    except OSError as exc:
        raise ExportError(f"{path}: cannot write into {folder} ({exc.strerror or exc}); "
                          "choose another --out") from None


def sidecar(model_path: Path) -> Path:
    """Where a `.keras` export's configuration and refit scores go."""
    return model_path.with_suffix(".json")


def export(name: str, fmt: str, *, storage_url: str, out: Path | None = None,
           trial: int | None = None, rows: str = "train", force: bool = False,
           tracking_uri: str | None = None, register: str | None = None) -> Exported:
    """Export a study's reported best (or `trial`) as `fmt`; see `regsearch export --help`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if rows not in REFITS:
        raise ExportError(f"unknown refit {rows!r}; use one of: {', '.join(REFITS)}")
    if fmt == "keras":
        out = out or Path(f"{name}.keras")
        if out.suffix != ".keras":
            raise ExportError(f"{out}: a Keras model file ends in .keras")
        for path in (out, sidecar(out)):
            check_output(path, force=force)
    elif out is not None:
        check_output(out, force=force)
    chosen = choose(name, storage_url, trial)
    if fmt == "mlflow":
        tracking_uri = tracking_uri or chosen.spec.mlflow.tracking_uri
        if "***" in tracking_uri:  # the ledger keeps URIs with their passwords masked
            raise ExportError(f"the study's MLflow URI is stored masked ({tracking_uri}); "
                              "give it with --mlflow or $REGSEARCH_MLFLOW")
    data = load_data(chosen)
    doc = document(chosen, data)
    if fmt in ("yaml", "json", "python"):
        if fmt == "python":
            from regsearch.export_code import python_source

            text = python_source(doc)
        else:
            text = render(doc, fmt)
        if out is None:
            return Exported(fmt, (), doc, text)
        out.write_text(text, encoding="utf-8")
        return Exported(fmt, (out,), doc)
    from regsearch.trainers import import_keras

    import_keras()  # quietly, before anything below imports it
    from regsearch.refit import refit

    done = refit(chosen, data, rows)
    doc["refit"] = done.scores()
    if fmt == "keras":
        assert out is not None
        done.model.save(out)
        sidecar(out).write_text(render(doc, "json"), encoding="utf-8")
        return Exported(fmt, (out, sidecar(out)), doc)
    from regsearch.export_mlflow import log_model

    uri, registered = log_model(chosen, done, doc, data, storage_url=storage_url,
                                tracking_uri=tracking_uri or chosen.spec.mlflow.tracking_uri,
                                register=register)
    return Exported(fmt, (), doc, model_uri=uri, registered=registered)
