"""Train the bundled tiny MoE translator (Qwen3-MoE architecture) from scratch, then evaluate it on FLORES.

One run = data preparation + training (bounded by ``--time-budget`` seconds) + saving (bf16 safetensors shards
of <= 15 MB, ``generation_config.json`` with the eos id) + greedy FLORES devtest evaluation (chrF), so a single
GPU call trains and scores the model:

    python -m moe_specialists.models.tiny_translator.train --pairs .device/pairs.jsonl.gz \\
        --flores .device/flores200 --out runs/tiny_translator

or, the generalist (translation a minority task; see ``mixture``): ``--mixture M`` instead of ``--pairs``, and the
held-out task scores (arithmetic / lists exact match, code loss) are saved beside chrF.

Speed: the experts run as two grouped GEMMs per layer (``torch.nn.functional.grouped_mm`` on bf16 weights)
instead of transformers' per-expert loop; batches are length-bucketed with a token budget; bf16 autocast;
logits and the loss are computed on the translation tokens only (the prompt is context, not a target).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import queue
import random
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path

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
)
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

from moe_specialists.models.prompts import instruction, render
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
from moe_specialists.models.tiny_translator.mixture import NOT_TRANSLATIONS, read_jsonl
from moe_specialists.models.tiny_translator.tasks import Conversation, exact_match
from moe_specialists.models.tiny_translator.tokenizer import ASSISTANT, read_pairs

EVAL_DIRECTIONS = [(s, t) for x in ("de", "fr", "ru", "es", "cs", "zh", "ja") for s, t in (("en", x), (x, "en"))]
TARGET_LANGS = ("de", "fr", "ru", "es", "cs")


BUNDLED_SIZE = {"hidden_size": 256, "num_hidden_layers": 8, "num_experts": 32, "moe_intermediate_size": 96}


def model_config(vocab_size: int, eos_id: int, pad_id: int, size: dict[str, int] | None = None) -> Qwen3MoeConfig:
    """8 layers, hidden 256, 32 experts of width 96, top-4, head_dim 64, tied embeddings: 23.6M params.
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
        router_aux_loss_coef=0.01,
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def grouped_experts_forward(
    self: torch.nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """Qwen3MoeExperts.forward as two grouped GEMMs: rows sorted by expert, y = sum_k w_k * down_e(silu(g) * u)."""
    num_tokens, hidden = hidden_states.shape
    top_k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    order = torch.argsort(flat)
    counts = torch.zeros(self.num_experts, dtype=torch.int32, device=flat.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))  # no host sync, unlike bincount
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    x = hidden_states.to(torch.bfloat16)[order // top_k]
    gate_up = F.grouped_mm(x, self.gate_up_proj.to(torch.bfloat16).transpose(1, 2), offs=offsets)
    gate, up = gate_up.chunk(2, dim=-1)
    h = F.grouped_mm(F.silu(gate) * up, self.down_proj.to(torch.bfloat16).transpose(1, 2), offs=offsets)
    h = h * top_k_weights.reshape(-1)[order].unsqueeze(-1).to(h.dtype)
    out = torch.empty_like(h)
    out[order] = h
    return out.view(num_tokens, top_k, hidden).float().sum(1).to(hidden_states.dtype)


def use_grouped_experts(model: Qwen3MoeForCausalLM) -> None:
    for module in model.modules():
        if type(module).__name__ == "Qwen3MoeExperts":
            module.forward = types.MethodType(grouped_experts_forward, module)


@functools.cache
def _template_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """The chat template alone (rendering needs no vocabulary): cheap to send to worker processes."""
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(BPE()), chat_template=chat_template)


def _render_conversation(chat_template: str, conversation: Conversation) -> str:
    return _template_tokenizer(chat_template).apply_chat_template(conversation.messages(), tokenize=False)


def _render_prompt(tokenizer, conversation: Conversation) -> str:
    return tokenizer.apply_chat_template(conversation.messages()[:1], tokenize=False, add_generation_prompt=True)


