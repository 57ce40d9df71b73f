"""``moe-specialists search``: the command line of the search job (its floor, budget, judging and fleet options)
over ``pruning.search.search`` and ``pruning.fleet_search.search_fleet``; mounted by ``pruning.cli``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moe_specialists.models.registry_cli import RegistryOption
from moe_specialists.pruning.cli_options import ConfigFile, DataDir, Device, comma_list, fail, job_config
from moe_specialists.pruning.data import DEFAULT_DATA


def search(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Base model folder (or hub id).")] = None,
    statistics: Annotated[Path | None, typer.Option(
        help="Routing statistics of MODEL (from calibrate); default: calibrated first into WORK/stats.safetensors "
             "(--calibration-limit dev passages per direction).")] = None,
    calibration_limit: Annotated[int, typer.Option(help="Without --statistics: dev passages per direction.")] = 100,
    directions: Annotated[str | None, typer.Option("--directions", "-d", help="Pairs to serve: en-de,de-en.")] = None,
    work: Annotated[Path | None, typer.Option(help="Folder of cached evaluations and the report.")] = None,
    max_loss: Annotated[
        float | None, typer.Option(help="Quality floor: chrF points the specialist may lose against the parent.")
    ] = None,
    max_bytes: Annotated[
        str | None, typer.Option(help="Budget of weight bytes as stored: 12GB, 7.5GiB or a number.")
    ] = None,
    criterion: Annotated[str, typer.Option(help="mean (of the directions' losses) or worst.")] = "mean",
    metric: Annotated[str, typer.Option(help="What --max-loss is in: chrf, or comet (with --comet).")] = "chrf",
    backend: Annotated[str, typer.Option(help="Judge candidates in transformers, or in vllm (the parent loaded once "
                                              "in an engine, its experts masked per candidate).")] = "transformers",
    comet: Annotated[str | None, typer.Option(help="COMET model for --metric comet, e.g. Unbabel/XCOMET-XL.")] = None,
    comet_python: Annotated[str | None, typer.Option(help="A Python with unbabel-comet (its own venv).")] = None,
    method: Annotated[str, typer.Option(help="Plan method (see sweep): rm-dynamic by default.")] = "rm-dynamic",
    resolution: Annotated[int, typer.Option(help="Experts in total between candidates below a drop level.")] = 1,
    refine: Annotated[int, typer.Option(
        help="After the bisection, refine the allocation layer by layer: at most this many evaluations.")] = 0,
    refine_step: Annotated[int | None, typer.Option(
        help="Experts a refinement takes from one layer (default: experts per layer / 16).")] = None,
    data: DataDir = DEFAULT_DATA,
    split: Annotated[str, typer.Option(help="Split the candidates are judged on.")] = "dev",
    confirm_split: Annotated[str, typer.Option(help="Split the chosen plan is confirmed on.")] = "devtest",
    limit: Annotated[int | None, typer.Option(help="Passages per direction (at least 20).")] = 50,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    dtype: str = "float32",
    device: Device = "cpu",
    out: Annotated[Path | None, typer.Option(help="The plan found (default: WORK/plan.json).")] = None,
    register: Annotated[
        str | None, typer.Option(help="Register the plan under this name (--fleet: the prefix of the names).")
    ] = None,
    registry: RegistryOption = None,
    overwrite: bool = False,
    dropped: Annotated[str, typer.Option(
        help="drop; substitute: each dropped expert answered by its mean output (the plan carries the constants); "
        "either: each candidate measured both ways, the one that loses less kept.")] = "drop",
    fleet: Annotated[bool, typer.Option(help="Choose a fleet of specialists for the pairs (--gpus ...).")] = False,
    gpus: Annotated[int, typer.Option(help="--fleet: GPUs to serve on.")] = 1,
    gpu_memory: Annotated[str | None, typer.Option(help="--fleet: memory of each GPU, e.g. 80GB.")] = None,
    kv_cache: Annotated[str | None, typer.Option(help="--fleet: KV cache each engine needs, e.g. 20GB.")] = None,
    kinds: Annotated[
        str, typer.Option(help="--fleet: specialists to consider: direction, language, multilingual.")
    ] = "direction,language,multilingual",
    config: ConfigFile = None,
) -> None:
    """The smallest plan of MODEL whose chrF loss on the dev split stays within --max-loss, or the largest that
    fits --max-bytes, for the directions to serve; confirmed on devtest, with a Pareto table and plot in
    WORK/search.md and search.png (--fleet: WORK/fleet.md, the specialists and serve commands per GPU)."""
    from pydantic import ValidationError

    from moe_specialists.pruning.fleet_search import FleetConfig, search_fleet
    from moe_specialists.pruning.search import SearchConfig
    from moe_specialists.pruning.search import search as run

    names = {"data": "data_dir", "work": "work_dir", "register": "register_name"}
    options = dict(model=model, statistics=statistics, calibration_limit=calibration_limit, directions=directions,
                   work=work, max_loss=max_loss,
                   max_bytes=max_bytes, method=method, dropped=dropped, resolution=resolution, refine=refine,
                   refine_step=refine_step, data=data, split=split,
                   confirm_split=confirm_split, limit=limit, max_new_tokens=max_new_tokens, batch_size=batch_size,
                   dtype=dtype, device=device, out=out, register=register, registry=registry, overwrite=overwrite,
                   metric=metric, comet_model=comet, comet_python=comet_python, backend=backend)
    try:
        if fleet:
            job = job_config(ctx, FleetConfig, config, names, **options, gpus=gpus, gpu_memory=gpu_memory,
                             kv_cache=kv_cache, kinds=comma_list(kinds))
            result = search_fleet(job, log=typer.echo)
        else:
            job = job_config(ctx, SearchConfig, config, names, **options, criterion=criterion)
            result = run(job, log=typer.echo)
    except (ValueError, ValidationError, FileNotFoundError) as e:
        fail(e)
    typer.echo((job.work_dir / ("fleet.md" if fleet else "search.md")).read_text())
    if result.problem:
        fail(ValueError(result.problem))
