"""The regularization search space: regularizer type, strength and dropout rate."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from collections.abc import Iterator

import numpy as np

from regsearch.spec import STRENGTHS, Range, SpaceSpec


class Suggester(Protocol):
    """The part of `optuna.Trial` the space needs (keeps Optuna out of this module)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


@dataclass(frozen=True)
class RegConfig:
    """One point of the space: what a user copies into their own model."""

    regularizer: str
    l1: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """Short text for logs and tables: only the strengths the type uses."""
        parts = [f"regularizer={self.regularizer}"]
        parts += [f"{k}={getattr(self, k):.3g}" for k in ("l1", "l2") if getattr(self, k)]
        return " ".join([*parts, f"dropout={self.dropout:.3g}"])

    def effective(self) -> tuple[float, float]:
        """(l1, l2) as training applies them: a strength the type does not use is 0."""
        used = STRENGTHS.get(self.regularizer, ())  # "unset": cut off before it was chosen
        return (float(self.l1) if "l1" in used else 0.0, float(self.l2) if "l2" in used else 0.0)

    @property
    def strength(self) -> float | None:
        """One strength for plots and log axes: the L1 or L2 factor, for l1_l2 their
        geometric mean (both are searched on the same log range); None without one."""
        l1, l2 = self.effective()
        if self.regularizer == "l1_l2":
            return math.sqrt(l1 * l2) if l1 > 0 and l2 > 0 else None
        return l1 or l2 or None

    def short_name(self, number: int) -> str:
        """`t0007 l2=3e-4 d=0.15`: a trial's name that sorts in trial order and says its
        configuration (MLflow run names)."""
        l1, l2 = self.effective()
        parts = [f"t{number:04d}", *(() if l1 or l2 else (self.regularizer,)),
                 *(f"{name}={_short(value)}" for name, value in (("l1", l1), ("l2", l2))
                   if value)]
        return " ".join([*parts, f"d={self.dropout:.2f}"])

    def params(self) -> dict[str, Any]:
        """The Optuna parameters that produce this config (strengths only where used)."""
        out: dict[str, Any] = {"regularizer": self.regularizer}
        out.update({name: getattr(self, name) for name in STRENGTHS[self.regularizer]})
        out["dropout"] = self.dropout
        return out


def _short(value: float) -> str:
    """3e-4, 3.2e-4: two significant digits, no padded exponent."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


DEFAULT = RegConfig("none", dropout=0.0)  # what a model has before anyone regularizes it


def default_config(space: SpaceSpec) -> RegConfig | None:
    """The unregularized default if the space holds it (no regularizer, dropout 0), else
    None: a search that leaves it out is still measured against it when confirmed."""
    inside = "none" in space.regularizers and space.dropout.low == 0.0
    return DEFAULT if inside else None


def suggest(trial: Suggester, space: SpaceSpec) -> RegConfig:
    """Sample a config; a strength is sampled only for the types that use it."""
    kind = trial.suggest_categorical("regularizer", list(space.regularizers))
    strength = space.strength
    used = STRENGTHS[kind]
    l1 = _suggest_strength(trial, "l1", strength) if "l1" in used else 0.0
    l2 = _suggest_strength(trial, "l2", strength) if "l2" in used else 0.0
    dropout = trial.suggest_float("dropout", space.dropout.low, space.dropout.high)
    return RegConfig(kind, l1=l1, l2=l2, dropout=dropout)


def _suggest_strength(trial: Suggester, name: str, strength: Range) -> float:
    return trial.suggest_float(name, strength.low, strength.high, log=True)


def from_params(params: dict[str, Any]) -> RegConfig:
    """Rebuild a config from a stored trial's parameters."""
    return RegConfig(
        regularizer=params["regularizer"],
        l1=float(params.get("l1", 0.0)),
        l2=float(params.get("l2", 0.0)),
        dropout=float(params.get("dropout", 0.0)),
    )


def grid(space: SpaceSpec, size: int) -> list[RegConfig]:
    """Every config of a grid: `size` log-spaced strengths and `size` dropout rates."""
    return list(iter_grid(space, size))


def iter_grid(space: SpaceSpec, size: int) -> Iterator[RegConfig]:
    """The grid's configs in order, made one at a time: a large grid costs nothing to
    start (the driver takes the next points a batch needs)."""
    strengths, dropouts = _axes(space, size)
    for kind in space.regularizers:
        l1s = strengths if "l1" in STRENGTHS[kind] else [0.0]
        l2s = strengths if "l2" in STRENGTHS[kind] else [0.0]
        for l1, l2, rate in itertools.product(l1s, l2s, dropouts):
            yield RegConfig(kind, l1=l1, l2=l2, dropout=rate)


def grid_count(space: SpaceSpec, size: int) -> int:
    """How many configs `iter_grid` yields, without making them."""
    strengths, dropouts = _axes(space, size)
    return sum(len(strengths) ** len(STRENGTHS[kind])
               for kind in space.regularizers) * len(dropouts)


def _axes(space: SpaceSpec, size: int) -> tuple[list[float], list[float]]:
    return (_unique(np.geomspace(space.strength.low, space.strength.high, size)),
            _unique(np.linspace(space.dropout.low, space.dropout.high, size)))


def _unique(values: np.ndarray) -> list[float]:
    out: list[float] = []
    for value in (float(v) for v in values):
        if not any(math.isclose(value, seen) for seen in out):
            out.append(value)
    return out
