"""Models: timm backbones by name, weight files read safely (also other libraries' key layouts),
where weights come from, and the checkpoint format (`checkpoint`, `ckptheader`, `metacheck`).

May import: `dec_cli.canon`, `dec_cli.warps`, `dec_cli.core`.
"""
