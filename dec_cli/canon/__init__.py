"""The deep equilibrium canonicalizer: the DEC module, its solvers, its losses and diagnostics, and
`retrofit`, which inserts DECs into a timm backbone following a recipe (`catalogue`, `autorecipe`).

May import: `dec_cli.warps`, `dec_cli.core`.
"""
