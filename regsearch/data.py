"""Data sets: a `DataSpec` in, a checked, split and standardized `Dataset` out.

Every source (scikit-learn built-ins, synthetic data, CSV/Parquet/NPZ files) is reduced
to one (feature frame, target array) pair and then goes through the same checks, split
and scaling, so a problem in the data is reported the same way wherever it came from and
always before a study is created. Keras and TensorFlow are never imported here: the CLI
`validate` command loads data to check it and must stay fast.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from regsearch.data_sources import Table, error, first_text, first_value, read_table
from regsearch.folds import Fold, View, fold_view, make_folds, standardization
from regsearch.spec import TASKS, DataSpec

MAX_CLASSES_INFERRED = 50
MIN_SPLIT_ROWS = 30  # fewer rows in a split than this: warn that its scores are mostly noise
log = logging.getLogger("regsearch")


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare
class Dataset:
    """Train/validation/test arrays ready for a model, plus what is needed to explain them."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str
    n_classes: int
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...]
    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float
    target_std: float
    description: str

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])

    #: k-fold cross-validation (`regsearch.folds`): each fold's rows and statistics
    folds: tuple[Fold, ...] = ()
    #: models of one trial trained on this split from different initial weights
    repeats: int = 1
    x_raw: np.ndarray | None = field(default=None, repr=False)  # all rows, with folds
    y_raw: np.ndarray | None = field(default=None, repr=False)
    test_rows: np.ndarray | None = field(default=None, repr=False)

    @property
    def output_units(self) -> int:
        """Width of the model's last layer: one logit/value, or one per class."""
        return self.n_classes if self.task == "multiclass" else 1

    @property
    def members(self) -> int:
        """Models that score one trial: its folds, its repeats, or one."""
        return len(self.folds) or self.repeats

    def views(self) -> list[View]:
        """What each of a trial's models trains and is scored on, standardized for it."""
        if not self.folds:
            return [View(self.x_train, self.y_train, self.x_val, self.y_val, self.x_test,
                         self.y_test, self.feature_mean, self.feature_std, self.target_mean,
                         self.target_std)] * self.repeats
        assert self.x_raw is not None and self.y_raw is not None and self.test_rows is not None
        return [fold_view(self.x_raw, self.y_raw, self.test_rows, fold,
                          regression=self.task == "regression") for fold in self.folds]

# --------------------------------------------------------------------------- public API

def load_dataset(spec: DataSpec, *, seed: int, task: str | None = None) -> Dataset:
    """Load, check, split and standardize the data a study describes.

    `task` (from the model section) overrides inference and is checked against the target.
    Raises `DataError` with a one-line message for any unusable input.
    """
    if task is not None and task not in TASKS:
        raise error("task", f"unknown task {task!r}", f"use one of: {', '.join(TASKS)}")
    return _prepare(read_table(spec, seed), spec, seed, task)


# --------------------------------------------------------------------------- common path

def _prepare(table: Table, spec: DataSpec, seed: int, task: str | None) -> Dataset:
    """Checks, then split, then scaling: identical for every source."""
    x = _checked_features(table)
    values, numeric = _checked_target(table, len(x))
    task = _resolve_task(values, numeric, task or table.known_task, table)
    y, class_names = _encode_target(values, numeric, task)
    sizes = _split_sizes(len(x), spec, table.origin)
    parts = _split_indices(y if task != "regression" else None, sizes, seed)
    return _assemble(x, y, parts, task, class_names, table, spec, seed)


def _checked_features(table: Table) -> np.ndarray:
    """Features as float64, after the checks that need only the feature frame."""
    frame = table.features
    if len(frame) == 0:
        raise error(table.origin, "has no data rows", "add rows to the file")
    if frame.shape[1] == 0:
        raise error(table.origin, f"has no feature columns besides the target "
                    f"{table.target_name!r}", "add at least one feature column")
    _check_numeric(frame, table.origin)
    x = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    _check_finite(x, list(frame.columns), table.origin)
    return x


