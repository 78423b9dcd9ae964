"""``dec evaluate --plot``: accuracy and consistency against zoom factor or warp strength, with matplotlib.

One line per model; models that agree (a DEC at init computes what its
backbone computes) would hide each other, so every model gets its own marker,
line style and marker size, the later ones drawn smaller on top. The title
names the data and, on a zoom sweep, the reference (zoom 1, the original
image); axes carry units. The file type follows the suffix: .png, .svg, .pdf.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from dec_cli.core.errors import UsageError
from dec_cli.core.files import atomic_path

FORMATS = (".png", ".svg", ".pdf")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_STYLES = ("-", "--", "-.", ":")

Series = list[tuple[str, list[Optional[float]], list[Optional[float]]]]


def check_plot_path(path: Optional[str]) -> None:
    """A usage error (exit 2) unless ``path`` ends in a format the plot can be written in."""
    if path is not None and Path(path).suffix.lower() not in FORMATS:
        raise UsageError(f"--plot writes {', '.join(f[1:].upper() for f in FORMATS)}; {path!r} ends in none of "
                         f"{', '.join(FORMATS)}", "for example --plot report.png (or .svg, .pdf)")


def plot_series(report: Any) -> tuple[str, list[float], Series]:
    """(x label, x values, [(model, accuracy, consistency)]): per zoom factor, or per non-empty strength bin."""
    if report.data["zoom_sweep"]:
        xs = list(report.data["zooms"])
        series = []
        for m in report.models:
            by = {r["zoom"]: r for r in m.per_zoom}
            series.append((m.name, [by.get(z, {}).get("top1") for z in xs],
                           [by.get(z, {}).get("consistency") for z in xs]))
        return "zoom factor (1 = the original image)", xs, series
    first = next((m.per_strength for m in report.models if m.per_strength), [])
    keep = [i for i, b in enumerate(first) if b.get("pairs")]
    xs = [(first[i]["strength_lo"] * first[i]["strength_hi"]) ** 0.5 for i in keep]
    series = [(m.name, [m.per_strength[i]["top1"] for i in keep], [m.per_strength[i]["consistency"] for i in keep])
              for m in report.models]
    return "warp strength (RMS local scale factor, 1 = no warp)", xs, series


def _title(report: Any) -> str:
    d = report.data
    what, reference = ((f"zoom sweep of {d['root']}", "consistency: agreement with zoom 1 (the original image)")
                       if d["zoom_sweep"] else
                       (f"random warps of {d['root']}", "consistency: agreement with the unwarped image"))
    zooms = len(d.get("zooms") or [])
    count = (f"{d['evaluated'] // zooms} images x {zooms} zoom factors" if d["zoom_sweep"] and zooms
             and d["evaluated"] % zooms == 0 else f"{d['evaluated']} images")
    return f"{what} ({count}{'' if d.get('labels', True) else ', no labels'})\n{reference}"


def _panel(ax: Any, xs: list[float], series: Series, pick: int, ylabel: str, zoom: bool) -> None:
    """One panel: a line per model in percent, each with its own marker and style."""
    for i, s in enumerate(series):
        pts = [(x, 100 * v) for x, v in zip(xs, s[pick]) if v is not None]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=s[0], marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_STYLES[i % len(_STYLES)], markersize=max(9 - 2 * i, 4), linewidth=max(2.4 - 0.5 * i, 1),
                markerfacecolor="none" if i % 2 == 0 else None, zorder=2 + i)
    if zoom:
        ax.axvline(1.0, color="0.5", linewidth=0.8, linestyle=":", zorder=1)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.minorticks_off()
    ax.set_ylim(-3, 103)
    ax.set_ylabel(ylabel)
    ax.grid(True, color="0.9", zorder=0)
    for spine in ax.spines.values():
        spine.set_color("black")


def _quiet_config_fallback() -> None:
    """With an unwritable HOME matplotlib uses a temporary cache and logs a warning on stderr;
    the plot is the same, so that notice is kept off the command's output (unless logging is set)."""
    import logging

    logger = logging.getLogger("matplotlib")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


def write_plot(report: Any, path: str | Path) -> None:
    """Two panels (top-1 accuracy, consistency) or, without labels, consistency alone; format by suffix."""
    _quiet_config_fallback()
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

    check_plot_path(str(path))
    xlabel, xs, series = plot_series(report)
    zoom = bool(report.data["zoom_sweep"])
    consistency = "consistency with zoom 1 (% of images)" if zoom else "consistency (% of pairs unchanged)"
    panels = [(1, "top-1 accuracy (%)"), (2, consistency)] if report.data.get("labels", True) else [(2, consistency)]
    fig = Figure(figsize=(5 * len(panels) + 1, 4.6), dpi=120, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (pick, ylabel) in zip(axes, panels):
        _panel(ax, xs, series, pick, ylabel, zoom)
        ax.set_xlabel(xlabel)
    axes[0].legend(loc="lower left", fontsize="small", framealpha=0.9)
    fig.suptitle(_title(report), fontsize="medium")
    suffix = Path(path).suffix.lower()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix[1:])
