"""The `dec` command line: thin Typer commands that parse, call the library, and report.

Each command parses its options, calls one library function and renders the
result with `dec_cli.cli_render`; the library never prints or exits. Library
code raises `dec_cli.errors.DecError` (a bad option here raises its
`UsageError` too); `main()` turns it into one `error: ...` line and the
documented exit code (0 success, 1 failure, 2 usage error, 130 interrupted, 143 terminated).
Commands import what they use inside their bodies, so that `dec --help` and
`dec --version` load no torch.
"""

from __future__ import annotations

import inspect
import signal
import sys
import warnings
from typing import Any, Callable, Iterable, Optional

import typer
from rich.console import Console

from dec_cli.version import __version__
from dec_cli.errors import DecError, UsageError
from dec_cli.finetune_options import CliOption, cli_options
from dec_cli.helptext import keep_app_examples
from dec_cli.precheck import not_written, require_data, require_src, weights_chosen
from dec_cli.reportpath import check_report_path

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
    from dec_cli.scalerange import ScaleRange

    try:
        return ScaleRange.parse(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}" if named else str(exc), f"for example {option} {example}") from None


# --------------------------------------------------------------------------- dec digits


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
    from dec_cli.cli_render import console_for, digits_table, emit_json, progress_bar
    from dec_cli.digits import DigitsConfig, build_digits, parse_zoom
    from dec_cli.digitsprotocol import protocol_values

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


# --------------------------------------------------------------------------- dec evaluate


