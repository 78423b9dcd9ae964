"""Image trees on disk: reading and writing image files, scanning folders, the warp-tree format and
manifests, what a `dec warp` job writes and the per-file work, image folders for models, class maps and
object boxes.

May import: `dec_cli.warps`, `dec_cli.core`.
"""
