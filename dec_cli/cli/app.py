"""The `dec` Typer app, its root options, the option parsers commands share, and `main`.

Each command parses its options, calls one library function and renders the
result with `dec_cli.cli.render`; the library never prints or exits. Library
code raises `dec_cli.core.errors.DecError` (a bad option here raises its
`UsageError` too); `main()` turns it into one `error: ...` line and the
documented exit code (0 success, 1 failure, 2 usage error, 130 interrupted, 143 terminated).
Commands import what they use inside their bodies, so that `dec --help` and
`dec --version` load no torch.
"""

from __future__ import annotations

import signal
import sys
import warnings
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from dec_cli.version import __version__
from dec_cli.core.errors import DecError, UsageError

app = typer.Typer(
    name="dec",
    help="Evaluate and improve how image classifiers cope with local scale changes.",
    no_args_is_help=True,
    # Plain click help: every character shows (no Rich markup eats "[x0,y0,x1,y1]"), lines wrap at 80
    # columns instead of truncating, flags carry no "<bool>" metavar. Shell completion is Typer's own.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, Any] = {"debug": False, "command": None}

# What an interrupted command leaves and how to continue (the hint of its `error: interrupted` line).
_INTERRUPT_HINTS = {
    "warp": "rerun the same command with --resume to finish it",
    "unwarp": "rerun the same command with --resume to finish it",
    "finetune": "rerun the same command with --resume to continue from the last completed epoch",
}
_INTERRUPT_HINT = "run the command again"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"dec {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """dec: local scale robustness for timm classifiers (warp, retrofit, finetune, evaluate)."""
    _state["debug"] = debug
    _state["command"] = ctx.invoked_subcommand


def _scale_range(text: str, option: str = "--scale-range", example: str = "0.75,1.33", *, named: bool = False):
    """Parse a ``LO,HI`` option into a `ScaleRange`, once, here; a bad one is a usage error (exit 2).

    ``named`` puts the option's name in front of the reason (`dec digits` has two such options).
    """
    from dec_cli.warps.scalerange import ScaleRange

    try:
        return ScaleRange.parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}" if named else str(exc), f"for example {option} {example}") from None


def _floats(text: Optional[str], option: str, example: str, count: Optional[int] = None) -> Optional[tuple]:
    """Parse ``a,b,...`` into floats, or fail with a usage error naming the option."""
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or (count is not None and len(values) != count):
        raise UsageError(f"{option} expects {'X,Y' if count == 2 else 'comma-separated numbers'}; got {text!r}",
                         f"for example {option} {example}")
    return values


def _interrupted() -> None:
    """Ctrl-C or SIGTERM: one line naming how to continue, exit code 130 or 143 (128 + the signal).

    Under torchrun every rank stops; only rank 0 says so.
    """
    from dec_cli.core import stopsignal
    signum = stopsignal.received() or signal.SIGINT
    if not stopsignal.is_secondary_rank():
        hint = _INTERRUPT_HINTS.get(_state["command"], _INTERRUPT_HINT)
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            DecError(stopsignal.word(signum), hint).one_line(), markup=False)
    sys.exit(stopsignal.exit_code(signum))


def _quiet_dependency_notices() -> None:
    """Hide deprecation notices meant for library developers (timm 1.0.21 on a new torch warns about
    `torch.jit.interface` at import), so stderr keeps one line per error; `python -W` or
    PYTHONWARNINGS still decide when given."""
    if not sys.warnoptions:
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry: run the app, turning user errors into one line and an exit code."""
    from dec_cli.core import stopsignal
    _quiet_dependency_notices()
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    _state["command"] = words[0] if words else None  # known before Typer parses: a stop may come that early
    with stopsignal.handling():
        _run(argv, stopsignal.received)


def _run(argv: Optional[list[str]], stopped: Callable[[], Optional[int]]) -> None:
    """`main` inside the signal handlers; ``stopped()`` says whether a stop signal came (it then wins
    over whatever error it caused, such as a torchrun peer's closed connection)."""
    try:
        # Typer turns a KeyboardInterrupt inside a command into a returned 130 (standalone_mode=False).
        code = app(args=argv, prog_name="dec", standalone_mode=False)
        if code == 130:
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except DecError as err:
        if stopped():
            _interrupted()
        if _state["debug"]:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(err.one_line(), markup=False)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:  # --version, --help
        sys.exit(exc.exit_code)
    except Exception as exc:
        if stopped():
            _interrupted()
        # Typer vendors click: its usage errors carry `show()` and `exit_code`.
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(0)
        if hasattr(exc, "format_message") and isinstance(getattr(exc, "exit_code", None), int):
            Console(stderr=True, highlight=False, soft_wrap=True).print(
                f"error: {exc.format_message()} (hint: see 'dec --help' or 'dec COMMAND --help')", markup=False)
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            _interrupted()
        if _state["debug"]:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"error: {type(exc).__name__}: {exc} (hint: rerun with --debug for the traceback)", markup=False)
        sys.exit(1)
    sys.exit(0)
