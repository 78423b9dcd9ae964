"""`dec warp` and `dec unwarp`: locally scaled copies of an image tree, and back."""

from __future__ import annotations

from typing import Optional

import typer

from dec_cli.cli.app import _floats, _scale_range, app
from dec_cli.cli.precheck import not_written, require_src
from dec_cli.core.errors import DecError, UsageError


# The options, declared once here so that the command's signature stays one line per option.
_SRC = typer.Argument(..., metavar="SRC", help="Folder of images (walked recursively).")
_DST = typer.Argument(..., metavar="DST", help="Output folder: same relative tree, plus manifest.jsonl.")
_SEED = typer.Option(0, "--seed", help="Seed; a file's warp depends only on it, its path and copy index.")
_SCALE_RANGE = typer.Option("0.75,1.33", "--scale-range", metavar="LO,HI",
    help="Strength: every local scale factor lies in [LO, HI].")
_GRID = typer.Option(8, "--grid", help="Intervals per axis of the piecewise-linear warp.")
_ROWS = typer.Option(1, "--rows", help="Control rows/columns (1 = separable, exactly invertible).")
_COPIES = typer.Option(1, "--copies", metavar="K", help="Warped copies per image (name.w{i}.ext, i from 0).")
_ZOOM = typer.Option(None, "--zoom", metavar="Z1,Z2,...",
    help="Zoom sweep instead of random warps: one output name.z{Z}.ext per factor.")
_CENTER = typer.Option(None, "--center", metavar="X,Y|object",
    help="Zoom centre in [0,1] coordinates (default the image centre), or "
    "'object': each image's object box (--masks or --boxes).")
_RADIUS = typer.Option(None, "--radius", metavar="R",
    help="Zoom disc radius, a fraction of the short side (default 0.25; "
    "with --center object, half the box diagonal).")
_MASKS = typer.Option(None, "--masks", metavar="DIR",
    help="Masks named like the images; warped with nearest sampling into DST/masks/.")
_BOXES = typer.Option(None, "--boxes", metavar="FILE",
    help="Object boxes for --center object: JSON {path: [x0,y0,x1,y1]}, COCO, or a folder of Pascal VOC .xml.")
_WORKERS = typer.Option(1, "--workers", "-j", help="Worker processes (outputs are identical for any number).")
_OVERWRITE = typer.Option(False, "--overwrite", help="Replace existing outputs.")
_RESUME = typer.Option(False, "--resume", help="Finish an interrupted job, keeping the outputs in place.")
_SKIP_BAD = typer.Option(False, "--skip-bad", help="Exit 0 even if some images cannot be decoded.")
_JSON_DEST = typer.Option(None, "--json", metavar="PATH|-", help="Write a JSON summary.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar or table.")


@app.command("warp")
def warp_cmd(
    src: str = _SRC,
    dst: str = _DST,
    seed: int = _SEED,
    scale_range: str = _SCALE_RANGE,
    grid: int = _GRID,
    rows: int = _ROWS,
    copies: int = _COPIES,
    zoom: Optional[str] = _ZOOM,
    center: Optional[str] = _CENTER,
    radius: Optional[float] = _RADIUS,
    masks: Optional[str] = _MASKS,
    boxes: Optional[str] = _BOXES,
    workers: int = _WORKERS,
    overwrite: bool = _OVERWRITE,
    resume: bool = _RESUME,
    skip_bad: bool = _SKIP_BAD,
    json_dest: Optional[str] = _JSON_DEST,
    quiet: bool = _QUIET,
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
    from dec_cli.cli.render import console_for, run_tree_job, tree_report
    from dec_cli.jobs.folderwarp import run_warp
    from dec_cli.trees.objects import OBJECT
    from dec_cli.evaluation.report import check_writable
    from dec_cli.trees.warpplan import WarpSettings

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
    from dec_cli.cli.render import console_for, run_tree_job, tree_report
    from dec_cli.jobs.folderwarp import run_unwarp
    from dec_cli.evaluation.report import check_writable

    check_writable(json_dest, "--json")
    console = console_for(json_dest, quiet)
    summary = run_tree_job(run_unwarp, console, quiet, src=src, dst=dst, manifest=manifest, workers=workers,
                            overwrite=overwrite, resume=resume, json_path=json_dest)
    tree_report(console, summary, json_dest, workers)
    if summary.bad and not skip_bad:
        raise DecError(f"{len(summary.bad)} file(s) or manifest record(s) could not be restored (listed above); "
                       "the rest were written", "pass --skip-bad to exit 0 anyway")