@app.command("evaluate")
def evaluate_cmd(
    models: Optional[list[str]] = typer.Argument(None, metavar="MODEL",
                                                 help="DEC checkpoints (.safetensors) or timm model names. "
                                                      "None and no --data: the bundled demo."),
    data: Optional[str] = typer.Option(None, "--data", metavar="DIR", help="ImageFolder tree (one subfolder per "
                                       "class) or a folder of images without labels; a 'dec warp --zoom' tree "
                                       "is reported per zoom factor."),
    no_labels: bool = typer.Option(False, "--no-labels", help="Ignore class folders: every image under DIR, "
                                   "compared with the model's own clean prediction (accuracies null)."),
    weights: Optional[list[str]] = typer.Option(None, "--weights", metavar="FILE",
                                                help="Weights for a timm-name MODEL (repeatable: the i-th goes "
                                                     "to the i-th timm name)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="timm's hub weights for timm names without --weights "
                                    "(online)."),
    random_init: bool = typer.Option(False, "--random-init", help="Random weights for timm names without --weights "
                                     "(tests only: a random model's report means nothing)."),
    name: Optional[list[str]] = typer.Option(None, "--name", metavar="NAME",
                                             help="Report column of a MODEL (repeatable: the i-th names the i-th "
                                                  "MODEL; default its file stem, or parent/stem when stems collide)."),
    class_map: Optional[str] = typer.Option(None, "--class-map", metavar="FILE",
                                            help="Class names in model output order (one per line, or JSON)."),
    img_size: Optional[int] = typer.Option(None, "--img-size", metavar="PX", help="Override the input size."),
    warps: Optional[int] = typer.Option(None, "--warps", metavar="K",
                                        help="Random warps per image (default 4; 0 on a zoom sweep)."),
    scale_range: str = typer.Option("0.75,1.33", "--scale-range", metavar="LO,HI",
                                    help="Range of local scale factors of the random warps."),
    grid: int = typer.Option(8, "--grid", help="Warp intervals per axis."),
    rows: int = typer.Option(1, "--rows", help="Warp control rows (1: separable; more: more local)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random warps (per image, by relative path)."),
    zoom: Optional[str] = typer.Option(None, "--zoom", metavar="Z1,Z2,...", help="Sweep these zoom factors on the "
                                       "fly, as 'dec warp --zoom' would (no files; reported per zoom factor)."),
    center: Optional[str] = typer.Option(None, "--center", metavar="X,Y|object",
                                         help="--zoom centre in [0,1] coordinates, or 'object' (--boxes or --masks)."),
    radius: Optional[float] = typer.Option(None, "--radius", metavar="R", help="--zoom disc radius, a fraction of "
                                           "the short side (default 0.25; with --center object, the box's)."),
    boxes: Optional[str] = typer.Option(None, "--boxes", metavar="FILE|DIR",
                                        help="Object boxes: JSON, COCO, or a folder of Pascal VOC .xml."),
    masks: Optional[str] = typer.Option(None, "--masks", metavar="DIR", help="Object masks named like the images."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write the JSON report."),
    markdown: Optional[str] = typer.Option(None, "--markdown", metavar="PATH", help="Write a Markdown report."),
    plot: Optional[str] = typer.Option(None, "--plot", metavar="PATH.png|.svg|.pdf",
                                       help="Plot accuracy and consistency against zoom or warp strength."),
    predictions: Optional[str] = typer.Option(None, "--predictions", metavar="FILE.csv",
                                              help="Write every image's top-5 classes and probabilities, clean "
                                                   "and per warp or zoom, one row each."),
    fail_if: Optional[list[str]] = typer.Option(None, "--fail-if", metavar="EXPR",
                                                help="Exit 1 when a rule holds, e.g. 'top1<0.70' (repeatable)."),
    tta_scales: Optional[str] = typer.Option(None, "--tta-scales", metavar="S1,S2,...",
                                             help="Also report each model with test-time scale search over these "
                                                  "factors (row NAME+tta)."),
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N", help="Evaluate the first N images only."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the model (CUDA graphs on GPU)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or tables."),
) -> None:
    """Accuracy and local-scale consistency of one or more models, side by side.

    Example: dec evaluate model.safetensors resnet18 --weights r18.pth --data val-zoom --fail-if "top1<0.7"

    Zoom sweep on the fly: dec evaluate resnet18 --data val --zoom 0.8,1,1.25 --center object --boxes val-xml/
    """
    from dec_cli.failif import parse_fail_if
    from dec_cli.ttascales import parse_tta_scales
    from dec_cli.weightsource import assign_sources

    # Option errors first, before torch loads (seconds), so that a typo answers at once.
    thresholds = [parse_fail_if(expr) for expr in (fail_if or [])]
    tta = parse_tta_scales(tta_scales) if tta_scales is not None else ()
    lo_hi = _scale_range(scale_range)
    sweep = _eval_zoom(zoom, center, radius, boxes, masks)
    require_data(data)
    if data is not None:  # (without --data: that is the error to report, or the demo)
        assign_sources(models or [], weights or [], pretrained=pretrained, random_init=random_init)
    from dec_cli.cli_render import console_for, named_tasks, progress_bar, render_evaluation
    from dec_cli.evaluate import EvalSettings
    from dec_cli.evaluate_job import Reports, plan_evaluation, run_evaluation
    from dec_cli.report import failure_message

    settings = EvalSettings(warps=warps, scale_range=lo_hi, grid=grid, rows=rows, seed=seed, img_size=img_size,
                            limit=limit, batch_size=batch_size, workers=workers, device=device, amp=amp,
                            compile=compile_, class_map=class_map, no_labels=no_labels, tta_scales=tta, zoom=sweep,
                            predictions=predictions is not None)
    job = plan_evaluation(models or [], data, settings, weights=weights or [], pretrained=pretrained,
                          random_init=random_init, names=name or [],
                          thresholds=thresholds, reports=Reports(json_dest, markdown, plot, predictions))
    console = console_for(json_dest, quiet)
    bar = progress_bar(console, quiet)
    try:
        report, is_main = run_evaluation(job, named_tasks(bar))
    finally:
        bar.stop()
    if is_main:
        render_evaluation(console, report, json_dest, markdown=markdown, plot=plot, predictions=predictions,
                          demo=job.demo)
    if report.failed:
        raise DecError(failure_message(report.failed), "the model is below the --fail-if threshold(s)")


# --------------------------------------------------------------------------- dec finetune


