"""The `recover` job: recovery tuning of a pruned specialist (paper section 4.3, appendix H).

FULL fine-tuning (every parameter, routers included: adapters cannot bring back removed expert blocks) of a
specialist loaded with ``AutoModelForCausalLM`` (the pruned classes keep the per-layer expert counts), on
translation pairs from one of two sources:

* ``sft``: parallel pairs, from a FLORES-style folder (``<split>/<lang>.txt`` line-aligned), a jsonl of
  ``{"source", "target", "src", "tgt"}`` (what ``distillation_pairs`` writes) or the training format
  ``{"lang", "en", "xx"}`` (plain or gzipped).
* ``distill``: sequence-level distillation. English passages are partitioned across the target languages
  (passage i goes to ``languages[i % n]``), the unpruned PARENT translates each into its language (vLLM when it
  is installed and starts for the parent, else transformers batched greedy decoding) and the specialist
  learns those outputs; with direction ``both`` it also learns each pair reversed (X->English), which keeps a
  small model from forgetting the X->English directions (docs/results/recovery.md).

Each pair is rendered with ``models.prompts.render`` (the one prompt of the project); the loss is the mean
cross-entropy over the translation tokens only: labels are -100 on the prompt (found as the tokens of
``render(src, tgt, text)``, a prefix of ``render(src, tgt, text, translation)``) and on padding.

The result is a new specialist folder: the same config (``num_experts_per_layer`` included), the tokenizer
and other files copied, and a plan.json equal to the parent's except ``lineage`` =
``{"parent_plan": {...}, "recovery": {mode, data fingerprint (sha256 of the pairs), steps, lr, seed, ...}}``,
so it registers like any specialist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from safetensors.torch import save_file
from transformers import AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.checkpoint import (
    INDEX_NAME,
    building_dir,
    check_same_tensors,
    is_mxfp4,
    read_config,
)
from moe_specialists.models.file_hashes import file_sha256
from moe_specialists.models.generation import TransformersGenerator
from moe_specialists.models.languages import canonical, split_direction
from moe_specialists.models.mxfp4 import mxfp4_state_dict
from moe_specialists.models.plan import Plan
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.config import (
    CommaList,
    DataRef,
    Device,
    DType,
    ExpertsImplementation,
    JobConfig,
    ModelRef,
)
from moe_specialists.pruning.data import DEFAULT_DATA, Orientation, directions_for
from moe_specialists.pruning.distill import PAPER_DISTILL_LANGUAGES, Backend, distillation_pairs
from moe_specialists.pruning.evaluate import translate_and_score
from moe_specialists.pruning.pairs import Pair, pairs_fingerprint, read_pairs, read_passages, with_reversed, write_pairs
from moe_specialists.pruning.trainer import (
    Sharding,
    TrainConfig,
    check_memory,
    encode_pair,
    memory_plan,
    train_recovery,
)

Mode = Literal["sft", "distill"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_COPIED = ("config.json", INDEX_NAME, "plan.json")  # written anew by the job


def _copy_side_files(src: Path, dst: Path) -> None:
    """Tokenizer, chat template, generation config, ... (everything but weights, config and plan)."""
    for item in src.iterdir():
        if item.is_file() and item.suffix not in WEIGHT_SUFFIXES and item.name not in NOT_COPIED:
            shutil.copy2(item, dst / item.name)


def checkpoint_dtype(config: dict[str, Any]) -> str | None:
    """The dtype a checkpoint's config.json declares (``dtype``, or ``torch_dtype`` before transformers 5)."""
    value = config.get("dtype") or config.get("torch_dtype")
    return value if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype) else None


def _default_languages(plan: Plan, pivot: str) -> list[str]:
    """The languages of the plan's calibrated directions, less the pivot (groups that are no direction, as in a
    hand-written plan, name none)."""
    langs: set[str] = set()
    for group in plan.recipe.directions:
        with contextlib.suppress(ValueError):
            langs |= set(split_direction(group))
    return sorted(langs - {canonical(pivot)})


