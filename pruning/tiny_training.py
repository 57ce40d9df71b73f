"""Train the bundled tiny MoE translator (Qwen3-MoE architecture) from scratch, then score it as it is served.

One run = data preparation + training on ``transformers.Trainer`` (bounded by ``--time-budget`` seconds) +
saving (bf16 safetensors shards of <= 15 MB, ``generation_config.json`` with the eos id) + the ``evaluate``
job's FLORES devtest chrF of the saved weights, so a single GPU call trains and scores the model:

    python -m moe_specialists.pruning.tiny_training --pairs .device/pairs.jsonl.gz \\
        --flores .device/flores200 --out runs/tiny_translator

or, the generalist (translation a minority task; see ``models.tiny_translator.mixture``): ``--mixture M``
instead of ``--pairs``, and the held-out task scores (arithmetic / lists exact match, code loss) are saved beside
chrF.

The Trainer's: the loop, AdamW(0.9, 0.98), warm-up then cosine to lr/10, clipping, bf16 autocast, logging
(``pruning.trainer.training_arguments``); transformers': the Switch load-balancing loss (``output_router_logits``
and ``router_aux_loss_coef`` on the config: ``outputs.aux_loss``) and the grouped-GEMM experts
(``experts_implementation="grouped_mm"``). Ours: length-bucketed batches cut at a token budget, the loss
(label-smoothed cross-entropy on the translation tokens + the aux loss), weight decay on matrices but not the
embeddings, and the time budget (a ``TrainerCallback``).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tokenizers.models import BPE
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    Trainer,
    TrainerCallback,
)

from moe_specialists.models.prompts import instruction
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
from moe_specialists.models.tiny_translator.mixture import NOT_TRANSLATIONS, read_jsonl
from moe_specialists.models.tiny_translator.tasks import Conversation
from moe_specialists.models.tiny_translator.tokenizer import ASSISTANT, read_pairs
from moe_specialists.pruning.tiny_scores import (
    TARGET_LANGS,
    average,
    card_results,
    evaluate_flores,
    evaluate_tasks,
    render_prompt,
)
from moe_specialists.pruning.trainer import LossHistory, TrainConfig, TranslationCollator, training_arguments

BUNDLED_SIZE = {"hidden_size": 256, "num_hidden_layers": 8, "num_experts": 32, "moe_intermediate_size": 96}


def model_config(vocab_size: int, eos_id: int, pad_id: int, size: dict[str, int] | None = None,
                 experts_implementation: str | None = None) -> Qwen3MoeConfig:
    """8 layers, hidden 256, 32 experts of width 96, top-4, head_dim 64, tied embeddings: 23.6M params; the
    router logits are returned so that the model's ``aux_loss`` is the load-balancing loss (coefficient 0.01).
    ``size`` overrides hidden_size / num_hidden_layers / num_experts / moe_intermediate_size (toy runs)."""
    size = {**BUNDLED_SIZE, **(size or {})}
    return Qwen3MoeConfig(
        vocab_size=vocab_size,
        hidden_size=size["hidden_size"],
        num_hidden_layers=size["num_hidden_layers"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        intermediate_size=384,  # unused: every layer is MoE (decoder_sparse_step=1, no mlp_only_layers)
        moe_intermediate_size=size["moe_intermediate_size"],
        num_experts=size["num_experts"],
        num_experts_per_tok=4,
        norm_topk_prob=True,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        experts_implementation=experts_implementation,
    )


@functools.cache
def _template_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """The chat template alone (rendering needs no vocabulary): cheap to send to worker processes."""
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(BPE()), chat_template=chat_template)


def _render_conversation(chat_template: str, conversation: Conversation) -> str:
    return _template_tokenizer(chat_template).apply_chat_template(conversation.messages(), tokenize=False)


@dataclass(eq=False)
class Examples(torch.utils.data.Dataset):
    """Tokenised conversations, flat: sequence i is tokens[starts[i] : starts[i] + lengths[i]], and its first
    prompt_lengths[i] tokens are the prompt (up to and including <|assistant|>). Item i is (ids, labels) with
    labels -100 on the prompt (``pruning.trainer.TranslationCollator``'s input)."""

    tokens: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        ids = self.tokens[self.starts[i] : self.starts[i] + self.lengths[i]].tolist()
        plen = int(self.prompt_lengths[i])
        return ids, [-100] * plen + ids[plen:]


def translation_conversations(pairs: Path, seed: int) -> list[Conversation]:
    """Both directions of every pair (the prompt of ``models.prompts``). Small languages are repeated up to 3x
    (a language gets max(1, min(3, 20000 / n_pairs)) copies per epoch)."""
    rows = [r for r in read_pairs(pairs) if not r.get("source", "").startswith(NOT_TRANSLATIONS)]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["lang"]] = counts.get(r["lang"], 0) + 1
    print(f"pairs per language: {counts}")
    rng = random.Random(seed)
    out = []
    for r in rows:
        factor = max(1.0, min(3.0, 20_000 / counts[r["lang"]]))
        for _ in range(int(factor) + (rng.random() < factor - int(factor))):
            out.append(Conversation("translation", instruction("en", r["lang"], r["en"]), r["xx"]))
            out.append(Conversation("translation", instruction(r["lang"], "en", r["xx"]), r["en"]))
    return out


