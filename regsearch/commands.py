"""What each `regsearch` command does, once its flags are parsed (`cli` parses them and
turns user errors into one line and exit code 2)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from regsearch import opening
from regsearch.errors import EXIT_INTERRUPTED, EXIT_STOPPED
from regsearch.spec import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, trials_of


def schema_command(args: argparse.Namespace) -> int:
    from regsearch.study_file import json_schema_text

    print(json_schema_text(), end="")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    from regsearch.data import load_dataset
    from regsearch.objective import resolve_objective
    from regsearch.study_file import load_spec

    spec = load_spec(args.study)
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    print(f"ok: {spec.name} ({args.study}): {data.description}; objective {objective.metric} "
          f"({objective.direction}); regularizers {', '.join(spec.space.regularizers)}")
    return 0


def locations(args: argparse.Namespace) -> dict[str, Any]:
    """Storage and MLflow URIs: the flags, else REGSEARCH_STORAGE / REGSEARCH_MLFLOW (how
    containers and the launcher pass URLs holding passwords), else the study file; each
    checked as the study file's field is."""
    import os

    from regsearch.errors import SpecError
    from regsearch.study_file import check_field

    where: dict[str, str | None] = {}
    for key, field, variable in (("storage", "storage", "REGSEARCH_STORAGE"),
                                 ("mlflow", "mlflow.tracking_uri", "REGSEARCH_MLFLOW")):
        flag = getattr(args, key, None)
        value = flag or os.environ.get(variable) or None
        try:
            where[key] = value and check_field(field, value)
        except ValueError as bad:
            raise SpecError(f"--{key}" if flag else variable, "", str(bad)) from None
    return where


def study_named(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The study a command is about (`args.name`: its name, or its study file) and its
    `locations`, the study file's storage and MLflow URI filling in for missing flags."""
    where = locations(args)
    name = args.name
    if not name.endswith((".yaml", ".yml")):
        return name, where
    from regsearch.study_file import load_spec

    spec = load_spec(name)
    where["storage"] = where["storage"] or spec.storage
    if spec.mlflow.enabled:
        where["mlflow"] = where["mlflow"] or spec.mlflow.tracking_uri
    return spec.name, where


def run_command(args: argparse.Namespace) -> int:
    from regsearch import driver, results
    from regsearch.progress import Progress
    from regsearch.study_file import load_spec
    from regsearch.trainers import make_trainer

    spec = load_spec(args.study)
    spent = _spent_study(spec, args)
    if spent is not None:
        print(spent)
        return 0
    if args.workers is not None or args.gpus is not None:
        from regsearch import launcher

        return launcher.launch(args.study, spec, launcher.plan(args.workers, args.gpus),
                               trials=args.trials, timeout=args.timeout, **locations(args))
    if sys.stderr.isatty():  # a person waits: say why (a log keeps errors on one line)
        print(f"study {spec.name}: loading the data and TensorFlow", file=sys.stderr,
              flush=True)
    run = opening.open_run(spec, n_trials=args.trials, timeout=args.timeout, **locations(args))
    progress = Progress()
    try:
        driver.run_study(run, make_trainer(run), [progress])
    except KeyboardInterrupt:
        progress.close()
        running = ("the running trial was" if run.interrupted == 1 else
                   f"the {run.interrupted} running trials were")
        print(f"regsearch: interrupted; {trials_of(run.done, run.budget)} are recorded and "
              f"{running} marked failed (not counted); run the same command to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    progress.close()
    print(results.render(results.study_summary(run.study, run.storage_url), "table"))
    results.raise_if_all_diverged(run.study, spec)
    return 0


def _spent_study(spec: Any, args: argparse.Namespace) -> str | None:
    """The summary `run` prints for a study of this spec whose budget is spent and that has
    nothing left to confirm, read without loading TensorFlow or the data; how to extend the
    budget goes to stderr. None when there is work to do (or anything to check: the usual
    path then runs, with its checks and errors)."""
    from optuna.trial import TrialState

    from regsearch import results
    from regsearch.errors import RegsearchError
    from regsearch.liveness import count_done
    from regsearch.opening import HASH_ATTR
    from regsearch.spec import UNLIMITED
    from regsearch.storage import expand_home

    budget = args.trials if args.trials is not None else spec.search.n_trials
    if budget is None or budget >= UNLIMITED or args.timeout is not None:
        return None
    url = expand_home(locations(args)["storage"] or spec.storage)
    try:
        study = results.load_study(spec.name, url)
    except RegsearchError:
        return None
    trials = study.get_trials(deepcopy=False)
    done = count_done(trials)
    if study.user_attrs.get(HASH_ATTR) != spec.spec_hash or done < budget or \
            any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials):
        return None
    summary = results.study_summary(study, url)
    if spec.confirm is not None and summary["confirmation"] is None:
        return None
    print(f"study {spec.name}: its budget is spent ({trials_of(done, budget)}); to add "
          f"{budget} more: regsearch run {args.study} --trials {done + budget}",
          file=sys.stderr, flush=True)
    return results.render(summary, "table")


def init_command(args: argparse.Namespace) -> int:
    from regsearch import driver
    from regsearch.study_file import load_spec
    from regsearch.storage import mask_url

    spec = load_spec(args.study)
    run = opening.open_run(spec, n_trials=args.trials, **locations(args))
    driver.prepare(run)
    print(f"ok: study {spec.name} is ready in {mask_url(run.storage_url)} "
          f"({trials_of(run.done, run.budget)} done); start workers with: regsearch worker "
          f"{args.study}")
    return 0


def worker_command(args: argparse.Namespace) -> int:
    """Join a study and work until its budget is spent; recycle the process when told to."""
    import os

    from regsearch.devices import claim_gpu
    from regsearch.study_file import load_spec

    spec = load_spec(args.study)
    if args.claim_gpu:  # before anything starts CUDA
        print(f"regsearch: worker on GPU {claim_gpu(args.claim_gpu)}", file=sys.stderr)

    from regsearch import driver, interrupts
    from regsearch.progress import Progress
    from regsearch.trainers import make_trainer

    run = opening.open_run(spec, n_trials=args.trials, timeout=args.timeout, join=True,
                           **locations(args))
    progress = Progress()
    try:
        recycle = driver.run_study(run, make_trainer(run), [progress],
                                   max_trials=spec.workers.recycle_after)
    except interrupts.Stopped:
        progress.close()
        print("regsearch: worker stopped; its running trials were re-queued", file=sys.stderr)
        return EXIT_STOPPED
    progress.close()
    if recycle and run.done < run.budget:  # a fresh process: memory held by TF goes back
        print(f"regsearch: worker recycled after {spec.workers.recycle_after} trials",
              file=sys.stderr, flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "regsearch", *sys.argv[1:]])
    print(f"regsearch: worker done: the study has {trials_of(run.done, run.budget)}",
          file=sys.stderr)
    return 0


