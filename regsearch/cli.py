"""The `regsearch` command line: parsing only (what each command does is in `commands`).

User errors are one line and exit code 2. Every option's help shows its default, and each
command's help ends with the environment variables it reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn
from collections.abc import Callable, Sequence

from regsearch import commands, presentation
from regsearch.errors import (EXIT_BROKEN_PIPE, EXIT_BUG, EXIT_INTERRUPTED, EXIT_STOPPED,
                              EXIT_USER_ERROR, RegsearchError)
from regsearch.exports import FORMATS as EXPORT_FORMATS
from regsearch.spec import DEFAULT_STORAGE, DEFAULT_TRACKING_URI



FORMATS = ("table", "json", "yaml")

#: What each kind of command reads from the environment, for the end of its help.
_LOCATIONS_ENV = ("environment: REGSEARCH_STORAGE and REGSEARCH_MLFLOW stand in for --storage "
                  "and --mlflow (a URL holding a password stays out of the process list)")
_STORAGE_ENV = ("environment: REGSEARCH_STORAGE stands in for --storage (a URL holding a "
                "password stays out of the process list)")
_TRAINING_ENV = ("; KERAS_BACKEND (tensorflow, the default, or jax), CUDA_VISIBLE_DEVICES (the "
                 "GPUs a process may use), REGSEARCH_COMPILE_CACHE (a folder for compiled "
                 "programs, or off; default ~/.cache/regsearch)")


class _Help(argparse.HelpFormatter):
    """Each option's default at the end of its help, where it has one worth showing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default in (None, False, argparse.SUPPRESS) or "default" in text
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

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
    subcommands = parser.add_subparsers(dest="command", required=True)

    run = subcommands.add_parser("run", parents=[common], help="run (or continue) a study",
                                 epilog=_LOCATIONS_ENV + _TRAINING_ENV)
    run.add_argument("study", help="study file, e.g. studies/digits-quick.yaml")
    run.add_argument("--trials", type=_field("search.n_trials"),
                     help="total trial budget of the study")
    run.add_argument("--timeout", type=_field("search.timeout"),
                     help="stop starting trials after S seconds")
    run.add_argument("--storage", help="SQLAlchemy URL (default: $REGSEARCH_STORAGE, else "
                                       "the study file's)")
    run.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default: "
                                                    "$REGSEARCH_MLFLOW, else the study file's)")
    run.add_argument("--workers", type=_positive_int,
                     help="worker processes on this machine (a server database for more than 1)")
    run.add_argument("--gpus", metavar="all|0,2,3", help="one worker per GPU")
    run.set_defaults(handler=commands.run_command)

    where = _Parser(add_help=False)
    where.add_argument("study", help="study file")
    where.add_argument("--storage", help="SQLAlchemy URL (default: $REGSEARCH_STORAGE, "
                                         "else the study file's)")
    where.add_argument("--mlflow", metavar="URI", help="MLflow tracking URI (default: "
                                                      "$REGSEARCH_MLFLOW, else the study file's)")
    where.add_argument("--trials", type=_field("search.n_trials"),
                       help="total trial budget of the study")
    init = subcommands.add_parser("init", parents=[common, where], epilog=_LOCATIONS_ENV,
                               help="create the study, its tables and MLflow experiment; once")
    init.set_defaults(handler=commands.init_command)
    worker = subcommands.add_parser("worker", parents=[common, where],
                                 epilog=_LOCATIONS_ENV + _TRAINING_ENV,
                                 help="join an existing study and train until its budget is spent")
    worker.add_argument("--timeout", type=_field("search.timeout"),
                        help="stop starting trials after S seconds")
    worker.add_argument("--claim-gpu", metavar="DIR",
                        help="take one GPU no other worker of this host holds, through lock "
                             "files in DIR (a directory the workers share)")
    worker.set_defaults(handler=commands.worker_command)

    # The commands about a recorded study: its name or its study file, and where it lives.
    stored = _Parser(add_help=False)
    stored.add_argument("name", metavar="STUDY", help="study name, or its study file (whose "
                        "storage and MLflow URI then serve as defaults)")
    stored.add_argument("--storage", help=f"SQLAlchemy URL (default: $REGSEARCH_STORAGE, else "
                                          f"the study file's, else {DEFAULT_STORAGE})")

    def stored_command(name: str, help: str, *, mlflow: str | None) -> argparse.ArgumentParser:
        command = subcommands.add_parser(name, parents=[common, stored], help=help,
                                         epilog=_STORAGE_ENV if mlflow is None
                                         else _LOCATIONS_ENV)
        if mlflow is None:
            command.set_defaults(mlflow=None)
        else:
            command.add_argument("--mlflow", metavar="URI", help=mlflow)
        return command

    sync = stored_command("sync", "write trials MLflow is missing from the ledger",
                          mlflow="MLflow tracking URI (default: $REGSEARCH_MLFLOW, else the "
                                 f"study file's, else {DEFAULT_TRACKING_URI})")
    sync.set_defaults(handler=commands.sync_command)

    ui = subcommands.add_parser("ui", parents=[common], help="serve the MLflow UI for the studies",
                                epilog="environment: REGSEARCH_MLFLOW stands in for --mlflow")
    ui.add_argument("name", nargs="?", help="a study: print only its page (the runs table "
                    "sorted by the objective, with its columns); default: every study's")
    ui.add_argument("--mlflow", metavar="URI", help="the MLflow store to serve (default: "
                    f"$REGSEARCH_MLFLOW, else {DEFAULT_TRACKING_URI})")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ui.add_argument("--port", type=int, default=5000, help="port to listen on")
    ui.set_defaults(handler=commands.ui_command)

    validate = subcommands.add_parser("validate", parents=[common],
                                   help="check a study file and its data; writes nothing")
    validate.add_argument("study", help="study file")
    validate.set_defaults(handler=commands.validate_command)

    schema = subcommands.add_parser("schema", parents=[common],
                                 help="print the JSON Schema of study files (for editors)")
    schema.set_defaults(handler=commands.schema_command)

    best = stored_command("best", "show a study's best config", mlflow=None)
    best.add_argument("-f", "--format", choices=FORMATS, default="table", help="output format")
    best.add_argument("--top", type=_positive_int, default=5, help="rows in the leaderboard")
    best.set_defaults(handler=commands.best_command)

    confirm = stored_command("confirm", "train a study's top configurations and the default "
                                        "again over fresh seeds",
                             mlflow="MLflow tracking URI (default: $REGSEARCH_MLFLOW, else the "
                                    "study's own)")
    confirm.add_argument("--top", type=_positive_int, help="configurations to confirm "
                                                          "(default: the study file's, 5)")
    confirm.add_argument("--seeds", type=_at_least_two, help="fresh seeds per configuration "
                                                            "(default: the study file's, 5)")
    confirm.set_defaults(handler=commands.confirm_command)

    export = stored_command("export", "export a study's best configuration: a config file, "
                                      "Python code, a trained .keras model, or an MLflow model",
                            mlflow="mlflow format: MLflow tracking URI (default: "
                                   "$REGSEARCH_MLFLOW, else the study's own)")
    export.add_argument("-f", "--format", required=True, choices=EXPORT_FORMATS,
                        help="yaml/json: the whole configuration; python: standalone Keras "
                             "code; keras: retrained, raw features in; mlflow: that model in "
                             "the study's MLflow parent run")
    export.add_argument("--out", type=Path, metavar="PATH",
                        help="file to write (yaml/json/python: default stdout; keras: default "
                             "NAME.keras, with the configuration and refit scores in NAME.json)")
    export.add_argument("--trial", type=_trial_number, help="export this trial instead of the "
                                                            "reported best")
    export.add_argument("--refit", choices=("train", "train+val"), default="train",
                        help="keras/mlflow: retrain on the training rows or on training + "
                             "validation rows, for the best epoch count")
    export.add_argument("--register", metavar="MODEL_NAME",
                        help="mlflow: register the model as a new version of MODEL_NAME")
    export.add_argument("--force", action="store_true", help="replace an existing --out file")
    export.set_defaults(handler=commands.export_command)

    report = stored_command("report", "draw why the best won: one self-contained HTML file "
                                      "and PNGs, also logged to the study's MLflow parent run",
                            mlflow="MLflow tracking URI (default: $REGSEARCH_MLFLOW, else the "
                                   "study's own)")
    report.add_argument("--out", type=Path, metavar="DIR", help="default reports/NAME")
    report.add_argument("--no-mlflow", action="store_true", help="write the files only")
    report.set_defaults(handler=commands.report_command)
    return parser


def _trial_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a trial number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"trial numbers start at 0, got {value}")
    return value


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
