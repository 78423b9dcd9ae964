"""Fixed-point solvers: Anderson acceleration reaches the fixed point sooner than plain iteration."""

from __future__ import annotations

import torch

from dec_cli.canon.solvers import anderson, fixed_point


def slow_contraction(seed: int = 0, dim: int = 12, batch: int = 3):
    """``g(x) = A x + b`` with spectral radius 0.95 per sample: plain iteration converges slowly."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.linspace(-0.95, 0.95, dim, dtype=torch.float64)
    a = q @ torch.diag_embed(eig.expand(batch, dim)) @ q.transpose(1, 2)
    b = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    fixed = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b)
    return (lambda x: (a @ x.unsqueeze(-1)).squeeze(-1) + b), fixed


def test_anderson_beats_plain_iteration_on_a_slow_contraction():
    step, fixed = slow_contraction()
    x0 = torch.zeros_like(fixed)
    plain, plain_res = fixed_point(step, x0, 15)
    accel, accel_res = anderson(step, x0, 15, memory=6)
    assert len(plain_res) == len(accel_res) == 15
    err_plain = (plain - fixed).norm(dim=1)
    err_accel = (accel - fixed).norm(dim=1)
    assert (err_accel < 0.05 * err_plain).all(), (err_accel, err_plain)
    assert (accel_res[-1] < 0.05 * plain_res[-1]).all()  # the residual ||g(x) - x|| shows it


def test_anderson_at_a_fixed_point_stays_there():
    """The DEC at init: the map is the identity, residuals are zero, the solve must not produce NaN."""
    x0 = torch.zeros(2, 8)
    out, residuals = anderson(lambda x: x, x0, 6)
    assert torch.equal(out, x0) and all(torch.equal(r, torch.zeros(2)) for r in residuals)


def test_anderson_solves_each_sample_on_its_own():
    step, fixed = slow_contraction(seed=1)
    x0 = torch.zeros_like(fixed)
    together = anderson(step, x0, 10)[0]
    alone = anderson(lambda x: step(x.expand(3, -1))[:1], x0[:1], 10)[0]
    assert torch.allclose(together[:1], alone, atol=1e-10)
