"""Where data come from: scikit-learn built-ins, synthetic data, CSV/Parquet/NPZ files.

Each source is reduced to one `Table` (a feature frame and a target) for the common path
in `data`; the messages here say which file or set is wrong and how to fix it.
"""

from __future__ import annotations

import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import pandas as pd

from regsearch.errors import DataError
from regsearch.spec import BUILTIN_DATASETS, DataSpec, SyntheticSpec

FILE_TYPES = (".csv", ".parquet", ".pq", ".npz")
_BUILTIN_TASKS = {"digits": "multiclass", "breast_cancer": "binary", "wine": "multiclass",
                  "iris": "multiclass", "diabetes": "regression"}


@dataclass(frozen=True)
class Table:
    """Raw data from any source, before checks: the single input of the common path."""

    features: pd.DataFrame
    target: np.ndarray | pd.Series
    origin: str          # where, for error messages: a file path or e.g. builtin:digits
    target_name: str
    known_task: str | None = None


def read_table(spec: DataSpec, seed: int) -> Table:
    """Dispatch on the kind of source named by the spec."""
    if spec.builtin:
        return _builtin_table(spec.builtin)
    if spec.synthetic:
        return _synthetic_table(spec.synthetic, seed)
    if spec.file:
        return _file_table(Path(spec.file), spec.target)
    raise error("data", "no data source given", "set one of builtin, file or synthetic")


def _builtin_table(name: str) -> Table:
    """One of scikit-learn's bundled data sets (shipped with the package, so offline)."""
    if name not in _BUILTIN_TASKS:
        raise error(f"builtin:{name}", "unknown built-in data set",
                    f"use one of: {', '.join(BUILTIN_DATASETS)}")
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")()
    names = [str(c) for c in getattr(bunch, "feature_names", ())]
    columns = names if len(names) == bunch.data.shape[1] else None
    frame = pd.DataFrame(bunch.data, columns=columns or default_names(bunch.data.shape[1]))
    return Table(frame, np.asarray(bunch.target), f"builtin:{name}", "target",
                 _BUILTIN_TASKS[name])