def load_examples(conversations: list[Conversation], tokenizer, max_len: int) -> Examples:
    """Conversations rendered through the tokenizer's chat template and tokenised; the prompt (the user turn and
    <|assistant|>) is context, the answer and its eos are the targets. Longer than ``max_len``: left out."""
    with multiprocessing.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        fulls = pool.map(functools.partial(_render_conversation, tokenizer.chat_template), conversations,
                         chunksize=4096)
    full_ids = tokenizer(fulls, add_special_tokens=False)["input_ids"]
    assistant = tokenizer.convert_tokens_to_ids(ASSISTANT)
    for conversation, ids in zip(conversations[:100], full_ids[:100], strict=False):
        prompt = tokenizer(render_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt)] == prompt and ids[len(prompt) - 1] == assistant, "prompt must be a prefix"
    kept = [ids for ids in full_ids if len(ids) <= max_len and ids.index(assistant) + 2 < len(ids)]
    lengths = np.array([len(ids) for ids in kept], dtype=np.int64)
    examples = Examples(
        tokens=np.fromiter((t for ids in kept for t in ids), dtype=np.int32, count=int(lengths.sum())),
        starts=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64),
        lengths=lengths,
        prompt_lengths=np.array([ids.index(assistant) + 1 for ids in kept], dtype=np.int64),
    )
    print(f"{len(kept)} training sequences of {len(conversations)}, {lengths.sum() / 1e6:.1f}M tokens per epoch")
    return examples


def make_batches(lengths: np.ndarray, tokens_per_batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Length-bucketed batches: shuffle, sort by length (stable), cut at the token budget (rows x longest row),
    shuffle batches."""
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])
        end = start
        while end < len(order) and (end - start + 1) * max(width, int(lengths[order[end]])) <= tokens_per_batch:
            width = max(width, int(lengths[order[end]]))
            end += 1
        batches.append(order[start : max(end, start + 1)])
        start = max(end, start + 1)
    rng.shuffle(batches)
    return batches


class TokenBudgetBatches(torch.utils.data.Sampler):
    """``make_batches`` as the Trainer's batch sampler: a new shuffle every epoch (``set_epoch``, which the
    Trainer calls, or the next pass), the same number of batches each time (it depends on the lengths only)."""

    def __init__(self, lengths: np.ndarray, tokens_per_batch: int, seed: int) -> None:
        self.lengths, self.tokens_per_batch, self.seed, self.epoch = lengths, tokens_per_batch, seed, 0
        self._count = len(make_batches(lengths, tokens_per_batch, np.random.default_rng(0)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        batches = make_batches(self.lengths, self.tokens_per_batch, np.random.default_rng([self.seed, self.epoch]))
        self.epoch += 1
        return iter([b.tolist() for b in batches])


class TranslationLoss:
    """Label-smoothed cross-entropy over the labelled (translation) tokens + ``router_aux_loss_coef`` x the
    model's own load-balancing loss (``outputs.aux_loss``): the Trainer's ``compute_loss_func``. The aux losses
    since the last log are kept for it (``pop_aux``)."""

    def __init__(self, label_smoothing: float, aux_coef: float) -> None:
        self.label_smoothing, self.aux_coef, self.aux = label_smoothing, aux_coef, []

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        targets = labels[:, 1:]
        mask = targets != -100
        logits = outputs.logits[:, :-1][mask].float()
        loss = F.cross_entropy(logits, targets[mask], label_smoothing=self.label_smoothing, reduction="sum")
        self.aux.append(outputs.aux_loss.detach())
        return loss / (num_items_in_batch or mask.sum()) + self.aux_coef * outputs.aux_loss

    def pop_aux(self) -> float | None:
        aux, self.aux = self.aux, []
        return float(torch.stack(aux).mean()) if aux else None


class TinyTrainer(Trainer):
    """Trainer with token-budget batches, weight decay on matrices except the (tied) embeddings, and the
    load-balancing loss logged as ``aux`` beside ``loss``."""

    def __init__(self, *args: Any, batch_sampler: TokenBudgetBatches, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_sampler = batch_sampler

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_sampler=self.batch_sampler, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        return [n for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "loss" in logs and (aux := self.compute_loss_func.pop_aux()) is not None:
            logs["aux"] = round(aux, 4)
        super().log(logs, *args, **kwargs)


class TimeBudget(TrainerCallback):
    """Stop training once ``seconds`` have passed since it began (a safety stop: the schedule stays planned
    for ``max_steps``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        if time.monotonic() - self.started > self.seconds:
            print(f"time budget of {self.seconds:g}s reached at step {state.global_step}")
            control.should_training_stop = True


def training_conversations(args: argparse.Namespace) -> list[Conversation]:
    """The generalist mixture (``--mixture DIR``: its train.jsonl.gz) or translation only (``--pairs``)."""
    if args.mixture is not None:
        return list(read_jsonl(args.mixture / "train.jsonl.gz"))
    return translation_conversations(args.pairs, args.seed)


def train(args: argparse.Namespace) -> tuple[Qwen3MoeForCausalLM, list[float]]:
    """Train from scratch; returns the model and the training loss of every ``log_every`` steps."""
    torch.manual_seed(args.seed)
    cuda = torch.device(args.device).type == "cuda"
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    t0 = time.time()
    examples = load_examples(training_conversations(args), tokenizer, args.max_len)
    print(f"data prepared in {time.time() - t0:.0f}s")
    size = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_hidden_layers", args.layers),
                              ("num_experts", args.experts)) if v is not None}
    config = model_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, size,
                          args.experts_implementation)
    model = Qwen3MoeForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    n_experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    print(f"params {n_params / 1e6:.2f}M, experts {n_experts / n_params:.1%}, {config._experts_implementation}")
    batches = TokenBudgetBatches(examples.lengths, args.tokens_per_batch, args.seed)
    print(f"{len(batches)} steps per epoch, planned {args.steps} steps")
    recipe = TrainConfig(steps=args.steps, lr=args.lr, batch_size=1, warmup=args.warmup,
                         weight_decay=args.weight_decay, bf16=cuda, seed=args.seed, log_every=args.log_every)
    history = LossHistory()
    with tempfile.TemporaryDirectory(prefix="tiny-trainer-") as work_dir:  # nothing is checkpointed
        trainer = TinyTrainer(
            model=model,
            args=training_arguments(
                recipe, Path(work_dir), args.steps, 1, logging_steps=args.log_every, use_cpu=not cuda,
                optim="adamw_torch_fused" if cuda else "adamw_torch", dataloader_num_workers=2 if cuda else 0,
                dataloader_pin_memory=cuda, disable_tqdm=True,
            ),
            train_dataset=examples,
            data_collator=TranslationCollator(tokenizer.pad_token_id),
            compute_loss_func=TranslationLoss(args.label_smoothing, config.router_aux_loss_coef),
            callbacks=[history, TimeBudget(args.time_budget)],
            batch_sampler=batches,
        )
        t_train = time.time()
        trainer.train()
    step = trainer.state.global_step
    model.config.output_router_logits = False  # the aux loss is for training: generation needs no router logits
    print(f"trained {step} steps ({step / len(batches):.2f} epochs) in {time.time() - t_train:.0f}s")
    return model.eval(), history.losses


