"""The zoom keeps an off-centre object in place, and the fast inverse of non-separable warps is exact.

Discs near every border and corner of a 256 x 256 image, centred by `object_disc`
as `dec warp --center object` does: after each zoom of 0.5-1.8 the warped mask's
centroid is within 1 px of the disc's centre and its area is ``z^2`` times the
disc's within 3 %. The inverse (`dec_cli.warps.warpinverse`) is measured by its
residual ``|l(l^{-1}(p)) - p|`` on every pixel of strong zooms and random warps.
"""

from __future__ import annotations

import pytest
import torch

from dec_cli.warps import warpinverse
from dec_cli.warps.maps1d import pixel_centres
from dec_cli.trees.objects import ObjectError, object_disc
from dec_cli.warps.randomwarp import keyed_warp
from dec_cli.warps.apply import apply_warp
from dec_cli.warps.warpgrid import sampling_grid
from dec_cli.warps.zoom import zoom_warp
from dec_cli.warps.zoomaxis import fit_radius, side_slopes

N = 256
SWEEP = (0.5, 0.7, 0.9, 1.25, 1.5, 1.8)
# (x, y, radius) in pixels: near the left, right, top and bottom borders, the four corners, and the
# issue's held-out disc; each leaves room for a 1.8x zoom of itself between it and the border.
DISCS = [(50, 128, 20), (206, 128, 20), (128, 48, 18), (128, 210, 22), (48, 48, 18), (208, 46, 18),
         (46, 208, 18), (210, 210, 20), (70, 180, 30)]


