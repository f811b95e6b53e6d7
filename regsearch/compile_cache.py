"""A persistent XLA compilation cache, so a process compiles a pack's step only once per machine.

The packed trainer's XLA compile takes as long as many epochs of a pack, and every new
process pays it: each worker, each recycled worker, each
`regsearch run` of the same architecture. TensorFlow (`--tf_xla_persistent_cache_directory`)
and JAX (`jax_compilation_cache_dir`) can keep compiled executables on disk keyed by the
program, so a later process with the same model, pack size and batch loads them instead.

The directory is `$REGSEARCH_COMPILE_CACHE`, else `$XDG_CACHE_HOME/regsearch` (default
`~/.cache/regsearch`), one folder per backend version (and one per MLflow version for the
empty MLflow store of `recorders.mlflow_store`); `REGSEARCH_COMPILE_CACHE=off` turns it off.
A cache the user configured for the backend themselves is left alone.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

ENV = "REGSEARCH_COMPILE_CACHE"
_TF_FLAG = "--tf_xla_persistent_cache_directory"
# JAX caches only compiles at least this long; the packed step is well above it, keras.ops'
# small helper functions are below it and stay out of the cache.
_JAX_MIN_COMPILE_S = 0.2


def cache_root() -> Path | None:
    """Where compiled programs (and prepared stores) are kept, or None when turned off."""
    configured = os.environ.get(ENV, "").strip()
    if configured.lower() in ("off", "0", "false", "no"):
        return None
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "regsearch"


def enable(backend: str) -> Path | None:
    """Turn the cache on for `backend` (before its first tensor); returns the folder used.

    Compiled code is only valid for the library that made it, so each backend version gets
    its own folder. A folder that cannot be created (a read-only home in a container) leaves
    the cache off: it saves time, it is never needed.
    """
    root = cache_root()
    if root is None or backend not in ("tensorflow", "jax"):
        return None
    if backend == "tensorflow" and _TF_FLAG in os.environ.get("TF_XLA_FLAGS", ""):
        return None
    if backend == "jax":
        import jax

        if jax.config.jax_compilation_cache_dir:  # type: ignore[attr-defined]
            return None
    folder = root / f"{backend}-{_version(backend)}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if backend == "tensorflow":
        # TensorFlow reads TF_XLA_FLAGS when its runtime starts (the first tensor), not at import.
        os.environ["TF_XLA_FLAGS"] = f"{os.environ.get('TF_XLA_FLAGS', '')} {_TF_FLAG}={folder}"
    else:
        jax.config.update("jax_compilation_cache_dir", str(folder))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", _JAX_MIN_COMPILE_S)
    return folder


def _version(backend: str) -> str:
    for package in (("tensorflow", "tensorflow-cpu") if backend == "tensorflow" else ("jaxlib",)):
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"