def save(model: Qwen3MoeForCausalLM, tokenizer, out: Path) -> None:
    """bf16 safetensors shards of at most 15 MB, config, generation config (greedy, stops at eos), tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=256
    )
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size="15MB")
    tokenizer.save_pretrained(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m moe_specialists.pruning.tiny_training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", type=Path, help="pairs.jsonl.gz with lang, en, xx (translation only)")
    data.add_argument("--mixture", type=Path, help="folder written by tiny_translator.mixture (the generalist)")
    p.add_argument("--flores", type=Path, help="folder with devtest/<lang>.txt; omit to skip evaluation")
    p.add_argument("--tokenizer", type=Path, default=BUNDLED_MODEL_DIR)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--experts-implementation", choices=["eager", "batched_mm", "grouped_mm"], default="grouped_mm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3400, help="optimizer steps (3400 = 5.5 epochs)")
    p.add_argument("--time-budget", type=float, default=370.0, help="safety stop: training seconds at most")
    p.add_argument("--tokens-per-batch", type=int, default=49_152)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--eval-lines", type=int, default=200)
    p.add_argument("--eval-batch-size", type=int, default=512 if torch.cuda.is_available() else 32)
    p.add_argument("--layers", type=int, help="toy size: MoE layers (default 8)")
    p.add_argument("--hidden-size", type=int, help="toy size: hidden size (default 256)")
    p.add_argument("--experts", type=int, help="toy size: experts per layer (default 32)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    t0 = time.time()
    model, _ = train(args)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    save(model, tokenizer, args.out)
    print(f"saved to {args.out} after {time.time() - t0:.0f}s")
    results: dict[str, Any] = {}
    if args.flores:
        scored = evaluate_flores(model, tokenizer, args.out, args.flores, args.eval_lines, args.eval_batch_size)
        results = card_results(scored, f"python -m moe_specialists.pruning.tiny_training (at the end of training, "
                                       f"--eval-lines {args.eval_lines})")
        print(json.dumps(results["chrf"]) + f"\naverage en<->{{{','.join(TARGET_LANGS)}}}: "
              f"{average(results['chrf'])}")
    if args.mixture is not None:
        results["tasks"] = evaluate_tasks(model, tokenizer, args.mixture / "heldout.jsonl.gz")
        print(f"tasks: {results['tasks']}")
    if results:
        (args.out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