def _with_options(options: Iterable[CliOption], after: str) -> Callable[[Callable], Callable]:
    """Give a command one Typer option per `CliOption`, placed after its parameter ``after``.

    The command takes them as ``**options``; their names, types, defaults and help
    come from the library (`dec_cli.finetune_options`), so they are declared once.
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

    from dec_cli.cli_render import console_for, emit_json, finetune_events, finetune_summary, progress_bar
    from dec_cli.finetune_options import command_line_options, command_text

    check_report_path(json_dest, "--json", trees=[("DATA", data), ("--val", options["val"])],
                      files=[("CKPT", ckpt), ("--weights", options["weights"]), ("--config", config)])
    typed = {k: v for k, v in options.items() if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
    chosen = command_line_options(typed, config)
    require_data(data, "DATA must hold train/ and val/ ImageFolder trees")
    if not resume:  # before torch loads; a resumed run takes its weights from the run folder
        weights_chosen(ckpt, chosen)
    from dec_cli.finetune import finetune
    from dec_cli.rundir import OUTPUT_NAMES

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


# --------------------------------------------------------------------------- dec retrofit / info / models


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

    from dec_cli.cli_render import console_for, emit_json, print_conversion, retrofit_summary
    from dec_cli.retrofit_job import RetrofitJob, run_retrofit

    job = RetrofitJob(model, output, weights=weights, pretrained=pretrained, random_init=random_init,
                      num_classes=num_classes,
                      img_size=img_size, recipe=recipe, at=at, mode=mode, grid=grid, rows=rows, iters=iters,
                      solver=solver, hidden=hidden, channels=channels, seed=seed, force=force)
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
    from dec_cli.ckptheader import checkpoint_summary
    from dec_cli.cli_render import checkpoint_table, console_for, emit_json

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
    from dec_cli.cli_render import console_for, emit_json, recipes_table
    from dec_cli.catalogue import recipe_catalogue

    catalogue = recipe_catalogue()
    recipes_table(console_for(json_dest), catalogue)
    emit_json(catalogue, json_dest)


# --------------------------------------------------------------------------- dec warp / dec unwarp


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


def _eval_zoom(zoom: Optional[str], center: Optional[str], radius: Optional[float], boxes: Optional[str],
               masks: Optional[str]) -> Any:
    """`dec evaluate`'s on-the-fly sweep options (None without ``--zoom``), checked before any model loads."""
    zooms = _floats(zoom, "--zoom", "0.8,1,1.25")
    if zooms is None:
        if any(v is not None for v in (center, radius, boxes, masks)):
            raise UsageError("--center, --radius, --boxes and --masks apply to --zoom sweeps only",
                             "add --zoom Z1,Z2,...")
        return None
    from dec_cli.evalzoom import ZoomOptions  # (imports torch: only for a sweep)
    from dec_cli.objects import OBJECT
    centre = OBJECT if center == OBJECT else _floats(center, "--center", "0.5,0.5", count=2)
    sweep = ZoomOptions(zooms, centre, radius, boxes, masks)
    sweep.settings()  # bad factors, radius or centre: a usage error
    return sweep


