"""What a person sees of a study in the MLflow UI: the experiment's layout, a ready runs
view, the names and descriptions of runs, and each study's page address.

MLflow 3's UI shows either its GenAI pages or its model-training pages (`workflowType` in
the address; the experiment's `mlflow.experimentKind` tag files it as machine learning), and
opens a "shared view" (columns, order, expanded runs) from an experiment tag named in the
address; regsearch writes the tags and prints the address, so the first page a user opens is
the leaderboard.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

from regsearch.errors import RegsearchError
from regsearch.states import State

if TYPE_CHECKING:
    from regsearch.recorders.ledger import TrialRecord
    from regsearch.space import RegConfig

#: MLflow 3 lays an experiment out by this tag; without it a study opens on the GenAI view.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: A run's description on its MLflow page (MLflow's own tag for it).
NOTE = "mlflow.note.content"
#: MLflow 3's UI shows the model-training pages with this in the address (else the layout
#: last chosen in that browser: GenAI's at first).
TRAINING = "workflowType=machine_learning"
#: The study's ready view: MLflow's shared-view tag, opened by `?viewStateShareKey=regsearch`.
VIEW_KEY = "regsearch"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def view_state(metric: str, direction: str, parent_id: str) -> str:
    """The runs table as the leaderboard: sorted by the objective (best first; pruned and
    confirmation runs, which have none, last), with the configuration's columns."""
    objective = f"metrics.`{objective_key(metric)}`"
    columns = [objective, "metrics.`final_val_loss`", "metrics.`final_best_epoch`",
               *(f"params.`{p}`" for p in ("regularizer", "l1", "l2", "dropout",
                                            "log10_strength")),
               "tags.`regsearch.state`"]
    return json.dumps({"orderByKey": objective, "orderByAsc": direction == "minimize",
                       "selectedColumns": columns, "runsExpanded": {parent_id: True}})


def study_pages(tracking_uri: str, base: str, name: str | None = None) -> dict[str, str]:
    """{study: the address of its runs page} in the MLflow UI served at `base`: its ready
    view where regsearch wrote one. `name` alone, or every study of the store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if name is not None:
        found = client.get_experiment_by_name(name)
        if found is None:
            there = ", ".join(sorted(e.name for e in client.search_experiments()
                                     if e.name != "Default")[:10]) or "none"
            raise RegsearchError(f"no study named {name!r} in the MLflow store (studies "
                                 f"there: {there}); pass --mlflow if it was recorded elsewhere")
        experiments = [found]
    else:
        experiments = sorted((e for e in client.search_experiments() if e.name != "Default"),
                             key=lambda e: e.name)
    return {e.name: f"{base}/#/experiments/{e.experiment_id}/runs?{TRAINING}"
            + (f"&viewStateShareKey={VIEW_KEY}" if VIEW_TAG in e.tags else "")
            for e in experiments}


def objective_key(metric: str) -> str:
    """The objective's metric on the parent run (the study's best) and on each complete
    trial's run (its best epoch's score): one column that sorts the runs as the search
    ranks them."""
    return f"best_{metric}"


def run_params(config: RegConfig) -> dict[str, str]:
    """A trial's params: its configuration, and its strength on a log scale (one axis
    for every type in MLflow's parallel-coordinates chart; l1 and l2 are linear there)."""
    params = {k: str(v) for k, v in config.as_dict().items()}
    if config.strength is not None:
        params["log10_strength"] = f"{math.log10(config.strength):.4f}"
    return params


def trial_note(record: TrialRecord, metric: str) -> str:
    """The run's description on its MLflow page: what it was, how it ended, which time
    is which."""
    ended = {State.COMPLETE: f"complete, {metric} {record.value:.4f} at its best epoch"
             if record.value is not None else "complete",
             State.PRUNED: "pruned by the pruner (a normal end: its curve shows where)",
             }.get(State(record.state), f"failed: {record.reason or 'no reason recorded'}")
    return (f"Trial {record.number} of study {record.study_name}: {record.config.describe()}; "
            f"{ended}. The run's start and end are wall-clock times; the packed trainer "
            "trains several trials at once, so their runs overlap. `final_seconds` is the "
            "training time this trial accounts for.")