class RecoveryConfig(JobConfig):
    """Fine-tune every parameter of ``specialist`` on translation tokens and write the recovered specialist to
    ``out`` (plan.json lineage says how, the config included). ``sft``: pairs from ``data``. ``distill``:
    English passages of ``data`` translated by ``parent`` (default: the plan's base) into ``languages``
    (default: the plan's languages), unfinished outputs dropped unless ``keep_unfinished``; or, with
    ``distilled``, the parent's translations saved by an earlier run (``save_data``), so several specialists
    learn one set; ``direction`` ``both`` also trains X->pivot on each distilled pair reversed
    (``with_reversed``). ``steps`` (default: ``epochs`` passes over the pairs) batches of ``batch_size``,
    trained in ``dtype``; the result is saved in the specialist's own dtype."""

    specialist: Path
    out: Path
    mode: Mode = "sft"
    data: DataRef = DEFAULT_DATA  # parallel data (pruning.data) or a .jsonl(.gz) / .txt file
    parent: ModelRef | None = None
    languages: CommaList | None = None
    direction: Orientation = "to"
    split: str = "dev"
    limit: int | None = Field(None, ge=1)
    epochs: float = Field(1.0, gt=0)
    steps: int | None = Field(None, ge=1)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, ge=1, description="global batch: per process x processes x gradient_accumulation")
    gradient_accumulation: int = Field(1, ge=1)
    warmup: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    bf16: bool = False  # bf16 autocast (mixed precision) on GPUs
    sharding: Sharding = "none"  # fsdp / deepspeed (ZeRO-3): launch with torchrun or accelerate launch
    sharding_config: Path | None = None  # a file or a shipped recipe's name; default: fsdp or zero3
    memory_per_process_gib: float | None = Field(None, gt=0)  # refuse a run whose training state exceeds it
    work_dir: Path | None = None  # checkpoints for resume / best model (default: OUT.checkpoints beside out)
    save_steps: int | None = Field(None, ge=1)
    resume: bool = False
    eval_steps: int | None = Field(None, ge=1)  # chrF on eval_data/eval_split every N steps; the best is kept
    eval_data: DataRef = DEFAULT_DATA
    eval_split: str = "dev"
    eval_limit: int = Field(50, ge=1)
    max_len: int = Field(512, ge=2)
    seed: int = 0
    device: Device = "cpu"
    dtype: DType = "float32"
    backend: Backend = "auto"
    max_new_tokens: int = Field(256, ge=1)
    generate_batch_size: int = Field(16, ge=1)
    keep_unfinished: bool = False
    distilled: Path | None = None
    save_data: Path | None = None
    pivot: str = "en"
    experts_implementation: ExpertsImplementation | None = None
    gradient_checkpointing: bool = False
    save_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"  # auto: the specialist's own storage
    overwrite: bool = False
    log_every: int = Field(10, ge=0)

    @model_validator(mode="after")
    def _feasible(self) -> RecoveryConfig:
        if self.distilled is not None and self.mode != "distill":
            raise ValueError("distilled (the parent's saved translations) goes with mode 'distill'")
        if self.languages:
            directions_for(self.languages, self.direction, self.pivot)  # known languages
        if self.eval_steps and self.mode == "sft" and (self.data, self.split) == (self.eval_data, self.eval_split):
            raise ValueError(f"eval_data/eval_split ({self.eval_data}/{self.eval_split}) is the SFT training data: "
                             "choose another split for the periodic chrF (e.g. train on dev, evaluate on devtest)")
        self.train_config()  # the trainer's own checks (batch divisibility comes at launch)
        return self

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            gradient_accumulation=self.gradient_accumulation, warmup=self.warmup, weight_decay=self.weight_decay,
            bf16=self.bf16, gradient_checkpointing=self.gradient_checkpointing, seed=self.seed,
            save_steps=self.save_steps, resume=self.resume, eval_steps=self.eval_steps, sharding=self.sharding,
            sharding_config=self.sharding_config, memory_per_process_gib=self.memory_per_process_gib,
            log_every=max(self.log_every, 1),
        )


def _dev_chrf(c: RecoveryConfig, tokenizer: Any, languages: list[str]):
    """The metric that picks the best checkpoint: the mean over directions of chrF of greedy translations of
    the first ``eval_limit`` pairs of each direction of ``eval_data/eval_split``, scored as ``evaluate`` scores
    (``translate_and_score``: the gateway's extraction, degenerate outputs as empty hypotheses)."""
    directions: dict[tuple[str, str], list[Pair]] = {}
    for p in read_pairs(c.eval_data, languages, c.direction, c.eval_split, c.eval_limit, c.pivot):
        directions.setdefault((p.source, p.target), []).append(p)

    def score(model: Any) -> float:
        generator = TransformersGenerator(model, tokenizer, batch_size=c.generate_batch_size)
        return statistics.fmean(
            translate_and_score(generator, s, t, [p.src for p in ps], [p.tgt for p in ps],
                                max_new_tokens=c.max_new_tokens).chrf
            for (s, t), ps in directions.items()
        )

    return score


