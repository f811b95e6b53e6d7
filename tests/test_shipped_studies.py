"""Every shipped study file runs with both trainers: the reference one and the packed one.

The reference trainer is what the packed trainer's equivalence rests on, so it must work
on every study users are given, not only on the test suite's digits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from regsearch import driver, opening
from regsearch.study_file import parse_spec
from regsearch.trainers import make_trainer

pytestmark = pytest.mark.slow

STUDIES = sorted((Path(__file__).parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("trainer", ["keras", "packed"])
@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_a_shipped_study_runs_with_each_trainer(tmp_path: Path, path: Path,
                                                trainer: str) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["train"]["epochs"] = 2  # the study as shipped, shortened
    raw["search"].update(n_trials=2, pruner="none")
    raw.update(trainer=trainer, storage=f"sqlite:///{tmp_path / 's.db'}",
               mlflow={"enabled": False}, confirm=None)
    run = opening.open_run(parse_spec(raw, source=path.name, base=path.parent))
    driver.run_study(run, make_trainer(run))
    trials = run.study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2, [
        (t.state, t.user_attrs.get("fail_reason")) for t in trials]