def _check_numeric(frame: pd.DataFrame, origin: str) -> None:
    """Models need numbers; say which columns are text and how to encode them."""
    bad = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if not bad:
        return
    shown = ", ".join(f"{c!r} (e.g. {first_text(frame[c])!r})" for c in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise error(origin, f"non-numeric feature columns: {shown}{more}",
                "one-hot or ordinal encode them, or drop them, before loading")


def _check_finite(x: np.ndarray, names: list[str], origin: str) -> None:
    """NaN or inf would silently turn every loss into NaN; report where the first one is."""
    bad = ~np.isfinite(x)
    count = int(bad.sum())
    if count:
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise error(origin, f"{count} missing or infinite feature values, first at data "
                    f"row {row} (0-based), column {names[col]!r}",
                    "fill or drop them (e.g. DataFrame.dropna()) before loading")


def _checked_target(table: Table, n_rows: int) -> tuple[np.ndarray, bool]:
    """The target as float64 (numeric) or object (labels), with row count and NaN checked."""
    series = pd.Series(table.target)
    if len(series) != n_rows:
        raise error(table.origin, f"features have {n_rows} rows but target "
                    f"{table.target_name!r} has {len(series)} labels",
                    "store exactly one label per feature row")
    numeric = pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)
    if numeric:
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        missing = ~np.isfinite(values)
    else:
        values = series.to_numpy(dtype=object)
        missing = pd.isna(values)
    if missing.any():
        raise error(table.origin, f"target {table.target_name!r} has {int(missing.sum())} "
                    f"missing or infinite values, first at data row "
                    f"{int(np.argmax(missing))} (0-based)", "drop or fill those rows")
    return values, numeric


# --------------------------------------------------------------------------- task & labels

def _resolve_task(values: np.ndarray, numeric: bool, task: str | None, table: Table) -> str:
    """Use the requested (or known) task after checking it fits, else infer one."""
    distinct = len(_unique_labels(values, numeric))
    if distinct < 2:
        raise error(table.origin, f"target {table.target_name!r} has a single value "
                    f"({first_value(pd.Series(values))!r}), nothing to learn",
                    "use a target column with at least two classes or values")
    task = task or _infer_task(values, numeric, distinct)
    _check_task_fits(values, numeric, task, distinct, table)
    return task


def _infer_task(values: np.ndarray, numeric: bool, distinct: int) -> str:
    """Labels -> classification; non-integer numbers -> regression; integers by count."""
    if numeric and (not _integer_valued(values) or distinct > MAX_CLASSES_INFERRED):
        return "regression"
    return "binary" if distinct == 2 else "multiclass"


def _check_task_fits(values: np.ndarray, numeric: bool, task: str, distinct: int,
                     table: Table) -> None:
    """A requested task the target cannot support is a user error, not a crash later."""
    name, origin = table.target_name, table.origin
    if task == "regression" and not numeric:
        raise error(origin, f"task regression needs a numeric target, but {name!r} holds "
                    f"labels such as {first_value(pd.Series(values))!r}",
                    "use task binary or multiclass, or a numeric target")
    if task != "regression" and numeric and not _integer_valued(values):
        raise error(origin, f"task {task} needs class labels, but target {name!r} has "
                    "non-integer values", "use task regression, or encode the classes")
    if task == "binary" and distinct != 2:
        raise error(origin, f"task binary needs exactly 2 classes, but target {name!r} "
                    f"has {distinct}", "use task multiclass, or leave the task out")


def _unique_labels(values: np.ndarray, numeric: bool,
                   **options: bool) -> np.ndarray | tuple[np.ndarray, ...]:
    """Distinct target values, sorted (numbers numerically, labels as text)."""
    labels = values if numeric else values.astype(str)
    return np.unique(labels, **options)  # type: ignore[call-overload]


def _integer_valued(values: np.ndarray) -> bool:
    return bool(np.all(values == np.round(values)))


