"""Monotone warps: the `Warp` type and its 1-D maps, sampling grids and inverses, applying a warp,
random warps with their per-image keys, scale ranges and local zooms.

May import: `dec_cli.core`.
"""
