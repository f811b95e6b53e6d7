"""The launcher's plan (which workers, and each one's devices) and workers claiming GPUs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from regsearch import devices
from regsearch.errors import RegsearchError, SpecError
from regsearch.launcher import plan


def test_one_worker_per_listed_gpu_with_its_own_device_and_memory_growth(monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # four GPUs, as nvidia-smi would list
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
    ("0,5", None, "no GPU 5 on this machine (nvidia-smi -L lists 0, 1); pick from those"),
])
def test_bad_gpu_lists_are_refused_with_the_fix(gpus, workers, message, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(SpecError, match=r"^--gpus: |^--workers: ") as caught:
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
                          env={**{k: v for k, v in os.environ.items()
                                  if k != "CUDA_VISIBLE_DEVICES"},
                               "PATH": str(tmp_path)})  # and no nvidia-smi on PATH
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "regsearch: error: --gpus: no GPU found (nvidia-smi -L lists none); use "
        "--workers N for CPU workers"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


@pytest.fixture
def own_claims(monkeypatch: pytest.MonkeyPatch):
    """Claims made by this test, released after it (as a process's end would)."""
    claims: list[int] = []
    monkeypatch.setattr(devices, "_claims", claims)
    yield claims
    for fd in claims:
        os.close(fd)


def test_workers_claim_distinct_gpus_until_none_is_left(tmp_path: Path, monkeypatch,
                                                        own_claims) -> None:
    locks = tmp_path / "locks"
    got = []
    for _ in range(2):  # each worker starts seeing every GPU of the host
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
        got.append(devices.claim_gpu(locks))
        assert os.environ["CUDA_VISIBLE_DEVICES"] == got[-1]
        assert os.environ["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    assert got == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(RegsearchError, match=r"all 2 GPUs \(0, 1\) are taken by other "
                                             "workers; run at most one worker per GPU"):
        devices.claim_gpu(locks)
    os.close(own_claims.pop(0))  # the worker on GPU 0 ends: its GPU is free again
    assert devices.claim_gpu(locks) == "0"


def test_claiming_without_a_gpu_or_a_usable_directory_says_what_to_do(tmp_path: Path,
                                                                      monkeypatch,
                                                                      own_claims) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    with pytest.raises(RegsearchError, match=r"no GPU is visible .* without --claim-gpu"):
        devices.claim_gpu(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    (tmp_path / "file").write_text("", encoding="utf-8")
    with pytest.raises(RegsearchError, match="cannot create the lock directory"):
        devices.claim_gpu(tmp_path / "file" / "locks")
    assert own_claims == []
