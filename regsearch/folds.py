"""Cross-validation folds and seed repeats: several models score one trial.

On a few hundred validation rows one model's score moves by points between seeds. With
`data: {folds: k}` a trial is k models, each trained on all rows but one fold's (the test
split stays out of everything) and scored on that fold; its score is their mean. With
`data: {repeats: r}` it is r models trained on the same split from different initial
weights. Either way the models are members of one pack, so a k-fold trial costs about k
members, not k fits. Each fold's model sees its rows standardized with the statistics of
its own training rows, as a model trained on that fold alone would.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare
class Fold:
    """One fold: rows (indices into the data set's rows) to train on and to score on, and
    the standardization of its training rows."""

    train_rows: np.ndarray
    val_rows: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float = 0.0
    target_std: float = 1.0


@dataclass(frozen=True, eq=False)
class View:
    """What one member of a trial trains and is scored on, standardized for it."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_mean: np.ndarray
    feature_std: np.ndarray
    target_mean: float
    target_std: float


def make_folds(x: np.ndarray, y: np.ndarray, pool: np.ndarray, k: int, seed: int, *,
               regression: bool) -> tuple[Fold, ...]:
    """k folds of the `pool` rows, stratified by class where every class can be, seeded."""
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = None if regression else y[pool]
    stratify = labels is not None and np.bincount(labels)[np.unique(labels)].min() >= k
    splitter = (StratifiedKFold(k, shuffle=True, random_state=seed) if stratify
                else KFold(k, shuffle=True, random_state=seed))
    folds = []
    for train, val in splitter.split(pool, labels if stratify else None):
        rows = pool[np.sort(train)]
        mean, std = standardization(x[rows])
        t_mean, t_std = (float(v[0]) for v in standardization(y[rows][:, None])) \
            if regression else (0.0, 1.0)
        folds.append(Fold(rows, pool[np.sort(val)], mean, std, t_mean, t_std))
    return tuple(folds)


def standardization(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the training rows; a constant column keeps std 1 (no divide by 0)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    constant = (train.max(axis=0) == train.min(axis=0)) | (std == 0)
    return mean, np.where(constant, 1.0, std)


def fold_view(x: np.ndarray, y: np.ndarray, test_rows: np.ndarray, fold: Fold, *,
              regression: bool) -> View:
    """One fold's member: its rows, standardized with its own training statistics."""
    def xs(rows: np.ndarray) -> np.ndarray:
        return ((x[rows] - fold.feature_mean) / fold.feature_std).astype(np.float32)

    def ys(rows: np.ndarray) -> np.ndarray:
        if regression:
            return ((y[rows] - fold.target_mean) / fold.target_std).astype(np.float32)
        return y[rows].astype(np.int64)

    return View(xs(fold.train_rows), ys(fold.train_rows), xs(fold.val_rows),
                ys(fold.val_rows), xs(test_rows), ys(test_rows),
                fold.feature_mean.astype(np.float32), fold.feature_std.astype(np.float32),
                fold.target_mean, fold.target_std)
