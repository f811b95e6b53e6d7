"""Helpers for tests of the `regsearch` command line: tiny study files, a CLI runner, and
the shape every user error must have (exit 2, one line, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 240  # seconds for one CLI call; a hang fails the test instead of blocking CI


def study_dict(name: str, storage: str, **sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny, fast study: digits, one 16-unit layer, 3 epochs, 3 trials, no pruning."""
    spec: dict[str, Any] = {
        "name": name,
        "seed": 7,
        "data": {"builtin": "digits"},
        "model": {"hidden_units": [16]},
        "space": {"dropout": {"low": 0.0, "high": 0.5}},
        "train": {"epochs": 3, "batch_size": 128},
        "search": {"n_trials": 3, "pruner": "none"},
        "storage": storage,
        "confirm": None,  # tests of confirmation turn it on
    }
    for key, value in sections.items():
        spec[key] = {**(spec.get(key) or {}), **value} if isinstance(value, dict) else value
    return spec


def sqlite_url(folder: Path, file: str = "s.db") -> str:
    return f"sqlite:///{folder / file}"


def write_study(folder: Path, spec: dict[str, Any], file: str = "study.yaml") -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def cli(cwd: Path, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "regsearch", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=timeout)


def show(proc: subprocess.CompletedProcess) -> str:
    """Context for a failed assertion."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, stderr exactly one `regsearch: error:` line, no traceback; returns the line."""
    assert proc.returncode == 2, show(proc)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, show(proc)
    assert lines[0].startswith("regsearch: error: "), show(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, show(proc)
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} missing from: {lines[0]}"
    return lines[0]
