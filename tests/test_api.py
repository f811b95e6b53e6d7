"""The public Python API, through the top-level package: `regsearch.search` runs a study
as `regsearch run` does and closes what it opened; `regsearch.load` reads one back."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import yaml

import regsearch
from clitools import sqlite_url, study_dict, write_study


def _children() -> list[int]:
    """Live child processes of this one (the MLflow writer is one while it runs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                found.append(int(entry))
    return found


@pytest.mark.slow
def test_search_runs_the_study_and_load_reads_the_same_answer(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    spec = study_dict("api-path", url, search={"n_trials": 3},
                      mlflow={"tracking_uri": sqlite_url(tmp_path, "mlflow.db")})
    path = write_study(tmp_path, spec)
    before = _children()

    result = regsearch.search(path, trials=4)

    assert _children() == before  # the MLflow writer process was closed
    assert result.study_name == "api-path" and result.metric == "accuracy"
    assert sum(result.trials[s] for s in ("complete", "pruned", "fail")) == 4
    assert isinstance(result.best_config, regsearch.RegConfig)
    values = [row["value"] for row in result.leaderboard]
    assert values == sorted(values, reverse=True) and values[0] == result.best["value"]
    assert result.default is not None and result.gain_over_default is not None
    assert "best" in result.render("table")

    again = regsearch.load("api-path", storage=url)
    assert (again.best, again.leaderboard) == (result.best, result.leaderboard)
    assert pickle.loads(pickle.dumps(again)).best_config == result.best_config


@pytest.mark.slow
def test_search_takes_yaml_text_a_mapping_and_overrides(tmp_path: Path) -> None:
    spec = study_dict("api-text", sqlite_url(tmp_path, "first.db"), mlflow={"enabled": False})
    other = sqlite_url(tmp_path, "other.db")
    from_text = regsearch.search(yaml.safe_dump(spec), trials=2, storage=other)
    assert sum(from_text.trials.values()) == 2
    assert not (tmp_path / "first.db").exists()  # `storage=` won over the study's
    assert regsearch.load("api-text", storage=other).best == from_text.best

    from_mapping = regsearch.search({**spec, "name": "api-mapping"}, trials=2)
    assert (tmp_path / "first.db").exists() and from_mapping.study_name == "api-mapping"


@pytest.mark.parametrize(("arguments", "fragment"), [
    ({"trials": 0}, "regsearch.search(): trials: must be an integer in [1, 10000000], got 0"),
    ({"timeout": -5}, "regsearch.search(): timeout: "),
    ({"storage": "nosuchdb://x"}, "storage: nosuchdb://x: unknown database 'nosuchdb'"),
])
def test_search_checks_its_arguments_as_the_study_file_fields(
        tmp_path: Path, arguments: dict, fragment: str) -> None:
    spec = study_dict("api-bad", sqlite_url(tmp_path), mlflow={"enabled": False})
    with pytest.raises(regsearch.RegsearchError, match=re.escape(fragment)):
        regsearch.search(spec, **arguments)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_load_of_a_missing_study_names_what_is_there(tmp_path: Path) -> None:
    with pytest.raises(regsearch.RegsearchError, match="no study database at "):
        regsearch.load("nothing", storage=sqlite_url(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_every_public_name_resolves() -> None:
    import subprocess
    import sys

    # a fresh interpreter: each name is resolved lazily, from the module it lives in
    code = ("import regsearch\n"
            "missing = [n for n in regsearch.__all__ if getattr(regsearch, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert callable(regsearch.load_spec) and callable(regsearch.parse_spec)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
