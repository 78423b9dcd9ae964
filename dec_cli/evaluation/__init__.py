"""Evaluation: the evaluation loop over models and an image folder, metrics, test-time scale search,
on-the-fly zoom sweeps, and the report with its tables, JSON, plots and per-image predictions.

May import: `dec_cli.backbones`, `dec_cli.canon`, `dec_cli.trees`, `dec_cli.warps`, `dec_cli.core`.
"""
