"""The wrapper a retrofit puts around each chosen backbone module: ``M(S^-1 F)`` or ``S(M(S^-1 F))``.

:class:`DECBlock` holds the module and its DEC; the two root pre-hooks tell the wrappers what
they cannot see from their own input: the input image's size (token grids of non-square inputs)
and, for image DECs, the input image itself.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torch import Tensor, nn

from dec_cli.canon.canonicalizer import DEC, LAYOUTS, to_map
from dec_cli.warps.apply import apply_warp

MODES = ("canonicalize", "equivariant")



class DECBlock(nn.Module):
    """A backbone module with a DEC in front: ``M(S^-1 F)`` or ``S(M(S^-1 F))``.

    Prefix tokens (cls, distillation, registers) pass through unwarped. The
    token grid comes from the actual token count: the patch embedding's grid
    when it fits, else the grid of the latest input image (dynamic sizes),
    else a square.
    """

    def __init__(self, block: nn.Module, dec: DEC, *, layout: str, mode: str = "canonicalize",
                 prefix_tokens: int = 0, patch_embed: Optional[nn.Module] = None, image_input: bool = False):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.block = block
        self.dec = dec
        self.layout = layout
        self.mode = mode
        self.prefix_tokens = int(prefix_tokens)
        # Not a submodule: the patch embedding belongs to the backbone.
        self._patch_embed = [patch_embed] if patch_embed is not None else []
        self.image_size: Optional[tuple[int, int]] = None
        # An image DEC looks at the model's input, which a root pre-hook leaves here before each forward.
        self.image_input = bool(image_input)
        self.source_image: Optional[Tensor] = None
        # Diagnostics (dec_cli.canon.diagnostics): with capture set, ``captured`` holds the spatial feature
        # maps received and handed to the block, flattened per sample (prefix tokens left out).
        self.capture = False
        self.captured: Optional[tuple[Tensor, Tensor]] = None

    def extra_repr(self) -> str:
        extra = ", input=image" if self.image_input else ""
        return f"layout={self.layout}, mode={self.mode}, prefix_tokens={self.prefix_tokens}{extra}"

    def token_grid(self, n_tokens: int) -> Optional[tuple[int, int]]:
        """(h, w) of the patch grid for ``n_tokens`` tokens (prefix included)."""
        if self.layout != "tokens":
            return None
        patches = n_tokens - self.prefix_tokens
        pe = self._patch_embed[0] if self._patch_embed else None
        if pe is not None:
            gs = getattr(pe, "grid_size", None)
            if gs is not None and int(gs[0]) * int(gs[1]) == patches:
                return int(gs[0]), int(gs[1])
            if self.image_size is not None:
                h, w = self.image_size
                if hasattr(pe, "dynamic_feat_size"):
                    gh, gw = pe.dynamic_feat_size((h, w))
                else:
                    ps = getattr(pe, "patch_size", 16)
                    ph, pw = (ps, ps) if isinstance(ps, int) else ps
                    gh, gw = math.ceil(h / ph), math.ceil(w / pw)
                if gh * gw == patches:
                    return int(gh), int(gw)
        side = math.isqrt(patches)
        if side * side == patches:
            return side, side
        raise ValueError(f"cannot fold {patches} patch tokens into a grid; use a square input or a "
                         f"model with dynamic_img_size")

    def _flat_map(self, x: Tensor, grid: Optional[tuple[int, int]]) -> Tensor:
        """A detached float copy of the spatial feature map of ``x``, one row per sample."""
        return to_map(x, self.layout, self.prefix_tokens, grid).detach().float().flatten(1).clone()

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        grid = self.token_grid(x.shape[1]) if self.layout == "tokens" else None
        kw = dict(layout=self.layout, prefix_tokens=self.prefix_tokens, grid_size=grid)
        if self.image_input and self.source_image is None:
            raise RuntimeError("an image DEC block ran outside its model's forward (no input image recorded)")
        warp = self.dec(self.source_image if self.image_input else x, **kw)
        canon = apply_warp(x, warp, inverse=True, **kw).to(x.dtype)
        if self.capture:
            self.captured = (self._flat_map(x, grid), self._flat_map(canon, grid))
        out = self.block(canon, *args, **kwargs)
        if self.mode == "equivariant":
            if self.layout == "tokens" and out.shape[1] != x.shape[1]:
                kw["grid_size"] = None
            out = apply_warp(out, warp, **kw).to(out.dtype)
        return out


def record_image_size(module: nn.Module, args: tuple) -> None:
    """Root forward pre-hook: tell token wrappers the input image size (for non-square token grids).

    The wrappers are listed on the model itself, so ``copy.deepcopy`` of the
    model keeps the hook pointing at the copy's own wrappers.
    """
    if args and isinstance(args[0], Tensor) and args[0].dim() == 4:
        size = (int(args[0].shape[-2]), int(args[0].shape[-1]))
        for w in getattr(module, "_dec_token_blocks", ()):
            w.image_size = size


# --------------------------------------------------------------------------- retrofit


def record_source_image(module: nn.Module, args: tuple) -> None:
    """Root forward pre-hook: hand the input image to the image-DEC wrappers listed on the model."""
    if args and isinstance(args[0], Tensor):
        for w in getattr(module, "_dec_image_blocks", ()):
            w.source_image = args[0]
