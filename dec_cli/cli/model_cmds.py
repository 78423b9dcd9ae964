"""`dec retrofit`, `dec info` and `dec models`: make, inspect and list DEC models."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from dec_cli.cli.app import app
from dec_cli.evaluation.reportpath import check_report_path


@app.command("retrofit")
def retrofit_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="timm model name, e.g. vit_small_patch16_224."),
    output: str = typer.Option(..., "--output", "-o", metavar="OUT.safetensors", help="Checkpoint to write."),
    weights: Optional[str] = typer.Option(None, "--weights", metavar="FILE",
                                          help="Local weights (.safetensors, or a weights-only .pth/.bin state dict; "
                                               "efficientnet_pytorch keys are converted)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's hub weights (online)."),
    random_init: bool = typer.Option(False, "--random-init", help="Random backbone weights (tests, from scratch)."),
    num_classes: Optional[int] = typer.Option(None, "--num-classes", min=1, help="Classifier outputs (new head)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", min=8, help="Input size of the backbone."),
    recipe: Optional[str] = typer.Option(None, "--recipe", metavar="NAME|FILE|auto",
                                          help="Recipe (default: matched by name; other timm names: auto)."),
    at: Optional[str] = typer.Option(None, "--at", metavar="PATH[,PATH...]", help="Insertion points (timm module paths)."),
    mode: Optional[str] = typer.Option(None, "--mode", metavar="canonicalize|equivariant", help="DEC mode."),
    grid: Optional[int] = typer.Option(None, "--grid", min=1, help="Warp intervals per axis (G)."),
    rows: Optional[int] = typer.Option(None, "--rows", min=1, help="Warp control rows (R; 1 = separable)."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Fixed-point iterations (T)."),
    solver: Optional[str] = typer.Option(None, "--solver", metavar="fixed|anderson",
                                         help="Solver of the no-grad iterations (default fixed: damped iteration)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", min=1, help="Width of the DEC head's conv layer."),
    channels: Optional[int] = typer.Option(None, "--channels", min=1, help="Width of the DEC's 1x1 projection."),
    dec_input: Optional[str] = typer.Option(None, "--dec-input", metavar="features|image",
                                            help="What each DEC looks at: its point's features (default) or the "
                                                 "input image (the paper's design; a small CNN per DEC)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the DEC (and any new head) initialisation."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write a JSON summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table."),
) -> None:
    """Insert DEC canonicalizers into a timm backbone and save a single-file checkpoint.

    At init the DEC is the identity warp: the checkpoint computes what the backbone computed.

    Example: dec retrofit vit_small_patch16_224 --weights vit_s.safetensors -o dec_vit_s.safetensors
    """
    import shlex

    from dec_cli.cli.render import console_for, emit_json, print_conversion, retrofit_summary
    from dec_cli.jobs.retrofit_job import RetrofitJob, run_retrofit

    job = RetrofitJob(model, output, weights=weights, pretrained=pretrained, random_init=random_init,
                      num_classes=num_classes,
                      img_size=img_size, recipe=recipe, at=at, mode=mode, grid=grid, rows=rows, iters=iters,
                      solver=solver, hidden=hidden, channels=channels, dec_input=dec_input, seed=seed, force=force)
    job.check(json_dest)
    console = console_for(json_dest, quiet)
    argv = sys.argv[1:] if "retrofit" in sys.argv[1:] else ["retrofit", model, "-o", output]
    summary, description = run_retrofit(job, "dec " + " ".join(shlex.quote(a) for a in argv),
                                         on_weights=lambda conversion: print_conversion(console, conversion))
    retrofit_summary(console, summary, description)
    emit_json(summary, json_dest)


@app.command("info")
def info_cmd(
    ckpt: str = typer.Argument(..., metavar="CKPT", help="A dec checkpoint (.safetensors)."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write the summary as JSON."),
) -> None:
    """Show what a checkpoint holds: backbone, classes, insertion points, DEC settings, provenance.

    Example: dec info dec_vit_s.safetensors --json -
    """
    from dec_cli.backbones.ckptheader import checkpoint_summary
    from dec_cli.cli.render import checkpoint_table, console_for, emit_json

    check_report_path(json_dest, "--json", files=[("CKPT", ckpt)])
    s = checkpoint_summary(ckpt)
    checkpoint_table(console_for(json_dest), s, ckpt)
    emit_json(s, json_dest)


@app.command("models")
def models_cmd(
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write the recipes as JSON."),
) -> None:
    """List the built-in retrofit recipes and the timm names they cover; other names get an automatic recipe.

    Example: dec models --json -
    """
    from dec_cli.cli.render import console_for, emit_json, recipes_table
    from dec_cli.canon.catalogue import recipe_catalogue

    catalogue = recipe_catalogue()
    recipes_table(console_for(json_dest), catalogue)
    emit_json(catalogue, json_dest)
