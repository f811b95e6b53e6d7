"""Confirmation runs in MLflow: one nested run per configuration and seed, and the
confirmed winner as the parent run's best.

Each run is named for where its configuration came from (`confirm-t0007-s2`: trial 7,
seed 2; `confirm-default-s0`) and tagged `regsearch.role = confirmation`, so the runs page
can list them apart from the trials. Once a confirmation is complete the parent's `best.*`
tags name its winner, with `best.source = confirmation` and the interval; a single-seed
best written later (a worker stopping) does not replace it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from mlflow.entities import Metric

    from regsearch.recorders.confirmations import PlannedRun
    from regsearch.recorders.ledger import TrialRecord
    from regsearch.recorders.mlflow_batch import BatchWriter, NewRun, RunEnd

SOURCE_TAG = "best.source"


class ConfirmationWrites:
    """`MlflowWriter`'s confirmation writes (a mixin: the writer process calls it by name)."""

    if TYPE_CHECKING:  # what the mixin uses of `MlflowWriter`
        def _batched(self, batched: Callable[[BatchWriter], Any],
                     per_run: Callable[[], Any]) -> Any: ...
        def _start_run(self, experiment_id: str, new: NewRun) -> str: ...
        @staticmethod
        def _run_end(run_id: str, record: TrialRecord, metric: str, *,
                     note: str | None = None) -> RunEnd: ...
        def _finish_run(self, end: RunEnd) -> None: ...
        def _log(self, run_id: str, *, metrics: Iterable[Metric] = (),
                 tags: dict[str, str] | None = None) -> None: ...

    def write_confirmations(self, experiment_id: str, parent_id: str, study: str,
                            runs: list[tuple[PlannedRun, TrialRecord]], metric: str) -> list[str]:
        """A finished run per confirmation run, started and ended in a batch each; ids."""
        from regsearch.recorders import mlflow as m

        new = []
        for run, record in runs:
            source = "default" if run.is_default else f"t{run.trial:04d}"
            new.append(m.NewRun(f"confirm-{source}-s{run.seed_index}", m.epoch_ms(record.started),
                                tags={"mlflow.parentRunId": parent_id,
                                      m.ROLE: "confirmation", m.STUDY: study,
                                      m.TRIAL: "" if run.trial is None else str(run.trial),
                                      "regsearch.seed_index": str(run.seed_index),
                                      "regsearch.default": str(run.is_default).lower(),
                                      m.STATE: "running"},
                                params={**{k: str(v) for k, v in run.config.as_dict().items()},
                                        "seed": str(run.seed)}))
        ids = self._batched(lambda batch: batch.start_runs(experiment_id, new),
                            lambda: [self._start_run(experiment_id, n) for n in new])
        ends = [self._run_end(run_id, record, metric, note=_note(run, record, metric))
                for run_id, (run, record) in zip(ids, runs)]
        self._batched(lambda batch: batch.finish_runs(ends),
                      lambda: list(map(self._finish_run, ends)))
        return ids

    def set_confirmed(self, parent_id: str, winner: dict[str, Any], verdict: str,
                      metric: str) -> None:
        """The confirmed winner as the parent's best: its configuration, mean and interval."""
        import time

        from mlflow.entities import Metric

        score = winner["score"]
        config = winner["config"]
        tags = {SOURCE_TAG: "confirmation",
                "best.trial": "default" if winner["trial"] is None else str(winner["trial"]),
                "best.regularizer": config["regularizer"], "best.l1": str(config["l1"]),
                "best.l2": str(config["l2"]), "best.dropout": str(config["dropout"]),
                "best.mean": str(score["mean"]), "best.ci_low": str(score["low"]),
                "best.ci_high": str(score["high"]), "best.seeds": str(score["n"]),
                "regsearch.verdict": verdict[:4000]}
        self._log(parent_id, metrics=[Metric(f"confirmed_{metric}", score["mean"],
                                             int(time.time() * 1000), 0)], tags=tags)


def _note(run: PlannedRun, record: TrialRecord, metric: str) -> str:
    """A confirmation run's description on its MLflow page (its score is not ranked with
    the search's trials: it has no `best_<metric>`)."""
    source = "the unregularized default" if run.is_default else f"trial {run.trial}'s"
    score = f"{metric} {record.value:.4f}" if record.value is not None else record.state
    return (f"Confirmation: {source} configuration ({run.config.describe()}) trained again "
            f"with fresh seed #{run.seed_index} ({run.seed}): {score}. The study's "
            f"confirmed result is on the parent run (`confirmed_{metric}`, `best.*` tags).")