def _encode_target(values: np.ndarray, numeric: bool,
                   task: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices 0..C-1 in sorted label order, or the raw regression values."""
    if task == "regression":
        return values.astype(np.float64), ()
    labels, indices = _unique_labels(values, numeric, return_inverse=True)
    names = tuple(str(int(v)) if numeric else str(v) for v in labels)
    return indices.astype(np.int64), names


# --------------------------------------------------------------------------- split & scale

def _split_sizes(n: int, spec: DataSpec, origin: str) -> tuple[int, int, int]:
    """(train, val, test) row counts; val and test are fractions of the whole data set."""
    n_test = max(1, _round(n * spec.test_fraction)) if spec.test_fraction > 0 else 0
    n_val = max(1, _round(n * spec.validation_fraction))
    n_train = n - n_val - n_test
    if n_train < 2:
        raise error(origin, f"only {n} rows: validation_fraction={spec.validation_fraction:g}"
                    f" and test_fraction={spec.test_fraction:g} leave {max(n_train, 0)} "
                    "training rows (at least 2 are needed, and 1 for validation)",
                    "add rows or lower the fractions")
    small = [n for n in (n_train, n_val, n_test or MIN_SPLIT_ROWS) if n < MIN_SPLIT_ROWS]
    if small:
        log.warning("%s: small splits (train %d / validation %d / test %d rows): one "
                    "validation row moves the score by %.1f points, so trials barely differ "
                    "from noise; add rows or raise validation_fraction", origin, n_train,
                    n_val, n_test, 100 / n_val)
    return n_train, n_val, n_test


def _round(value: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return math.floor(value + 0.5)


def _split_indices(y: np.ndarray | None, sizes: tuple[int, int, int],
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices of each split: test held out first, then validation from the rest."""
    _, n_val, n_test = sizes
    rest = np.arange(sum(sizes))
    test = rest[:0]
    if n_test:
        rest, test = _holdout(rest, y, n_test, seed)
    train, val = _holdout(rest, y, n_val, seed)
    return train, val, test


def _holdout(rows: np.ndarray, y: np.ndarray | None, n_out: int,
             seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One seeded split of `rows`, stratified when every class can appear on both sides."""
    from sklearn.model_selection import train_test_split

    labels = None if y is None else y[rows]
    strata = labels if labels is not None and _can_stratify(labels, n_out) else None
    keep, out = train_test_split(rows, test_size=n_out, random_state=seed, stratify=strata)
    return np.sort(keep), np.sort(out)


def _can_stratify(labels: np.ndarray, n_out: int) -> bool:
    """scikit-learn needs >= 2 members per class and room for every class on both sides."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    n_keep = len(labels) - n_out
    return bool(counts.min() >= 2 and min(n_out, n_keep) >= len(counts))


def _assemble(x: np.ndarray, y: np.ndarray, parts: tuple[np.ndarray, ...], task: str,
              class_names: tuple[str, ...], table: Table, spec: DataSpec,
              seed: int) -> Dataset:
    """Scale with training statistics only, so validation/test never leak into them."""
    train, val, test = parts
    mean, std = standardization(x[train])
    t_mean, t_std = 0.0, 1.0
    if task == "regression":
        t_mean, t_std = (float(v[0]) for v in standardization(y[train][:, None]))
    y_type = np.float32 if task == "regression" else np.int64

    def xs(rows: np.ndarray) -> np.ndarray:
        return ((x[rows] - mean) / std).astype(np.float32)

    def ys(rows: np.ndarray) -> np.ndarray:
        return ((y[rows] - t_mean) / t_std if task == "regression" else y[rows]).astype(y_type)

    n_classes = len(class_names)
    regression = task == "regression"
    folds = (make_folds(x, y, np.sort(np.concatenate([train, val])), spec.folds, seed,
                        regression=regression) if spec.folds else ())
    return Dataset(
        xs(train), ys(train), xs(val), ys(val), xs(test), ys(test), task, n_classes,
        tuple(str(c) for c in table.features.columns), class_names,
        mean.astype(np.float32), std.astype(np.float32), t_mean, t_std,
        _describe(spec, x.shape, task, n_classes, (len(train), len(val), len(test))),
        folds=folds, repeats=spec.repeats or 1, x_raw=x if folds else None,
        y_raw=y if folds else None, test_rows=test)


def _describe(spec: DataSpec, shape: tuple[int, ...], task: str, n_classes: int,
              sizes: tuple[int, int, int]) -> str:
    """The one-line summary printed by the CLI and stored with the study."""
    kind = f"multiclass ({n_classes} classes)" if task == "multiclass" else task
    split = (f"{spec.folds} folds of {sizes[0] + sizes[1]} rows" if spec.folds else
             f"train {sizes[0]} / val {sizes[1]}")
    repeats = f", {spec.repeats} repeats a trial" if spec.repeats else ""
    return (f"{spec.describe()}, {shape[0]} rows x {shape[1]} features, {kind}; "
            f"{split} / test {sizes[2]}{repeats}")
