"""The `dec` command line: thin Typer commands that parse, call one job (`dec_cli.jobs`), and report.

`app` holds the Typer app and `main`; each command group has its module, imported here in the
order `dec --help` lists the commands; `render` prints. Nothing below this package prints or exits.

May import: everything in dec_cli (commands -> jobs -> areas -> core); commands import torch-heavy
modules inside their bodies, so that `dec --help`, `dec info` and usage errors load no torch.
"""

from dec_cli.cli.app import app, main
from dec_cli.cli import digits_cmd, evaluate_cmd, finetune_cmd, model_cmds, warp_cmds  # noqa: F401  (registers the commands)
from dec_cli.cli.helptext import keep_app_examples

keep_app_examples(app)

__all__ = ["app", "main"]
