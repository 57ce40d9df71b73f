"""``moe-specialists recover``: the recovery fine-tune's command line (its training, sharding and checkpoint
options) over ``pruning.recover.recover``; mounted by ``pruning.cli``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from moe_specialists.pruning.cli_options import (
    ConfigFile,
    DataDir,
    Device,
    ExpertsImplementation,
    OrientationOption,
    fail,
    job_config,
)
from moe_specialists.pruning.data import DEFAULT_DATA


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
        typer.Option(
            help="FSDP / DeepSpeed JSON file, or a shipped recipe: fsdp (the default of --sharding fsdp), "
            "zero3 (of --sharding deepspeed), zero3-offload."
        ),
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
        job = job_config(
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
        fail(e)
    plan = Plan.load(path / "plan.json")
    rec = plan.lineage["recovery"]
    summary = {k: rec[k] for k in ("mode", "pairs", "steps", "loss_first", "loss_last", "data_fingerprint")}
    if "distillation" in rec:
        summary["backend"] = rec["distillation"]["backend"]
    typer.echo(json.dumps({"specialist": str(path), "experts_per_layer": plan.experts_per_layer(), **summary}))
