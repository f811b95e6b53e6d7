"""Which GPUs a process may use, and one GPU per worker where a launcher cannot assign them.

The launcher gives each worker its GPU. Workers started side by side by something else (the
replicas of a compose service all see every GPU of the host) claim one instead: each takes
an exclusive `flock` on `gpu-<index>.lock` in a directory they share, so no two train on the
same GPU; the kernel drops the lock when the process ends, however it ends.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

from regsearch.errors import RegsearchError

_claims: list[int] = []  # open lock files, held for the life of the process


def visible_gpus() -> tuple[str, ...]:
    """GPU indices this process may use: CUDA_VISIBLE_DEVICES if set, else `nvidia-smi -L`."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(g.strip() for g in listed.split(",") if g.strip() not in ("", "-1"))
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                 timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU"))


def gpu_environment(index: str) -> dict[str, str]:
    """Only this GPU, its memory taken as needed: workers sharing a host must not each
    reserve all of it at start-up."""
    return {"CUDA_VISIBLE_DEVICES": index, "TF_FORCE_GPU_ALLOW_GROWTH": "true"}


def claim_gpu(directory: str | Path) -> str:
    """Take the first visible GPU no other worker holds, and keep it until this process ends."""
    gpus = visible_gpus()
    if not gpus:
        raise RegsearchError(f"--claim-gpu {directory}: no GPU is visible (nvidia-smi -L lists "
                             "none); run the worker without --claim-gpu to train on the CPU")
    folder = Path(directory)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RegsearchError(f"--claim-gpu {directory}: cannot create the lock directory "
                             f"({exc.strerror}); pass a writable directory") from None
    for gpu in gpus:
        fd = os.open(folder / f"gpu-{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _claims.append(fd)
        os.environ.update(gpu_environment(gpu))  # before TensorFlow is imported
        return gpu
    raise RegsearchError(f"--claim-gpu {directory}: all {len(gpus)} GPUs ({', '.join(gpus)}) "
                         "are taken by other workers; run at most one worker per GPU")
