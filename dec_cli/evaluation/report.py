"""The report of ``dec evaluate`` (:class:`Report`) and its renderings: Rich tables, JSON, Markdown; the plot is `dec_cli.evaluation.plot`.

JSON schema (``schema_version`` 1; keys are only ever added, never renamed):

- ``schema_version`` (int), ``tool`` {``name``, ``version``, ``command``};
- ``data``: ``root``, ``labels`` (false: no class folders or ``--no-labels``; every
  accuracy is then null), ``classes``, ``images`` (after ``--limit``), ``evaluated``,
  ``unreadable`` (count), ``zoom_sweep`` (bool), ``zooms`` (sorted factors);
- ``settings``: ``warps``, ``scale_range``, ``grid``, ``rows``, ``seed``,
  ``img_size``, ``limit``, ``amp``, ``tta_scales`` (null without ``--tta-scales``), ``zoom``
  (null without ``--zoom``; else ``zooms``, ``center``, ``radius``, ``boxes``, ``masks``);
- ``models``: one object per MODEL, in command-line order (each followed by its
  ``NAME+tta`` row under ``--tta-scales``): ``name``, ``source``,
  ``model_name``, ``dec``, ``num_classes``, ``class_mapping`` (null without
  labels), ``input_size``,
  ``metrics`` {``images``, ``top1``, ``top5``, ``pairs``, ``warped_top1``,
  ``warped_top5``, ``inv_error``, ``sym_kl``, ``consistency``,
  ``zoom_top1_min``, ``zoom_consistency_min``, ``flip_rate``, ``residual_mean``,
  ``residual_max``, ``residual_rel``, ``canon_error``} (null when not computed; identical across runs for a
  fixed seed), ``per_zoom`` [{``zoom``, ``images``, ``top1``, ``top5``,
  ``consistency``, ``groups``}], ``per_strength`` [{``strength_lo``,
  ``strength_hi``, ``pairs``, ``top1``, ``consistency``}], ``timing``
  {``latency_ms``, ``images_per_s``, ``device``, ``world_size``, ``amp``,
  ``compile``} (machine-dependent), ``dec_modules`` [{``path``, ``canon_error``,
  ``residual_by_iter``}] and ``residual_rel_by_dec`` [{``path``, ``residual_rel``}] (both empty for
  plain models and ``+tta`` rows);
- ``unreadable``: [{``path``, ``reason``}] skipped files;
- ``fail_if``: [{``expr``, ``model``, ``metric``, ``value``, ``violated``}].
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dec_cli.canon.diagnostics import module_rows
from dec_cli.core.display import printable
from dec_cli.core.errors import UsageError
from dec_cli.core.files import atomic_path, write_text_atomic
from dec_cli.version import __version__

SCHEMA_VERSION = 1


@dataclass
class ModelResult:
    """One model's results; ``metrics`` is deterministic for a fixed seed, ``timing`` is not."""

    name: str
    source: str
    model_name: str
    dec: bool
    num_classes: int
    class_mapping: Optional[str]  # None in a label-free run
    input_size: list[int]
    metrics: dict[str, Any]
    per_zoom: list[dict[str, Any]]
    per_strength: list[dict[str, Any]]
    timing: dict[str, Any]
    weights_conversion: Optional[dict[str, Any]] = None  # --weights renamed from a foreign key layout
    dec_modules: list[dict[str, Any]] = field(default_factory=list)  # dec_cli.canon.diagnostics.summarize_dec
    residual_rel_by_dec: list[dict[str, Any]] = field(default_factory=list)  # dec_cli.evaluation.evalresiduals
    weights_source: str = "checkpoint"  # checkpoint, pretrained, random-init or the --weights FILE


@dataclass
class Report:
    """The outcome of ``dec evaluate``; :meth:`to_dict` is the JSON document (its schema: this module's docstring)."""

    data: dict[str, Any]
    settings: dict[str, Any]
    models: list[ModelResult]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    fail_if: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[list[str]] = field(default_factory=list)  # --predictions rows; not in the JSON

    @property
    def zoom_sweep(self) -> bool:
        return bool(self.data.get("zoom_sweep"))

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [row for row in self.fail_if if row["violated"]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "dec", "version": __version__, "command": "evaluate"},
            "data": self.data,
            "settings": self.settings,
            "models": [asdict(m) for m in self.models],
            "unreadable": self.unreadable,
            "fail_if": self.fail_if,
        }


