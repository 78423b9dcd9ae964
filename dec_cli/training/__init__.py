"""Training: the fine-tuning options, the data splits, parameter groups and learning rates, the
training loop, and the run folder that makes a run resumable.

May import: `dec_cli.evaluation` (metrics), `dec_cli.backbones`, `dec_cli.canon`, `dec_cli.trees`,
`dec_cli.warps`, `dec_cli.core`.
"""
