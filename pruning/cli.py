"""The pruning commands (mounted at the top of `moe-specialists` by ``moe_specialists.cli``): a thin command
line over the job functions.

calibrate  route translation prompts through a model, save routing statistics (the slow step, once)
plan       rank experts and allocate per-layer counts from saved statistics -> plan.json (instant)
apply      slice the base checkpoint by a plan -> specialist folder (loads in transformers and vLLM)
prune      all three in one go
evaluate   translate a FLORES-style split: chrF, BLEU, degenerate-output rate (JSON)
sweep      compression curves per method, kept-expert IoU, unseen-language comparison -> a report
recover    recovery tuning: full fine-tuning of a specialist (SFT on pairs, or distillation from its parent)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from moe_specialists.models.registry_cli import RegistryOption
from moe_specialists.pruning.data import DEFAULT_DATA

app = typer.Typer(help="Prune experts: calibrate, plan, apply, evaluate, sweep, recover.", no_args_is_help=True)

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


def _check_device(value: str) -> str:
    """A torch device this machine has, refused before any model loads."""
    from moe_specialists.pruning.config import check_device

    try:
        return check_device(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


Device = Annotated[
    str, typer.Option(callback=_check_device, help="torch device (transformers): cpu, cuda, cuda:1, ...")
]


def _langs(value: str) -> list[str]:
    return [x.strip() for x in value.split(",") if x.strip()]


def _sizes(plan) -> dict:
    return {
        "experts_per_layer": plan.experts_per_layer(),
        "parameters": plan.parameters,
        "base_parameters": plan.base.parameters,
    }


ConfigFile = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file of this job's settings; options given on the command line override it."),
]


def _fail(e: Exception) -> None:
    from pydantic import ValidationError

    from moe_specialists.pruning.config import describe

    typer.secho(f"error: {describe(e) if isinstance(e, ValidationError) else e}", fg="red", err=True)
    raise typer.Exit(2)


def _job_config(ctx: typer.Context, cls: type, file: Path | None, names: dict[str, str] | None = None, **options):
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
            callback=_check_device,
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
        job = _job_config(
            ctx, CalibrationConfig, config, {"data": "data_dir"}, model=model, out=out, languages=languages,
            data=data, direction=direction, split=split, limit=limit, backend=backend, routing=routing,
            max_new_tokens=max_new_tokens, batch_size=batch_size, tensor_parallel_size=tensor_parallel_size,
            reap=reap, revision=revision, dtype=dtype, device=device,
        )  # fmt: skip
        path = run(job)
    except (ValueError, FileNotFoundError) as e:
        _fail(e)
    typer.echo(f"statistics saved to {path}")


def _make_plan(
    stats_path: Path, drop: int, ranking: str, allocation: str, directions: str | None, invert: bool, seed: int
):
    """The plan of a recipe over saved statistics (default directions: every calibrated one)."""
    from moe_specialists.models.plan import Recipe
    from moe_specialists.pruning.plan import make_plan
    from moe_specialists.pruning.stats import RoutingStats

    stats = RoutingStats.load(stats_path)
    dirs = _langs(directions) if directions else sorted(stats.groups)
    recipe = Recipe(ranking=ranking, allocation=allocation, drop=drop, invert=invert, seed=seed, directions=dirs)
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
) -> None:
    """Decide which experts each layer keeps; no model is loaded."""
    from pydantic import ValidationError

    try:
        p = _make_plan(stats, drop, ranking, allocation, directions, invert, seed)
    except (ValueError, ValidationError) as e:
        _fail(e)
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
        _fail(e)
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
        job = _job_config(
            ctx, PruneConfig, config, names, model=model, out=out, languages=languages, drop=drop, data=data,
            direction=direction, split=split, ranking=ranking, allocation=allocation, limit=limit,
            batch_size=batch_size, dtype=dtype, device=device, register=register, registry=registry,
            plan_only=plan_only, overwrite=overwrite,
        )  # fmt: skip
        result = run(job)
    except (ValueError, FileExistsError) as e:
        _fail(e)
    typer.echo(result.model_dump_json())


@app.command()
def recover(
    ctx: typer.Context,
    specialist: Annotated[Path | None, typer.Argument(help="Specialist folder written by `apply` or `prune`.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder of the recovered specialist to write.")] = None,
    mode: Annotated[
        str, typer.Option(help="sft: train on parallel pairs; distill: on the parent's translations.")
    ] = "sft",
    data: Annotated[
        str,
        typer.Option(
            help="sft: parallel data (flores+, sample or a FLORES-style folder) or .jsonl(.gz) of "
            "{source,target,src,tgt} or {lang,en,xx} rows; "
            "distill: English passages (parallel data, .txt lines or such a jsonl)."
        ),
    ] = DEFAULT_DATA,
    languages: Annotated[
        str | None, typer.Option("--languages", "-l", help="Comma-separated codes (default: the plan's languages).")
    ] = None,
    parent: Annotated[str | None, typer.Option(help="distill: the unpruned model (default: the plan's base).")] = None,
    direction: OrientationOption = "to",
    split: str = "dev",
    limit: Annotated[int | None, typer.Option(help="Use only the first N pairs per direction / passages.")] = None,
    epochs: float = 1.0,
    steps: Annotated[int | None, typer.Option(help="Training steps (default: from --epochs).")] = None,
    lr: float = 1e-5,
    batch_size: int = 8,
    warmup: int = 0,
    max_len: Annotated[int, typer.Option(help="Skip pairs longer than this many tokens.")] = 512,
    seed: int = 0,
    backend: Annotated[
        str, typer.Option(help="distill: auto (vLLM, else transformers), vllm or transformers.")
    ] = "auto",
    max_new_tokens: int = 256,
    generate_batch_size: Annotated[int, typer.Option(help="distill: passages the parent translates at once.")] = 16,
    distilled: Annotated[
        Path | None,
        typer.Option(help="distill: train on the parent's translations saved by an earlier --save-data run."),
    ] = None,
    save_data: Annotated[Path | None, typer.Option(help="Write the training pairs here (.jsonl).")] = None,
    dtype: Annotated[str, typer.Option(help="Training dtype (the result is saved in the specialist's own).")] = (
        "float32"
    ),
    device: Device = "cpu",
    experts_implementation: ExpertsImplementation = None,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations (less memory).")] = False,
    gradient_accumulation: Annotated[int, typer.Option(help="Micro-batches per optimizer step.")] = 1,
    bf16: Annotated[bool, typer.Option(help="bf16 mixed precision (GPUs).")] = False,
    sharding: Annotated[
        str, typer.Option(help="none, fsdp or deepspeed (ZeRO-3); launch with torchrun / accelerate launch.")
    ] = "none",
    sharding_config: Annotated[
        Path | None,
        typer.Option(help="FSDP / DeepSpeed JSON file, or a shipped recipe: fsdp (the default of --sharding fsdp), "
                     "zero3 (of --sharding deepspeed), zero3-offload."),
    ] = None,
    memory_per_process_gib: Annotated[
        float | None, typer.Option(help="Refuse a run whose weights+gradients+AdamW state exceed this per process.")
    ] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Trainer checkpoints (default: OUT.checkpoints).")] = None,
    save_steps: Annotated[int | None, typer.Option(help="Checkpoint every N steps (resume, best model).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the newest checkpoint in the work dir.")] = False,
    eval_steps: Annotated[int | None, typer.Option(help="chrF on --eval-data every N steps; the best is kept.")] = None,
    eval_data: DataDir = DEFAULT_DATA,
    eval_split: str = "dev",
    eval_limit: Annotated[int, typer.Option(help="Pairs per direction for the periodic chrF.")] = 50,
    save_dtype: Annotated[
        str, typer.Option(help="auto: the specialist's own storage (MXFP4 stays MXFP4), or bfloat16/float16/float32.")
    ] = "auto",
    overwrite: bool = False,
    config: ConfigFile = None,
) -> None:
    """Fine-tune every parameter of SPECIALIST on translation tokens (transformers' Trainer; several processes
    with torchrun or accelerate launch); the new plan.json records the lineage."""
    from moe_specialists.models.plan import Plan
    from moe_specialists.pruning.recover import RecoveryConfig
    from moe_specialists.pruning.recover import recover as run

    try:
        job = _job_config(
            ctx, RecoveryConfig, config, specialist=specialist, out=out, mode=mode, data=data, parent=parent,
            languages=languages, direction=direction, split=split, limit=limit, epochs=epochs, steps=steps, lr=lr,
            batch_size=batch_size, warmup=warmup, max_len=max_len, seed=seed, device=device, dtype=dtype,
            backend=backend, max_new_tokens=max_new_tokens, generate_batch_size=generate_batch_size,
            distilled=distilled, save_data=save_data, experts_implementation=experts_implementation,
            gradient_checkpointing=gradient_checkpointing, gradient_accumulation=gradient_accumulation, bf16=bf16,
            sharding=sharding, sharding_config=sharding_config, memory_per_process_gib=memory_per_process_gib,
            work_dir=work_dir, save_steps=save_steps, resume=resume, eval_steps=eval_steps, eval_data=eval_data,
            eval_split=eval_split, eval_limit=eval_limit, save_dtype=save_dtype, overwrite=overwrite,
        )  # fmt: skip
        path = run(job)
    except (ValueError, FileExistsError) as e:
        _fail(e)
    plan = Plan.load(path / "plan.json")
    rec = plan.lineage["recovery"]
    summary = {k: rec[k] for k in ("mode", "pairs", "steps", "loss_first", "loss_last", "data_fingerprint")}
    if "distillation" in rec:
        summary["backend"] = rec["distillation"]["backend"]
    typer.echo(json.dumps({"specialist": str(path), "experts_per_layer": plan.experts_per_layer(), **summary}))


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
        job = _job_config(
            ctx, EvaluationConfig, config, {"data": "data_dir", "comet": "comet_model"}, model=model,
            directions=directions, data=data, split=split, limit=limit, backend=backend, seeds=seeds,
            temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, dtype=dtype,
            device=device, experts_implementation=experts_implementation, out=out, comet=comet,
            comet_python=comet_python,
        )  # fmt: skip
        res = run(job)
    except (ValueError, ImportError, RuntimeError) as e:
        _fail(e)
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
        job = _job_config(
            ctx, SweepConfig, config, {"data": "data_dir", "work": "work_dir", "out": "out_dir"}, model=model,
            work=work, out=out, languages=languages, drops=drops, default_drops=default_drops, methods=methods,
            data=data, limit=limit, calib_limit=calib_limit, unseen=unseen, unseen_drops=unseen_drops,
            backend=backend, batch_size=batch_size, name=name,
        )  # fmt: skip
        path = Sweep(job, log=typer.echo).run(deadline=time.time() + 60 * minutes if minutes else None)
    except (ValueError, ValidationError) as e:
        _fail(e)
    typer.echo(f"report written to {path}")

