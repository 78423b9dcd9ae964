"""The deep equilibrium canonicalizer: the latent DEC module and the image DEC (`imagedec`), their
solvers, losses, convergence measure and diagnostics, the `DECBlock` wrapper, and `retrofit`,
which inserts DECs into a timm backbone following a recipe (`catalogue`, `autorecipe`).

May import: `dec_cli.warps`, `dec_cli.core`.
"""
