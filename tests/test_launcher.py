"""The launcher's plan: which workers, and what each one's environment says about devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from regsearch.errors import SpecError
from regsearch.launcher import plan


def test_one_worker_per_listed_gpu_with_its_own_device_and_memory_growth() -> None:
    workers = plan(None, "0,2,3")
    assert workers.count == 3
    for index, gpu in enumerate(("0", "2", "3")):
        env = workers.environment(index)
        assert env["CUDA_VISIBLE_DEVICES"] == gpu
        assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        # A GPU worker's threads are not rationed; that is for CPU workers sharing cores.
        assert env.get("TF_NUM_INTRAOP_THREADS") == os.environ.get("TF_NUM_INTRAOP_THREADS")


def test_cpu_workers_hide_gpus_and_share_the_cores() -> None:
    workers = plan(2, None)
    assert workers.count == 2 and not workers.gpus
    share = str(max(1, (os.cpu_count() or 1) // 2))
    for index in range(2):
        env = workers.environment(index)
        assert env["CUDA_VISIBLE_DEVICES"] == "-1"
        assert env["TF_NUM_INTRAOP_THREADS"] == env["OMP_NUM_THREADS"] == share
    assert plan(None, None).count == 1


def test_the_worker_environment_keeps_the_callers_settings(monkeypatch) -> None:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.setenv("REGSEARCH_SOMETHING", "kept")
    env = plan(1, None).environment(0)
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "0" and env["REGSEARCH_SOMETHING"] == "kept"
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    assert plan(1, None).environment(0)["TF_CPP_MIN_LOG_LEVEL"] == "1"


@pytest.mark.parametrize("gpus,workers,message", [
    ("0,x", None, "expected 'all' or GPU indices such as 0,2,3, got '0,x'"),
    ("0,1", 3, "3 workers for 2 GPUs: there is one worker per GPU; leave out --workers"),
])
def test_bad_gpu_lists_are_refused_with_the_fix(gpus, workers, message) -> None:
    with pytest.raises(SpecError, match="^--gpus: gpus: |^--workers: workers: ") as caught:
        plan(workers, gpus)
    assert message in str(caught.value)


def test_gpus_all_without_a_gpu_says_to_use_cpu_workers(tmp_path: Path) -> None:
    """On this machine nvidia-smi is absent or lists nothing: one line, exit 2, no traceback,
    nothing written."""
    study = tmp_path / "s.yaml"
    study.write_text("name: s\ndata: {builtin: digits}\nsearch: {n_trials: 2}\n",
                     encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "regsearch", "run", "s.yaml", "--gpus", "all"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(tmp_path)})  # no nvidia-smi on PATH
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "regsearch: error: --gpus: gpus: no GPU found (nvidia-smi -L lists none); use "
        "--workers N for CPU workers"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
