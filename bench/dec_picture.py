"""Draw what a trained DEC does: test images, the warp it finds, and what it hands to the backbone.

For a few test composites of a `dec digits` tree and one zoomed copy of each (from `test-zoom/`),
one row per image: the input with the DEC's warp drawn as a deformed lattice, then what the
first DEC block passes on (the canonicalized image when the DEC warps the input, else the mean
over channels of the canonicalized feature map), for the original and its zoomed copy side by
side. A DEC that canonicalizes makes the two "passed on" panels alike.

    python bench/dec_picture.py RUN/best.safetensors --data TREE --zoom 1.6 --out docs/img/dec-canon.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dec_cli.backbones.checkpoint import load_model  # noqa: E402
from dec_cli.canon.diagnostics import dec_blocks  # noqa: E402
from dec_cli.trees.data import eval_transform, load_image  # noqa: E402
from dec_cli.warps.apply import apply_warp  # noqa: E402


def first_block_view(model: torch.nn.Module, x: torch.Tensor):
    """Run ``model`` on ``x`` (1, C, H, W); return the first DEC block's input, its warp and its canonicalized input."""
    _, block = dec_blocks(model)[0]
    seen = {}
    h1 = block.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    h2 = block.dec.register_forward_hook(lambda m, args, out: seen.setdefault("warp", out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h1.remove()
        h2.remove()
    feats, warp = seen["x"], seen["warp"]
    grid = block.token_grid(feats.shape[1]) if block.layout == "tokens" else None
    canon = apply_warp(feats, warp, inverse=True, layout=block.layout, prefix_tokens=block.prefix_tokens,
                       grid_size=grid)
    return feats, warp, canon


def as_picture(t: torch.Tensor, layout: str, mean, std):
    """A (H, W[, 3]) array to show: a denormalized image when ``t`` is one, else the channel mean."""
    if layout == "nhwc":
        t = t.permute(0, 3, 1, 2)
    if layout == "tokens":
        return None
    t = t[0].float()
    if t.shape[0] == len(mean):
        img = t * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
        return img.clamp(0, 1).permute(1, 2, 0).numpy()
    return t.mean(0).numpy()


def draw_lattice(ax, warp, h: int, w: int, lines: int = 9) -> None:
    """The warp's image of a regular lattice over an ``h x w`` picture (where each canonical line lands)."""
    s = torch.linspace(0, 1, 65)
    for k in torch.linspace(0, 1, lines):
        for px, py in ((s, torch.full_like(s, k)), (torch.full_like(s, k), s)):
            x, y = warp.forward_points(px[None], py[None])
            ax.plot(x[0].numpy() * w - 0.5, y[0].numpy() * h - 0.5, color="yellow", lw=0.6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt")
    ap.add_argument("--data", type=Path, required=True, help="a `dec digits` tree (test/ and test-zoom/)")
    ap.add_argument("--zoom", default="1.6", help="the zoom factor of the copy shown beside each image")
    ap.add_argument("-n", type=int, default=3, help="images (rows)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dec-canon.png")
    args = ap.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = load_model(args.ckpt).eval()
    transform = eval_transform(model)
    cfg = model.pretrained_cfg
    mean, std = tuple(cfg.get("mean", (0.5,) * 3)), tuple(cfg.get("std", (0.5,) * 3))
    sources = sorted(p for p in (args.data / "test").rglob("*.png"))[: args.n]
    fig, axes = plt.subplots(len(sources), 4, figsize=(8, 2.1 * len(sources)), squeeze=False)
    titles = ["input, warp found", "passed on", f"zoom {args.zoom}, warp found", "passed on"]
    for row, src in enumerate(sources):
        zoomed = args.data / "test-zoom" / src.parent.name / f"{src.stem}.z{args.zoom}.png"
        for col, path in enumerate((src, zoomed)):
            x = transform(load_image(path))[None]
            feats, warp, canon = first_block_view(model, x)
            layout = dec_blocks(model)[0][1].layout
            pic_in = as_picture(x, "nchw", mean, std)
            pic_out = as_picture(canon, layout, mean, std)
            ax_in, ax_out = axes[row][2 * col], axes[row][2 * col + 1]
            ax_in.imshow(pic_in, cmap="gray")
            draw_lattice(ax_in, warp, pic_in.shape[0], pic_in.shape[1])
            if pic_out is not None:
                ax_out.imshow(pic_out, cmap="gray" if pic_out.ndim == 2 else None)
            for ax, title in ((ax_in, titles[2 * col]), (ax_out, titles[2 * col + 1])):
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0:
                    ax.set_title(title, fontsize=9)
    fig.suptitle(f"{Path(args.ckpt).name}: first DEC block, test composites and their zoomed copies", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