@dataclass
class Examples:
    """Tokenised conversations, flat: sequence i is tokens[starts[i] : starts[i] + lengths[i]], and its first
    prompt_lengths[i] tokens are the prompt (up to and including <|assistant|>)."""

    tokens: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    prompt_lengths: np.ndarray


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
        copies = int(factor) + (rng.random() < factor - int(factor))
        for _ in range(copies):
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
        prompt = tokenizer(_render_prompt(tokenizer, conversation), add_special_tokens=False)["input_ids"]
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
    """Length-bucketed batches: shuffle, sort by length (stable), cut at the token budget, shuffle batches."""
    order = rng.permutation(len(lengths))
    order = order[np.argsort(lengths[order], kind="stable")]
    batches, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]])
        end = start
        while end < len(order) and (end - start + 1) * max(width, int(lengths[order[end]])) <= tokens_per_batch:
            width = max(width, int(lengths[order[end]]))
            end += 1
        batches.append(order[start:end])
        start = end
    rng.shuffle(batches)
    return batches


def collate(examples: Examples, idx: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and next-token labels; labels are -100 except on translation tokens (and the eos)."""
    lengths, plens = examples.lengths[idx, None], examples.prompt_lengths[idx, None]
    width = -(-int(lengths.max()) // 8) * 8
    pos = np.arange(width)[None, :]
    gathered = examples.tokens[np.minimum(examples.starts[idx, None] + pos, len(examples.tokens) - 1)]
    ids = np.where(pos < lengths, gathered, pad_id)
    targets = np.concatenate([ids[:, 1:], np.full((len(idx), 1), pad_id)], axis=1)
    labels = np.where((pos >= plens - 1) & (pos < lengths - 1), targets, -100)
    return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))


def prefetch(examples: Examples, batches: list[np.ndarray], pad_id: int, depth: int = 8) -> queue.Queue:
    """Collate batches in a background thread (pinned memory), ``depth`` ahead of the training loop."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def work() -> None:
        for idx in batches:
            ids, labels = collate(examples, idx, pad_id)
            if torch.cuda.is_available():
                ids, labels = ids.pin_memory(), labels.pin_memory()
            q.put((ids, labels))

    threading.Thread(target=work, daemon=True).start()
    return q


def train_step(
    model: Qwen3MoeForCausalLM, optimizer, ids: torch.Tensor, labels: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on cross-entropy of the labelled (translation) tokens + aux_coef * load-balancing loss.
    Logits are computed for the labelled positions only. Returns detached (loss, aux) on the device."""
    config = model.config
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        out = model.model(input_ids=ids, output_router_logits=True)
        mask = labels != -100
        logits = model.lm_head(out.last_hidden_state[mask])
    loss = F.cross_entropy(logits.float(), labels[mask], label_smoothing=label_smoothing)
    aux = load_balancing_loss_func(out.router_logits, config.num_experts, config.num_experts_per_tok)
    (loss + config.router_aux_loss_coef * aux).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), aux.detach()


def training_conversations(args: argparse.Namespace) -> list[Conversation]:
    """The generalist mixture (``--mixture DIR``: its train.jsonl.gz) or translation only (``--pairs``)."""
    if args.mixture is not None:
        return list(read_jsonl(args.mixture / "train.jsonl.gz"))
    return translation_conversations(args.pairs, args.seed)


def train(args: argparse.Namespace) -> tuple[Qwen3MoeForCausalLM, list[float]]:
    """Train from scratch; returns the model and the loss of every step."""
    torch.manual_seed(args.seed)
    np_rng = np.random.default_rng(args.seed)
    device = torch.device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    t0 = time.time()
    examples = load_examples(training_conversations(args), tokenizer, args.max_len)
    lengths = examples.lengths
    print(f"data prepared in {time.time() - t0:.0f}s")

    size = {k: v for k, v in (("hidden_size", args.hidden_size), ("num_hidden_layers", args.layers),
                              ("num_experts", args.experts)) if v is not None}
    config = model_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, size)
    model = Qwen3MoeForCausalLM(config).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    print(f"params {n_params / 1e6:.2f}M, experts {n_experts / 1e6:.2f}M ({n_experts / n_params:.1%})")
    if device.type == "cuda":
        use_grouped_experts(model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.98), eps=1e-8, fused=device.type == "cuda",
    )

    steps_per_epoch = len(make_batches(lengths, args.tokens_per_batch, np.random.default_rng(0)))
    total_steps = args.steps
    print(f"{steps_per_epoch} steps per epoch, planned {total_steps} steps")

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = min(1.0, (step - args.warmup) / max(1, total_steps - args.warmup))
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    step, epoch, t_train = 0, 0, time.time()
    tokens_seen, log_loss, log_aux, log_n = 0, 0.0, 0.0, 0
    losses: list[float] = []
    while step < total_steps:
        batches = make_batches(lengths, args.tokens_per_batch, np_rng)
        batch_queue = prefetch(examples, batches, tokenizer.pad_token_id)
        for _ in batches:
            if step >= total_steps:
                break
            ids, labels = batch_queue.get()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss, aux = train_step(model, optimizer, ids.to(device), labels.to(device), args.label_smoothing)
            losses.append(loss)
            step += 1
            tokens_seen += ids.numel()
            log_loss, log_aux, log_n = log_loss + loss, log_aux + aux, log_n + 1
            if step % args.log_every == 0 or step == total_steps:
                elapsed = time.time() - t_train
                print(f"step {step}/{total_steps} epoch {epoch} loss {log_loss.item() / log_n:.3f} "
                      f"aux {log_aux.item() / log_n:.3f} "
                      f"lr {lr_at(step):.2e} {tokens_seen / elapsed / 1e6:.2f}M tok/s {elapsed:.0f}s", flush=True)
                log_loss, log_aux, log_n = 0.0, 0.0, 0
            if time.time() - t_train > args.time_budget:
                print(f"time budget reached at step {step}")
                total_steps = step
                break
        epoch += 1
    print(f"trained {step} steps ({step / steps_per_epoch:.2f} epochs) in {time.time() - t_train:.0f}s")
    return model, [float(x) for x in losses]


def save(model: Qwen3MoeForCausalLM, tokenizer, out: Path) -> None:
    """bf16 safetensors shards of at most 15 MB, config, generation config (greedy, stops at eos), tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=256
    )
    model.to(torch.bfloat16).save_pretrained(out, max_shard_size="15MB")
    tokenizer.save_pretrained(out)


def translate(model, tokenizer, jobs: list[tuple[str, str, str]], batch_size: int = 1500) -> list[str]:
    """Greedy translations of (source, target, text) jobs."""
    return generate_answers(model, tokenizer, [render(tokenizer, s, t, x) for s, t, x in jobs], batch_size)


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], batch_size: int = 1500) -> list[str]:
    """Greedy answers to rendered prompts, batched by prompt length, left padded, cut at eos."""
    tokenizer.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        gen = model.generate(
            **enc, do_sample=False, max_new_tokens=min(256, 2 * enc.input_ids.shape[1] + 16),
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(gen[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
        for i, text in zip(chunk, texts, strict=True):
            outputs[i] = text.strip()
    return outputs


def evaluate(model, tokenizer, flores: Path, lines: int, directions=EVAL_DIRECTIONS) -> dict[str, float]:
    """chrF (sacrebleu) of greedy translations of the first ``lines`` FLORES devtest sentences per direction."""
    import sacrebleu

    model.eval()
    data = {
        lang: (flores / "devtest" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:lines]
        for pair in directions for lang in pair
    }
    jobs = [(s, t, x) for s, t in directions for x in data[s]]
    t0 = time.time()
    hyps = translate(model, tokenizer, jobs)
    scores = {}
    for k, (s, t) in enumerate(directions):
        h = hyps[k * lines : (k + 1) * lines]
        scores[f"{s}-{t}"] = round(sacrebleu.corpus_chrf(h, [data[t]]).score, 2)
        print(f"  {s}-{t}: {h[0][:100]!r}")
    print(f"translated {len(jobs)} sentences in {time.time() - t0:.0f}s")
    return scores


@torch.no_grad()
def code_loss(model, tokenizer, conversations: list[Conversation], batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over the answer tokens (and eos) of ``conversations``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        full = tokenizer([tokenizer.apply_chat_template(c.messages(), tokenize=False) for c in chunk],
                         add_special_tokens=False)["input_ids"]
        plens = [len(tokenizer(_render_prompt(tokenizer, c), add_special_tokens=False)["input_ids"]) for c in chunk]
        width = max(map(len, full))
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in full], device=device)
        labels = torch.full_like(ids, -100)
        for i, (x, p) in enumerate(zip(full, plens, strict=True)):
            labels[i, p : len(x)] = ids[i, p : len(x)]
        lengths = torch.tensor([len(x) for x in full], device=device)
        logits = model(input_ids=ids, attention_mask=torch.arange(width, device=device) < lengths[:, None]).logits
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")
        total, count = total + loss.item(), count + int((labels[:, 1:] != -100).sum())
    return total / max(count, 1)


def evaluate_tasks(model, tokenizer, heldout: Path) -> dict[str, float]:
    """Non-translation scores on the mixture's held-out set: exact match of greedy answers (arithmetic, lists)
    and next-token loss on code. Translation specialists should lose these while chrF holds."""
    model.eval()
    rows = list(read_jsonl(heldout))
    scores: dict[str, float] = {}
    for task in ("arithmetic", "lists"):
        chunk = [c for c in rows if c.task == task]
        if chunk:
            answers = generate_answers(model, tokenizer, [_render_prompt(tokenizer, c) for c in chunk])
            scores[f"{task}_exact_match"] = round(exact_match(answers, [c.assistant for c in chunk]), 4)
    if code := [c for c in rows if c.task == "code"]:
        scores["code_loss"] = round(code_loss(model, tokenizer, code), 4)
    return scores


def print_table(scores: dict[str, float]) -> None:
    print("| direction | chrF |\n| --- | --- |")
    for k, v in scores.items():
        print(f"| {k} | {v:.1f} |")
    main = [scores[f"{a}-{b}"] for x in TARGET_LANGS for a, b in (("en", x), (x, "en")) if f"{a}-{b}" in scores]
    if main:
        print(f"| avg en<->{{{','.join(TARGET_LANGS)}}} | {sum(main) / len(main):.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--pairs", type=Path, help="pairs.jsonl.gz with lang, en, xx (translation only)")
    data.add_argument("--mixture", type=Path, help="folder written by tiny_translator.mixture (the generalist)")
    p.add_argument("--flores", type=Path, help="folder with devtest/<lang>.txt; omit to skip evaluation")
    p.add_argument("--tokenizer", type=Path, default=BUNDLED_MODEL_DIR)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3400, help="optimizer steps (3400 = 5.5 epochs, ~320 s on an H100)")
    p.add_argument("--time-budget", type=float, default=370.0, help="safety stop: training seconds at most")
    p.add_argument("--tokens-per-batch", type=int, default=49_152)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--log-every", type=int, default=200)
    p.add_argument("--eval-lines", type=int, default=200)
    p.add_argument("--layers", type=int, help="toy size: MoE layers (default 8)")
    p.add_argument("--hidden-size", type=int, help="toy size: hidden size (default 256)")
    p.add_argument("--experts", type=int, help="toy size: experts per layer (default 32)")
    args = p.parse_args()

    t0 = time.time()
    model, _ = train(args)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    save(model, tokenizer, args.out)
    print(f"saved to {args.out} after {time.time() - t0:.0f}s")
    results: dict = {}
    if args.flores:
        scores = evaluate(model, tokenizer, args.flores, args.eval_lines)
        print_table(scores)
        results.update(flores_devtest_lines=args.eval_lines, decoding="greedy", chrf=scores)
    if args.mixture is not None:
        results["tasks"] = evaluate_tasks(model, tokenizer, args.mixture / "heldout.jsonl.gz")
        print(f"tasks: {results['tasks']}")
    if results:
        (args.out / "eval_results.json").write_text(json.dumps(results, indent=2))
    print(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
