"""Importing regsearch changes no process-wide setting: a notebook keeps its own logging,
warnings filters and environment. The CLI sets its presentation when it runs."""

from __future__ import annotations

import subprocess
from pathlib import Path
import sys

PROBE = """
import logging, os, warnings
import mlflow, numpy, optuna, pandas, sklearn, sqlalchemy, yaml  # their own import effects

def snapshot():
    return (list(warnings.filters), dict(os.environ),
            {n: logging.getLogger(n).level
             for n in ("optuna", "mlflow", "alembic", "regsearch", "")},
            list(logging.getLogger("regsearch").handlers), logging.getLogger("regsearch").propagate)

before = snapshot()
import regsearch, regsearch.cli, regsearch.driver, regsearch.launcher, regsearch.results
import regsearch.confirm, regsearch.recorders.mlflow, regsearch.recorders.mlflow_live
import regsearch.trainers
after = snapshot()
names = ("warnings filters", "environment", "logger levels", "regsearch handlers", "propagate")
print([name for name, a, b in zip(names, before, after) if a != b])
"""


def test_importing_the_package_changes_no_global_state() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_quiets_libraries_and_shows_warnings_as_lines() -> None:
    import logging

    from regsearch import presentation

    saved = {n: logging.getLogger(n).level for n in presentation.NOISY_LOGGERS}
    logger = logging.getLogger("regsearch")
    handlers, propagate = list(logger.handlers), logger.propagate
    try:
        for name in presentation.NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
        logger.handlers.clear()
        presentation.quiet_libraries()
        presentation.show_warnings()
        assert all(logging.getLogger(n).level == logging.WARNING
                   for n in presentation.NOISY_LOGGERS)
        assert len(logger.handlers) == 1 and not logger.propagate
        record = logging.LogRecord("regsearch", logging.WARNING, "x", 1, "disk %s", ("full",),
                                   None)
        assert logger.handlers[0].format(record) == "regsearch: warning: disk full"
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


def _imports(path: Path, package: Path) -> set[str]:
    """The regsearch modules a module imports when it is imported (not in functions, not
    for type checking only)."""
    import ast

    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        nodes = node.body if isinstance(node, ast.Try) else [node]
        for item in nodes:
            if isinstance(item, ast.ImportFrom) and (item.module or "").startswith("regsearch"):
                module = item.module or ""
                for alias in item.names:
                    sub = f"{module}.{alias.name}"
                    found.add(sub if _path(sub, package) else module)
            elif isinstance(item, ast.Import):
                found |= {a.name for a in item.names if a.name.startswith("regsearch")}
    return found


def _path(module: str, package: Path) -> Path | None:
    base = package.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_no_import_cycles() -> None:
    package = Path(__file__).resolve().parents[1] / "regsearch"
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = _imports(path, package) - {name}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, " -> ".join(cycles[0])
