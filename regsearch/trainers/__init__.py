"""Trainers turn one regularization config into per-epoch metrics and an outcome."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import TYPE_CHECKING

from regsearch.trainers.base import EpochMetrics, StopRules, TrialOutcome

if TYPE_CHECKING:
    from regsearch.opening import StudyRun
    from regsearch.protocols import Trainer

__all__ = ["EpochMetrics", "StopRules", "TrialOutcome", "make_trainer"]


def adaptive_pack_cap(budget: int) -> int:
    """At most a quarter of the budget per pack, so the search keeps learning.

    Trials asked together are sampled without each other's results, and a pruner has no
    finished trial to compare with until a pack ends: a pack as large as the budget would
    turn TPE into random search and never prune.
    """
    return max(1, -(-budget // 4))


#: TensorFlow's notices at import, written before it reads its log level from the
#: environment (so TF_CPP_MIN_LOG_LEVEL set from Python comes too late for them).
_START_UP_NOTICES = re.compile(r"All log messages before absl::InitializeLog|"
                               r"^I0000 \S+ +\d+ (port|cpu_feature_guard)\.cc|"
                               r"^To enable the following instructions")


def import_keras() -> None:
    """Import Keras (and its backend) with TensorFlow's start-up notices left out of
    stderr; anything else written meanwhile still gets there."""
    # TensorFlow's C++ start-up chatter drowns the progress display; users can override.
    quiet = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3") == "3"
    if "keras" in sys.modules or not quiet:
        import keras
        return
    with tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            import keras  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True)
                                     if not _START_UP_NOTICES.search(line)))


def make_trainer(run: StudyRun) -> Trainer:
    """The trainer the study file names (`trainer:`), imported only when needed."""
    import_keras()
    objective = {"metric": run.objective.metric, "direction": run.objective.direction}
    if run.spec.trainer == "packed":
        from regsearch.trainers.packed import PackedTrainer, choose_pack_size

        size = choose_pack_size(run.spec, run.data, run.spec.search.pack_size)
        if run.spec.search.pack_size is None:  # memory's members -> trials of that many
            size = min(max(1, size // run.data.members), adaptive_pack_cap(run.budget))
        return PackedTrainer(run.spec, run.data, pack_size=size, **objective)
    from regsearch.trainers.keras import KerasTrainer

    return KerasTrainer(run.spec, run.data, **objective)
