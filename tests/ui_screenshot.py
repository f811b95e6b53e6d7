"""Headless Chromium for UI checks: a screenshot for people, the rendered DOM for asserts.

MLflow's UI is a React app: the HTML the server sends is an empty shell, so a check has to
run the page's scripts. Chromium's own `--dump-dom` and `--screenshot` do that with no driver
library and no network, and one run gives both, so the picture shows what the asserts saw.

    python tests/ui_screenshot.py URL OUT.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

DEBIAN_CHROMIUM = "/usr/bin/chromium"
WINDOW = (1600, 1000)
# Virtual time stands still while requests are pending and skips idle waits, so this is
# how long the app may "run", not a sleep; MLflow's runs table renders well within it.
BUDGET_MS = 15_000
# Root in a container needs --no-sandbox; the rest keep Chromium off the network and quiet.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--hide-scrollbars")


def find_chromium() -> str | None:
    """`chromium` on PATH, else Debian's path; None when neither (the UI test then skips)."""
    found = shutil.which("chromium")
    if found:
        return found
    return DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).is_file() else None


def render(url: str, screenshot: Path | str | None = None, *, budget_ms: int = BUDGET_MS,
           window: tuple[int, int] = WINDOW, timeout: float = 90,
           console: list[str] | None = None) -> str:
    """Load `url` once and return the DOM after its scripts ran; also save a PNG if asked,
    and add what the page wrote to its console (errors included) to `console` if given.

    A fresh profile per call, so no state (MLflow keeps view settings in local storage)
    leaks from one page load into the next.
    """
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("Chromium not found: install it (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        command = [binary, *FLAGS, f"--user-data-dir={profile}",
                   f"--window-size={window[0]},{window[1]}",
                   f"--virtual-time-budget={budget_ms}", "--dump-dom",
                   *(("--enable-logging=stderr", "--v=0") if console is not None else ())]
        if screenshot is not None:
            command.append(f"--screenshot={Path(screenshot).resolve()}")
        done = subprocess.run([*command, url], capture_output=True, text=True, timeout=timeout)
    missing = screenshot is not None and not Path(screenshot).is_file()
    if done.returncode != 0 or missing or "<html" not in done.stdout:
        raise RuntimeError(f"Chromium failed on {url} (exit {done.returncode}):\n"
                           f"{done.stderr[-2000:]}")
    if console is not None:  # Chromium logs each console message as INFO:CONSOLE
        console.extend(line.split("] ", 1)[-1] for line in done.stderr.splitlines()
                       if ":CONSOLE" in line)
    return done.stdout


def save_screenshot(url: str, out: Path | str) -> Path:
    """Save what `url` looks like after rendering as a PNG at `out`."""
    render(url, out)
    return Path(out)


def dump_dom(url: str) -> str:
    """The DOM of `url` after rendering, for asserts on what the page shows."""
    return render(url)


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def page_text(dom: str) -> str:
    """The DOM's text without scripts and styles, one space between pieces: what a reader sees."""
    parser = _Text()
    parser.feed(dom)
    return " ".join(parser.parts)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/ui_screenshot.py URL OUT.png")
    print(save_screenshot(sys.argv[1], sys.argv[2]))
