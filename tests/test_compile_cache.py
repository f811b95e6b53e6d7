"""The persistent XLA cache: where it goes, when it stays off, and that a second process
reuses it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from regsearch import compile_cache

# A process that trains one tiny pack for one epoch, set up as `regsearch run` sets it up (the
# automatic pack size queries the backend's devices first), and prints the backend used.
_TRAIN_ONE_PACK = """
import sys
from regsearch.opening import open_run
from regsearch.study_file import parse_spec
from regsearch.space import RegConfig
from regsearch.trainers import make_trainer
import keras
spec = parse_spec({"name": "c", "data": {"builtin": "digits"}, "model": {"hidden_units": [8]},
                   "train": {"epochs": 1, "batch_size": 256}, "trainer": "packed",
                   "search": {"n_trials": 8}, "confirm": None,
                   "storage": "sqlite:///" + sys.argv[1] + "/s.db"}, source="test")
trainer = make_trainer(open_run(spec))
trainer.assign(RegConfig("l2", l2=1e-3), seed=1, prune=lambda m: False)
trainer.run_epoch()
print("backend", keras.backend.backend(), "pack", trainer.pack_size)
"""


def _train_one_pack(tmp_path: Path, cache: Path, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _TRAIN_ONE_PACK, str(tmp_path)], capture_output=True, text=True,
        timeout=300, cwd=tmp_path, env={**os.environ, compile_cache.ENV: str(cache), **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _entries(folder: Path) -> dict[str, int]:
    """Stored programs and when each was written."""
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith("-atime")}


def test_the_folder_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.cache_root() == tmp_path / "mine"
    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.cache_root() is None
    assert compile_cache.enable("tensorflow") is None
    monkeypatch.delenv(compile_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_root() == tmp_path / "xdg" / "regsearch"


def test_a_folder_that_cannot_be_made_leaves_it_off(monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(compile_cache.ENV, str(blocker / "cache"))
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    assert compile_cache.enable("tensorflow") is None
    assert os.environ["TF_XLA_FLAGS"] == ""


def test_a_cache_the_user_configured_is_left_alone(monkeypatch, tmp_path: Path) -> None:
    flags = f"--tf_xla_persistent_cache_directory={tmp_path / 'theirs'}"
    monkeypatch.setenv("TF_XLA_FLAGS", flags)
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "ours"))
    assert compile_cache.enable("tensorflow") is None
    assert os.environ["TF_XLA_FLAGS"] == flags
    assert not (tmp_path / "ours").exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_second_process_loads_the_first_ones_compiles(tmp_path: Path, backend: str) -> None:
    cache = tmp_path / "cache"
    env = {"KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "TF_XLA_FLAGS": ""}
    # the automatic pack (a quarter of 8 trials): its size came from the device query
    assert f"backend {backend} pack 2" in _train_one_pack(tmp_path, cache, **env)
    (folder,) = [f for f in cache.iterdir() if f.name.startswith(f"{backend}-")]
    first = _entries(folder)
    assert first, "the first process stored no compiled program"
    _train_one_pack(tmp_path, cache, **env)
    # Same model, pack and batch: the second process compiled nothing (it would have written
    # a new or rewritten program file) and read what the first one stored.
    assert _entries(folder) == first