def _disc(cx: float, cy: float, r: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(N) + 0.5, torch.arange(N) + 0.5, indexing="ij")
    return (((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r).to(torch.uint8)[None, None] * 255


def _centroid_area(mask: torch.Tensor) -> tuple[float, float, float]:
    m = (mask[0, 0] > 0).double()
    yy, xx = torch.meshgrid(torch.arange(N) + 0.5, torch.arange(N) + 0.5, indexing="ij")
    area = float(m.sum())
    return float((m * xx).sum()) / area, float((m * yy).sum()) / area, area


@pytest.mark.parametrize("cx,cy,r", DISCS)
def test_an_off_centre_disc_is_zoomed_in_place(cx, cy, r):
    mask = _disc(cx, cy, r)
    _, _, area = _centroid_area(mask)
    center, radius = object_disc((cx - r, cy - r, cx + r, cy + r), (N, N), SWEEP)
    assert center == pytest.approx((cx / N, cy / N))
    for z in SWEEP:
        warped = apply_warp(mask, zoom_warp(z, center=center, radius=radius, size=(N, N)), mode="nearest")
        mx, my, a = _centroid_area(warped)
        assert abs(mx - cx) <= 1 and abs(my - cy) <= 1, (z, mx, my)
        assert a / area == pytest.approx(z * z, rel=0.03), z


def test_far_content_stays_put_and_the_centre_maps_to_itself():
    center, radius = (60 / N, 70 / N), 20 / N
    for z in (0.8, 1.25):
        w = zoom_warp(z, center=center, radius=radius, size=(N, N))
        c = torch.tensor([[center[0]]]), torch.tensor([[center[1]]])
        lx, ly = w.forward_points(*c)
        assert abs(lx.item() - center[0]) * N < 1e-3 and abs(ly.item() - center[1]) * N < 1e-3
        far = torch.linspace(0.8, 0.99, 20)  # the corner diagonally opposite the disc
        px, py = far.expand(20, 20).reshape(1, -1), far[:, None].expand(20, 20).reshape(1, -1)
        fx, fy = w.forward_points(px, py)
        assert float(torch.maximum((fx - px).abs(), (fy - py).abs()).max()) * N < 0.5


def test_side_slopes_are_separate_and_the_radius_fits_near_a_border():
    a, b = side_slopes(1.5, 0.3, 0.1)
    assert a == pytest.approx((0.3 - 0.15) / 0.2) and b == pytest.approx((0.7 - 0.15) / 0.6)
    r = fit_radius([1.8], (0.1, 0.5), 0.25, (N, N))
    assert r < 0.1 and min(side_slopes(1.8, 0.1, r)) == pytest.approx(0.05, rel=1e-6)
    zoom_warp(1.8, center=(0.1, 0.5), radius=r, size=(N, N))  # fits exactly
    with pytest.raises(ValueError, match="no room"):
        zoom_warp(1.8, center=(0.1, 0.5), radius=r * 1.01, size=(N, N))
    # non-square: the radius is a fraction of the short side, fitted on both axes
    assert fit_radius([1.5], (0.5, 0.1), 0.3, (100, 300)) == pytest.approx(0.1 * 0.95 / 1.45, rel=1e-6)


def test_an_object_touching_a_border_cannot_be_zoomed_in_place():
    with pytest.raises(ObjectError, match="too close to the border"):
        object_disc((0, 100, 2, 140), (N, N), (1.5,))


def _residual(warp, n: int) -> float:
    lines = pixel_centres(n, dtype=warp.ys_x.dtype)[None].expand(warp.batch, n)
    x, y = warpinverse.grid_inverse(warp, lines, lines, 16)
    px = lines.unsqueeze(1).expand(-1, n, n).reshape(warp.batch, -1)
    py = lines.unsqueeze(2).expand(-1, n, n).reshape(warp.batch, -1)
    fx, fy = warp.forward_points(x.reshape(warp.batch, -1), y.reshape(warp.batch, -1))
    return float(torch.maximum((fx - px).abs(), (fy - py).abs()).max())


@pytest.mark.parametrize("z", [0.5, 1.5, 2.0])
def test_the_fast_inverse_is_exact_on_strong_zooms(z):
    for c in ((0.5, 0.5), (0.3, 0.7), (0.15, 0.15), (0.9, 0.5), (0.08, 0.5), (0.95, 0.95)):
        radius = fit_radius([z], c, 0.25, (160, 160))
        w = zoom_warp(z, center=c, radius=radius, size=(160, 160), dtype=torch.float64)
        assert _residual(w, 160) < 1e-9, c
        assert _residual(w.to(torch.float32), 160) < 2 * warpinverse.TOLERANCE, c


def test_the_fast_inverse_is_exact_on_batched_random_warps():
    for rows in (2, 5, 17):
        a, b = (keyed_warp(3, k, grid=16, rows=rows, scale_range=(0.25, 4.0)) for k in (rows, rows + 100))
        batch = type(a)(*(torch.cat(pair, 0) for pair in zip((a.xs_x, a.ys_x, a.xs_y, a.ys_y),
                                                              (b.xs_x, b.ys_x, b.xs_y, b.ys_y))))
        assert _residual(batch.to(torch.float64), 96) < 1e-9


def test_points_newton_misses_are_re_solved_the_old_way():
    w = zoom_warp(1.8, center=(0.3, 0.6), radius=0.15, size=(64, 64), dtype=torch.float64)
    px, py = torch.rand(1, 500, dtype=torch.float64), torch.rand(1, 500, dtype=torch.float64)
    start = torch.zeros_like(px)  # a start Newton cannot recover from in zero steps
    x, y = warpinverse.polish(w, px, py, start, start, 64)
    assert float(warpinverse.residual(w, px, py, x, y).max()) < 1e-9
    ax, ay = warpinverse.alternating_inverse(w, px, py, 64)
    fx, fy = w.inverse_points(px, py)
    assert torch.allclose(fx, ax, atol=1e-9) and torch.allclose(fy, ay, atol=1e-9)


def test_a_fixed_zoom_grid_is_built_once_per_size():
    w = zoom_warp(1.3, center=(0.4, 0.45), radius=0.2, size=(80, 96))
    first = sampling_grid(w, 80, 96)
    again = sampling_grid(zoom_warp(1.3, center=(0.4, 0.45), radius=0.2, size=(80, 96)), 80, 96)
    assert again is first
    other = sampling_grid(w, 80, 97)
    assert other.shape == (1, 80, 97, 2)
    lines_x, lines_y = pixel_centres(96)[None], pixel_centres(80)[None]
    x, y = warpinverse.grid_inverse(w, lines_x, lines_y, 16)
    assert torch.equal(first, torch.stack([x, y], -1) * 2 - 1)
