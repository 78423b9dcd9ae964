"""`dec digits`: build the locally scaled digits benchmark."""

from __future__ import annotations

from typing import Optional

import typer

from dec_cli.cli.app import _scale_range, app
from dec_cli.evaluation.reportpath import check_report_path


@app.command("digits")
def digits_cmd(
    ctx: typer.Context,
    src: str = typer.Argument(..., metavar="SRC.npz", help="MNIST-style npz: 'images' uint8 N x 28 x 28, 'labels' 0-9."),
    dst: str = typer.Argument(..., metavar="DST", help="Output folder (train/, val/, test/, test-zoom/)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the composites (the source-digit split never changes)."),
    n_train: int = typer.Option(3000, "--n-train", help="Training composites."),
    n_val: int = typer.Option(300, "--n-val", help="Validation composites."),
    n_test: int = typer.Option(500, "--n-test", help="Test composites (each also rendered at every --zoom factor)."),
    digits: int = typer.Option(2, "--digits", help="Digits per composite: 2 (side by side) or 3 (2 x 2 grid)."),
    cell: int = typer.Option(32, "--cell", metavar="PX", help="Cell side in pixels; the image is 2 cells wide."),
    scale_range: str = typer.Option("0.6,1.6", "--scale-range", metavar="LO,HI",
                                    help="Range of each digit's own scale factor (log-uniform); with "
                                         "--train-scale-range, of test/ only."),
    train_scale_range: Optional[str] = typer.Option(None, "--train-scale-range", metavar="LO,HI",
                                                    help="Scale range of train/ and val/ digits (default: "
                                                         "--scale-range)."),
    zoom: str = typer.Option("0.6,0.8,1,1.25,1.6", "--zoom", metavar="Z1,Z2,...",
                             help="Factors of the test-zoom sweep (every digit at the factor)."),
    classes: int = typer.Option(20, "--classes", help="Number of digit combinations used as classes (2-100; "
                                                      "2-1000 with --digits 3)."),
    protocol: str = typer.Option("default", "--protocol", metavar="NAME",
                                 help="Defaults of the options above: default; wide (train/val 0.8-1.25, test "
                                      "0.4-2); paper (3 digits, 200 classes, 6000/400/600, every split 0.4-2). "
                                      "Options typed win."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing DST."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write a JSON summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or table."),
) -> None:
    """Build the locally scaled digits benchmark: each digit of a composite at its own scale.

    Example: dec digits dec_cli/data/mnist-8k.npz digits --seed 0 --n-train 3000
    """
    from dec_cli.cli.render import console_for, digits_table, emit_json, progress_bar
    from dec_cli.jobs.digits import DigitsConfig, build_digits, parse_zoom
    from dec_cli.jobs.digitsprotocol import protocol_values

    typed = {k for k in ctx.params if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    v = protocol_values(protocol, ctx.params, typed)
    ranges = {option: None if text is None else _scale_range(text, option, "0.6,1.6", named=True)
              for option, text in (("--scale-range", v["scale_range"]), ("--train-scale-range", v["train_scale_range"]))}
    check_report_path(json_dest, "--json", files=[("SRC", src)])
    config = DigitsConfig(seed=seed, n_train=v["n_train"], n_val=v["n_val"], n_test=v["n_test"], digits=v["digits"],
                          cell=cell, scale_range=ranges["--scale-range"], zoom=parse_zoom(v["zoom"]),
                          classes=v["classes"], train_scale_range=ranges["--train-scale-range"], protocol=protocol)
    console = console_for(json_dest, quiet)
    with progress_bar(console, quiet) as bar:
        task = bar.add_task("composites", total=None)
        result = build_digits(src, dst, config, overwrite=overwrite,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    digits_table(console, result, dst, len(config.zoom))
    emit_json(result.to_json(), json_dest)