def sync_command(args: argparse.Namespace) -> int:
    from regsearch.repair import reconcile

    name, where = study_named(args)
    mended, written, kept = reconcile(name, where["storage"] or DEFAULT_STORAGE,
                                      where["mlflow"] or DEFAULT_TRACKING_URI)
    print(f"synced {name}: {written} trial runs written to MLflow, {kept} already "
          f"there; {mended} ledger rows mended from Optuna")
    return 0


def ui_command(args: argparse.Namespace) -> int:
    """The MLflow UI on the local store: this process becomes `mlflow server`.

    Exec rather than a child process, so that a stop signal reaches the server itself.
    """
    import os

    from regsearch.recorders.mlflow import artifact_root
    from regsearch.recorders.mlflow_view import study_pages
    from regsearch.storage import expand_home, require_existing_store

    store = expand_home(locations(args)["mlflow"] or DEFAULT_TRACKING_URI)
    require_existing_store(store)
    base = f"http://{args.host}:{args.port}"
    pages = study_pages(store, base, args.name)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--host", args.host, "--port", str(args.port)]
    root = artifact_root(store)
    if root:
        command += ["--default-artifact-root", root]
    print(f"MLflow UI at {base} (Ctrl-C to stop)", file=sys.stderr)
    for name, url in pages.items():
        print(f"  {name}: {url}", file=sys.stderr)
    sys.stderr.flush()
    # One local viewer needs neither several workers nor MLflow's job runner; both slow start-up.
    os.environ.setdefault("MLFLOW_WORKERS", "1")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)


def best_command(args: argparse.Namespace) -> int:
    from regsearch import results

    # Read-only: never creates a database.
    name, where = study_named(args)
    url = where["storage"] or DEFAULT_STORAGE
    study = results.load_study(name, url)
    print(results.render(results.study_summary(study, url, top=args.top), args.format))
    return 0


def export_command(args: argparse.Namespace) -> int:
    from regsearch import exports as export

    if args.register and args.format != "mlflow":
        raise export.ExportError("--register needs --format mlflow")
    name, where = study_named(args)
    done = export.export(name, args.format, storage_url=where["storage"] or DEFAULT_STORAGE,
                         out=args.out, trial=args.trial, rows=args.refit, force=args.force,
                         tracking_uri=where["mlflow"], register=args.register)
    if done.text is not None:
        print(done.text, end="")
        return 0
    refit = done.document.get("refit")
    if refit:
        metric = done.document["objective"]["metric"]
        test = f", test {metric} {refit['test']:.4f}" if refit["test"] is not None else ""
        trained = "on them" if refit["rows"] == "train+val" else "held out"
        print(f"refit on {refit['rows']} rows for {done.document['training']['epochs']} "
              f"epochs: validation {metric} {refit['validation']:.4f} ({trained}){test}")
    for path in done.paths:
        print(f"wrote {path}")
    if done.model_uri:
        print(f"logged {done.model_uri}" + (f"; registered {done.registered}"
                                           if done.registered else ""))
    return 0


def confirm_command(args: argparse.Namespace) -> int:
    """Confirm an existing study, with its own spec as the ledger keeps it."""
    from dataclasses import replace

    from regsearch import driver, results
    from regsearch.spec import ConfirmSpec
    from regsearch.trainers import make_trainer

    name, where = study_named(args)
    url = where["storage"] or DEFAULT_STORAGE
    spec = results.stored_spec(name, url)
    settings = spec.confirm or ConfirmSpec()
    settings = replace(settings, **{k: v for k, v in (("top", args.top), ("seeds", args.seeds))
                                    if v is not None})
    spec = replace(spec, confirm=settings)
    run = opening.open_run(spec, storage=url, mlflow=where["mlflow"])
    driver.confirm_only(run, make_trainer(run))
    print(results.render(results.study_summary(run.study, url), "table"))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    from regsearch.api import report

    name, where = study_named(args)
    done = report(name, out=args.out or Path("reports") / name,
                  storage=where["storage"] or DEFAULT_STORAGE,
                  mlflow=False if args.no_mlflow else where["mlflow"])
    print(f"wrote {done.html} and {len(done.pngs)} figures as PNG in {done.html.parent}")
    if done.mlflow_run:
        print(f"logged them to the study's MLflow parent run {done.mlflow_run} (artifacts: "
              "report/)")
    return 0
