"""The DEC module: identity at init, phantom gradients, residuals, bf16, torch.compile, forced warps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dec_cli.canon.canonicalizer import DEC, DECSettings
from dec_cli.warps.randomwarp import random_warp
from dec_cli.canon.retrofit import DECBlock
from dec_cli.warps.apply import apply_warp


def smooth_maps(b: int = 2, c: int = 4, h: int = 32, w: int = 32) -> torch.Tensor:
    """Low-frequency feature maps: bilinear resampling of these is nearly exact."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    maps = []
    for i in range(b):
        chans = [torch.sin(3.1 * (k + 1) * x + 2.0 * y + i) * torch.cos(2.3 * y * (k + 1) - x)
                 for k in range(c)]
        maps.append(torch.stack(chans))
    return torch.stack(maps)


def logits_of(warp) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that rebuild a uniform-partition warp: log of the knot increments."""
    return torch.log(torch.diff(warp.knots_x, dim=-1)), torch.log(torch.diff(warp.knots_y, dim=-1))


def randomize_head(dec: DEC, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dec.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_settings_validate():
    with pytest.raises(ValueError, match="iters"):
        DECSettings(iters=0)
    with pytest.raises(ValueError, match="damping"):
        DECSettings(damping=1.5)
    with pytest.raises(ValueError, match="unknown DEC setting"):
        DECSettings.from_dict({"grdi": 3})
    assert DECSettings.from_dict(DECSettings(grid=6).to_dict()).grid == 6


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "tokens"])
def test_identity_at_init(layout):
    torch.manual_seed(0)
    dec = DEC(16, grid=5, rows=2, iters=4)
    x = torch.randn(3, 16, 6, 6)
    if layout == "nhwc":
        x = x.permute(0, 2, 3, 1)
    elif layout == "tokens":
        x = torch.cat([torch.randn(3, 2, 16), x.flatten(2).transpose(1, 2)], dim=1)
    warp = dec(x, layout=layout, prefix_tokens=2 if layout == "tokens" else 0)
    assert torch.equal(dec.logits[0], torch.zeros(3, 2, 5))
    assert torch.equal(dec.residual, torch.zeros(3))
    ident = torch.linspace(0, 1, 6).expand(3, 2, 6)
    assert torch.allclose(warp.knots_x, ident, atol=1e-6) and torch.allclose(warp.knots_y, ident, atol=1e-6)


def _graph_size(t: torch.Tensor) -> int:
    seen, stack = set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return len(seen)


def test_phantom_gradient_memory_does_not_grow_with_iterations():
    x = smooth_maps(2, 8, 12, 12)
    sizes = {}
    for iters in (2, 8):
        torch.manual_seed(0)
        dec = DEC(8, iters=iters, grad_steps=1)
        randomize_head(dec)
        tx, ty = dec.solve(dec.project(x, "nchw"))
        sizes[iters] = _graph_size(tx + ty)
        (tx.square().sum() + ty.square().sum()).backward()
        # out.bias shifts every logit of a row alike, which the solver removes (softmax ignores it)
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for name, p in dec.named_parameters() if name != "out.bias")
    assert sizes[2] == sizes[8]  # the autograd graph covers the last step only
    dec = DEC(8, iters=6, grad_steps=3)
    randomize_head(dec)
    tx, _ = dec.solve(dec.project(x, "nchw"))
    assert _graph_size(tx) > sizes[8]  # k steps of phantom gradient: a longer graph


def test_residual_is_per_sample_size_of_the_last_update():
    x = smooth_maps(3, 8, 12, 12)
    logits = {}
    for iters in (11, 12):
        dec = DEC(8, iters=iters, damping=0.5)
        randomize_head(dec, seed=3)
        with torch.no_grad():
            dec(x)
        logits[iters] = torch.cat([t.flatten(1) for t in dec.logits], dim=1)
    assert dec.residual.shape == (3,) and not dec.residual.requires_grad and (dec.residual > 0).all()
    assert torch.allclose(dec.residual, (logits[12] - logits[11]).norm(dim=1), atol=1e-5)


def test_bf16_autocast_runs_and_keeps_dtype():
    torch.manual_seed(0)
    block = DECBlock(nn.Linear(16, 16), DEC(16), layout="tokens", prefix_tokens=1)
    randomize_head(block.dec)
    x = torch.randn(2, 1 + 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16
    assert block.dec.logits[0].dtype == torch.float32 and torch.isfinite(out.float()).all()


def test_forward_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break (host sync, data-dependent Python branch)."""
    torch.manual_seed(0)
    block = DECBlock(nn.Identity(), DEC(8, iters=2), layout="tokens", prefix_tokens=1)
    randomize_head(block.dec)
    x = torch.cat([torch.randn(2, 1, 8), smooth_maps(2, 8, 6, 6).flatten(2).transpose(1, 2)], dim=1)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), block(x), atol=1e-6)


