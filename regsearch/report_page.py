"""The HTML page of `regsearch report`: a header that answers first, then every figure.

One file with the figures inline (PNG data URLs) and no script: it opens offline, from a
file, in any browser, and as an MLflow artifact.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from regsearch.recorders.ledger import TrialRecord
    from regsearch.study_report import Drawn

_STYLE = """
body { font-family: sans-serif; max-width: 960px; margin: 2em auto; color: #222; }
img { max-width: 100%; } .note { color: #666; font-style: italic; }
pre { background: #f4f4f4; padding: 1em; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; } td { padding: 2px 12px 2px 0; vertical-align: top; }
.answer { font-size: 1.15em; border-left: 4px solid #444; padding-left: 0.8em; }
"""


def recommendation(summary: dict[str, Any]) -> str:
    """The answer in one sentence."""
    best = summary["best"]
    if best is None:
        return "no trial completed"
    from regsearch.space import RegConfig

    config = RegConfig(**best["config"]).describe()
    confirmation = summary.get("confirmation")
    if confirmation:
        return f"{confirmation['verdict'][0].upper()}{confirmation['verdict'][1:]}. Best: {config}."
    return (f"Best by a single seed: {config} ({summary['metric']} {best['value']:.4f}); not "
            f"confirmed, so run `regsearch confirm {summary['study']}` before trusting it.")


def header_rows(summary: dict[str, Any], info: dict[str, Any],
                records: list[TrialRecord]) -> list[tuple[str, str]]:
    """(label, text) of the facts a reader checks first."""
    model, counts = summary["model"], summary["trials"]
    search = info["spec"].get("search", {})
    budget = " and ".join(filter(None, [
        f"{search['n_trials']} trials" if search.get("n_trials") else "",
        f"{search['timeout']:g} s" if search.get("timeout") else ""])) or "20 trials"
    started = [r.started for r in records if r.started is not None]
    finished = [r.finished for r in records if r.finished is not None]
    wall = _seconds(min(started), max(finished)) if started and finished else None
    done = counts["complete"] + counts["pruned"] + counts["fail"]
    rate = f"{wall:.1f} s, {done / wall:.2f} trials/s" if wall else "unknown"
    units = "-".join(map(str, model["hidden_units"]))
    return [
        ("data", info.get("data_description") or "?"),
        ("model", f"Dense {units} {model['activation']}, {model['output_activation'] or 'linear'}"
                  f" output; {model['optimizer']} learning rate {model['learning_rate']}, "
                  f"batch {model['batch_size']}, up to {model['epochs']} epochs"),
        ("objective", f"{summary['metric']} ({summary['direction']}) on the validation rows"),
        ("budget", budget),
        ("trials", f"{counts['complete']} complete, {counts['pruned']} pruned, "
                   f"{counts['fail']} failed, {counts['running']} running"),
        ("wall time", rate),
    ]


def _seconds(first: datetime, last: datetime) -> float:
    return max((last - first).total_seconds(), 1e-9)


def page(summary: dict[str, Any], info: dict[str, Any], records: list[TrialRecord],
         drawn: list[Drawn], images: dict[str, bytes], table: str) -> str:
    """The whole report as one HTML document; `images`: each drawn figure's PNG by name."""
    name = html.escape(summary["study"])
    rows = "".join(f"<tr><td><b>{html.escape(label)}</b></td><td>{html.escape(text)}</td></tr>"
                   for label, text in header_rows(summary, info, records))
    spec = yaml.safe_dump(info["spec"], sort_keys=False)  # URLs were masked when recorded
    sections = "\n".join(_section(figure, images.get(figure.name)) for figure in drawn)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>regsearch report: {name}</title><style>{_STYLE}</style></head>
<body>
<h1>regsearch report: {name}</h1>
<p class="answer">{html.escape(recommendation(summary))}</p>
<table>{rows}</table>
<details><summary>the study file's fields (passwords masked)</summary>
<pre>{html.escape(spec)}</pre></details>
<h2>The answer, as <code>regsearch best</code> prints it</h2>
<pre>{html.escape(table)}</pre>
{sections}
</body></html>
"""


def _section(figure: Drawn, image: bytes | None) -> str:
    title = html.escape(figure.title)
    note = f'<p class="note">{html.escape(figure.note)}</p>' if figure.note else ""
    if image is None:
        return f'<section id="{figure.name}"><h2>{title}</h2>{note}</section>'
    data = base64.b64encode(image).decode()
    return (f'<section id="{figure.name}"><h2>{title}</h2>'
            f'<img alt="{title}" src="data:image/png;base64,{data}">{note}</section>')
