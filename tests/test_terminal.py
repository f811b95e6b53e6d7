"""What a person sees running `regsearch run` on a terminal: a pseudo-terminal (the standard
library's `pty`) stands in for it, 160 columns wide, and the test reads the screen's text."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from clitools import ENV, sqlite_url, study_dict, write_study

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"(\d+\.\d)/(\d+) .*?(\d+) complete, (\d+) pruned, (\d+) failed; "
                 r"(?:search best (\w+)=([0-9.]+) \(#(\d+)\)|no complete trial yet)")


class Terminal:
    """`regsearch ARGS` with a pseudo-terminal as its stdin, stdout and stderr."""

    def __init__(self, cwd: Path, *args: str) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "regsearch", *args], cwd=cwd, env={**ENV, "COLUMNS": "160"},
            stdin=slave, stdout=slave, stderr=slave,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        os.close(slave)
        self.master = master
        self.chunks: list[tuple[float, str]] = []  # (seconds since start, text)

    def read(self, until: float, wanted: str | None = None) -> str:
        """Read until `wanted` shows, the process ends, or `until` seconds pass."""
        while time.monotonic() - self.started < until:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the child closed the terminal
                    data = b""
                if not data:
                    break
                self.chunks.append((time.monotonic() - self.started, data.decode(errors="replace")))
            elif self.proc.poll() is not None:
                break
            if wanted is not None and wanted in self.text:
                break
        return self.text

    @property
    def text(self) -> str:
        return ANSI.sub("", "".join(chunk for _, chunk in self.chunks))

    def bars(self) -> list[re.Match[str]]:
        """Every state the progress bar was drawn in, in order."""
        return [m for piece in re.split(r"[\r\n]", self.text) for m in [BAR.search(piece)] if m]

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(30)
        os.close(self.master)
        return code


def _summary_best(text: str) -> tuple[str, int, str]:
    found = re.search(r"best: trial #(\d+)\s+(\w+)=([0-9.]+)", text)
    assert found, text
    return found.group(2), int(found.group(1)), found.group(3)


def test_a_run_says_at_once_what_it_does_then_counts_how_trials_end(tmp_path: Path) -> None:
    spec = study_dict("tty", sqlite_url(tmp_path), train={"epochs": 4},
                      search={"n_trials": 10, "pruner": "hyperband"})
    write_study(tmp_path, spec)
    screen = Terminal(tmp_path, "run", "study.yaml")
    try:
        screen.read(300)
    finally:
        code = screen.close()
    text = screen.text
    first_at, first = screen.chunks[0]
    assert code == 0, text
    # The first words come before TensorFlow loads (seconds of silence otherwise).
    assert ANSI.sub("", first).startswith("study tty: loading the data and TensorFlow"), text
    assert first_at < 15, (first_at, text)
    assert text.index("loading the data") < text.index("0 of 10 trials already done")
    bars = screen.bars()
    drawn = [piece for piece in re.split(r"[\r\n]", text) if "/10 [" in piece]
    assert len(bars) >= 3 and len(bars) == len(drawn), drawn  # none cut short
    done = [float(b.group(1)) for b in bars]
    assert done == sorted(done) and done[-1] == 10.0, done  # moves forward, ends at the budget
    assert any(not d.is_integer() for d in done), done  # running trials move it between ends
    last = bars[-1]
    counts = tuple(int(last.group(i)) for i in (3, 4, 5))
    table = re.search(r"(\d+) complete, (\d+) pruned, (\d+) failed, 0 running", text)
    assert table and counts == tuple(map(int, table.groups())), text
    assert counts[1] > 0, text  # hyperband pruned some: the count is not always 0
    metric, trial, value = _summary_best(text)
    assert (last.group(6), int(last.group(8)), last.group(7)) == (metric, trial, value), text
    assert all(len(line) <= 160 for line in text.splitlines() if "complete," in line), text


def test_ctrl_c_leaves_the_bar_at_the_trials_that_count(tmp_path: Path) -> None:
    """The interrupted trial is not progress: the bar ends at the recorded trials."""
    spec = study_dict("tty-stop", sqlite_url(tmp_path), train={"epochs": 40},
                      search={"n_trials": 50}, trainer="keras")
    write_study(tmp_path, spec)
    screen = Terminal(tmp_path, "run", "study.yaml")
    try:
        deadline = 240
        while time.monotonic() - screen.started < deadline:
            screen.read(deadline, wanted="1 complete,")
            if "1 complete," in screen.text or screen.proc.poll() is not None:
                break
        assert "1 complete," in screen.text, screen.text
        time.sleep(1.0)  # well inside the next trial's fit
        screen.proc.send_signal(signal.SIGINT)
        screen.read(time.monotonic() - screen.started + 60)  # the next minute at most
    finally:
        code = screen.close()
    text = screen.text
    assert code == 130, text
    recorded = re.search(r"interrupted; (\d+) of 50 trials are recorded", text)
    assert recorded, text
    last = screen.bars()[-1]
    assert float(last.group(1)) == float(recorded.group(1)), (last.group(0), recorded.group(0))
    assert int(last.group(3)) == int(recorded.group(1)), last.group(0)
