"""`dec evaluate --plot` (matplotlib) and the report's noise: built from a real `Report`, no model needed."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from rich.console import Console

from dec_cli.core.errors import UsageError
from dec_cli.evaluation.plot import check_plot_path, write_plot
from dec_cli.evaluation.report import ModelResult, Report, render_tables, to_markdown

from helpers import plot_panels

ZOOMS = [0.5, 0.8, 1.0, 1.25, 2.0]


def _model(name: str, *, zoom: bool, top1: float = 0.8) -> ModelResult:
    per_zoom = [{"zoom": z, "images": 4, "top1": top1 - abs(z - 1) / 4, "consistency": 1 - abs(z - 1) / 3}
                for z in ZOOMS] if zoom else []
    per_strength = [] if zoom else [
        {"strength_lo": 1.0, "strength_hi": 1.1, "pairs": 3, "top1": 0.7, "consistency": 0.9},
        {"strength_lo": 1.1, "strength_hi": 1.2, "pairs": 0, "top1": None, "consistency": None},
        {"strength_lo": 1.2, "strength_hi": 1.3, "pairs": 1, "top1": 0.5, "consistency": 0.6}]
    return ModelResult(name=name, source=name, model_name="test_resnet", dec=False, num_classes=3,
                       class_mapping="sorted", input_size=[3, 32, 32], metrics={"images": 20, "top1": top1}, per_zoom=per_zoom,
                       per_strength=per_strength, timing={})


def _report(*, zoom: bool, labels: bool = True, warps: int = 0) -> Report:
    data = {"root": "photos-zoom", "labels": labels, "classes": 3, "images": 20, "evaluated": 20, "unreadable": 0,
            "zoom_sweep": zoom, "zooms": ZOOMS if zoom else []}
    settings = {"warps": warps, "scale_range": [0.75, 1.33], "grid": 8, "rows": 1, "seed": 0, "img_size": None,
                "limit": None, "amp": False, "tta_scales": None}
    # Two models that agree exactly (a DEC at init): both must stay visible.
    return Report(data=data, settings=settings, models=[_model("plain", zoom=zoom), _model("dec", zoom=zoom)])


def test_png_has_two_framed_panels(tmp_path):
    png = tmp_path / "r.png"
    write_plot(_report(zoom=True), png)
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size[0] >= 1000
    assert plot_panels(png) == 2


def test_svg_names_axes_units_data_reference_and_each_model(tmp_path):
    svg = tmp_path / "r.svg"
    write_plot(_report(zoom=True), svg)
    text = svg.read_text()
    for needle in ("top-1 accuracy (%)", "consistency with zoom 1 (% of images)", "zoom factor (1 = the original",
                   "photos-zoom", "agreement with zoom 1", "plain", "dec"):
        assert needle in text, needle
    # coinciding lines keep distinct markers: one marker definition per model at least
    assert text.count("<defs>") >= 1 and text.count('id="m') >= 2


def test_pdf_and_label_free_single_panel(tmp_path):
    pdf = tmp_path / "r.pdf"
    write_plot(_report(zoom=False, labels=False, warps=2), pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    png = tmp_path / "one.png"
    write_plot(_report(zoom=False, labels=False, warps=2), png)
    assert plot_panels(png) == 1


@pytest.mark.parametrize("name", ["r.jpg", "r", "r.PNG.txt"])
def test_other_suffixes_are_usage_errors(name):
    with pytest.raises(UsageError, match=r"\.png, \.svg, \.pdf"):
        check_plot_path(name)


def _console_text(report: Report) -> str:
    buf = io.StringIO()
    render_tables(report, Console(file=buf, width=200, highlight=False))
    return buf.getvalue()


def test_empty_strength_bins_and_plural_noise_are_gone():
    text = _console_text(_report(zoom=False, warps=1))
    assert "1 warp per image" in text and "warps/image" not in text
    assert "0 pairs" not in text and "(1 pair)" in text and "(3 pairs)" in text
    assert "weights" in text and "checkpoint" in text  # where each model's weights came from


def test_no_scale_range_without_warps():
    md = to_markdown(_report(zoom=True, warps=0))
    assert "scale range" not in md and "no random warps" in md
    assert "scale range" not in _console_text(_report(zoom=True, warps=0))
