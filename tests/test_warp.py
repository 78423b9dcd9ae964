"""Property tests of the monotone warp engine: identity, inverse, group laws, strength, no folds, zoom."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dec_cli.warps.randomwarp import image_key, keyed_warp, random_warp
from dec_cli.warps.scalerange import DEFAULT_SCALE_RANGE, ScaleRange, ScaleRangeError
from dec_cli.warps.warp import Warp, compose, jacobian_determinant
from dec_cli.warps.apply import apply_warp
from dec_cli.warps.warpgrid import sampling_grid
from dec_cli.warps.zoom import zoom_warp
from dec_cli.warps.zoomaxis import fit_radius

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True)
seeds = st.integers(0, 2 ** 31 - 1)
grids = st.integers(1, 16)


def points(n: int = 257, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense n x n lattice of normalized points, flattened to (1, n*n)."""
    t = torch.linspace(0, 1, n, dtype=dtype)
    return t.expand(n, n).reshape(1, -1), t[:, None].expand(n, n).reshape(1, -1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- identity


@SETTINGS
@given(grid=grids, rows=st.integers(1, 5))
def test_zero_logits_are_the_identity(grid, rows):
    ident = Warp.identity(2, grid=grid, rows=rows)
    px, py = points(33)
    lx, ly = ident.forward_points(px, py)
    assert torch.allclose(lx, px.expand_as(lx), atol=1e-6) and torch.allclose(ly, py.expand_as(ly), atol=1e-6)
    x = torch.rand(2, 3, 17, 23, generator=gen(grid))
    assert torch.allclose(apply_warp(x, ident), x, atol=1e-5)
    img = (x * 255).round().to(torch.uint8)
    assert torch.equal(apply_warp(img, ident), img)


# --------------------------------------------------------------------------- inverse


@SETTINGS
@given(seed=seeds, grid=grids)
def test_inverse_separable_within_1e_4(seed, grid):
    w = random_warp(2, grid=grid, rows=1, generator=gen(seed))
    px, py = points()
    bx, by = w.inverse_points(*w.forward_points(px, py))
    assert (bx - px).abs().max() <= 1e-4 and (by - py).abs().max() <= 1e-4
    fx, fy = w.forward_points(*w.inverse_points(px, py))
    assert (fx - px).abs().max() <= 1e-4 and (fy - py).abs().max() <= 1e-4


@SETTINGS
@given(seed=seeds, grid=grids, rows=st.integers(2, 9))
def test_inverse_non_separable_within_1e_3(seed, grid, rows):
    w = random_warp(1, grid=grid, rows=rows, generator=gen(seed))
    px, py = points(41)
    bx, by = w.inverse_points(*w.forward_points(px, py))
    assert (bx - px).abs().max() <= 1e-3 and (by - py).abs().max() <= 1e-3


def test_apply_then_inverse_restores_a_smooth_image():
    w = random_warp(1, grid=8, rows=3, generator=gen(3))
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    img = torch.stack([torch.sin(4 * xx) + torch.cos(3 * yy), xx * yy])[None]
    back = apply_warp(apply_warp(img, w), w, inverse=True)
    assert (back - img)[..., 4:-4, 4:-4].abs().max() < 0.02


# --------------------------------------------------------------------------- group laws (separable)


@SETTINGS
@given(a=seeds, b=seeds, grid=grids)
def test_composition_is_closed_and_exact(a, b, grid):
    wa = random_warp(1, grid=grid, generator=gen(a))
    wb = random_warp(1, grid=grid + 3, generator=gen(b))
    ab = compose(wa, wb)
    assert ab.separable
    # merged breakpoints may repeat (zero-width intervals); every real interval increases
    sx, sy = ab.slopes()
    wx, wy = torch.diff(ab.xs_x, dim=-1)[:, None], torch.diff(ab.xs_y, dim=-1)[:, None]
    assert (sx[wx > 1e-6] > 0).all() and (sy[wy > 1e-6] > 0).all()
    px, py = points(129)
    cx, cy = ab.forward_points(px, py)
    ex, ey = wa.forward_points(*wb.forward_points(px, py))
    assert torch.allclose(cx, ex, atol=1e-5) and torch.allclose(cy, ey, atol=1e-5)
    # the inverse is a warp too, and w^-1 o w is the identity
    ix, iy = compose(wa.inverse(), wa).forward_points(px, py)
    assert torch.allclose(ix, px, atol=1e-5) and torch.allclose(iy, py, atol=1e-5)


@SETTINGS
@given(a=seeds, b=seeds, c=seeds)
def test_composition_is_associative(a, b, c):
    wa, wb, wc = (random_warp(1, grid=g, generator=gen(s)) for g, s in ((4, a), (8, b), (5, c)))
    left, right = compose(compose(wa, wb), wc), compose(wa, compose(wb, wc))
    px, py = points(129)
    lx, ly = left.forward_points(px, py)
    rx, ry = right.forward_points(px, py)
    assert torch.allclose(lx, rx, atol=1e-5) and torch.allclose(ly, ry, atol=1e-5)


def test_group_operations_refuse_non_separable_warps():
    w = random_warp(1, rows=3, generator=gen(0))
    with pytest.raises(ValueError, match="separable"):
        w.inverse()
    with pytest.raises(ValueError, match="separable"):
        compose(w, w)


# --------------------------------------------------------------------------- strength and folds


@SETTINGS
@given(seed=seeds, grid=grids, rows=st.integers(1, 6),
       lo=st.floats(0.2, 1.0), hi=st.floats(1.0, 4.0))
def test_slopes_stay_in_the_requested_range(seed, grid, rows, lo, hi):
    w = random_warp(2, grid=grid, rows=rows, scale_range=(lo, hi), generator=gen(seed))
    for s in w.slopes():
        assert s.min() >= lo * (1 - 1e-4) and s.max() <= hi * (1 + 1e-4)
    assert torch.all(w.knots_x[..., 0] == 0) and torch.all(w.knots_x[..., -1] == 1)


@SETTINGS
@given(seed=seeds, grid=grids, rows=st.integers(1, 9))
def test_random_warps_never_fold(seed, grid, rows):
    w = random_warp(1, grid=grid, rows=rows, scale_range=DEFAULT_SCALE_RANGE, generator=gen(seed))
    assert jacobian_determinant(w.to(torch.float64), n=97).min() > 0


def test_scale_range_parsing():
    assert ScaleRange.parse("0.75,1.33") == (0.75, 1.33) == DEFAULT_SCALE_RANGE
    for bad in ("1.2,1.5", "0,2", "nan,2", "0.04,1.2", "0.8,21"):
        with pytest.raises(ScaleRangeError):
            ScaleRange.parse(bad)
    for bad in ("abc", "0.5", "0.8,1.25,2", ""):
        with pytest.raises(ValueError, match="LO,HI such as") as caught:
            ScaleRange.parse(bad)
        assert not isinstance(caught.value, ScaleRangeError)
    with pytest.raises(ScaleRangeError, match=r"within \[0.05, 20\]; got 1e-300,1e\+300"):
        ScaleRange.parse("1e-300,1e300")


def test_scale_range_is_a_pair_wherever_it_is_recorded():
    r = ScaleRange.of([0.8, 1.25])
    assert r is ScaleRange.of(r) and ScaleRange.of("0.8,1.25") == r and (r.lo, r.hi) == (0.8, 1.25)
    assert json.dumps(r) == "[0.8, 1.25]" and list(r) == [0.8, 1.25]
    assert dataclasses.asdict(Holder(r)) == {"range": (0.8, 1.25)}
    for bad in (5, [0.8], [0.8, 1.25, 3], ["a", "b"]):
        with pytest.raises((TypeError, ValueError)):
            ScaleRange.of(bad)
    with pytest.raises(ScaleRangeError):  # a plain pair from Python passes the same check
        random_warp(1, scale_range=(1.2, 1.5))


@dataclasses.dataclass
class Holder:
    range: ScaleRange


def test_image_keys_are_the_commands_keys():
    """The keys `dec evaluate`, `dec finetune` (validation) and `dec warp` have always used: same seeds, same warps."""
    assert image_key("cls/a.png") == "cls/a.png"
    assert image_key("cls/a.png", split="val") == "val/cls/a.png"
    assert image_key("cat.png", copy=0) == "cat.png\0copy=0"
    expected = {  # knots_x, knots_y of keyed_warp(3, key, grid=3, scale_range=(0.8, 1.25)), from before the keys had a function
        image_key("cat.png", copy=0): ([0.0, 0.354247, 0.677976, 1.0], [0.0, 0.327565, 0.689819, 1.0]),
        image_key("cls/a.png", split="val"): ([0.0, 0.302327, 0.64994, 1.0], [0.0, 0.328342, 0.65603, 1.0]),
        image_key("cls/a.png"): ([0.0, 0.350944, 0.652627, 1.0], [0.0, 0.290299, 0.652473, 1.0]),
    }
    for key, (kx, ky) in expected.items():
        w = keyed_warp(3, key, grid=3, scale_range=(0.8, 1.25))
        assert w.knots_x[0, 0].tolist() == pytest.approx(kx, abs=1e-6)
        assert w.knots_y[0, 0].tolist() == pytest.approx(ky, abs=1e-6)
    # dec evaluate draws an image's K warps in one go from its key
    assert keyed_warp(3, image_key("cls/a.png"), 2, grid=3, scale_range=(0.8, 1.25)).knots_x[1, 0].tolist() == \
        pytest.approx([0.0, 0.290299, 0.652473, 1.0], abs=1e-6)


def test_keyed_warps_depend_only_on_seed_and_key():
    a, b = keyed_warp(7, "cats/a.png"), keyed_warp(7, "cats/a.png")
    assert torch.equal(a.knots_x, b.knots_x) and torch.equal(a.knots_y, b.knots_y)
    assert not torch.equal(a.knots_x, keyed_warp(7, "cats/b.png").knots_x)
    assert not torch.equal(a.knots_x, keyed_warp(8, "cats/a.png").knots_x)


# --------------------------------------------------------------------------- zoom


@pytest.mark.parametrize("z", [0.5, 0.6, 0.7, 0.8, 0.9, 1.1, 1.25, 1.4, 1.6, 1.7, 1.8])
def test_zoom_is_fold_free_and_magnifies_by_z_at_the_centre(z):
    w = zoom_warp(z, radius=0.25)
    assert jacobian_determinant(w.to(torch.float64), n=257).min() > 0
    # local scale factor at the centre, both axes, by a central difference of l
    h = 1e-3
    c = torch.tensor([[0.5 - h, 0.5 + h]], dtype=torch.float32)
    lx, _ = w.forward_points(c, torch.full_like(c, 0.5))
    _, ly = w.forward_points(torch.full_like(c, 0.5), c)
    assert (lx[0, 1] - lx[0, 0]) / (2 * h) == pytest.approx(z, rel=0.02)
    assert (ly[0, 1] - ly[0, 0]) / (2 * h) == pytest.approx(z, rel=0.02)
    # outside the zoomed neighbourhood a mild zoom leaves the image alone
    if 0.8 <= z <= 1.25:
        corner = torch.tensor([[0.02]])
        assert w.forward_points(corner, corner)[0].item() == pytest.approx(0.02, abs=2e-3)


@pytest.mark.parametrize("size,center", [((120, 200), (0.3, 0.4)), ((300, 160), (0.7, 0.25))])
def test_zoom_off_centre_and_non_square_is_fold_free(size, center):
    radius = fit_radius((0.5, 1.8), center, 0.25, size)  # near a border the disc shrinks to stay in place
    assert 0.1 < radius < 0.25
    for z in (0.5, 1.8):
        w = zoom_warp(z, radius=radius, size=size, center=center)
        assert jacobian_determinant(w.to(torch.float64), n=257).min() > 0
    with pytest.raises(ValueError, match="no room"):
        zoom_warp(1.8, radius=0.25, size=size, center=center)


def test_zoom_of_one_is_the_identity_and_bad_factors_are_refused():
    w = zoom_warp(1.0)
    assert torch.allclose(w.knots_x, Warp.identity(1, grid=64, rows=17).knots_x, atol=1e-7)
    with pytest.raises(ValueError):
        zoom_warp(0.0)
    with pytest.raises(ValueError, match="no room"):
        zoom_warp(2.5, radius=0.25)


# --------------------------------------------------------------------------- application


def test_fast_separable_grid_matches_the_general_path():
    w = random_warp(2, grid=8, generator=gen(5))
    # the same maps as 2 identical control rows take the non-separable code path
    w2 = Warp(w.xs_x, w.ys_x.repeat(1, 2, 1), w.xs_y, w.ys_y.repeat(1, 2, 1))
    for inverse in (False, True):
        g1 = sampling_grid(w, 37, 53, inverse=inverse)
        g2 = sampling_grid(w2, 37, 53, inverse=inverse)
        assert g1.shape == (2, 37, 53, 2)
        assert torch.allclose(g1, g2, atol=1e-5)
        # one warp at a time takes the numpy path; it must agree with the batched torch path
        g0 = sampling_grid(w[1], 37, 53, inverse=inverse)
        assert g0.shape == (1, 37, 53, 2) and torch.allclose(g0, g1[1:], atol=1e-6)
    # breakpoints that do not start at 0 or end at 1: both paths extrapolate along the end segments
    xs = torch.tensor([[0.1, 0.5, 0.8]])
    odd = Warp(xs, torch.tensor([[[0.2, 0.45, 0.9]]]), xs, torch.tensor([[[0.05, 0.6, 0.95]]]))
    both = Warp(xs.repeat(2, 1), odd.ys_x.repeat(2, 1, 1), xs.repeat(2, 1), odd.ys_y.repeat(2, 1, 1))
    for inverse in (False, True):
        assert torch.allclose(sampling_grid(odd, 13, 17, inverse=inverse),
                              sampling_grid(both, 13, 17, inverse=inverse)[:1], atol=1e-6)
    # gradients flow through the grid (DEC learns warps)
    theta = torch.zeros(1, 1, 8, requires_grad=True)
    g = sampling_grid(Warp.from_logits(theta, theta * 2), 9, 11)
    assert g.shape == (1, 9, 11, 2)
    assert torch.allclose(g.detach(), sampling_grid(Warp.from_logits(theta.detach(), theta.detach() * 2), 9, 11))
    g.square().sum().backward()
    assert theta.grad is not None and torch.isfinite(theta.grad).all()


def test_dtypes_layouts_and_masks():
    w = random_warp(1, grid=6, rows=2, generator=gen(11))
    img16 = torch.randint(0, 65535, (1, 1, 20, 30), dtype=torch.int32).to(torch.uint16)
    assert apply_warp(img16, w).dtype == torch.uint16
    img8 = torch.randint(0, 255, (3, 20, 30), dtype=torch.uint8)
    assert apply_warp(img8, w).dtype == torch.uint8 and apply_warp(img8, w).shape == (3, 20, 30)
    x = torch.rand(1, 4, 6, 6)
    nhwc = apply_warp(x.permute(0, 2, 3, 1), w, layout="nhwc")
    assert torch.allclose(nhwc.permute(0, 3, 1, 2), apply_warp(x, w), atol=1e-6)
    tokens = torch.cat([torch.full((1, 2, 4), 7.0), x.flatten(2).transpose(1, 2)], dim=1)
    out = apply_warp(tokens, w, layout="tokens", prefix_tokens=2)
    assert torch.equal(out[:, :2], tokens[:, :2])
    assert torch.allclose(out[:, 2:], apply_warp(x, w).flatten(2).transpose(1, 2), atol=1e-6)
    mask = torch.randint(0, 4, (1, 1, 16, 16)).float() * 10
    warped = apply_warp(mask, w, mode="nearest")
    assert set(warped.unique().tolist()) <= {0.0, 10.0, 20.0, 30.0}
    assert math.isclose(float(apply_warp(torch.ones(1, 1, 5, 5), w).min()), 1.0, rel_tol=1e-6)


def test_non_finite_logits_give_finite_warps_and_a_safe_backward():
    # torch's grid_sample backward segfaults on a NaN grid; run in a child so a regression fails cleanly.
    code = (
        "import torch\n"
        "from dec_cli.warps.warp import Warp\nfrom dec_cli.warps.apply import apply_warp\n"
        "t = torch.zeros(2, 2, 8); t[0, 0, 3] = float('nan'); t[1, 1, 2] = float('inf'); t[1, 0, 5] = -float('inf')\n"
        "t.requires_grad_()\n"
        "w = Warp.from_logits(t, t)\n"
        "assert all(torch.isfinite(k).all() for k in (w.knots_x, w.knots_y))\n"
        "x = torch.rand(2, 4, 16, 16, requires_grad=True)\n"
        "apply_warp(x, w, inverse=True).sum().backward()\n"
        "assert torch.isfinite(x.grad).all() and torch.isfinite(t.grad).all()\n"
        "print('finite')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "finite" in done.stdout, done.stderr[-2000:]
