"""What the `dec` commands show: consoles, progress bars, result tables, one-line notes and JSON output.

The command-line side of the package, imported by ``cli.py`` only (inside the
commands, so that ``dec --help`` stays fast). It imports no torch itself (what
needs it is imported where used), so ``dec info`` and ``dec models`` start fast. Human output goes to stdout, or
to stderr when ``--json -`` claims stdout; bad files are listed on stderr even
under ``--quiet``, since they are what the exit code is about.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from dec_cli.core.display import printable, shorten
from dec_cli.core.files import json_text, write_json


def console_for(json_dest: Optional[str], quiet: bool = False) -> Console:
    """Console for human output; moves to stderr when JSON goes to stdout.

    Lines are never wrapped by Rich (``soft_wrap``): a hint holding a command stays one line that can
    be copied, also when stdout is a file or a pipe (Rich would wrap at 80 columns there).
    """
    return Console(stderr=(json_dest == "-"), quiet=quiet, highlight=False, soft_wrap=True)


def progress_bar(console: Console, quiet: bool, *extra_columns: Any) -> Progress:
    """A Rich progress bar; silent under --quiet or when the console is not a terminal.

    A disabled bar also gets a quiet console: Rich 13 and 14.0 print an empty line when a bar
    stops on a non-terminal, even a disabled one.
    """
    disabled = quiet or not console.is_terminal
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), *extra_columns,
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True, quiet=disabled), disable=disabled, transient=False,
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


def print_conversion(console: Console, conversion: Optional[dict]) -> None:
    """Say that --weights were renamed from a foreign key layout (one line; nothing when they were not)."""
    if conversion:
        from dec_cli.backbones.foreign_weights import describe  # torch and timm: only when weights were converted

        console.print(describe(conversion), markup=False, soft_wrap=True)


def fmt_count(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) else "-"


# --------------------------------------------------------------------------- dec digits


def digits_table(console: Console, result: Any, dst: str, zoom_factors: int) -> None:
    """The splits of a digits benchmark: images, classes and image size."""
    table = Table(title=f"digits benchmark in {dst}")
    for col in ("split", "images", "classes", "size"):
        table.add_column(col)
    for split, n in result.counts.items():
        table.add_row(split, str(n), str(len(result.class_names)), f"{result.image_size}x{result.image_size}")
    table.add_row("test-zoom", str(result.zoom_files), str(len(result.class_names)), f"x{zoom_factors} factors")
    console.print(table)


# --------------------------------------------------------------------------- dec evaluate


def named_tasks(bar: Progress) -> Callable[[str, int, int], None]:
    """A progress callback with one bar per name; the bar starts with the first report."""
    tasks: dict[str, Any] = {}

    def on_progress(name: str, done: int, total: int) -> None:
        bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=done, total=total)

    return on_progress


def render_evaluation(console: Console, report: Any, json_dest: Optional[str], *, markdown: Optional[str],
                      plot: Optional[str], demo: bool, predictions: Optional[str] = None) -> None:
    """Tables on the console, then the JSON, Markdown and plot reports (rank 0)."""
    from dec_cli.evaluation.report import render_tables, write_outputs

    for m in report.models:
        print_conversion(console, m.weights_conversion)
    render_tables(report, console)
    emit_json(report.to_dict(), json_dest)
    for path in write_outputs(report, markdown=markdown, plot=plot, predictions=predictions):
        console.print(f"wrote {path}", markup=False)
    if demo:
        console.print("This was the bundled digits demo. On your own model and data:\n"
                      "  dec warp VAL_DIR VAL_ZOOM --zoom 0.7,0.8,0.9,1,1.1,1.2,1.3\n"
                      "  dec evaluate MODEL.safetensors resnet50 --weights r50.pth --data VAL_ZOOM --warps 4",
                      markup=False)


# --------------------------------------------------------------------------- dec finetune


def finetune_events(console: Console, bar: Progress, ckpt: str) -> Callable[[str, dict], None]:
    """The ``on_event`` callback of `dec_cli.jobs.finetune.finetune`: a line per epoch and the progress bars."""
    tasks: dict[str, Any] = {}

    def stats(loss: float, acc: float, ips: float) -> str:
        return f"loss {loss:.4f}  acc {acc:.3f}  {ips:.1f} img/s"

    def on_event(kind: str, ev: dict) -> None:
        if kind == "start":
            what = "resuming" if ev["resumed"] else "fine-tuning"
            console.print(f"{what} {ckpt} ({'DEC' if ev['dec'] else 'no DEC'}{', new head' if ev['new_head'] else ''})"
                          f" on {ev['train_images']} train / {ev['val_images']} val images, "
                          f"{len(ev['classes'])} classes, {ev['device']} x{ev['world_size']}, "
                          f"epochs {ev['start_epoch']}..{ev['epochs']}", soft_wrap=True)
            print_conversion(console, ev.get("weights_conversion"))
            bar.start()
            tasks["run"] = bar.add_task("run", total=ev["epochs"], completed=ev["start_epoch"] - 1, stats="")
        elif kind == "epoch_start":
            tasks["epoch"] = bar.add_task(f"epoch {ev['epoch']}/{ev['epochs']}", total=ev["steps"], stats="")
        elif kind == "step":
            bar.update(tasks["epoch"], completed=ev["step"], stats=stats(ev["loss"], ev["acc"], ev["images_per_s"]))
        elif kind == "epoch_end":
            row = ev["row"]
            bar.remove_task(tasks.pop("epoch"))
            bar.update(tasks["run"], advance=1, stats=stats(row["train_loss"], row["train_acc"], row["images_per_s"]))
            console.print(f"epoch {row['epoch']}/{ev['epochs']}  train loss {row['train_loss']:.4f} "
                          f"acc {row['train_acc']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
                          f"consistency {row['val_consistency']:.3f}  {row['images_per_s']:.1f} img/s"
                          + ("  (best)" if ev["best"] else ""), soft_wrap=True)

    return on_event


def finetune_summary(console: Console, summary: dict[str, Any], out_dir: str) -> None:
    """The end of a run: nothing left to do, skipped files, the best epoch and where the files are."""
    if summary["epochs_run"] == 0:
        console.print(f"nothing to do: all {summary['epochs']} epochs of {out_dir} are done", soft_wrap=True)
    for item in summary["bad_files"]:
        console.print(f"skipped unreadable {printable(item['path'])}: {printable(item['reason'])}", markup=False,
                      soft_wrap=True)
    console.print(f"best val acc {summary['best_val_acc']:.3f} at epoch {summary['best_epoch']}; "
                  f"checkpoints in {out_dir} (last.safetensors, best.safetensors), metrics in metrics.csv",
                  soft_wrap=True)


# --------------------------------------------------------------------------- dec retrofit / info / models


def points_table(title: str, points: list[dict]) -> Table:
    """Insertion points with their feature layout and shape."""
    table = Table(title=title, title_justify="left")
    for col in ("insertion point", "layout", "feature shape", "prefix tokens", "in channels"):
        table.add_column(col)
    for p in points:
        shape = "x".join(str(d) for d in (p.get("shape") or [])) or "-"
        table.add_row(p["path"], p["layout"], shape, str(p.get("prefix_tokens", 0)), str(p.get("in_channels", "-")))
    return table


def retrofit_summary(console: Console, summary: dict[str, Any], description: str) -> None:
    """The recipe, insertion points, DEC settings and parameter counts of a retrofitted checkpoint."""
    if summary["recipe"] == "auto":
        console.print(f"recipe auto: {description}", markup=False, soft_wrap=True)
    console.print(points_table(f"{summary['model']}: recipe {summary['recipe']}, mode {summary['mode']}",
                               summary["points"]))
    s = summary["dec_settings"]
    console.print(f"DEC: grid {s['grid']}, rows {s['rows']}, iters {s['iters']}, channels {s['channels']}, "
                  f"hidden {s['hidden']}, damping {s['damping']}, grad steps {s['grad_steps']}, "
                  f"solver {s.get('solver', 'fixed')}")
    n_bb, n_dec = summary["parameters"]["backbone"], summary["parameters"]["dec"]
    console.print(f"parameters: DEC {fmt_count(n_dec)} vs backbone {fmt_count(n_bb)} "
                  f"({100 * n_dec / max(n_bb, 1):.3f}%)")
    console.print(f"wrote {summary['output']}", markup=False)


def checkpoint_table(console: Console, s: dict[str, Any], ckpt: str) -> None:
    """`dec info`: backbone, classes, DEC settings, parameters, provenance and insertion points."""
    table = Table(title=ckpt, title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    names = s["class_names"]
    table.add_row("backbone", s["model_name"])
    if s["model_kwargs"]:
        table.add_row("model kwargs", ", ".join(f"{k}={v}" for k, v in s["model_kwargs"].items()))
    table.add_row("classes", f"{s['num_classes']}: {shorten(names, 10) if names else '-'}")
    looks_at = ", input image" if s.get("dec_input") == "image" else ""
    table.add_row("DEC", f"recipe {s['recipe']}, mode {s['mode']}{looks_at}" if s["dec"] else "none (plain backbone)")
    if s["dec_settings"]:
        table.add_row("DEC settings", ", ".join(f"{k} {v}" for k, v in s["dec_settings"].items()))
    p = s["parameters"]
    table.add_row("parameters", f"backbone {fmt_count(p.get('backbone'))}, DEC {fmt_count(p.get('dec'))}")
    table.add_row("format version", str(s["format_version"]))
    for key, value in s["provenance"].items():
        text = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
        table.add_row(f"provenance: {key}", text)
    console.print(table)
    if s["insertion_points"]:
        console.print(points_table("insertion points", s["insertion_points"]))


def recipes_table(console: Console, catalogue: dict[str, Any]) -> None:
    """`dec models`: the built-in recipes, the timm models each covers, and what the automatic recipe does."""
    table = Table(title="retrofit recipes (dec_cli/models/*.yaml)", title_justify="left")
    for col in ("recipe", "timm names", "layout", "default at", "mode", "timm models"):
        table.add_column(col)
    for d in catalogue["recipes"]:
        table.add_row(d["name"], " ".join(d["patterns"]), d["layout"], ",".join(d["at"]), d["mode"],
                      str(d["covered_models"]))
    console.print(table)
    summary = catalogue["auto"]["description"]
    console.print(summary[0].upper() + summary[1:] + ".", markup=False, soft_wrap=True)


# --------------------------------------------------------------------------- dec warp / dec unwarp


class FilesPerSecond(ProgressColumn):
    """A progress column: files per second."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- files/s" if speed is None else f"{speed:.1f} files/s")


