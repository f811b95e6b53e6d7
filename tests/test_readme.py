"""The README's set-up commands are the ones CI runs and the ones that work."""

from __future__ import annotations

import re
from pathlib import Path

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
