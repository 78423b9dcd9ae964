"""`dec finetune`: train backbone and DEC on an image folder, resumable, torchrun-ready."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Optional

import typer

from dec_cli.cli.app import app
from dec_cli.cli.precheck import require_data, weights_chosen
from dec_cli.evaluation.reportpath import check_report_path
from dec_cli.training.finetune_options import CliOption, cli_options


def _with_options(options: Iterable[CliOption], after: str) -> Callable[[Callable], Callable]:
    """Give a command one Typer option per `CliOption`, placed after its parameter ``after``.

    The command takes them as ``**options``; their names, types, defaults and help
    come from the library (`dec_cli.training.finetune_options`), so they are declared once.
    """
    def decorate(command: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD)
               for p in inspect.signature(command).parameters.values() if p.kind != p.VAR_KEYWORD]
        added = [inspect.Parameter(o.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=o.type,
                                   default=typer.Option(o.default, o.flag, help=o.help, metavar=o.metavar))
                 for o in options]
        cut = [p.name for p in own].index(after) + 1
        command.__signature__ = inspect.Signature(own[:cut] + added + own[cut:])
        return command

    return decorate


@app.command("finetune")
@_with_options(cli_options(), after="out_dir")
def finetune_cmd(
    ctx: typer.Context,
    ckpt: str = typer.Argument(..., metavar="CKPT", help="DEC checkpoint (.safetensors) or a plain timm model name."),
    data: str = typer.Argument(..., metavar="DATA", help="Folder with train/ and val/ ImageFolder trees."),
    out_dir: str = typer.Option(..., "--out", "-o", metavar="OUT_DIR", help="Run folder: metrics.csv, last/best.safetensors, state.pt."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT_DIR from its last completed epoch."),
    config: Optional[str] = typer.Option(None, "--config", metavar="FILE.yaml", help="Options from YAML; the command line wins."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write a JSON summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or per-epoch lines."),
    **options: Any,
) -> None:
    """Fine-tune backbone and DEC (or a plain timm model) on an ImageFolder dataset; resumable, torchrun-ready.

    Example: dec finetune dec_vit.safetensors digits -o runs/dec --epochs 5 --aug-prob 0.5
    """
    from rich.progress import TextColumn

    from dec_cli.cli.render import console_for, emit_json, finetune_events, finetune_summary, progress_bar
    from dec_cli.training.finetune_options import command_line_options, command_text

    check_report_path(json_dest, "--json", trees=[("DATA", data), ("--val", options["val"])],
                      files=[("CKPT", ckpt), ("--weights", options["weights"]), ("--config", config)])
    typed = {k: v for k, v in options.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    chosen = command_line_options(typed, config)
    require_data(data, "DATA must hold train/ and val/ ImageFolder trees")
    if not resume:  # before torch loads; a resumed run takes its weights from the run folder
        weights_chosen(ckpt, chosen)
    from dec_cli.jobs.finetune import finetune
    from dec_cli.training.rundir import OUTPUT_NAMES

    check_report_path(json_dest, "--json", root=out_dir, names=OUTPUT_NAMES)
    console = console_for(json_dest, quiet)
    bar = progress_bar(console, quiet, TextColumn("{task.fields[stats]}"))
    try:
        summary = finetune(ckpt, data, out_dir, chosen, resume=resume, on_event=finetune_events(console, bar, ckpt),
                           command=command_text(ckpt, data, out_dir, typed, config=config, resume=resume))
    finally:
        bar.stop()
    if summary is None:  # a torchrun rank other than 0: rank 0 reports
        return
    finetune_summary(console, summary, out_dir)
    emit_json(summary, json_dest)
