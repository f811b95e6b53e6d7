"""Optuna's sampler and pruner for a study file's `search:` section."""

from __future__ import annotations

import secrets

import optuna

from regsearch.errors import SpecError
from regsearch.spec import StudySpec


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    kind = spec.search.sampler
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    if kind == "gp":
        return _gp_sampler(spec, seed)
    # `grid` runs enqueued grid points; random only fills in if the grid is exhausted.
    return optuna.samplers.RandomSampler(seed=seed)


def _gp_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SpecError(spec.source, "search.sampler",
                        "'gp' needs PyTorch; install it with: pip install 'regsearch[gp]', "
                        "or use sampler: tpe") from None
    return optuna.samplers.GPSampler(seed=seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    epochs = spec.train.epochs
    # Early-epoch scores are noisy, and a strongly regularized model learns slower at first:
    # judging trials at epoch 1 would prune regularization for being slow, not for being
    # worse. Either pruner judges a trial only after a third of its epochs (Hyperband's
    # first rung; its rungs then rise by its reduction factor, 3).
    first_judged = max(1, epochs // 3)
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=5,
                                                      n_warmup_steps=first_judged),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=first_judged,
                                                            max_resource=epochs),
        "none": lambda: optuna.pruners.NopPruner(),
    }[spec.search.pruner]()


def sampler_seed(spec: StudySpec, n_before: int, shared: bool) -> int:
    """The study seed, moved on by the history length (a resumed study stays reproducible
    without replaying its first random trials); a process of a shared study adds randomness
    of its own, since workers starting together see the same history and would otherwise
    all propose the same points."""
    return spec.seed + n_before + (secrets.randbits(30) if shared else 0)
