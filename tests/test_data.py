"""Tests for regsearch.data: sources, checks, task inference, splits and scaling."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regsearch.data import Dataset, load_dataset
from regsearch.errors import DataError
from regsearch.spec import DataSpec, SyntheticSpec


# --------------------------------------------------------------------------- helpers

def _frame(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A small table: an id column (unique per row), two noisy features, binary label."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "id": np.arange(n, dtype=float),
        "a": rng.normal(5.0, 2.0, n),
        "b": rng.normal(-3.0, 0.5, n),
        "label": np.arange(n) % 2,
    })


def _csv(tmp_path: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _load(path: Path, target: str | None = "label", *, seed: int = 0,
          task: str | None = None, **fractions: float) -> Dataset:
    spec = DataSpec(file=str(path), target=target, **fractions)
    return load_dataset(spec, seed=seed, task=task)


def _raises(path: Path | None, *patterns: str, **load_args) -> str:
    """Assert a one-line DataError that names the file and matches every pattern."""
    with pytest.raises(DataError) as info:
        _load(path, **load_args)
    message = str(info.value)
    assert "\n" not in message
    if path is not None:
        assert str(path) in message
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    return message


def _raw(data: Dataset, x: np.ndarray) -> np.ndarray:
    """Undo the feature standardization."""
    return x.astype(np.float64) * data.feature_std + data.feature_mean


# --------------------------------------------------------------------------- bad files

def test_missing_file(tmp_path):
    _raises(tmp_path / "nope.csv", "no such data file", "data.file")


def test_directory_instead_of_file(tmp_path):
    folder = tmp_path / "table.csv"
    folder.mkdir()
    _raises(folder, "directory")


def test_unsupported_extension_lists_supported(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"whatever")
    _raises(path, "'.xlsx'", ".csv", ".parquet", ".npz")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"\x00\x01garbage, not parquet" * 10)
    _raises(path, "cannot be read as a .parquet file")


def test_corrupt_npz(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 truncated zip garbage")
    _raises(path, "cannot be read as a .npz file")


def test_npz_with_object_array_needs_no_pickle(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.array([{"a": 1}] * 4, dtype=object))
    _raises(path, "cannot be read", target=None)


def test_csv_with_ragged_rows(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1,9,9\n")
    _raises(path, "cannot be read as a .csv file")


def test_empty_csv(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("")
    _raises(path, "empty")


def test_blank_csv(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("\n\n")
    _raises(path, "empty")


def test_csv_with_header_only(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n")
    _raises(path, "no data rows")


def test_zero_byte_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"")
    _raises(path, "empty")


def test_empty_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    _frame().iloc[:0].to_parquet(path)
    _raises(path, "no data rows")


def test_target_column_missing_lists_columns(tmp_path):
    path = _csv(tmp_path, _frame())
    message = _raises(path, "target column 'class' not found", "'id'", "'a'", "'label'",
                      target="class")
    assert "data.target" in message


def test_target_missing_long_column_list_is_shortened(tmp_path):
    frame = pd.DataFrame({f"f{i}": [1.0, 2.0] for i in range(30)})
    message = _raises(_csv(tmp_path, frame), "not found", "30 in all")
    assert "'f29'" not in message


def test_non_numeric_feature_columns_are_named(tmp_path):
    frame = _frame()
    frame["color"] = ["red", "blue"] * 30
    frame["size"] = "L"
    _raises(_csv(tmp_path, frame), "non-numeric", "'color'", "'size'", "'red'", "one-hot")


def test_non_numeric_example_is_the_offending_value(tmp_path):
    frame = _frame()
    frame["age"] = ["31", "?"] + ["40"] * 58
    _raises(_csv(tmp_path, frame), "'age' (e.g. '?')")


def test_nan_in_features_reports_count_and_first_position(tmp_path):
    frame = _frame()
    frame.loc[7, "b"] = np.nan
    frame.loc[9, "a"] = np.nan
    _raises(_csv(tmp_path, frame), "2 missing or infinite", "row 7", "column 'b'", "dropna")


def test_inf_in_features(tmp_path):
    frame = _frame()
    frame.loc[3, "a"] = np.inf
    _raises(_csv(tmp_path, frame), "1 missing or infinite", "row 3", "column 'a'")


def test_nan_in_target(tmp_path):
    frame = _frame().astype({"label": float})
    frame.loc[5, "label"] = np.nan
    _raises(_csv(tmp_path, frame), "target 'label'", "1 missing", "row 5")


def test_nan_in_string_target(tmp_path):
    frame = _frame()
    frame["label"] = ["cat", "dog"] * 30
    frame.loc[4, "label"] = None
    _raises(_csv(tmp_path, frame), "target 'label'", "row 4")


def test_npz_length_mismatch(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 3)), label=np.zeros(8))
    _raises(path, "10 rows", "8 labels", "'label'")


def test_npz_x_not_2d(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros(10), y=np.arange(10) % 2)
    _raises(path, "2-D", "(10,)", "reshape", target=None)


def test_npz_missing_feature_array_lists_arrays(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, features=np.zeros((10, 3)), y=np.arange(10) % 2)
    _raises(path, "no feature array 'x'", "'features'", target=None)


def test_npz_missing_target_array(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((10, 3)), y=np.arange(10) % 2)
    _raises(path, "no target array 'label'", "'y'")


def test_single_class_target(tmp_path):
    frame = _frame()
    frame["label"] = "spam"
    _raises(_csv(tmp_path, frame), "single value", "'spam'", "two classes")


def test_too_few_rows_for_splits(tmp_path):
    path = _csv(tmp_path, _frame(n=4))
    _raises(path, "only 4 rows", "training rows", "lower the fractions",
            validation_fraction=0.4, test_fraction=0.3)


def test_just_enough_rows(tmp_path):
    data = _load(_csv(tmp_path, _frame(n=3)), validation_fraction=0.2)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (2, 1, 0)


def test_requested_binary_with_three_classes(tmp_path):
    frame = _frame()
    frame["label"] = np.arange(60) % 3
    _raises(_csv(tmp_path, frame), "binary needs exactly 2 classes", "has 3", task="binary")


def test_requested_regression_on_text_labels(tmp_path):
    frame = _frame()
    frame["label"] = ["cat", "dog"] * 30
    _raises(_csv(tmp_path, frame), "regression needs a numeric target", task="regression")


def test_requested_classification_on_continuous_target(tmp_path):
    frame = _frame()
    frame["label"] = np.linspace(0, 1, 60)
    _raises(_csv(tmp_path, frame), "non-integer", "task regression", task="multiclass")


def test_synthetic_with_too_many_classes_for_features():
    spec = DataSpec(synthetic=SyntheticSpec("classification", classes=10, features=3))
    with pytest.raises(DataError, match=r"synthetic.*10 classes.*features >= 4"):
        load_dataset(spec, seed=0)


# --------------------------------------------------------------------------- built-ins

@pytest.mark.parametrize("name, task, n_classes, rows, features", [
    ("digits", "multiclass", 10, 1797, 64),
    ("breast_cancer", "binary", 2, 569, 30),
    ("wine", "multiclass", 3, 178, 13),
    ("iris", "multiclass", 3, 150, 4),
    ("diabetes", "regression", 0, 442, 10),
])
def test_builtin(name, task, n_classes, rows, features):
    data = load_dataset(DataSpec(builtin=name, test_fraction=0.1), seed=0)
    assert (data.task, data.n_classes, data.n_features) == (task, n_classes, features)
    sizes = [len(data.x_train), len(data.x_val), len(data.x_test)]
    assert sum(sizes) == rows
    assert sizes[1] == round(rows * 0.2) and sizes[2] == round(rows * 0.1)
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val),
                 (data.x_test, data.y_test)):
        assert x.dtype == np.float32 and x.shape[1] == features and len(y) == len(x)
        assert y.dtype == (np.float32 if task == "regression" else np.int64)
    assert len(data.feature_names) == features
    assert data.output_units == (n_classes if task == "multiclass" else 1)
    if task != "regression":
        assert data.class_names == tuple(str(i) for i in range(n_classes))
        assert set(np.unique(data.y_train)) == set(range(n_classes))
    assert data.description.startswith(f"builtin:{name}, {rows} rows x {features} features")


def test_builtin_description_format():
    data = load_dataset(DataSpec(builtin="iris"), seed=0)
    assert data.description == ("builtin:iris, 150 rows x 4 features, multiclass (3 classes); "
                                "train 120 / val 30 / test 0")


# --------------------------------------------------------------------------- synthetic

def test_synthetic_classification_honors_spec():
    s = SyntheticSpec("classification", samples=300, features=7, classes=4, noise=0.0)
    data = load_dataset(DataSpec(synthetic=s), seed=3)
    assert data.task == "multiclass" and data.n_classes == 4 and data.output_units == 4
    assert data.n_features == 7 and len(data.x_train) + len(data.x_val) == 300
    assert set(np.concatenate([data.y_train, data.y_val])) == {0, 1, 2, 3}


@pytest.mark.parametrize("features, informative", [(1, None), (2, None), (5, 1), (4, 4)])
def test_synthetic_binary_small_feature_counts(features, informative):
    s = SyntheticSpec("classification", samples=50, features=features, informative=informative)
    data = load_dataset(DataSpec(synthetic=s), seed=0)
    assert data.task == "binary" and data.n_features == features and data.output_units == 1


def test_synthetic_regression_honors_spec():
    s = SyntheticSpec("regression", samples=120, features=5, noise=0.5)
    data = load_dataset(DataSpec(synthetic=s, test_fraction=0.25), seed=0)
    assert data.task == "regression" and data.n_classes == 0 and data.class_names == ()
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (66, 24, 30)
    assert data.n_features == 5 and data.target_std > 1.0


def test_synthetic_depends_on_seed():
    s = SyntheticSpec("regression", samples=50, features=3)
    a = load_dataset(DataSpec(synthetic=s), seed=0)
    b = load_dataset(DataSpec(synthetic=s), seed=1)
    assert a.target_mean != b.target_mean


# --------------------------------------------------------------------------- determinism

def test_same_seed_same_arrays():
    spec = DataSpec(builtin="wine", test_fraction=0.2)
    a, b = load_dataset(spec, seed=7), load_dataset(spec, seed=7)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "feature_mean"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_different_seed_different_split(tmp_path):
    path = _csv(tmp_path, _frame(n=100))
    ids = [np.sort(_raw(d, d.x_val)[:, 0]) for d in (_load(path, seed=0), _load(path, seed=1))]
    assert len(ids[0]) == len(ids[1]) == 20
    assert not np.array_equal(ids[0], ids[1])


# --------------------------------------------------------------------------- splits & scaling

def test_splits_partition_rows(tmp_path):
    frame = _frame(n=100)
    data = _load(_csv(tmp_path, frame), test_fraction=0.15)
    parts = [np.rint(_raw(data, x)[:, 0]).astype(int)
             for x in (data.x_train, data.x_val, data.x_test)]
    assert [len(p) for p in parts] == [65, 20, 15]
    assert sorted(np.concatenate(parts)) == list(range(100))
    for x, y in ((data.x_val, data.y_val), (data.x_test, data.y_test)):
        rows = np.rint(_raw(data, x)[:, 0]).astype(int)
        np.testing.assert_array_equal(y, frame["label"].to_numpy()[rows])


def test_classification_split_is_stratified(tmp_path):
    frame = _frame(n=100)
    frame["label"] = (np.arange(100) < 30).astype(int)  # 30 / 70
    data = _load(_csv(tmp_path, frame), test_fraction=0.1)
    assert np.bincount(data.y_val).tolist() == [14, 6]
    assert np.bincount(data.y_test).tolist() == [7, 3]


def test_rare_class_falls_back_to_unstratified(tmp_path):
    frame = _frame(n=40)
    frame["label"] = ["a"] * 39 + ["b"]
    data = _load(_csv(tmp_path, frame))
    assert data.class_names == ("a", "b") and len(data.x_val) == 8


def test_train_features_standardized_with_train_statistics(tmp_path):
    frame = _frame(n=200)
    data = _load(_csv(tmp_path, frame), test_fraction=0.2)
    np.testing.assert_allclose(data.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(axis=0), 1.0, atol=1e-5)
    assert np.all(np.abs(data.x_val.mean(axis=0)) > 1e-4)
    train_rows = np.rint(_raw(data, data.x_train)[:, 0]).astype(int)
    raw_train = frame[["id", "a", "b"]].to_numpy()[train_rows]
    np.testing.assert_allclose(data.feature_mean, raw_train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(data.feature_std, raw_train.std(axis=0), rtol=1e-6)
    assert not np.allclose(data.feature_mean, frame[["id", "a", "b"]].mean().to_numpy())


def test_constant_feature_gets_unit_std(tmp_path):
    frame = _frame()
    frame["const"] = 0.1
    data = _load(_csv(tmp_path, frame))
    col = data.feature_names.index("const")
    assert data.feature_std[col] == 1.0
    assert np.all(np.isfinite(data.x_train)) and np.abs(data.x_train[:, col]).max() < 1e-6


def test_test_fraction_zero_gives_empty_test_arrays(tmp_path):
    data = _load(_csv(tmp_path, _frame()), test_fraction=0.0)
    assert data.x_test.shape == (0, 3) and data.y_test.shape == (0,)
    assert data.x_test.dtype == np.float32 and data.y_test.dtype == np.int64
    assert data.description.endswith("test 0")


def test_regression_target_standardized(tmp_path):
    frame = _frame(n=120)
    frame["price"] = frame["a"] * 10.0 + 100.0 + 0.25
    data = _load(_csv(tmp_path, frame.drop(columns="label")), target="price")
    assert data.task == "regression" and data.output_units == 1
    assert data.y_train.dtype == np.float32
    np.testing.assert_allclose(data.y_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.y_train.std(), 1.0, atol=1e-5)
    rows = np.rint(_raw(data, data.x_train)[:, 0]).astype(int)
    raw = frame["price"].to_numpy()[rows]
    assert data.target_mean == pytest.approx(raw.mean())
    assert data.target_std == pytest.approx(raw.std())
    restored = data.y_val * data.target_std + data.target_mean
    val_rows = np.rint(_raw(data, data.x_val)[:, 0]).astype(int)
    np.testing.assert_allclose(restored, frame["price"].to_numpy()[val_rows], rtol=1e-5)


def test_classification_target_scaling_is_identity():
    data = load_dataset(DataSpec(builtin="iris"), seed=0)
    assert (data.target_mean, data.target_std) == (0.0, 1.0)


# --------------------------------------------------------------------------- task inference

@pytest.mark.parametrize("labels, task, n_classes", [
    (np.arange(60) % 2, "binary", 2),
    (np.arange(60) % 2 + 5, "binary", 2),
    (np.arange(60) % 5, "multiclass", 5),
    (np.arange(60) % 2 * 1.0, "binary", 2),
    (np.arange(60) * 0.37, "regression", 0),
    (np.arange(60) % 55, "regression", 0),
    (np.arange(60) % 2 == 0, "binary", 2),
    (np.array(["x", "y", "z"] * 20), "multiclass", 3),
])
def test_task_inference(tmp_path, labels, task, n_classes):
    frame = _frame()
    frame["label"] = labels
    data = _load(_csv(tmp_path, frame))
    assert (data.task, data.n_classes) == (task, n_classes)


def test_requested_task_overrides_inference(tmp_path):
    frame = _frame()
    frame["label"] = np.arange(60) % 2
    path = _csv(tmp_path, frame)
    assert _load(path, task="multiclass").output_units == 2
    assert _load(path, task="regression").task == "regression"


def test_string_labels_encoded_in_sorted_order(tmp_path):
    frame = _frame(n=90)
    frame["label"] = ["zebra", "ant", "moose"] * 30
    data = _load(_csv(tmp_path, frame))
    assert data.class_names == ("ant", "moose", "zebra")
    rows = np.rint(_raw(data, data.x_train)[:, 0]).astype(int)
    original = frame["label"].to_numpy()[rows]
    np.testing.assert_array_equal(np.array(data.class_names)[data.y_train], original)


def test_numeric_labels_sorted_numerically(tmp_path):
    frame = _frame(n=90)
    frame["label"] = [10, 2, 7] * 30
    data = _load(_csv(tmp_path, frame))
    assert data.class_names == ("2", "7", "10")


# --------------------------------------------------------------------------- file formats

def test_parquet_round_trip(tmp_path):
    frame = _frame(n=50)
    path = tmp_path / "data.pq"
    frame.to_parquet(path)
    data = _load(path, test_fraction=0.2)
    assert data.feature_names == ("id", "a", "b")
    rows = np.rint(_raw(data, data.x_test)[:, 0]).astype(int)
    np.testing.assert_allclose(_raw(data, data.x_test), frame[["id", "a", "b"]].to_numpy()[rows],
                               rtol=1e-5, atol=1e-5)


def test_npz_round_trip_default_and_named_target(tmp_path):
    x = np.column_stack([np.arange(40.0), np.linspace(-1, 1, 40)])
    y = np.arange(40) % 3
    np.savez(tmp_path / "a.npz", X=x, y=y)
    np.savez(tmp_path / "b.npz", x=x, target=y.reshape(-1, 1))
    for data in (_load(tmp_path / "a.npz", target=None), _load(tmp_path / "b.npz", "target")):
        assert data.task == "multiclass" and data.n_classes == 3
        assert data.feature_names == ("x0", "x1")
        rows = np.rint(_raw(data, data.x_train)[:, 0]).astype(int)
        np.testing.assert_array_equal(data.y_train, y[rows])
        np.testing.assert_allclose(_raw(data, data.x_train), x[rows], atol=1e-5)


def test_npz_string_features_rejected(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.array([["a", "b"]] * 10), y=np.arange(10) % 2)
    _raises(path, "non-numeric", target=None)


def test_unknown_task_rejected():
    with pytest.raises(DataError, match="unknown task 'ordinal'"):
        load_dataset(DataSpec(builtin="iris"), seed=0, task="ordinal")


def test_no_keras_or_tensorflow_import():
    code = ("import sys, regsearch.data; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
