"""Recovery training: pairs to examples (labels only on the translation tokens), the loss, the learning-rate
schedule and the full fine-tuning loop (AdamW over every parameter, routers included)."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from moe_specialists.models.prompts import render
from moe_specialists.pruning.pairs import Pair


def encode_pair(tokenizer: Any, pair: Pair) -> tuple[list[int], list[int]]:
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


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
        mask[row, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def translation_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """mean over positions t with labels[t+1] != -100 of -log p(labels[t+1] | ids[<=t]).

    Logits are computed on those positions only. ``output_router_logits=False``: the families' load-balancing
    auxiliary loss concatenates the router logits of all layers into one [tokens * layers, E] tensor, which
    fails (or mixes experts) when layers keep different expert counts, so recovery runs without it."""
    out = model.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_router_logits=False,
        use_cache=False,
    )
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    hidden = out.last_hidden_state[:, :-1][keep]
    logits = model.get_output_embeddings()(hidden)
    return F.cross_entropy(logits.float(), targets[keep])


def lr_at(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to lr/10 at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: nn.Module,
    examples: list[tuple[list[int], list[int]]],
    pad_id: int,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    warmup: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
    device: str = "cpu",
    log_every: int = 10,
) -> list[float]:
    """Full fine-tuning with AdamW for ``steps`` batches (epochs of seeded shuffles); returns the loss of
    every step."""
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    losses: list[float] = []
    order: list[int] = []
    t0 = time.time()
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = translation_loss(model, batch)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            recent = losses[-log_every:]
            print(f"step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    return losses
