"""The `dec` command line: thin Typer commands that parse, call the library, and report.

Nothing below this module prints or exits. Library code raises
`dec_cli.errors.DecError`; `main()` turns it into one `error: ...` line and
the documented exit code (0 success, 1 failure, 2 usage error).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dec_cli import __version__
from dec_cli.errors import EXIT_USAGE, DecError
from dec_cli.files import json_text, write_json

app = typer.Typer(
    name="dec",
    help="Evaluate and improve how image classifiers cope with local scale changes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """dec: local scale robustness for timm classifiers (warp, retrofit, finetune, evaluate)."""
    _state["debug"] = debug


# --------------------------------------------------------------------------- shared reporting helpers


def console_for(json_dest: Optional[str], quiet: bool = False) -> Console:
    """Console for human output; moves to stderr when JSON goes to stdout."""
    return Console(stderr=(json_dest == "-"), quiet=quiet, highlight=False)


def progress_bar(console: Console, quiet: bool, *extra_columns: Any) -> Progress:
    """A Rich progress bar; silent under --quiet or when the console is not a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=quiet or not console.is_terminal, transient=False,
    )


def emit_json(data: Any, destination: Optional[str]) -> None:
    """Write the machine-readable result to a file or, for ``-``, to stdout."""
    if destination is None:
        return
    if destination == "-":
        sys.stdout.write(json_text(data))
        sys.stdout.flush()
    else:
        write_json(data, destination)


def fail(message: str, hint: Optional[str] = None, code: int = EXIT_USAGE) -> None:
    """Exit with a one-line error from inside a command (parse-level problems)."""
    err = DecError(message, hint)
    err.exit_code = code
    raise err


# --------------------------------------------------------------------------- entry point


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: run the app, turning user errors into one line and an exit code."""
    try:
        app(args=argv, prog_name="dec", standalone_mode=False)
    except DecError as err:
        if _state["debug"]:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(err.one_line(), markup=False)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("error: interrupted (hint: rerun with --resume to continue)", markup=False)
        sys.exit(130)
    except typer.Exit as exc:  # --version, --help
        sys.exit(exc.exit_code)
    except Exception as exc:
        # Typer vendors click: its usage errors carry `show()` and `exit_code`.
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"error: {exc.format_message()} (hint: see 'dec --help' or 'dec COMMAND --help')", markup=False)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            sys.exit(130)
        if _state["debug"]:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"error: {type(exc).__name__}: {exc} (hint: rerun with --debug for the traceback)", markup=False)
        sys.exit(1)
    sys.exit(0)