def test_forced_warp_canonicalizes_features():
    """With the DEC forced to the warp w, M(S^-1(S(F0))) equals M(F0) up to interpolation error."""
    f0 = smooth_maps(2, 4, 32, 32)
    w = random_warp(2, grid=4, scale_range=(0.7, 1.43), generator=torch.Generator().manual_seed(1))
    warped = apply_warp(f0, w)
    block = nn.Conv2d(4, 4, 3, padding=1)
    wrapper = DECBlock(block, DEC(4), layout="nchw")
    with torch.no_grad():
        plain_on_warped = wrapper(warped)  # identity DEC: just the block
        assert torch.allclose(plain_on_warped, block(warped), atol=1e-6)
        wrapper.dec.pin(*logits_of(w))
        canon = wrapper(warped)
        target = block(f0)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))  # borders clamp
    change = (plain_on_warped - target)[inner].abs().max()
    error = (canon - target)[inner].abs().max()
    print(f"change {change:.3f} error {error:.4f}")
    assert change > 0.15  # the warp really changes the features
    assert error < 0.15 * change  # and the canonicalizer undoes it
    wrapper.dec.pin(None)
    with torch.no_grad():
        assert torch.allclose(wrapper(warped), plain_on_warped)


def test_equivariant_mode_maps_back():
    """S(M(S^-1 F)) with M = identity returns F (up to interpolation)."""
    f = smooth_maps(1, 4, 32, 32)
    w = random_warp(1, grid=4, scale_range=(0.8, 1.25), generator=torch.Generator().manual_seed(2))
    wrapper = DECBlock(nn.Identity(), DEC(4), layout="nchw", mode="equivariant")
    wrapper.dec.pin(*logits_of(w))
    with torch.no_grad():
        out = wrapper(f)
        canon = DECBlock(nn.Identity(), wrapper.dec, layout="nchw")(f)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    change = (canon - f)[inner].abs().max()
    assert change > 0.2
    assert (out - f)[inner].abs().max() < 0.25 * change


def test_logit_shift_is_removed_so_a_biased_head_reaches_a_fixed_point():
    """Softmax ignores a row's logit shift; a head with only a bias must not drift the logits forever."""
    dec = DEC(8, iters=6)
    with torch.no_grad():
        dec.out.bias.fill_(1.0)
        dec.capture = True
        warp = dec(smooth_maps(2, 8, 12, 12))
    assert torch.equal(dec.residual_by_iter, torch.zeros(2, 6))
    assert torch.allclose(warp.knots_x, torch.linspace(0, 1, 5).expand_as(warp.knots_x))


def test_anderson_dec_starts_at_the_identity_and_reports_fixed_point_residuals():
    x = smooth_maps(3, 8, 12, 12)
    dec = DEC(8, iters=5, solver="anderson")
    dec.capture = True
    with torch.no_grad():
        assert torch.allclose(dec(x).knots_x, torch.linspace(0, 1, 5).expand(3, 1, 5))
        randomize_head(dec, seed=3)
        dec(x)
    assert dec.residual_by_iter.shape == (3, 5) and torch.equal(dec.residual_by_iter[:, -1], dec.residual)
    assert torch.isfinite(dec.residual_by_iter).all()


def test_anderson_forward_compiles_without_graph_breaks():
    torch.manual_seed(0)
    block = DECBlock(nn.Identity(), DEC(8, iters=4, solver="anderson"), layout="nchw")
    randomize_head(block.dec)
    x = smooth_maps(2, 8, 8, 8)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), block(x), atol=1e-5)


def test_unknown_solver_is_refused():
    with pytest.raises(ValueError, match="solver"):
        DECSettings(solver="newton")