def _synthetic_table(s: SyntheticSpec, seed: int) -> Table:
    """Data drawn by scikit-learn's generators, reproducible from the study seed."""
    from sklearn.datasets import make_classification, make_regression

    informative = min(s.informative or max(2, s.features // 2), s.features)
    if s.task == "regression":
        x, y = make_regression(n_samples=s.samples, n_features=s.features,
                               n_informative=informative, noise=s.noise, random_state=seed)
        known = "regression"
    else:
        informative, clusters = _classification_shape(s, informative)
        x, y = make_classification(
            n_samples=s.samples, n_features=s.features, n_informative=informative,
            n_redundant=0, n_repeated=0, n_classes=s.classes,
            n_clusters_per_class=clusters, flip_y=min(max(s.noise, 0.0), 1.0),
            random_state=seed)
        known = "binary" if s.classes == 2 else "multiclass"
    frame = pd.DataFrame(x, columns=default_names(s.features))
    return Table(frame, y, f"synthetic:{s.task}", "y", known)


def _classification_shape(s: SyntheticSpec, informative: int) -> tuple[int, int]:
    """Informative features and clusters per class that make_classification accepts.

    It needs classes * clusters <= 2**informative; rather than fail on small feature
    counts, use one cluster per class and as many informative features as required.
    """
    needed = max(1, math.ceil(math.log2(s.classes)))
    if needed > s.features:
        raise error(f"synthetic:{s.task}", f"{s.classes} classes need at least {needed} "
                    f"features to be separable, got features={s.features}",
                    f"set synthetic.features >= {needed} or lower synthetic.classes")
    informative = max(informative, needed)
    clusters = 2 if s.classes * 2 <= 2 ** informative else 1
    return informative, clusters


def _file_table(path: Path, target: str | None) -> Table:
    """A user's file; the extension picks the reader."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise error(path, "no such data file",
                    "check data.file (a relative path is resolved against the study file)")
    if path.is_dir():
        raise error(path, "is a directory, not a data file", "point data.file at a file")
    if path.stat().st_size == 0:
        raise error(path, "the file is empty", "write the data to it, or fix data.file")
    if suffix not in FILE_TYPES:
        raise error(path, f"unsupported file type {suffix or '(no extension)'!r}",
                    f"supported types are {', '.join(FILE_TYPES)}; convert the file")
    if suffix == ".npz":
        return _npz_table(path, target or "y")
    reader: Callable[[Path], pd.DataFrame] = pd.read_csv if suffix == ".csv" else pd.read_parquet
    return _frame_table(_read_frame(path, reader), path, target)


def _read_frame(path: Path, reader: Callable[[Path], pd.DataFrame]) -> pd.DataFrame:
    """Run a pandas reader, turning its many failure types into one DataError."""
    try:
        return reader(path)
    except pd.errors.EmptyDataError:
        raise error(path, "the file is empty", "write a header row and data rows") from None
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for a bad file
        raise unreadable(path, exc) from None


def _frame_table(frame: pd.DataFrame, path: Path, target: str | None) -> Table:
    """Separate the target column from the feature columns of a table file."""
    columns = [str(c) for c in frame.columns]
    if target is None:
        raise error(path, "no target column given", f"set data.target to one of: "
                    f"{preview(columns)}")
    if target not in columns:
        separator = _other_separator(columns)
        if separator:
            raise error(path, f"target column {target!r} not found; the file has one column, "
                        f"{columns[0]!r}, so its values look separated by {separator!r}, not "
                        "commas", "save it comma-separated, e.g. pandas.read_csv(path, "
                        f"sep={separator!r}).to_csv(path, index=False)")
        raise error(path, f"target column {target!r} not found",
                    f"set data.target to one of the columns: {preview(columns)}")
    where = columns.index(target)
    features = frame.drop(columns=frame.columns[where])
    features.columns = [str(c) for c in features.columns]
    return Table(features, frame.iloc[:, where], str(path), target)


def _other_separator(columns: list[str]) -> str | None:
    """The separator a one-column CSV's header suggests (`;`, tab, `|`), if any."""
    if len(columns) != 1:
        return None
    return next((sep for sep in (";", "\t", "|") if sep in columns[0]), None)


def _npz_table(path: Path, target: str) -> Table:
    """A NumPy archive holding a 2-D feature array `x` (or `X`) and a 1-D target array."""
    arrays = _read_npz(path)
    key = "x" if "x" in arrays else "X" if "X" in arrays else None
    if key is None or target not in arrays:
        wanted = "feature array 'x'" if key is None else f"target array {target!r}"
        raise error(path, f"no {wanted} in the archive (arrays: {preview(list(arrays))})",
                    "save it with numpy.savez(path, x=features, y=labels) or set data.target")
    x, y = arrays[key], arrays[target]
    if x.ndim != 2:
        raise error(path, f"array {key!r} must be 2-D (rows x features), got shape {x.shape}",
                    "reshape it, e.g. x.reshape(len(x), -1)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise error(path, f"target array {target!r} must be 1-D, got shape {y.shape}",
                    "store class indices or values, one per row (not one-hot)")
    return Table(pd.DataFrame(x, columns=default_names(x.shape[1])), y, str(path), target)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array eagerly, so a corrupt member fails here and not later."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("holds a single .npy array, not an .npz archive of named arrays")
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise unreadable(path, exc) from None


# --------------------------------------------------------------------------- messages

def error(where: str | Path, problem: str, fix: str) -> DataError:
    """One line: where, what was wrong, how to fix it."""
    return DataError(one_line(f"{where}: {problem}; {fix}"))


def unreadable(path: Path, exc: BaseException) -> DataError:
    """A reader's failure, shortened; the path is already at the start of the message."""
    detail = one_line(str(exc).replace(str(path), "the file"))[:200]
    return error(path, f"cannot be read as a {path.suffix.lower()} file "
                 f"({type(exc).__name__}: {detail})",
                 "check that the file is complete and really is in that format")


def one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown or "(none)"


def first_value(series: pd.Series) -> object:
    present = series.dropna()
    value = present.iloc[0] if len(present) else None
    return value.item() if isinstance(value, np.generic) else value


def first_text(column: pd.Series) -> object:
    """The first value that is not a number, to show why a column is not numeric."""
    present = column.dropna()
    numbers = pd.to_numeric(present.astype(str), errors="coerce")
    return first_value(present[numbers.isna()] if numbers.isna().any() else present)


def default_names(count: int) -> list[str]:
    return [f"x{i}" for i in range(count)]
