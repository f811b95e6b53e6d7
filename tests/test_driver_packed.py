"""The driver's pack loop: slots refilled until the budget, every trial told exactly once."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from regsearch.states import KillReason
from regsearch import driver, interrupts, opening
from regsearch.trainers import make_trainer

pytestmark = pytest.mark.slow


class Concurrency:
    """A listener that tracks how many trials run at once."""

    def __init__(self, interrupt_at_epoch_report: int | None = None) -> None:
        self.running: set[int] = set()
        self.most = 0
        self.ended = 0
        self.reports = 0
        self.interrupt_at = interrupt_at_epoch_report

    def study_opened(self, run) -> None:
        pass

    def trials_started(self, started) -> None:
        self.running.update(number for number, _ in started)
        self.most = max(self.most, len(self.running))

    def epoch_ended(self, number, metrics) -> None:
        self.reports += 1
        if self.reports == self.interrupt_at:
            interrupts.request()  # what the SIGINT handler does on Ctrl-C

    def trials_ended(self, ended) -> None:
        self.running.difference_update(number for number, _, _ in ended)
        self.ended += len(ended)


def packed_spec(make_spec, **overrides):
    search = {"n_trials": 10, "pruner": "none", "pack_size": 4, "sampler": "random"}
    search.update(overrides.pop("search", {}))
    return make_spec(trainer="packed", search=search, mlflow={"enabled": False}, **overrides)


def run(spec, listeners=()) -> opening.StudyRun:
    study_run = opening.open_run(spec)
    driver.run_study(study_run, make_trainer(study_run), listeners)
    return study_run


def test_slots_are_refilled_until_exactly_the_budget(make_spec) -> None:
    watch = Concurrency()
    study_run = run(packed_spec(make_spec), [watch])
    states = [t.state for t in study_run.study.trials]
    assert states == [TrialState.COMPLETE] * 10
    assert watch.most == 4 and watch.ended == 10
    assert all(t.user_attrs["epochs_run"] == 3 for t in study_run.study.trials)
    rows = list(study_run.ledger.records("tiny"))
    assert [r.number for r in rows] == list(range(10))
    assert all(r.state == "complete" and len(r.epochs) == 3 for r in rows)


def test_members_are_pruned_one_by_one(make_spec) -> None:
    spec = packed_spec(make_spec, train__epochs=6,
                       space={"strength": {"low": 1e-4, "high": 30.0}},
                       search={"n_trials": 16, "pruner": "median", "pack_size": 8})
    states = [t.state for t in run(spec).study.trials]
    assert states.count(TrialState.PRUNED) >= 1 and states.count(TrialState.COMPLETE) >= 1
    assert len(states) == 16


def test_ctrl_c_fails_every_running_member_and_a_rerun_completes(make_spec) -> None:
    spec = packed_spec(make_spec)
    study_run = opening.open_run(spec)
    with pytest.raises(KeyboardInterrupt):
        # 4 slots x 3 epochs: report 18 is epoch 2 of the second pack of four trials.
        driver.run_study(study_run, make_trainer(study_run),
                         [Concurrency(interrupt_at_epoch_report=18)])
    trials = study_run.study.trials
    interrupted = [t for t in trials if t.user_attrs.get("fail_reason") == KillReason.INTERRUPTED]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert [t.number for t in interrupted] == [4, 5, 6, 7]
    assert all(t.state == TrialState.FAIL for t in interrupted)
    assert study_run.done == 4
    finished = run(spec)
    assert finished.done == 10


def test_same_seed_same_packed_results(make_spec, tmp_path) -> None:
    def history(name: str) -> list:
        spec = packed_spec(make_spec, storage=f"sqlite:///{tmp_path / name}",
                           search={"n_trials": 6})
        return [(t.params, t.value) for t in run(spec).study.trials]
    assert history("a.db") == history("b.db")


def test_automatic_pack_is_at_most_a_quarter_of_the_budget(make_spec) -> None:
    from regsearch.trainers import adaptive_pack_cap

    assert [adaptive_pack_cap(n) for n in (1, 4, 30, 64)] == [1, 1, 8, 16]
    automatic = make_spec(trainer="packed", search={"n_trials": 30, "pruner": "none"},
                          mlflow={"enabled": False})
    assert make_trainer(opening.open_run(automatic)).pack_size == 8
    chosen = make_spec(trainer="packed", search={"n_trials": 30, "pack_size": 20},
                       mlflow={"enabled": False})
    assert make_trainer(opening.open_run(chosen)).pack_size == 20


def test_a_packs_pruning_reads_the_study_once_an_epoch_and_writes_every_report(
        make_spec) -> None:
    """Optuna's pruners read every trial for each trial's decision; a pack's epoch makes
    them all from one read (it once made 8 reads of 8 running trials an epoch, 87 of a
    96-second search in a pack of 64), and its scores still all reach Optuna."""
    spec = packed_spec(make_spec, train__epochs=6,
                       space={"strength": {"low": 1e-4, "high": 30.0}},
                       search={"n_trials": 16, "pruner": "median", "pack_size": 8})
    study_run = opening.open_run(spec)
    storage = study_run.study._storage
    reads: list[int] = []
    real = storage.get_all_trials

    def counted(*args, **kwargs):
        reads.append(1)
        return real(*args, **kwargs)

    storage.get_all_trials = counted
    trainer = make_trainer(study_run)
    epochs = []
    original = trainer.run_epoch

    def epoch():
        reads.clear()
        finished = original()
        epochs.append(len(reads))
        return finished

    trainer.run_epoch = epoch
    driver.run_study(study_run, trainer)
    assert epochs and max(epochs) == 0  # within the epoch: the pack's own snapshot only
    trials = study_run.study.get_trials()
    assert {t.state for t in trials} == {TrialState.COMPLETE, TrialState.PRUNED}
    records = {r.number: r for r in study_run.ledger.records(spec.name)}
    for trial in trials:  # every epoch's score written, as the ledger has it
        assert trial.intermediate_values == {m.epoch: m.val_metric
                                             for m in records[trial.number].epochs}