@app.command("warp")
def warp_cmd(
    src: str = typer.Argument(..., metavar="SRC", help="Folder of images (walked recursively)."),
    dst: str = typer.Argument(..., metavar="DST", help="Output folder: same relative tree, plus manifest.jsonl."),
    seed: int = typer.Option(0, "--seed", help="Seed; a file's warp depends only on it, its path and copy index."),
    scale_range: str = typer.Option("0.75,1.33", "--scale-range", metavar="LO,HI",
                                    help="Strength: every local scale factor lies in [LO, HI]."),
    grid: int = typer.Option(8, "--grid", help="Intervals per axis of the piecewise-linear warp."),
    rows: int = typer.Option(1, "--rows", help="Control rows/columns (1 = separable, exactly invertible)."),
    copies: int = typer.Option(1, "--copies", metavar="K", help="Warped copies per image (name.w{i}.ext, i from 0)."),
    zoom: Optional[str] = typer.Option(None, "--zoom", metavar="Z1,Z2,...",
                                       help="Zoom sweep instead of random warps: one output name.z{Z}.ext per factor."),
    center: Optional[str] = typer.Option(None, "--center", metavar="X,Y|object",
                                         help="Zoom centre in [0,1] coordinates (default the image centre), or "
                                              "'object': each image's object box (--masks or --boxes)."),
    radius: Optional[float] = typer.Option(None, "--radius", metavar="R",
                                           help="Zoom disc radius, a fraction of the short side (default 0.25; "
                                                "with --center object, half the box diagonal)."),
    masks: Optional[str] = typer.Option(None, "--masks", metavar="DIR",
                                        help="Masks named like the images; warped with nearest sampling into DST/masks/."),
    boxes: Optional[str] = typer.Option(None, "--boxes", metavar="FILE",
                                        help="Object boxes for --center object: JSON {path: [x0,y0,x1,y1]}, COCO, or a folder of Pascal VOC .xml."),
    workers: int = typer.Option(1, "--workers", "-j", help="Worker processes (outputs are identical for any number)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted job, keeping the outputs in place."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Exit 0 even if some images cannot be decoded."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write a JSON summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Warp every image of SRC with a random monotone (locally scaling) warp, or sweep a local zoom.

    Example: dec warp photos/ warped/ --seed 1 --scale-range 0.8,1.25 --copies 3

    Zoom sweep: dec warp photos/ zoomed/ --zoom 0.8,0.9,1,1.1,1.25 --radius 0.25

    On each object: dec warp photos/ zoomed/ --zoom 0.8,1,1.25 --center object --boxes boxes.json
    """
    require_src(src)
    lo_hi = _scale_range(scale_range)
    zooms = _floats(zoom, "--zoom", "0.8,1,1.25")
    centre = "object" if center == "object" else _floats(center, "--center", "0.5,0.5", count=2)
    if centre is not None and zooms is None:
        raise UsageError(f"--center {center} applies to --zoom sweeps only", "add --zoom Z1,Z2,...")
    from dec_cli.cli_render import console_for, run_tree_job, tree_report
    from dec_cli.folderwarp import run_warp
    from dec_cli.objects import OBJECT
    from dec_cli.report import check_writable
    from dec_cli.warpplan import WarpSettings

    if radius is None and centre != OBJECT:
        radius = WarpSettings.radius
    settings = WarpSettings(seed=seed, scale_range=lo_hi, grid=grid, rows=rows, copies=copies,
                            zooms=zooms, center=centre, radius=radius)
    if zooms is not None and copies != 1:
        raise UsageError("--copies and --zoom exclude each other", "a zoom sweep makes one output per factor")
    check_writable(json_dest, "--json")
    console = console_for(json_dest, quiet)
    summary = run_tree_job(run_warp, console, quiet, src=src, dst=dst, settings=settings, masks=masks,
                            boxes=boxes, workers=workers, overwrite=overwrite, resume=resume, json_path=json_dest)
    tree_report(console, summary, json_dest, workers)
    if summary.bad and not skip_bad:
        raise DecError(not_written(summary.bad), "pass --skip-bad to exit 0 anyway")


@app.command("unwarp")
def unwarp_cmd(
    src: str = typer.Argument(..., metavar="SRC", help="Folder written by `dec warp`."),
    dst: str = typer.Argument(..., metavar="DST", help="Output folder for the restored images."),
    manifest: Optional[str] = typer.Option(None, "--manifest", metavar="PATH",
                                           help="Manifest of the warps (default SRC/manifest.jsonl)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Worker processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    resume: bool = typer.Option(False, "--resume", help="Finish an interrupted job."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Exit 0 even if some files cannot be restored."),
    json_dest: Optional[str] = typer.Option(None, "--json", metavar="PATH|-", help="Write a JSON summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Invert every warp recorded in a manifest (the round trip restores the images).

    Example: dec unwarp warped/ restored/ --manifest warped/manifest.jsonl
    """
    from dec_cli.cli_render import console_for, run_tree_job, tree_report
    from dec_cli.folderwarp import run_unwarp
    from dec_cli.report import check_writable

    check_writable(json_dest, "--json")
    console = console_for(json_dest, quiet)
    summary = run_tree_job(run_unwarp, console, quiet, src=src, dst=dst, manifest=manifest, workers=workers,
                            overwrite=overwrite, resume=resume, json_path=json_dest)
    tree_report(console, summary, json_dest, workers)
    if summary.bad and not skip_bad:
        raise DecError(f"{len(summary.bad)} file(s) or manifest record(s) could not be restored (listed above); "
                       "the rest were written", "pass --skip-bad to exit 0 anyway")


# --------------------------------------------------------------------------- entry point


keep_app_examples(app)


def _interrupted() -> None:
    """Ctrl-C or SIGTERM: one line naming how to continue, exit code 130 or 143 (128 + the signal).

    Under torchrun every rank stops; only rank 0 says so.
    """
    from dec_cli import stopsignal

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
    from dec_cli import stopsignal

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
