"""The canonicalization loss: 1 for the identity DEC, 0 for an exactly equivariant one, and learnable."""

from __future__ import annotations

import torch
from torch import nn

from dec_cli.canon.canonicalizer import DEC
from dec_cli.canon.canonloss import canon_loss, dec_outputs
from dec_cli.canon.retrofit import DECBlock
from dec_cli.warps.randomwarp import random_warp
from dec_cli.warps.warp import Warp, compose
from dec_cli.warps.apply import apply_warp


def _warps(n: int, seed: int, rows: int = 1) -> Warp:
    return random_warp(n, grid=4, rows=rows, scale_range=(0.6, 1.6), generator=torch.Generator().manual_seed(seed))


def _cat(a: Warp, b: Warp) -> Warp:
    return Warp(*(torch.cat([s, t]) for s, t in zip((a.xs_x, a.ys_x, a.xs_y, a.ys_y), (b.xs_x, b.ys_x, b.xs_y, b.ys_y))))


def test_identity_scores_one_equivariant_scores_zero_constant_does_not_collapse():
    known = _warps(3, seed=1)
    phi = _warps(3, seed=2)
    identity = Warp.identity(6, grid=4)
    assert abs(canon_loss([identity], known).item() - 1.0) < 1e-5
    assert canon_loss([_cat(Warp.identity(3, grid=4), known)], known).item() < 1e-10  # Phi(x) = id, Phi(Sx) = T
    # Phi(x) = phi, Phi(S x) = T o phi: compare as point maps (the composite has merged breakpoints)
    t_phi = compose(known, phi)
    p = torch.rand(3, 50, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(torch.stack(t_phi.forward_points(p, p)), torch.stack(known.forward_points(*phi.forward_points(p, p))), atol=1e-6)
    assert canon_loss([_cat(phi, phi)], known).item() > 0.3  # the same warp for x and S x: no free win
    # non-separable training warps: T is applied to points, no composition of warps needed
    known2 = _warps(3, seed=3, rows=2)
    assert abs(canon_loss([Warp.identity(6, grid=4)], known2).item() - 1.0) < 1e-5


def test_dec_trained_on_the_loss_learns_to_follow_known_warps():
    """On exactly equivariant features (warped smooth maps) a DEC learns Phi(S x) = T o Phi(x)."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 24), torch.linspace(0, 1, 24), indexing="ij")
    base = torch.stack([torch.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.02),
                        torch.sin(6 * xx), torch.cos(5 * yy), xx * yy])
    block = DECBlock(nn.Identity(), DEC(4, grid=4, iters=2, hidden=16), layout="nchw")
    opt = torch.optim.Adam(block.dec.parameters(), lr=3e-3)
    losses = []
    for step in range(80):
        known = _warps(8, seed=100 + step)
        x = base.expand(8, -1, -1, -1)
        with dec_outputs(block) as warps:
            block(torch.cat([x, apply_warp(x, known)]))
        loss = canon_loss(warps, known)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert abs(losses[0] - 1.0) < 1e-4  # the identity at init
    assert sum(losses[-10:]) / 10 < 0.6, losses[-10:]


def test_dec_outputs_hooks_are_removed():
    block = DECBlock(nn.Identity(), DEC(4), layout="nchw")
    x = torch.randn(2, 4, 8, 8)
    with dec_outputs(block) as warps:
        block(x)
    block(x)
    assert len(warps) == 1 and not block.dec._forward_hooks


def test_finetune_canon_weight_trains_the_dec_and_needs_one(run_dec, tmp_path):
    from safetensors.torch import load_file
    from test_finetune import FAST, make_dec_checkpoint, make_shapes

    shapes = make_shapes(tmp_path / "shapes", n_train=6, n_val=2)
    ckpt = make_dec_checkpoint(tmp_path / "dec.safetensors")
    out = tmp_path / "run"
    r = run_dec("finetune", ckpt, shapes, "-o", out, "--epochs", "1", "--freeze-backbone", "--canon-weight", "1",
                "--dec-lr", "1e-2", *FAST, "--quiet")
    assert r.code == 0, r.err
    start, after = load_file(str(ckpt)), load_file(str(out / "last.safetensors"))
    changed = {k for k in start if not torch.equal(start[k], after[k])}
    assert changed and all(".dec." in k for k in changed)  # only the canonicalization loss moved anything
    plain = run_dec("finetune", "test_resnet", shapes, "-o", tmp_path / "plain", "--random-init",
                    "--num-classes", "3", "--canon-weight", "1", *FAST)
    assert plain.code == 2 and "--canon-weight needs a checkpoint with DEC modules" in plain.err
