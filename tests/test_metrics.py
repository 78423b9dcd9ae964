"""Metrics against hand computations on tiny cases, and the --fail-if rule parser."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dec_cli.core.errors import UsageError
from dec_cli.evaluation.metrics import (batch_records, parse_fail_if, prob_l2, strength_edges, summarize, symmetric_kl,
                             topk_hits, warp_strength)
from dec_cli.warps.randomwarp import random_warp
from dec_cli.warps.warp import Warp

LOG3 = math.log(3.0)


def test_topk_hits_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.1, 0.2]])
    targets = torch.tensor([1, 2, 0])
    assert topk_hits(logits, targets, 1).tolist() == [True, False, False]
    assert topk_hits(logits, targets, 2).tolist() == [True, True, False]
    # k larger than the class count means every label is a hit
    assert topk_hits(logits, targets, 5).tolist() == [True, True, True]


def test_l2_and_symmetric_kl_by_hand():
    # p = (1/2, 1/2); q = softmax(log 3, 0) = (3/4, 1/4)
    a = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[LOG3, 0.0]], dtype=torch.float64)
    assert prob_l2(a, b).item() == pytest.approx(math.sqrt(2 * 0.25**2), abs=1e-12)
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert symmetric_kl(a, b).item() == pytest.approx(0.5 * (kl_pq + kl_qp), abs=1e-12)
    assert symmetric_kl(b, a).item() == pytest.approx(symmetric_kl(a, b).item(), abs=1e-15)
    assert prob_l2(a, a).item() == 0.0 and symmetric_kl(a, a).item() == 0.0


def _tiny_records():
    """Two images, two warps each, three classes."""
    clean = torch.tensor([[2.0, 0.0, 0.0],    # image 0: predicts 0, label 0 -> correct
                          [0.0, 0.0, 1.0]])   # image 1: predicts 2, label 1 -> wrong
    targets = torch.tensor([0, 1])
    warped = torch.tensor([[[2.0, 0.0, 0.0],  # unchanged
                            [0.0, 3.0, 0.0]],  # flips to 1
                           [[0.0, 1.0, 0.0],  # flips to 1 (now correct)
                            [0.0, 0.0, 1.0]]])  # unchanged
    rec = batch_records(clean, targets, warped, torch.tensor([[1.1, 1.2], [1.05, 1.3]]))
    rec["index"] = np.array([0, 1])
    return clean, warped, rec


def test_summarize_by_hand():
    clean, warped, rec = _tiny_records()
    out = summarize(rec, strength_max=4 / 3)
    m = out["metrics"]
    assert m["images"] == 2 and m["pairs"] == 4
    assert m["top1"] == 0.5  # image 0 right, image 1 wrong
    assert m["top5"] == 1.0  # 3 classes: every label is in the top 5
    assert m["warped_top1"] == 0.5  # pairs: right, wrong, right, wrong
    assert m["consistency"] == 0.5  # pairs (0,0) and (1,1) keep their top-1
    # invariance error: mean of ||softmax(clean_i) - softmax(warped_ij)||_2 over the 4 pairs, by hand
    def sm(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]
    l2s, kls = [], []
    for i in range(2):
        p = sm(clean[i].tolist())
        for j in range(2):
            q = sm(warped[i, j].tolist())
            l2s.append(math.sqrt(sum((x - y) ** 2 for x, y in zip(p, q))))
            kls.append(0.5 * sum((x - y) * (math.log(x) - math.log(y)) for x, y in zip(p, q)))
    assert m["inv_error"] == pytest.approx(sum(l2s) / 4, abs=1e-12)
    assert m["sym_kl"] == pytest.approx(sum(kls) / 4, abs=1e-12)
    assert m["zoom_top1_min"] is None and m["residual_mean"] is None


def test_summarize_is_order_independent():
    _, _, rec = _tiny_records()
    shuffled = {k: v[::-1].copy() for k, v in rec.items()}
    assert summarize(shuffled, strength_max=4 / 3) == summarize(rec, strength_max=4 / 3)


def test_strength_bins_by_hand():
    _, _, rec = _tiny_records()
    rows = summarize(rec, strength_max=4 / 3)["per_strength"]
    edges = strength_edges(4 / 3)
    assert [r["strength_lo"] for r in rows] == edges[:-1]
    assert edges[0] == 1.0 and edges[-1] == pytest.approx(4 / 3)
    # strengths 1.1, 1.2, 1.05, 1.3 against edges 1, 1.0746, 1.1547, 1.2408, 1.3333
    assert [r["pairs"] for r in rows] == [1, 1, 1, 1]
    by_pairs = {r["strength_lo"]: r for r in rows}
    assert by_pairs[edges[0]]["consistency"] == 0.0  # strength 1.05: image 1 warp 0 flipped
    assert by_pairs[edges[1]]["consistency"] == 1.0  # strength 1.1: image 0 warp 0 kept
    assert by_pairs[edges[3]]["top1"] == 0.0  # strength 1.3: image 1 warp 1, wrong


def test_zoom_table_by_hand():
    # sources a and b at zooms 0.8, 1.0, 1.2; label 0 everywhere
    zooms = [0.8, 1.0, 1.2, 0.8, 1.0, 1.2]
    sources = ["c/a.png"] * 3 + ["c/b.png"] * 3
    preds = [0, 0, 1, 2, 1, 1]
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 3).float()
    rec = batch_records(logits, torch.zeros(6, dtype=torch.long))
    rec["index"] = np.arange(6)
    out = summarize(rec, zooms=zooms, sources=sources)
    rows = {r["zoom"]: r for r in out["per_zoom"]}
    assert sorted(rows) == [0.8, 1.0, 1.2]
    assert rows[0.8]["top1"] == 0.5 and rows[1.0]["top1"] == 0.5 and rows[1.2]["top1"] == 0.0
    # against zoom 1: a -> 0, b -> 1.  0.8: (0 vs 0) yes, (2 vs 1) no; 1.2: (1 vs 0) no, (1 vs 1) yes
    assert rows[0.8]["consistency"] == 0.5 and rows[1.2]["consistency"] == 0.5 and rows[1.0]["consistency"] == 1.0
    assert out["metrics"]["zoom_top1_min"] == 0.0
    assert out["metrics"]["zoom_consistency_min"] == 0.5
    assert out["metrics"]["consistency"] is None  # no random warps in this run


def test_warp_strength():
    ident = Warp.identity(2, grid=4)
    assert torch.allclose(warp_strength(ident.slopes()), torch.ones(2, dtype=torch.float64))
    w = random_warp(64, grid=8, scale_range=(0.8, 1.25), generator=torch.Generator().manual_seed(0))
    s = warp_strength(w.slopes())
    assert bool((s > 1).all()) and bool((s <= 1.25 + 1e-6).all())


def test_residual_summary():
    rec = batch_records(torch.eye(2), torch.tensor([0, 1]))
    rec["index"] = np.array([0, 1])
    rec["res_mean"] = np.array([0.1, 0.3])
    rec["res_max"] = np.array([0.2, 0.5])
    m = summarize(rec)["metrics"]
    assert m["residual_mean"] == pytest.approx(0.2) and m["residual_max"] == 0.5


@pytest.mark.parametrize("expr,metric,op,value", [
    ("top1<0.70", "top1", "<", 0.70), (" consistency < 0.9 ", "consistency", "<", 0.9),
    ("inv_error>0.1", "inv_error", ">", 0.1), ("zoom_top1_min<=5e-1", "zoom_top1_min", "<=", 0.5),
])
def test_parse_fail_if(expr, metric, op, value):
    t = parse_fail_if(expr)
    assert (t.metric, t.op, t.value) == (metric, op, value)


def test_fail_if_semantics():
    t = parse_fail_if("top1<0.70")
    assert t.violated(0.69) and not t.violated(0.70) and not t.violated(0.9)
    assert parse_fail_if("inv_error>0.1").violated(0.2)


@pytest.mark.parametrize("expr", ["accuracy<0.5", "top1 < 0.5 extra", "top1", "<0.5", "top1<<0.5"])
def test_fail_if_bad_rules_are_usage_errors(expr):
    with pytest.raises(UsageError) as info:
        parse_fail_if(expr)
    assert info.value.exit_code == 2
