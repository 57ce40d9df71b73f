"""Recovery training on ``transformers.Trainer``: the loop, schedule, gradient accumulation, mixed precision,
gradient checkpointing, checkpoints and resume, logging and multi-process launch (``torchrun``, ``accelerate
launch``; FSDP or DeepSpeed ZeRO-3 from the configs in pruning/recipes/) are the Trainer's, not ours.

Why Trainer rather than TRL's SFTTrainer: our examples are already tokenised with the loss mask the project
needs (labels -100 on the prompt, found with the one prompt renderer), so SFTTrainer's chat formatting and
completion-only collator would redo that work in another place; Trainer with a 20-line collator is the smaller
dependency and the same engine (SFTTrainer subclasses it).

What stays ours: the collator (right padding, labels -100 on prompt and padding), the memory plan checked before
anything loads, and the periodic chrF on a FLORES dev slice that selects the best checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from transformers import Trainer, TrainerCallback, TrainingArguments

from moe_specialists.models.prompts import render
from moe_specialists.pruning.pairs import Pair

Example = tuple[list[int], list[int]]  # (input ids of the whole conversation, labels: -100 on the prompt)
Sharding = Literal["none", "fsdp", "deepspeed"]
RECIPES = Path(__file__).resolve().parent / "recipes"  # shipped in the wheel: fsdp, zero3, zero3-offload
GIB = 2**30


class TrainConfig(BaseModel):
    """The recovery training recipe. The global batch is ``batch_size`` = per-process batch * processes *
    ``gradient_accumulation``; ``steps`` optimizer steps (default: ``epochs`` passes over the examples)."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(1e-5, gt=0)
    batch_size: int = Field(8, gt=0)
    gradient_accumulation: int = Field(1, gt=0)
    warmup: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 0
    save_steps: int | None = Field(None, gt=0, description="checkpoint every N steps (resume, best checkpoint)")
    save_total_limit: int = Field(2, gt=0)
    resume: bool = False
    eval_steps: int | None = Field(None, gt=0, description="chrF on the dev slice every N steps")
    sharding: Sharding = "none"
    sharding_config: Path | None = None  # a JSON file, or the name of a shipped recipe (fsdp, zero3, zero3-offload)
    memory_per_process_gib: float | None = Field(None, gt=0)
    log_every: int = Field(10, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.eval_steps and self.save_steps and self.save_steps % self.eval_steps:
            raise ValueError(f"save_steps ({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps}) "
                             "so that the best checkpoint is one that was evaluated")
        if self.eval_steps and self.sharding != "none":
            raise ValueError("periodic chrF runs with unsharded training only (generation needs the whole model); "
                             "drop eval_steps and evaluate the saved checkpoints with `moe-specialists evaluate`")
        if self.sharding_config is not None and self.sharding == "none":
            raise ValueError("a sharding config goes with sharding 'fsdp' or 'deepspeed'")
        if self.sharding_config is not None and not self.sharding_config.is_file():
            shipped = RECIPES / f"{self.sharding_config}.json"
            if not shipped.is_file():
                raise ValueError(f"sharding config {self.sharding_config} not found: give a JSON file or a shipped "
                                 f"recipe: {sorted(p.stem for p in RECIPES.glob('*.json'))}")
            self.sharding_config = shipped
        return self

    def per_process_batch(self, processes: int) -> int:
        """batch_size / (processes * gradient_accumulation), refused unless it divides exactly."""
        share, rest = divmod(self.batch_size, processes * self.gradient_accumulation)
        if rest or not share:
            raise ValueError(f"batch_size {self.batch_size} is not a multiple of processes ({processes}) x "
                             f"gradient_accumulation ({self.gradient_accumulation})")
        return share

    def total_steps(self, examples: int) -> int:
        return self.steps if self.steps is not None else max(1, math.ceil(self.epochs * examples / self.batch_size))

    def default_sharding_config(self) -> Path | None:
        return self.sharding_config or {"none": None, "fsdp": RECIPES / "fsdp.json",
                                        "deepspeed": RECIPES / "zero3.json"}[self.sharding]


def memory_plan(parameters: int, processes: int, sharding: Sharding, dtype_bytes: int) -> dict[str, float]:
    """Bytes per process of weights, gradients and AdamW's two moment buffers (activations not included):
    weights = gradients = P * b, optimizer = 2 * P * b (torch keeps the moments in the parameters' dtype),
    each divided by the process count under full sharding (FSDP FULL_SHARD, ZeRO-3), whole otherwise.
    fp32 (b = 4): 16 bytes per parameter in all."""
    shards = processes if sharding != "none" else 1
    weights = parameters * dtype_bytes / shards
    plan = {"weights": weights, "gradients": weights, "optimizer": 2 * weights}
    plan["total"] = sum(plan.values())
    return plan


def check_memory(plan: dict[str, float], memory_per_process_gib: float | None) -> str:
    """One line describing the plan; ValueError with the numbers when it exceeds the declared memory."""
    line = ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in plan.items()) + " per process (activations not included)"
    if memory_per_process_gib is not None and plan["total"] > memory_per_process_gib * GIB:
        raise ValueError(f"the training state needs {plan['total'] / GIB:.2f} GiB per process ({line}) but "
                         f"{memory_per_process_gib:g} GiB were declared: shard it (sharding fsdp or deepspeed over "
                         "more processes), train in bfloat16, or declare more memory")
    return line


