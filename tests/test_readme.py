"""The README's set-up commands are the ones CI runs and the ones that work."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _commands(text: str) -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", text)


def test_ci_runs_the_readme_test_command() -> None:
    readme = _commands((ROOT / "README.md").read_text())
    test_command = next(c for c in readme if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_search_command_names_a_shipped_study() -> None:
    search = next(c for c in _commands((ROOT / "README.md").read_text()) if "regsearch run" in c)
    study = re.search(r"regsearch run (\S+)", search).group(1)
    assert (ROOT / study).is_file()


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path: Path) -> None:
    """The README's Python example, run as written from a copy of the repository's studies."""
    example = re.search(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert example is not None
    shutil.copytree(ROOT / "studies", tmp_path / "studies")
    proc = subprocess.run([sys.executable, "-c", example.group(1)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best" in proc.stdout and (tmp_path / "runs" / "regsearch.db").is_file()


def test_readme_layout_names_every_module() -> None:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    modules = {p.name for p in (ROOT / "regsearch").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py") and "packed" not in p.parts}
    missing = sorted(name for name in modules if name not in layout)
    assert not missing, f"README Layout lacks: {missing}"