SUMMARY_COLUMNS = [
    ("top1", "top-1"), ("top5", "top-5"), ("warped_top1", "warped top-1"), ("inv_error", "inv. error"),
    ("sym_kl", "sym. KL"), ("consistency", "consistency"), ("zoom_top1_min", "min zoom top-1"),
    ("zoom_consistency_min", "min zoom consist."), ("flip_rate", "flip rate"),
    ("residual_mean", "DEC residual mean"), ("residual_max", "DEC residual max"),
    ("residual_rel", "DEC residual rel."),
    ("canon_error", "DEC canon. error"),
]
_PERCENT = {"top1", "top5", "warped_top1", "consistency", "zoom_top1_min", "zoom_consistency_min", "flip_rate"}
NO_LABELS = "no labels (metrics compare each model with itself)"


def fmt(key: str, value: Any) -> str:
    """Human formatting: accuracies as percentages, divergences with 4 significant digits."""
    if value is None:
        return "-"
    if key in _PERCENT:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _summary_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """One row per metric, one column per model (side by side)."""
    header = ["metric"] + [m.name for m in report.models]
    rows = [["DEC"] + ["yes" if m.dec else "no" for m in report.models],
            ["weights"] + [m.weights_source for m in report.models],
            ["images"] + [str(m.metrics["images"]) for m in report.models]]
    for key, label in SUMMARY_COLUMNS:
        if any(m.metrics.get(key) is not None for m in report.models):
            rows.append([label] + [fmt(key, m.metrics.get(key)) for m in report.models])
    rows.append(["ms/image"] + ["-" if m.timing.get("latency_ms") is None else f"{m.timing['latency_ms']:.2f}"
                                for m in report.models])
    return header, rows


def _labelled(report: Report) -> bool:
    return report.data.get("labels", True)


def _pair_cell(report: Report, row: Optional[dict[str, Any]]) -> str:
    """A per-zoom or per-strength cell: top-1 / consistency, or consistency alone without labels."""
    if row is None:
        return "-"
    if not _labelled(report):
        return fmt("consistency", row["consistency"])
    return f"{fmt('top1', row['top1'])} / {fmt('consistency', row['consistency'])}"


def _pair_header(report: Report, name: str) -> str:
    return f"{name} top-1 / consist." if _labelled(report) else f"{name} consist."


def _zoom_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    zooms = report.data.get("zooms") or []
    header = ["zoom"] + [_pair_header(report, m.name) for m in report.models]
    rows = []
    for z in zooms:
        row = [f"{z:g}"]
        for m in report.models:
            row.append(_pair_cell(report, next((r for r in m.per_zoom if r["zoom"] == z), None)))
        rows.append(row)
    return header, rows


def _strength_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    first = next((m.per_strength for m in report.models if m.per_strength), [])
    header = ["warp strength"] + [_pair_header(report, m.name) for m in report.models]
    rows = []
    for i, b in enumerate(first):
        if not b["pairs"]:  # a bin no warp fell into says nothing
            continue
        row = [f"{b['strength_lo']:.3f}-{b['strength_hi']:.3f} ({b['pairs']} pair{'' if b['pairs'] == 1 else 's'})"]
        for m in report.models:
            row.append(_pair_cell(report, m.per_strength[i] if i < len(m.per_strength) else None))
        rows.append(row)
    return header, rows


def _classes_text(report: Report) -> str:
    d = report.data
    return f"{d['classes']} classes" if _labelled(report) else NO_LABELS


def _warps_text(s: dict[str, Any]) -> str:
    """``4 warps per image, scale range 0.75..1.33`` (singular for one warp)."""
    n = s["warps"]
    return (f"{n} warp{'' if n == 1 else 's'} per image, "
            f"scale range {s['scale_range'][0]:g}..{s['scale_range'][1]:g}")


