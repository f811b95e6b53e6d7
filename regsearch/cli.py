"""`regsearch run | validate | best`: user errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn
from collections.abc import Callable, Sequence

from regsearch import opening, presentation
from regsearch.errors import RegsearchError
from regsearch.spec import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, trials_of

EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_STOPPED, EXIT_BUG = 2, 130, 143, 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool cut off by it


def _cmd_schema(args: argparse.Namespace) -> int:
    from regsearch.study_file import json_schema_text

    print(json_schema_text(), end="")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from regsearch.data import load_dataset
    from regsearch.objective import resolve_objective
    from regsearch.study_file import load_spec

    spec = load_spec(args.study)
    data = load_dataset(spec.data, seed=spec.seed, task=spec.model.task)
    objective = resolve_objective(spec, data.task)
    print(f"ok: {spec.name} ({args.study}): {data.description}; objective {objective.metric} "
          f"({objective.direction}); regularizers {', '.join(spec.space.regularizers)}")
    return 0


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """Storage and MLflow URIs: the flags, else REGSEARCH_STORAGE / REGSEARCH_MLFLOW (how
    containers and the launcher pass URLs holding passwords), else the study file; each
    checked as the study file's field is."""
    import os

    from regsearch.errors import SpecError
    from regsearch.study_file import check_field

    where: dict[str, str | None] = {}
    for key, field, variable in (("storage", "storage", "REGSEARCH_STORAGE"),
                                 ("mlflow", "mlflow.tracking_uri", "REGSEARCH_MLFLOW")):
        flag = getattr(args, key)
        value = flag or os.environ.get(variable) or None
        try:
            where[key] = value and check_field(field, value)
        except ValueError as bad:
            raise SpecError(f"--{key}" if flag else variable, "", str(bad)) from None
    return where


def _cmd_run(args: argparse.Namespace) -> int:
    from regsearch import driver, report
    from regsearch.progress import Progress
    from regsearch.study_file import load_spec
    from regsearch.trainers import make_trainer

    spec = load_spec(args.study)
    if args.workers is not None or args.gpus is not None:
        from regsearch import launcher

        return launcher.launch(args.study, spec, launcher.plan(args.workers, args.gpus),
                               trials=args.trials, timeout=args.timeout, **_where(args))
    run = opening.open_run(spec, n_trials=args.trials, timeout=args.timeout, **_where(args))
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
    print(report.render(report.study_summary(run.study, run.storage_url), "table"))
    report.raise_if_all_diverged(run.study, spec)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from regsearch import driver
    from regsearch.study_file import load_spec
    from regsearch.storage import mask_url

    spec = load_spec(args.study)
    run = opening.open_run(spec, n_trials=args.trials, **_where(args))
    driver.prepare(run)
    print(f"ok: study {spec.name} is ready in {mask_url(run.storage_url)} "
          f"({trials_of(run.done, run.budget)} done); start workers with: regsearch worker "
          f"{args.study}")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
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
                           **_where(args))
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


def _cmd_sync(args: argparse.Namespace) -> int:
    from regsearch.repair import reconcile

    where = _where(args)
    mended, written, kept = reconcile(args.name, where["storage"] or DEFAULT_STORAGE,
                                      where["mlflow"] or DEFAULT_TRACKING_URI)
    print(f"synced {args.name}: {written} trial runs written to MLflow, {kept} already "
          f"there; {mended} ledger rows mended from Optuna")
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    """The MLflow UI on the local store: this process becomes `mlflow server`.

    Exec rather than a child process, so that a stop signal reaches the server itself.
    """
    import os

    from regsearch.recorders.mlflow import artifact_root
    from regsearch.storage import expand_home

    store = expand_home(args.mlflow)
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
               "--host", args.host, "--port", str(args.port)]
    root = artifact_root(store)
    if root:
        command += ["--default-artifact-root", root]
    print(f"MLflow UI at http://{args.host}:{args.port} (Ctrl-C to stop)", file=sys.stderr,
          flush=True)
    # One local viewer needs neither several workers nor MLflow's job runner; both slow start-up.
    os.environ.setdefault("MLFLOW_WORKERS", "1")
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)


def _cmd_best(args: argparse.Namespace) -> int:
    from regsearch import report

    # Read-only: never creates a database.
    url = _where(args)["storage"] or DEFAULT_STORAGE
    study = report.load_study(args.name, url)
    print(report.render(report.study_summary(study, url, top=args.top), args.format))
    return 0


def _cmd_confirm(args: argparse.Namespace) -> int:
    """Confirm an existing study, with its own spec as the ledger keeps it."""
    from dataclasses import replace

    from regsearch import driver, report
    from regsearch.spec import ConfirmSpec
    from regsearch.trainers import make_trainer

    where = _where(args)
    url = where["storage"] or DEFAULT_STORAGE
    spec = report.stored_spec(args.name, url)
    settings = spec.confirm or ConfirmSpec()
    settings = replace(settings, **{k: v for k, v in (("top", args.top), ("seeds", args.seeds))
                                    if v is not None})
    spec = replace(spec, confirm=settings)
    run = opening.open_run(spec, storage=url, mlflow=where["mlflow"])
    driver.confirm_only(run, make_trainer(run))
    print(report.render(report.study_summary(run.study, url), "table"))
    return 0


FORMATS = ("table", "json", "yaml")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("regsearch").strip()
        where = f"{command}: " if command else ""
        self.exit(EXIT_USER_ERROR, f"regsearch: error: {where}{message}; see "
                                   f"`{self.prog} --help`\n")


