"""Validation metrics on the data alone, computed in NumPy from predictions.

Keras 3's `val_loss` includes the L1/L2 penalty, which would rank weak regularization
higher; every objective here is computed without it, the same way for every trainer.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def data_loss(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The training loss without the penalty: cross-entropy, or MSE on the scaled target."""
    if task == "regression":
        return float(np.mean((y_pred.reshape(-1) - y_true) ** 2))
    return _cross_entropy(task, y_true, y_pred)


def score(metric: str, task: str, y_true: np.ndarray, y_pred: np.ndarray,
          *, target_mean: float = 0.0, target_std: float = 1.0) -> float:
    """One objective value; regression errors are reported in the target's own units."""
    if task == "regression":
        truth = y_true * target_std + target_mean
        guess = y_pred.reshape(-1) * target_std + target_mean
        return _REGRESSION[metric](truth, guess)
    if metric == "accuracy":
        return float(np.mean(predicted_classes(task, y_pred) == y_true))
    if metric == "auc":
        return _auc(task, y_true, y_pred)
    return _cross_entropy(task, y_true, y_pred)


def data_loss_and_score(metric: str, task: str, y_true: np.ndarray, y_pred: np.ndarray, *,
                        target_mean: float = 0.0, target_std: float = 1.0) -> tuple[float, float]:
    """(data loss, objective) of held-out predictions; every trainer scores through here.

    A diverged member's NaN/inf predictions give NaN here, quietly: StopRules reports it.
    """
    with np.errstate(all="ignore"):
        return (data_loss(task, y_true, y_pred),
                score(metric, task, y_true, y_pred, target_mean=target_mean,
                      target_std=target_std))


def predicted_classes(task: str, y_pred: np.ndarray) -> np.ndarray:
    if task == "binary":
        return (y_pred.reshape(-1) > 0.5).astype(np.int64)
    return np.argmax(y_pred, axis=-1)


def _cross_entropy(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if task == "binary":
        p = np.clip(y_pred.reshape(-1).astype(np.float64), _EPS, 1 - _EPS)
        return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
    p = np.clip(y_pred[np.arange(len(y_true)), y_true].astype(np.float64), _EPS, 1.0)
    return float(-np.mean(np.log(p)))


def _auc(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if not np.all(np.isfinite(y_pred)):
        return float("nan")
    if task == "binary":
        return float(roc_auc_score(y_true, y_pred.reshape(-1)))
    return float(roc_auc_score(y_true, y_pred, multi_class="ovr",
                               labels=np.arange(y_pred.shape[-1])))


def _r2(truth: np.ndarray, guess: np.ndarray) -> float:
    total = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - float(np.sum((truth - guess) ** 2)) / total if total > 0 else float("nan")


_REGRESSION = {
    "rmse": lambda t, g: float(np.sqrt(np.mean((t - g) ** 2))),
    "mae": lambda t, g: float(np.mean(np.abs(t - g))),
    "mse": lambda t, g: float(np.mean((t - g) ** 2)),
    "r2": _r2,
}


def near_zero_share(kernels: list[np.ndarray], threshold: float = 1e-3) -> float:
    """Share of kernel weights with |w| < threshold: how sparse L1 made the model."""
    total = sum(k.size for k in kernels)
    small = sum(int(np.count_nonzero(np.abs(k) < threshold)) for k in kernels)
    return small / total if total else 0.0