def encode_pair(tokenizer: Any, pair: Pair) -> Example:
    """(input ids of the whole conversation, labels): labels are -100 on the prompt, the ids elsewhere."""
    prompt = tokenizer(render(tokenizer, pair.source, pair.target, pair.src), add_special_tokens=False)["input_ids"]
    full = tokenizer(render(tokenizer, pair.source, pair.target, pair.src, pair.tgt), add_special_tokens=False)[
        "input_ids"
    ]
    # The prompt normally tokenises as a prefix of the conversation (chat templates end it with a special
    # token). Where a merge crosses the boundary, only the common prefix counts as prompt.
    n = 0
    while n < min(len(prompt), len(full)) and prompt[n] == full[n]:
        n += 1
    return full, [-100] * n + full[n:]


class TranslationCollator:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on the prompt and on padding), so the
    model's own loss is the mean cross-entropy over translation tokens only."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in examples)
        ids = torch.full((len(examples), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, (x, y) in enumerate(examples):
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class RecoveryTrainer(Trainer):
    """Trainer whose evaluation is chrF of greedy translations of a dev slice (``evaluate_chrf(model)`` returns
    it), so ``metric_for_best_model="chrf"`` keeps the best checkpoint."""

    def __init__(self, *args: Any, evaluate_chrf=None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.evaluate_chrf = evaluate_chrf

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        was_training = self.model.training
        self.model.eval()
        try:
            metrics = {f"{metric_key_prefix}_chrf": float(self.evaluate_chrf(self.model))}
        finally:
            self.model.train(was_training)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their own state-dict formats, no conversion
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights(Path(resume_from_checkpoint), model or self.model)

    def _load_best_model(self) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        load_weights(Path(self.state.best_model_checkpoint), self.model)


def load_weights(folder: Path, model: torch.nn.Module) -> None:
    """Copy a saved checkpoint's weights into ``model``. transformers' Trainer loads checkpoints with
    ``load_state_dict``, which skips the checkpoint-format conversion (experts are per-expert tensors on disk,
    fused in memory): on resume every expert would silently keep its old weights (tests/pruning/test_trainer.py
    catches it). ``from_pretrained`` converts."""
    loaded = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())


class LossHistory(TrainerCallback):
    """The training loss the Trainer logs at every step (``logging_steps=1``), in order."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def training_arguments(
    config: TrainConfig, work_dir: Path, steps: int, processes: int, **overrides: Any
) -> TrainingArguments:
    """The Trainer's arguments for a recipe: AdamW(0.9, 0.98), linear warm-up then cosine to lr/10, clipping.
    ``overrides``: other ``TrainingArguments`` fields, or these replaced (e.g. ``logging_steps``, ``optim``)."""
    sharding_file = config.default_sharding_config()
    extra: dict[str, Any] = {}
    if config.sharding == "fsdp":
        extra.update(fsdp=True, fsdp_config=json.loads(sharding_file.read_text()))
    elif config.sharding == "deepspeed":
        extra["deepspeed"] = str(sharding_file)
    if config.eval_steps:
        extra.update(eval_strategy="steps", eval_steps=config.eval_steps, load_best_model_at_end=True,
                     metric_for_best_model="chrf", greater_is_better=True)
    arguments: dict[str, Any] = dict(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=config.per_process_batch(processes),
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1},
        warmup_steps=config.warmup,
        weight_decay=config.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        max_grad_norm=config.max_grad_norm,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=1,
        disable_tqdm=False,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        save_only_model=False,
        report_to=[],
        remove_unused_columns=False,
        dataloader_drop_last=False,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
        **extra,
    )
    return TrainingArguments(**(arguments | overrides))


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest ``checkpoint-<step>`` folder the Trainer wrote under ``work_dir``."""
    found = sorted(work_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return found[-1] if found else None


def train_recovery(
    model: torch.nn.Module,
    examples: list[Example],
    pad_id: int,
    config: TrainConfig,
    work_dir: Path,
    evaluate_chrf=None,
    callbacks: list[TrainerCallback] | None = None,
) -> tuple[RecoveryTrainer, list[float]]:
    """Fine-tune every parameter of ``model`` on ``examples``; returns the trainer (its ``state`` holds the
    arguments and history) and the loss of every step. ``config.resume`` continues from the newest checkpoint
    under ``work_dir``."""
    if config.eval_steps and evaluate_chrf is None:
        raise ValueError("eval_steps needs a dev slice to score (evaluate_chrf)")
    processes = int(torch.distributed.get_world_size()) if torch.distributed.is_initialized() else _world_size()
    steps = config.total_steps(len(examples))
    args = training_arguments(config, work_dir, steps, processes)
    for p in model.parameters():
        p.requires_grad_(True)
    model.config.output_router_logits = False
    model.config.use_cache = False
    history = LossHistory()
    trainer = RecoveryTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        eval_dataset=[0] if config.eval_steps else None,  # evaluation reads the dev slice, not this
        data_collator=TranslationCollator(pad_id),
        callbacks=[history, *(callbacks or [])],
        evaluate_chrf=evaluate_chrf,
    )
    resume = last_checkpoint(work_dir) if config.resume else None
    if config.resume and resume is None:
        print(f"no checkpoint under {work_dir} yet: starting from the beginning")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    model.eval()
    return trainer, history.losses


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