def run_tree_job(job: Callable[..., Any], console: Console, quiet: bool, **kwargs: Any) -> Any:
    """Run a tree job (`run_warp`, `run_unwarp`) with a Rich progress bar showing files/s."""
    with progress_bar(console, quiet, FilesPerSecond()) as bar:
        task = bar.add_task("files", total=None)
        return job(on_start=lambda n: bar.update(task, total=n),
                   on_progress=lambda k: bar.advance(task, k), **kwargs)


def tree_report(console: Console, summary: Any, json_dest: Optional[str], requested_workers: int) -> None:
    """Summary table, list of bad files, JSON; shared by warp and unwarp."""
    table = Table(title=f"dec {summary.command}: {summary.src} -> {summary.dst}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [("source files" if summary.command == "warp" else "manifest entries", summary.files),
            ("outputs written", summary.written), ("already there (resumed)", summary.skipped_existing)]
    if summary.masks:
        rows.append(("masks written", summary.masks))
    workers = summary.workers if summary.workers == requested_workers else \
        f"{summary.workers} (not {requested_workers}: one per {'file' if summary.command == 'warp' else 'entry'})"
    rows += [("bad files", len(summary.bad)), ("workers", workers),
             ("seconds", f"{summary.seconds:.2f}"), ("files/s", f"{summary.files_per_s:.1f}")]
    if summary.manifest:
        rows.append(("manifest", summary.manifest))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    if summary.bad:
        # Listed even under --quiet: they are what the exit code is about.
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        err.print(f"{len(summary.bad)} bad file(s), not written:", markup=False)
        for item in summary.bad:
            err.print(f"  {printable(item['path'])}: {printable(item['reason'])}", markup=False)
    emit_json(summary.to_json(), json_dest)