def _field(path: str) -> Callable[[str], Any]:
    """An argparse type checking a flag as the study-file field `path` is checked."""
    from regsearch.study_file import check_field

    def convert(text: str) -> Any:
        try:
            return check_field(path, text)
        except ValueError as bad:
            raise argparse.ArgumentTypeError(str(bad)) from None
    return convert


class _Version(argparse.Action):
    """`--version`, reading the installed metadata only when asked (every other call of
    the CLI builds this parser too)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from regsearch import __version__

        print(f"regsearch {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="regsearch", description="Search Keras regularization with Optuna.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action=_Version, help="show the installed version")
    # Accepted after the subcommand too; SUPPRESS keeps it from resetting one given before.
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks of errors")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", parents=[common], help="run (or continue) a study")
    run.add_argument("study", help="study file, e.g. studies/digits-quick.yaml")
    run.add_argument("--trials", type=_field("search.n_trials"),
                     help="total trial budget of the study")
    run.add_argument("--timeout", type=_field("search.timeout"),
                     help="stop starting trials after S seconds")
    run.add_argument("--storage", help="SQLAlchemy URL (overrides the study file)")
    run.add_argument("--mlflow", metavar="URI",
                     help="MLflow tracking URI (overrides the study file)")
    run.add_argument("--workers", type=_positive_int,
                     help="worker processes on this machine (a server database for more than 1)")
    run.add_argument("--gpus", metavar="all|0,2,3", help="one worker per GPU")
    run.set_defaults(handler=_cmd_run)

    where = _Parser(add_help=False)
    where.add_argument("study", help="study file")
    where.add_argument("--storage", help="SQLAlchemy URL (default: $REGSEARCH_STORAGE, "
                                         "else the study file's)")
    where.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default: "
                                                      "$REGSEARCH_MLFLOW, else the study file's)")
    where.add_argument("--trials", type=_field("search.n_trials"),
                       help="total trial budget of the study")
    init = commands.add_parser("init", parents=[common, where],
                               help="create the study, its tables and MLflow experiment; once")
    init.set_defaults(handler=_cmd_init)
    worker = commands.add_parser("worker", parents=[common, where],
                                 help="join an existing study and train until its budget is spent")
    worker.add_argument("--timeout", type=_field("search.timeout"),
                        help="stop starting trials after S seconds")
    worker.add_argument("--claim-gpu", metavar="DIR",
                        help="take one GPU no other worker of this host holds, through lock "
                             "files in DIR (a directory the workers share)")
    worker.set_defaults(handler=_cmd_worker)

    sync = commands.add_parser("sync", parents=[common],
                               help="write trials MLflow is missing from the ledger")
    sync.add_argument("name", help="study name")
    sync.add_argument("--storage", help=f"default $REGSEARCH_STORAGE, else {DEFAULT_STORAGE}")
    sync.add_argument("--mlflow", metavar="URI",
                      help=f"default $REGSEARCH_MLFLOW, else {DEFAULT_TRACKING_URI}")
    sync.set_defaults(handler=_cmd_sync)

    ui = commands.add_parser("ui", parents=[common], help="serve the MLflow UI for the studies")
    ui.add_argument("--mlflow", metavar="URI", default=DEFAULT_TRACKING_URI,
                    help=f"backend store, default {DEFAULT_TRACKING_URI}")
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_cmd_ui)

    validate = commands.add_parser("validate", parents=[common],
                                   help="check a study file and its data; writes nothing")
    validate.add_argument("study")
    validate.set_defaults(handler=_cmd_validate)

    schema = commands.add_parser("schema", parents=[common],
                                 help="print the JSON Schema of study files (for editors)")
    schema.set_defaults(handler=_cmd_schema)

    best = commands.add_parser("best", parents=[common], help="show a study's best config")
    best.add_argument("name", help="study name (the `name:` of its study file)")
    best.add_argument("--storage", help=f"default $REGSEARCH_STORAGE, else {DEFAULT_STORAGE}")
    best.set_defaults(mlflow=None)
    best.add_argument("--format", choices=FORMATS, default="table")
    best.add_argument("--top", type=_positive_int, default=5, help="rows in the leaderboard")
    best.set_defaults(handler=_cmd_best)

    confirm = commands.add_parser("confirm", parents=[common],
                                  help="train a study's top configurations and the default "
                                       "again over fresh seeds")
    confirm.add_argument("name", help="study name")
    confirm.add_argument("--storage", help=f"default $REGSEARCH_STORAGE, else {DEFAULT_STORAGE}")
    confirm.add_argument("--mlflow", metavar="URI", help="default $REGSEARCH_MLFLOW, else the "
                                                         "study's own")
    confirm.add_argument("--top", type=_positive_int, help="configurations to confirm "
                                                          "(default: the study file's, 5)")
    confirm.add_argument("--seeds", type=_at_least_two, help="fresh seeds per configuration "
                                                            "(default: the study file's, 5)")
    confirm.set_defaults(handler=_cmd_confirm)
    return parser


def _at_least_two(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2 (a spread needs two seeds), got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    presentation.quiet_libraries()
    presentation.show_warnings()
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        code = handler(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`regsearch best x | head`): stop quietly, as Unix tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except RegsearchError as exc:
        if args.debug:
            raise
        for line in str(exc).splitlines():  # a study file may have several problems
            print(f"regsearch: error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        from regsearch.interrupts import Stopped

        print("regsearch: stopped" if isinstance(exc, Stopped) else "regsearch: interrupted",
              file=sys.stderr)
        return EXIT_STOPPED if isinstance(exc, Stopped) else EXIT_INTERRUPTED
    except Exception as exc:  # a bug: say so briefly, keep the traceback for --debug
        if args.debug:
            raise
        print(f"regsearch: internal error: {exc!r}; rerun with --debug for the traceback "
              "and report it", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
