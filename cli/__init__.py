"""`moe-specialists`: the composition root of the command line. It only mounts the layers' own commands:

calibrate, plan, apply, prune, evaluate, sweep, recover   (moe_specialists.pruning.cli)
registry   register, materialise, list, show, remove, push and pull specialists   (moe_specialists.models.registry_cli)
serve      the translation gateway on vLLM, routing by language pair   (moe_specialists.service.cli)
"""

from __future__ import annotations

import typer

from moe_specialists.models.registry_cli import app as registry_app
from moe_specialists.pruning.cli import app as pruning_app
from moe_specialists.service.cli import serve_command

app = typer.Typer(
    help="Carve translation specialists out of mixture-of-experts LLMs by pruning experts, and serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.registered_commands += pruning_app.registered_commands
app.command("serve")(serve_command)
app.add_typer(registry_app, name="registry")
