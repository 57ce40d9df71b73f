"""The option vocabulary the pruning commands share (typer ``Annotated`` types) and the two helpers every
command uses: ``job_config`` (a job's typed config from a YAML file and the command line) and ``fail`` (one red
line, exit 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Languages = Annotated[
    str | None, typer.Option("--languages", "-l", help="Comma-separated language codes, e.g. de or de,fr,ru.")
]
OrientationOption = Annotated[str, typer.Option(help="to: en->L, from: L->en, both: both directions.")]
DataDir = Annotated[
    str,
    typer.Option(
        help="Parallel passages: flores+ (FLORES+ from the hub, gated: accept its terms and log in), sample (the "
        "small sample shipped with the project) or a folder of <split>/<lang>.txt line-aligned files."
    ),
]
Drop = Annotated[int, typer.Option(help="Experts dropped per MoE layer on average (0 <= drop <= E - top_k).")]
Ranking = Annotated[str, typer.Option(help="routing-mass (default), reap, frequency or random.")]
Allocation = Annotated[
    str,
    typer.Option(
        help="dynamic (default: more experts where routing is language-"
        "specific), uniform, or inverse-dynamic (control)."
    ),
]

ExpertsImplementation = Annotated[
    str | None,
    typer.Option(help="transformers experts kernel: eager (default), batched_mm or grouped_mm (fast on GPUs)."),
]


def check_device_option(value: str) -> str:
    """A torch device this machine has, refused before any model loads."""
    from moe_specialists.pruning.config import check_device

    try:
        return check_device(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


Device = Annotated[
    str, typer.Option(callback=check_device_option, help="torch device (transformers): cpu, cuda, cuda:1, ...")
]


def comma_list(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file of this job's settings; options given on the command line override it."),
]


def fail(e: Exception) -> None:
    from pydantic import ValidationError

    from moe_specialists.pruning.config import describe

    typer.secho(f"error: {describe(e) if isinstance(e, ValidationError) else e}", fg="red", err=True)
    raise typer.Exit(2)


def job_config(ctx: typer.Context, cls: type, file: Path | None, names: dict[str, str] | None = None, **options):
    """``cls`` from the settings of ``file`` overridden by the options given on the command line; an option
    left at its default fills only what the file does not set (None: the config's own default). ``names``:
    option -> config field where they differ."""
    from moe_specialists.pruning.config import read_config_file

    data = read_config_file(file) if file is not None else {}
    for option, value in options.items():
        field = (names or {}).get(option, option)
        source = ctx.get_parameter_source(option)  # typer's click: compare by name
        given = getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")
        if given or (field not in data and value is not None):
            data[field] = value
    return cls.model_validate(data)