def recover(config: RecoveryConfig) -> Path:
    """Run ``config`` (see ``RecoveryConfig``); returns the recovered specialist's folder."""
    c = config
    specialist_dir, out_dir = c.specialist, c.out
    if out_dir.exists() and not c.overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another folder or pass overwrite")
    hf_config = read_config(specialist_dir)
    adapter = adapter_for(hf_config)
    plan_path = specialist_dir / "plan.json"
    if not plan_path.is_file():
        raise ValueError(f"{specialist_dir} has no plan.json: recover a folder written by `apply` or `prune`")
    plan = Plan.load(plan_path)
    languages = c.languages or _default_languages(plan, c.pivot)
    if c.eval_steps:  # the periodic chrF's data, refused before any model loads (read again by _dev_chrf)
        read_pairs(c.eval_data, languages, c.direction, c.eval_split, c.eval_limit, c.pivot)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    train_config = c.train_config()
    train_config.per_process_batch(processes)  # refused now, not after the data is built
    dtype_bytes = torch.empty(0, dtype=getattr(torch, c.dtype)).element_size()
    print("memory plan: " + check_memory(memory_plan(plan.parameters, processes, c.sharding, dtype_bytes),
                                         c.memory_per_process_gib))

    distill: dict[str, Any] | None = None
    if c.mode == "sft":
        pairs = read_pairs(c.data, languages, c.direction, c.split, c.limit, c.pivot)
    elif c.distilled is not None:
        pairs = read_pairs(c.distilled, languages, "to", c.split, c.limit, c.pivot)
        distill = {"parent": str(c.parent or plan.base.id), "pairs_file": str(c.distilled), "generated": "earlier"}
    else:
        if not languages:
            raise ValueError(f"give target languages for distillation (the paper: {PAPER_DISTILL_LANGUAGES})")
        if processes > 1:
            raise ValueError("the parent's translations are generated by one process: run `recover --mode distill "
                             "--save-data FILE` once (or any single-process run), then launch the processes with "
                             "--distilled FILE")
        parent = c.parent or plan.base.id
        passages = read_passages(c.data, c.split, c.limit, c.pivot)
        if not passages:
            raise ValueError(f"no English passages in {c.data}")
        t0 = time.time()
        generated, finished, used = distillation_pairs(
            parent,
            passages,
            languages,
            c.backend,
            c.max_new_tokens,
            batch_size=c.generate_batch_size,
            device=c.device,
            dtype=c.dtype,
            seed=c.seed,
            pivot=c.pivot,
            experts_implementation=c.experts_implementation,
        )
        pairs = [p for p, ok in zip(generated, finished, strict=True) if p.tgt and (ok or c.keep_unfinished)]
        distill = {
            "parent": str(parent),
            "backend": used,
            "passages": len(passages),
            "passages_fingerprint": hashlib.sha256("\n".join(passages).encode()).hexdigest(),
            "partition": "passage i -> languages[i % n]",
            "max_new_tokens": c.max_new_tokens,
            "decoding": "greedy",
            "dropped": len(generated) - len(pairs),
            "seconds": round(time.time() - t0, 1),
        }
        print(f"distillation data: {len(pairs)} pairs kept of {len(generated)} ({used})")
        if not pairs:
            raise ValueError("the parent produced no finished translation; raise max_new_tokens or keep_unfinished")
    if c.save_data:
        write_pairs(pairs, c.save_data)  # distill: the parent's pivot->X translations, reusable as `distilled`
    if c.mode == "distill":
        pairs = with_reversed(pairs, c.direction)

    tokenizer = AutoTokenizer.from_pretrained(specialist_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    examples = [e for e in encoded if len(e[0]) <= c.max_len and any(y != -100 for y in e[1][1:])]
    if not examples:
        raise ValueError(f"no pair fits max_len={c.max_len} tokens")
    total = train_config.total_steps(len(examples))

    chrf = _dev_chrf(c, tokenizer, languages) if c.eval_steps else None
    model = load_causal_lm(specialist_dir, c.dtype, c.device, c.experts_implementation)
    counts_before = adapter.experts_per_layer(model.config)
    work_dir = c.work_dir or out_dir.with_name(out_dir.name + ".checkpoints")
    t0 = time.time()
    trainer, losses = train_recovery(model, examples, pad_id, train_config, work_dir, evaluate_chrf=chrf)
    seconds = time.time() - t0
    assert adapter.experts_per_layer(model.config) == counts_before
    saved_dtype = (checkpoint_dtype(hf_config) or c.dtype) if c.save_dtype == "auto" else c.save_dtype

    window = max(1, min(10, len(losses) // 2))  # mean training loss of the first and last steps
    recovery = {
        "mode": c.mode,
        "data": str(c.distilled or c.data),
        "data_fingerprint": pairs_fingerprint(pairs),
        "pairs": len(pairs),
        "examples": len(examples),
        "languages": languages,
        "direction": c.direction,
        "split": c.split,
        "limit": c.limit,
        "steps": total,
        "epochs": round(total * c.batch_size / len(examples), 3),
        "lr": c.lr,
        "schedule": f"linear warmup {c.warmup} steps, cosine to lr/10",
        "trainer": "transformers.Trainer",
        "training_arguments": trainer.args.to_dict(),  # as the trainer recorded them
        "processes": processes,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "best_chrf": trainer.state.best_metric,
        "batch_size": c.batch_size,
        "warmup": c.warmup,
        "weight_decay": c.weight_decay,
        "max_len": c.max_len,
        "seed": c.seed,
        "dtype": c.dtype,
        "saved_dtype": saved_dtype,
        "device": c.device,
        "experts_implementation": c.experts_implementation or "eager",
        "gradient_checkpointing": c.gradient_checkpointing,
        "optimizer": "AdamW(0.9, 0.98), grad clip 1.0",
        "trained": "all parameters (routers included)",
        "loss": "cross-entropy on translation tokens only; no router load-balancing loss",
        "loss_first": round(sum(losses[:window]) / window, 4),
        "loss_last": round(sum(losses[-window:]) / window, 4),
        "seconds": round(seconds, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": c.model_dump(mode="json"),  # the RecoveryConfig of this run
    }
    if distill is not None:
        recovery["distillation"] = distill
    lineage = {
        "parent_plan": {
            "sha256": file_sha256(plan_path),
            "specialist": str(specialist_dir.resolve()),
            "lineage": plan.lineage,
        },
        "recovery": recovery,
    }

    if processes > 1:  # every process takes part in gathering the sharded weights; the first writes them
        trainer.save_model(str(work_dir / "final"))
        if not trainer.is_world_process_zero():
            return out_dir
        model = load_causal_lm(work_dir / "final", c.dtype, "cpu")
    with building_dir(out_dir) as tmp:
        mxfp4 = save_trained(model, hf_config, tmp, saved_dtype, keep_mxfp4=c.save_dtype == "auto")
        _copy_side_files(specialist_dir, tmp)
        check_same_tensors(tmp, specialist_dir, same_storage=mxfp4 or not is_mxfp4(hf_config))
        saved = read_config(tmp)
        assert adapter.experts_per_layer(saved) == adapter.experts_per_layer(hf_config)
        plan.model_copy(update={"lineage": lineage}).save(tmp / "plan.json")
    return out_dir


def save_trained(model: Any, config: dict[str, Any], folder: Path, dtype: str, keep_mxfp4: bool) -> bool:
    """Write the trained weights. A specialist of an MXFP4 base is written in MXFP4 again (experts encoded,
    ``quantization_config`` kept) unless ``keep_mxfp4`` is false, then as plain ``dtype`` tensors; transformers'
    own save of a dequantized MXFP4 model drops the expert matrices. Others: ``save_pretrained``. Returns
    whether the experts were written in MXFP4."""
    if not is_mxfp4(config):
        model.to(getattr(torch, dtype)).save_pretrained(folder)
        return False
    state = model.state_dict()
    tensors = mxfp4_state_dict(state, getattr(torch, dtype)) if keep_mxfp4 else {
        k: v.detach().to(getattr(torch, dtype)).contiguous() for k, v in state.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    out = {k: v for k, v in config.items() if keep_mxfp4 or k != "quantization_config"}
    out["dtype"] = dtype
    (folder / "config.json").write_text(json.dumps(out, indent=1))
    model.generation_config.save_pretrained(folder)
    return keep_mxfp4
