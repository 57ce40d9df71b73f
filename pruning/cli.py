"""The pruning commands (mounted at the top of `moe-specialists` by ``moe_specialists.cli``): a thin command
line over the job functions.

calibrate  route translation prompts through a model, save routing statistics (the slow step, once)
plan       rank experts and allocate per-layer counts from saved statistics -> plan.json (instant)
apply      slice the base checkpoint by a plan -> specialist folder (loads in transformers and vLLM)
prune      all three in one go
evaluate   translate a FLORES-style split: chrF, BLEU, degenerate-output rate (JSON)
sweep      compression curves per method, kept-expert IoU, unseen-language comparison -> a report
search     the smallest plan within a quality floor or the largest within a byte budget; --fleet: the set of
           specialists that serves every pair within the floor on the GPUs given
recover    recovery tuning: full fine-tuning of a specialist (SFT on pairs, or distillation from its parent)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from moe_specialists.models.registry_cli import RegistryOption
from moe_specialists.pruning.cli_options import (
    Allocation,
    ConfigFile,
    DataDir,
    Device,
    Drop,
    ExpertsImplementation,
    Languages,
    OrientationOption,
    Ranking,
    check_device_option,
    comma_list,
    fail,
    job_config,
)
from moe_specialists.pruning.cli_recover import recover
from moe_specialists.pruning.cli_search import search
from moe_specialists.pruning.data import DEFAULT_DATA

app = typer.Typer(help="Prune experts: calibrate, plan, apply, evaluate, sweep, search, recover.", no_args_is_help=True)


def _sizes(plan) -> dict:
    return {
        "experts_per_layer": plan.experts_per_layer(),
        "parameters": plan.parameters,
        "base_parameters": plan.base.parameters,
    }


@app.command()
def calibrate(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Hub id or local folder of the base MoE model.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to save the statistics (.safetensors).")] = None,
    languages: Languages = None,
    data: DataDir = DEFAULT_DATA,
    direction: OrientationOption = "to",
    split: str = "dev",
    limit: Annotated[int | None, typer.Option(help="Use only the first N passages.")] = None,
    backend: Annotated[
        str,
        typer.Option(
            help="transformers (forward hooks on --device: routing mass, frequency and REAP) or vllm (hooks inside "
            "vLLM while it generates: routing mass and frequency, no REAP; the path for 20B+ bases)."
        ),
    ] = "transformers",
    routing: Annotated[
        str,
        typer.Option(
            help="reference: teacher forcing on the FLORES reference (one forward pass, faster); "
            "generated: the model's own greedy translation (the paper's choice; slower)."
        ),
    ] = "reference",
    max_new_tokens: Annotated[int, typer.Option(help="--routing generated: longest translation generated.")] = 256,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Sequences per forward pass (transformers, default 8) or per vLLM call (default 256)."),
    ] = None,
    tensor_parallel_size: Annotated[
        int, typer.Option(help="--backend vllm: GPUs the engine shards the model over (vLLM's own option).")
    ] = 1,
    reap: Annotated[
        bool | None,
        typer.Option(
            help="Also collect REAP scores (one extra expert pass); transformers backend only. Default: on with "
            "transformers, off with vllm."
        ),
    ] = None,
    revision: str | None = None,
    dtype: str = "float32",
    device: Annotated[
        str,
        typer.Option(
            callback=check_device_option,
            help="torch device of the transformers backend: cpu, cuda, cuda:1, ... Unused by --backend vllm: vLLM "
            "picks its own platform (the GPUs in CUDA_VISIBLE_DEVICES, or the CPU with its CPU build).",
        ),
    ] = "cpu",
    config: ConfigFile = None,
) -> None:
    """Collect routing statistics of MODEL translating between English and each language."""
    from moe_specialists.pruning.calibrate import CalibrationConfig
    from moe_specialists.pruning.calibrate import calibrate as run

    try:
        job = job_config(
            ctx, CalibrationConfig, config, {"data": "data_dir"}, model=model, out=out, languages=languages,
            data=data, direction=direction, split=split, limit=limit, backend=backend, routing=routing,
            max_new_tokens=max_new_tokens, batch_size=batch_size, tensor_parallel_size=tensor_parallel_size,
            reap=reap, revision=revision, dtype=dtype, device=device,
        )  # fmt: skip
        path = run(job)
    except (ValueError, FileNotFoundError) as e:
        fail(e)
    typer.echo(f"statistics saved to {path}")


def _make_plan(
    stats_path: Path, drop: int, ranking: str, allocation: str, directions: str | None, invert: bool, seed: int,
    dropped: str = "drop",
):
    """The plan of a recipe over saved statistics (default directions: every calibrated one)."""
    from moe_specialists.models.plan import Recipe
    from moe_specialists.pruning.plan import make_plan
    from moe_specialists.pruning.stats import RoutingStats

    stats = RoutingStats.load(stats_path)
    dirs = comma_list(directions) if directions else sorted(stats.groups)
    recipe = Recipe(ranking=ranking, allocation=allocation, drop=drop, invert=invert, seed=seed, directions=dirs,
                    dropped=dropped)
    return make_plan(stats, recipe)


@app.command()
def plan(
    stats: Annotated[Path, typer.Argument(help="Statistics saved by `calibrate`.")],
    out: Annotated[Path, typer.Option(help="Where to write plan.json.")],
    drop: Drop,
    ranking: Ranking = "routing-mass",
    allocation: Allocation = "dynamic",
    directions: Annotated[
        str | None,
        typer.Option(help="Calibrated directions to rank by, e.g. en-de,de-en (default: all in the statistics)."),
    ] = None,
    invert: Annotated[bool, typer.Option(help="Control: drop the MOST important experts.")] = False,
    seed: int = 0,
    dropped: Annotated[str, typer.Option(
        help="drop, or substitute: each dropped expert answered by its mean output on the directions (MoNE; the "
             "constants are written beside the plan as <name>.substitutes.safetensors; statistics from "
             "`calibrate --backend transformers`).")] = "drop",
) -> None:
    """Decide which experts each layer keeps; no model is loaded."""
    from pydantic import ValidationError

    try:
        p = _make_plan(stats, drop, ranking, allocation, directions, invert, seed, dropped)
    except (ValueError, ValidationError) as e:
        fail(e)
    p.save(out)
    typer.echo(json.dumps({"plan": str(out), **_sizes(p)}))


@app.command()
def apply(
    plan: Annotated[Path, typer.Argument(help="plan.json written by `plan`.")],
    out: Annotated[Path, typer.Option(help="Folder of the specialist to write.")],
    base: Annotated[str | None, typer.Option(help="Base model (default: the plan's base id).")] = None,
    overwrite: bool = False,
) -> None:
    """Write the specialist: the base checkpoint sliced by the plan, streamed shard by shard."""
    from moe_specialists.models.apply import apply_plan

    try:
        path = apply_plan(plan, out, base=base, overwrite=overwrite)
    except (ValueError, FileExistsError) as e:
        fail(e)
    typer.echo(f"specialist written to {path}")


@app.command()
def prune(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Hub id or local folder of the base MoE model.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder of the specialist to write.")] = None,
    languages: Languages = None,
    drop: Annotated[
        int | None, typer.Option(help="Experts dropped per MoE layer on average (0 <= drop <= E - top_k).")
    ] = None,
    data: DataDir = DEFAULT_DATA,
    direction: OrientationOption = "to",
    split: str = "dev",
    ranking: Ranking = "routing-mass",
    allocation: Allocation = "dynamic",
    limit: Annotated[int | None, typer.Option(help="Use only the first N calibration passages.")] = None,
    batch_size: int = 8,
    dtype: str = "float32",
    device: Device = "cpu",
    register: Annotated[str | None, typer.Option(help="Register the specialist under this name.")] = None,
    registry: RegistryOption = None,
    plan_only: Annotated[
        bool, typer.Option(help="With --register: register the plan (served from the base), write no sliced copy.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT, its statistics and a registered NAME.")] = False,
    config: ConfigFile = None,
) -> None:
    """calibrate + plan + apply (the plan `plan STATS --drop D` makes: every calibrated direction); statistics
    are kept beside the specialist (OUT.stats.safetensors) for other drop levels. With --plan-only,
    OUT.plan.json is written and registered instead of a sliced copy. Existing outputs are refused before
    calibrating, unless --overwrite."""
    from moe_specialists.pruning.prune import PruneConfig
    from moe_specialists.pruning.prune import prune as run

    try:
        names = {"data": "data_dir", "register": "register_name"}
        job = job_config(
            ctx, PruneConfig, config, names, model=model, out=out, languages=languages, drop=drop, data=data,
            direction=direction, split=split, ranking=ranking, allocation=allocation, limit=limit,
            batch_size=batch_size, dtype=dtype, device=device, register=register, registry=registry,
            plan_only=plan_only, overwrite=overwrite,
        )  # fmt: skip
        result = run(job)
    except (ValueError, FileExistsError) as e:
        fail(e)
    typer.echo(result.model_dump_json())


app.command()(recover)


@app.command()
def evaluate(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Model or specialist folder (or hub id).")] = None,
    directions: Annotated[
        str | None, typer.Option("--directions", "-d", help="Comma-separated, e.g. en-de,de-en.")
    ] = None,
    data: DataDir = DEFAULT_DATA,
    split: str = "devtest",
    limit: Annotated[int | None, typer.Option(help="Only the first N passages per direction.")] = None,
    backend: Annotated[str, typer.Option(help="transformers (always works) or vllm.")] = "transformers",
    seeds: Annotated[str, typer.Option(help="Comma-separated decode seeds (used when sampling).")] = "0",
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    max_new_tokens: int = 256,
    batch_size: int = 32,
    dtype: str = "float32",
    device: Device = "cpu",
    experts_implementation: ExpertsImplementation = None,
    out: Annotated[Path | None, typer.Option(help="Write the results JSON here.")] = None,
    comet: Annotated[
        str | None,
        typer.Option(help="Also score with this COMET model, e.g. Unbabel/XCOMET-XL or a .ckpt file."),
    ] = None,
    comet_python: Annotated[
        str | None,
        typer.Option(help="A Python with unbabel-comet installed (it needs its own venv: it pins transformers<5)."),
    ] = None,
    config: ConfigFile = None,
) -> None:
    """Translate DATA/SPLIT with MODEL; chrF, BLEU (and xCOMET) and the degenerate-output rate per direction."""
    from moe_specialists.pruning.evaluate import EvaluationConfig
    from moe_specialists.pruning.evaluate import evaluate as run

    try:
        job = job_config(
            ctx, EvaluationConfig, config, {"data": "data_dir", "comet": "comet_model"}, model=model,
            directions=directions, data=data, split=split, limit=limit, backend=backend, seeds=seeds,
            temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype,
            device=device, experts_implementation=experts_implementation, out=out, comet=comet,
            comet_python=comet_python,
        )  # fmt: skip
        res = run(job)
    except (ValueError, ImportError, RuntimeError) as e:
        fail(e)
    typer.echo(res.model_dump_json(indent=1, exclude={"directions": {"__all__": {"seeds"}}}))


@app.command()
def sweep(
    ctx: typer.Context,
    model: Annotated[str | None, typer.Argument(help="Base model folder (or hub id).")] = None,
    work: Annotated[
        Path | None, typer.Option(help="Folder for statistics, cached evaluations, temporary specialists.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where the report (.md, .json, PNG) goes (default: WORK/report).")
    ] = None,
    languages: Languages = "de,fr,ru",
    drops: Annotated[str, typer.Option(help="Drop levels for every method.")] = "0,8,16,24",
    default_drops: Annotated[str, typer.Option(help="Extra drop levels for the default method only.")] = "28",
    methods: Annotated[str | None, typer.Option(help="Comma-separated (default: all six).")] = None,
    data: DataDir = DEFAULT_DATA,
    limit: Annotated[int | None, typer.Option(help="Evaluation passages per direction.")] = 100,
    calib_limit: Annotated[int | None, typer.Option(help="Calibration passages.")] = 200,
    unseen: Annotated[str | None, typer.Option(help="Language left out for per-language vs multilingual.")] = None,
    unseen_drops: str = "16,24",
    backend: str = "transformers",
    batch_size: int = 32,
    name: Annotated[str, typer.Option(help="File stem of the report.")] = "compression",
    minutes: Annotated[float | None, typer.Option(help="Stop starting new evaluations after this long.")] = None,
    config: ConfigFile = None,
) -> None:
    """Compression curves per method, kept-expert IoU between languages, unseen-language comparison."""
    import time

    from pydantic import ValidationError

    from moe_specialists.pruning.sweep import Sweep, SweepConfig

    try:
        job = job_config(
            ctx, SweepConfig, config, {"data": "data_dir", "work": "work_dir", "out": "out_dir"}, model=model,
            work=work, out=out, languages=languages, drops=drops, default_drops=default_drops, methods=methods,
            data=data, limit=limit, calib_limit=calib_limit, unseen=unseen, unseen_drops=unseen_drops,
            backend=backend, batch_size=batch_size, name=name,
        )  # fmt: skip
        path = Sweep(job, log=typer.echo).run(deadline=time.time() + 60 * minutes if minutes else None)
    except (ValueError, ValidationError) as e:
        fail(e)
    typer.echo(f"report written to {path}")


app.command()(search)
