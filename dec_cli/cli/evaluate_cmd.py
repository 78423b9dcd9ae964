"""`dec evaluate`: accuracy and local-scale consistency of models, side by side."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import typer

from dec_cli.cli.app import _floats, _scale_range, app
from dec_cli.cli.precheck import require_data
from dec_cli.core.errors import DecError, UsageError


# The options, declared once here so that the command's signature stays one line per option.
_MODELS = typer.Argument(None, metavar="MODEL",
    help="DEC checkpoints (.safetensors) or timm model names. "
    "None and no --data: the bundled demo.")
_DATA = typer.Option(None, "--data", metavar="DIR", help="ImageFolder tree (one subfolder per "
    "class) or a folder of images without labels; a 'dec warp --zoom' tree "
    "is reported per zoom factor.")
_NO_LABELS = typer.Option(False, "--no-labels", help="Ignore class folders: every image under DIR, "
    "compared with the model's own clean prediction (accuracies null).")
_WEIGHTS = typer.Option(None, "--weights", metavar="FILE",
    help="Weights for a timm-name MODEL (repeatable: the i-th goes "
    "to the i-th timm name).")
_PRETRAINED = typer.Option(False, "--pretrained", help="timm's hub weights for timm names without --weights "
    "(online).")
_RANDOM_INIT = typer.Option(False, "--random-init", help="Random weights for timm names without --weights "
    "(tests only: a random model's report means nothing).")
_NAME = typer.Option(None, "--name", metavar="NAME",
    help="Report column of a MODEL (repeatable: the i-th names the i-th "
    "MODEL; default its file stem, or parent/stem when stems collide).")
_CLASS_MAP = typer.Option(None, "--class-map", metavar="FILE",
    help="Class names in model output order (one per line, or JSON).")
_IMG_SIZE = typer.Option(None, "--img-size", metavar="PX", help="Override the input size.")
_WARPS = typer.Option(None, "--warps", metavar="K",
    help="Random warps per image (default 4; 0 on a zoom sweep).")
_SCALE_RANGE = typer.Option("0.75,1.33", "--scale-range", metavar="LO,HI",
    help="Range of local scale factors of the random warps.")
_GRID = typer.Option(8, "--grid", help="Warp intervals per axis.")
_ROWS = typer.Option(1, "--rows", help="Warp control rows (1: separable; more: more local).")
_SEED = typer.Option(0, "--seed", help="Seed of the random warps (per image, by relative path).")
_ZOOM = typer.Option(None, "--zoom", metavar="Z1,Z2,...", help="Sweep these zoom factors on the "
    "fly, as 'dec warp --zoom' would (no files; reported per zoom factor).")
_CENTER = typer.Option(None, "--center", metavar="X,Y|object",
    help="--zoom centre in [0,1] coordinates, or 'object' (--boxes or --masks).")
_RADIUS = typer.Option(None, "--radius", metavar="R", help="--zoom disc radius, a fraction of "
    "the short side (default 0.25; with --center object, the box's).")
_BOXES = typer.Option(None, "--boxes", metavar="FILE|DIR",
    help="Object boxes: JSON, COCO, or a folder of Pascal VOC .xml.")
_MASKS = typer.Option(None, "--masks", metavar="DIR", help="Object masks named like the images.")
_JSON_DEST = typer.Option(None, "--json", metavar="PATH|-", help="Write the JSON report.")
_MARKDOWN = typer.Option(None, "--markdown", metavar="PATH", help="Write a Markdown report.")
_PLOT = typer.Option(None, "--plot", metavar="PATH.png|.svg|.pdf",
    help="Plot accuracy and consistency against zoom or warp strength.")
_PREDICTIONS = typer.Option(None, "--predictions", metavar="FILE.csv",
    help="Write every image's top-5 classes and probabilities, clean "
    "and per warp or zoom, one row each.")
_FAIL_IF = typer.Option(None, "--fail-if", metavar="EXPR",
    help="Exit 1 when a rule holds, e.g. 'top1<0.70' (repeatable).")
_TTA_SCALES = typer.Option(None, "--tta-scales", metavar="S1,S2,...",
    help="Also report each model with test-time scale search over these "
    "factors (row NAME+tta).")
_LIMIT = typer.Option(None, "--limit", metavar="N", help="Evaluate the first N images only.")
_BATCH_SIZE = typer.Option(32, "--batch-size", help="Images per forward pass.")
_WORKERS = typer.Option(0, "--workers", help="DataLoader worker processes.")
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
_AMP = typer.Option(False, "--amp", help="bfloat16 autocast.")
_COMPILE = typer.Option(False, "--compile", help="torch.compile the model (CUDA graphs on GPU).")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or tables.")


@app.command("evaluate")
def evaluate_cmd(
    models: Optional[list[str]] = _MODELS,
    data: Optional[str] = _DATA,
    no_labels: bool = _NO_LABELS,
    weights: Optional[list[str]] = _WEIGHTS,
    pretrained: bool = _PRETRAINED,
    random_init: bool = _RANDOM_INIT,
    name: Optional[list[str]] = _NAME,
    class_map: Optional[str] = _CLASS_MAP,
    img_size: Optional[int] = _IMG_SIZE,
    warps: Optional[int] = _WARPS,
    scale_range: str = _SCALE_RANGE,
    grid: int = _GRID,
    rows: int = _ROWS,
    seed: int = _SEED,
    zoom: Optional[str] = _ZOOM,
    center: Optional[str] = _CENTER,
    radius: Optional[float] = _RADIUS,
    boxes: Optional[str] = _BOXES,
    masks: Optional[str] = _MASKS,
    json_dest: Optional[str] = _JSON_DEST,
    markdown: Optional[str] = _MARKDOWN,
    plot: Optional[str] = _PLOT,
    predictions: Optional[str] = _PREDICTIONS,
    fail_if: Optional[list[str]] = _FAIL_IF,
    tta_scales: Optional[str] = _TTA_SCALES,
    limit: Optional[int] = _LIMIT,
    batch_size: int = _BATCH_SIZE,
    workers: int = _WORKERS,
    device: str = _DEVICE,
    amp: bool = _AMP,
    compile_: bool = _COMPILE,
    quiet: bool = _QUIET,
) -> None:
    """Accuracy and local-scale consistency of one or more models, side by side.

    Example: dec evaluate model.safetensors resnet18 --weights r18.pth --data val-zoom --fail-if "top1<0.7"

    Zoom sweep on the fly: dec evaluate resnet18 --data val --zoom 0.8,1,1.25 --center object --boxes val-xml/
    """
    _evaluate(SimpleNamespace(**locals()))


def _evaluate(o: SimpleNamespace) -> None:
    """`dec evaluate` with its options in ``o``: option errors first (before torch loads), then the job."""
    from dec_cli.evaluation.failif import parse_fail_if
    from dec_cli.evaluation.ttascales import parse_tta_scales
    from dec_cli.backbones.weightsource import assign_sources

    # Option errors first, before torch loads (seconds), so that a typo answers at once.
    thresholds = [parse_fail_if(expr) for expr in (o.fail_if or [])]
    tta = parse_tta_scales(o.tta_scales) if o.tta_scales is not None else ()
    lo_hi = _scale_range(o.scale_range)
    sweep = _eval_zoom(o.zoom, o.center, o.radius, o.boxes, o.masks)
    require_data(o.data)
    if o.data is not None:  # (without --data: that is the error to report, or the demo)
        assign_sources(o.models or [], o.weights or [], pretrained=o.pretrained, random_init=o.random_init)
    from dec_cli.cli.render import console_for, named_tasks, progress_bar, render_evaluation
    from dec_cli.evaluation.evaluate import EvalSettings
    from dec_cli.jobs.evaluate_job import Reports, plan_evaluation, run_evaluation
    from dec_cli.evaluation.report import failure_message

    settings = EvalSettings(warps=o.warps, scale_range=lo_hi, grid=o.grid, rows=o.rows, seed=o.seed, img_size=o.img_size,
                            limit=o.limit, batch_size=o.batch_size, workers=o.workers, device=o.device, amp=o.amp,
                            compile=o.compile_, class_map=o.class_map, no_labels=o.no_labels, tta_scales=tta, zoom=sweep,
                            predictions=o.predictions is not None)
    job = plan_evaluation(o.models or [], o.data, settings, weights=o.weights or [], pretrained=o.pretrained,
                          random_init=o.random_init, names=o.name or [],
                          thresholds=thresholds, reports=Reports(o.json_dest, o.markdown, o.plot, o.predictions))
    console = console_for(o.json_dest, o.quiet)
    bar = progress_bar(console, o.quiet)
    try:
        report, is_main = run_evaluation(job, named_tasks(bar))
    finally:
        bar.stop()
    if is_main:
        render_evaluation(console, report, o.json_dest, markdown=o.markdown, plot=o.plot, predictions=o.predictions,
                          demo=job.demo)
    if report.failed:
        raise DecError(failure_message(report.failed), "the model is below the --fail-if threshold(s)")


def _eval_zoom(zoom: Optional[str], center: Optional[str], radius: Optional[float], boxes: Optional[str],
               masks: Optional[str]) -> Any:
    """`dec evaluate`'s on-the-fly sweep options (None without ``--zoom``), checked before any model loads."""
    zooms = _floats(zoom, "--zoom", "0.8,1,1.25")
    if zooms is None:
        if any(v is not None for v in (center, radius, boxes, masks)):
            raise UsageError("--center, --radius, --boxes and --masks apply to --zoom sweeps only",
                             "add --zoom Z1,Z2,...")
        return None
    from dec_cli.evaluation.evalzoom import ZoomOptions  # (imports torch: only for a sweep)
    from dec_cli.trees.objects import OBJECT
    centre = OBJECT if center == OBJECT else _floats(center, "--center", "0.5,0.5", count=2)
    sweep = ZoomOptions(zooms, centre, radius, boxes, masks)
    sweep.settings()  # bad factors, radius or centre: a usage error
    return sweep