def render_tables(report: Report, console: Console, *, max_unreadable: int = 10) -> None:
    """Print the human report: summary, per-zoom or per-strength table, skipped files, rule results."""
    d = report.data
    s = report.settings
    what = "zoom sweep" if d["zoom_sweep"] else "image folder"
    console.print(f"[bold]{what}[/bold] {escape(str(d['root']))}: {d['evaluated']} images evaluated, "
                  f"{_classes_text(report)}"
                  + (f", {d['unreadable']} unreadable skipped" if d["unreadable"] else "")
                  + (f"; {_warps_text(s)}, seed {s['seed']}" if s["warps"] else ""))
    for title, (header, rows) in [("Summary", _summary_rows(report)),
                                  ("Per zoom factor (consistency against zoom 1)" if d["zoom_sweep"]
                                   else "Per warp strength", _zoom_rows(report) if d["zoom_sweep"]
                                   else _strength_rows(report)),
                                  ("DEC modules", module_rows(report))]:
        if not rows:
            continue
        table = Table(title=title, title_justify="left")
        for i, col in enumerate(header):
            table.add_column(escape(col), justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        console.print(table)
    if report.unreadable:
        console.print(f"[yellow]skipped {len(report.unreadable)} unreadable file(s):[/yellow]")
        for bad in report.unreadable[:max_unreadable]:
            console.print(f"  {printable(bad['path'])}: {printable(bad['reason'])}", markup=False)
        if len(report.unreadable) > max_unreadable:
            console.print(f"  ... and {len(report.unreadable) - max_unreadable} more (see --json)")
    for rule in report.fail_if:
        mark = "[red]FAIL[/red]" if rule["violated"] else "[green]ok[/green]"
        console.print(f"{mark} {escape(rule['expr'])} ({escape(rule['model'])}: {rule['metric']} = {rule['value']:.4g})")


def to_markdown(report: Report) -> str:
    """The report as GitHub-flavoured Markdown tables."""
    d = report.data
    s = report.settings
    lines = ["# dec evaluate report", "",
             f"Data: `{d['root']}` ({'zoom sweep' if d['zoom_sweep'] else 'image folder'}), "
             f"{d['evaluated']} images evaluated, {_classes_text(report)}, {d['unreadable']} unreadable skipped.",
             (f"Settings: {_warps_text(s)}, grid {s['grid']}, rows {s['rows']}, seed {s['seed']}." if s["warps"]
              else "Settings: no random warps."), ""]
    sections = [("Summary", _summary_rows(report))]
    sections.append(("Per zoom factor", _zoom_rows(report)) if d["zoom_sweep"]
                    else ("Per warp strength", _strength_rows(report)))
    sections.append(("DEC modules", module_rows(report)))
    for title, (header, rows) in sections:
        if not rows:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        lines.append("")
    if report.unreadable:
        lines += ["## Unreadable files", ""] + [f"- `{b['path']}`: {b['reason']}" for b in report.unreadable] + [""]
    if report.fail_if:
        lines += ["## Thresholds", ""] + [
            f"- {'FAIL' if r['violated'] else 'ok'} `{r['expr']}` ({r['model']}: {r['metric']} = {r['value']:.4g})"
            for r in report.fail_if] + [""]
    return "\n".join(lines)


def write_markdown(report: Report, path: str | Path) -> None:
    write_text_atomic(path, to_markdown(report))


def check_writable(path: Optional[str], option: str) -> None:
    """Fail early (exit 2) when an output could not be written, before minutes of evaluation."""
    if path is None or path == "-":
        return
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path} is a directory", f"give a file name, e.g. {option} report.json")
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {option} {path}: {parent} is not a writable folder",
                         "choose a writable location")


def write_outputs(report: Report, *, markdown: Optional[str] = None, plot: Optional[str] = None,
                  predictions: Optional[str] = None) -> list[str]:
    """Write the Markdown and plot (PNG, SVG or PDF) outputs that were asked for; returns the paths written."""
    written = []
    if markdown:
        write_markdown(report, markdown)
        written.append(markdown)
    if plot:
        from dec_cli.evaluation.plot import write_plot  # matplotlib: loaded only when a plot is asked for

        write_plot(report, plot)
        written.append(plot)
    if predictions:
        from dec_cli.evaluation.predictions import write_predictions

        write_predictions(report.predictions, predictions)
        written.append(predictions)
    return written


def failure_message(failed: Sequence[dict[str, Any]]) -> str:
    """One line naming every violated ``--fail-if`` rule."""
    parts = [f"{r['model']}: {r['metric']} = {r['value']:.4g} ({r['expr']})" for r in failed]
    return f"{len(failed)} --fail-if rule(s) violated: " + "; ".join(parts)
