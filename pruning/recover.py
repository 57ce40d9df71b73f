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

import gzip
import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer

import moe_specialists.models.pruned  # noqa: F401  (registers the pruned classes with the Auto classes)
from moe_specialists.models.adapters import adapter_for
from moe_specialists.models.checkpoint import INDEX_NAME, building_dir, file_sha256, read_config, resolve_model
from moe_specialists.models.extract import extract_answer
from moe_specialists.models.generation import Generator, TransformersGenerator, VllmGenerator
from moe_specialists.models.plan import Plan
from moe_specialists.models.prompts import LANGUAGE_NAMES, render
from moe_specialists.models.pruned import load_causal_lm
from moe_specialists.pruning.data import Direction, directions_for, read_parallel

Mode = Literal["sft", "distill"]
Backend = Literal["auto", "vllm", "transformers"]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
NOT_COPIED = ("config.json", INDEX_NAME, "plan.json")  # written anew by the job
# Rows of the training corpus whose "source" starts with these are independent captions of one image, not
# translations of each other (Multi30k task 2): never train on them.
NOT_TRANSLATIONS = ("multi30k_task2",)
# The paper's distillation languages (German, Japanese, Russian, Spanish, Mandarin).
PAPER_DISTILL_LANGUAGES = ["de", "ja", "ru", "es", "zh"]


@dataclass(frozen=True)
class Pair:
    """One training example: translate ``src`` from language ``source`` to ``target``; ``tgt`` is the answer."""

    source: str
    target: str
    src: str
    tgt: str


# ---------------------------------------------------------------------------------------------------------
# data


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from e


def read_pairs(
    data: str | Path,
    languages: list[str] | None = None,
    direction: Direction = "to",
    split: str = "dev",
    limit: int | None = None,
    pivot: str = "en",
) -> list[Pair]:
    """Translation pairs from a FLORES-style folder, a ``{"source","target","src","tgt"}`` jsonl or a
    ``{"lang","en","xx"}`` jsonl (optionally .gz). ``languages`` (non-pivot) and ``direction`` select the
    pairs of folders and ``{"lang","en","xx"}`` rows (``to``: pivot->L); ``{"source",...}`` rows are taken as
    they are, filtered to ``languages`` when given. ``limit``: the first N pairs of each direction."""
    path = Path(data)
    if path.is_dir():
        if not languages:
            raise ValueError("a FLORES-style folder needs languages (e.g. -l de,fr)")
        pairs = directions_for(languages, direction, pivot)
        texts = read_parallel(path, split, sorted({x for p in pairs for x in p}), limit)
        return [Pair(s, t, a, b) for s, t in pairs for a, b in zip(texts[s], texts[t], strict=True)]
    if not path.is_file():
        raise ValueError(f"no training data at {path}: give a FLORES-style folder or a .jsonl(.gz) file")
    wanted = set(languages or [])
    allowed = set(directions_for(sorted(wanted), direction, pivot)) if wanted else None
    out: list[Pair] = []
    per_direction: dict[tuple[str, str], int] = {}
    for row in _jsonl_rows(path):
        if {"source", "target", "src", "tgt"} <= row.keys():
            candidates = [Pair(row["source"], row["target"], row["src"], row["tgt"])]
            if wanted:
                candidates = [p for p in candidates if {p.source, p.target} - {pivot} <= wanted]
        elif {"lang", "en", "xx"} <= row.keys():
            if str(row.get("source", "")).startswith(NOT_TRANSLATIONS):
                continue
            lang = row["lang"]
            candidates = [Pair(pivot, lang, row["en"], row["xx"]), Pair(lang, pivot, row["xx"], row["en"])]
            candidates = [
                p
                for p in candidates
                if (allowed is None and (direction == "both" or (p.source == pivot) == (direction == "to")))
                or (allowed is not None and (p.source, p.target) in allowed)
            ]
        else:
            raise ValueError(f"{path}: rows need the keys source, target, src, tgt or lang, en, xx; got {sorted(row)}")
        for p in candidates:
            key = (p.source, p.target)
            if limit is not None and per_direction.get(key, 0) >= limit:
                continue
            if p.source not in LANGUAGE_NAMES or p.target not in LANGUAGE_NAMES:
                raise ValueError(f"{path}: unknown language in {key}; known: {sorted(LANGUAGE_NAMES)}")
            if p.src.strip() and p.tgt.strip():
                per_direction[key] = per_direction.get(key, 0) + 1
                out.append(p)
    if not out:
        raise ValueError(f"no pairs in {path} for languages {sorted(wanted) or 'any'} and direction {direction!r}")
    return out


def read_passages(data: str | Path, split: str = "dev", limit: int | None = None, pivot: str = "en") -> list[str]:
    """English passages for distillation: ``<data>/<split>/en.txt`` of a FLORES-style folder, the ``en``
    field of ``{"lang","en","xx"}`` rows (deduplicated, order kept), the ``src`` of pivot-source
    ``{"source",...}`` rows, or the lines of a text file."""
    path = Path(data)
    if path.is_dir():
        lines = read_parallel(path, split, [pivot])[pivot]
    elif path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = []
        for row in _jsonl_rows(path):
            if "en" in row and not str(row.get("source", "")).startswith(NOT_TRANSLATIONS):
                lines.append(row[pivot] if pivot in row else row["en"])
            elif row.get("source") == pivot and "src" in row:
                lines.append(row["src"])
        lines = list(dict.fromkeys(lines))
    lines = [x for x in lines if x.strip()]
    return lines[:limit] if limit else lines


def with_reversed(pairs: list[Pair], direction: Direction) -> list[Pair]:
    """Distilled pivot->X pairs for training in ``direction``: ``to`` as they are, ``from`` each reversed (the
    parent's translation as the source, the original passage as the target, as in back-translation),
    ``both`` the pairs followed by their reverses."""
    reverse = [Pair(p.target, p.source, p.tgt, p.src) for p in pairs]
    return {"to": pairs, "from": reverse, "both": pairs + reverse}[direction]


def pairs_fingerprint(pairs: Iterable[Pair]) -> str:
    """sha256 over the JSON of every (source, target, src, tgt), in training order."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.source, p.target, p.src, p.tgt], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def write_pairs(pairs: Iterable[Pair], path: str | Path) -> Path:
    """A jsonl (gzipped when the name ends in .gz) of ``{"source","target","src","tgt"}`` rows that
    ``read_pairs`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(asdict(p), ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------
# sequence-level distillation data


def partition_languages(passages: list[str], languages: list[str]) -> list[tuple[str, str]]:
    """(target language, passage): passage i goes to ``languages[i % n]``, so every passage is translated
    once and the languages get equal shares (within one)."""
    if not languages:
        raise ValueError("distillation needs at least one target language")
    return [(languages[i % len(languages)], p) for i, p in enumerate(passages)]


def parent_generator(
    parent_dir: Path,
    backend: Backend,
    max_model_len: int,
    batch_size: int,
    device: str,
    dtype: str,
    seed: int,
    experts_implementation: str | None = None,
) -> tuple[Generator, str]:
    """(generator, backend used) for the parent: vLLM when asked or (``auto``) when it starts, else
    transformers."""
    if backend in ("auto", "vllm"):
        try:
            gen = VllmGenerator(parent_dir, dtype=dtype, seed=seed, max_model_len=max_model_len,
                                enable_prefix_caching=True)  # fmt: skip
            return gen, "vllm"
        except Exception as e:  # not installed, no usable device, unsupported model: fall back (auto) or fail
            if backend == "vllm":
                raise ValueError(f"vLLM could not generate with {parent_dir}: {e}") from e
            print(f"vLLM unavailable for distillation ({type(e).__name__}: {e}); using transformers generate")
    return TransformersGenerator.load(parent_dir, dtype, device, batch_size, experts_implementation), "transformers"


def distillation_pairs(
    parent: str | Path,
    passages: list[str],
    languages: list[str],
    backend: Backend = "auto",
    max_new_tokens: int = 256,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    pivot: str = "en",
    experts_implementation: str | None = None,
) -> tuple[list[Pair], list[bool], str]:
    """The parent's greedy translation of each passage into its assigned language (``partition_languages``):
    one pair per passage, whether each output ended with EOS (unfinished ones are usually loops), and the
    backend used ("vllm" or "transformers"; ``auto`` tries vLLM and falls back, saying why)."""
    parent_dir, _ = resolve_model(parent)
    tokenizer = AutoTokenizer.from_pretrained(parent_dir)
    jobs = partition_languages(passages, languages)
    for lang, _ in jobs:
        if lang not in LANGUAGE_NAMES or lang == pivot:
            raise ValueError(f"cannot distil into {lang!r}; known targets: {sorted(set(LANGUAGE_NAMES) - {pivot})}")
    prompts = [
        tokenizer(render(tokenizer, pivot, lang, text), add_special_tokens=False)["input_ids"] for lang, text in jobs
    ]
    longest = max(len(p) for p in prompts) + max_new_tokens
    generator, used = parent_generator(
        parent_dir, backend, longest, batch_size, device, dtype, seed, experts_implementation
    )
    with generator:
        outputs = generator.generate(prompts, max_new_tokens)
    pairs, finished = [], []
    for (lang, text), g in zip(jobs, outputs, strict=True):
        # the answer extractor the gateway uses: the specialist learns what the gateway would answer
        pairs.append(Pair(pivot, lang, text, extract_answer(g.text, generator.end_markers)[0]))
        finished.append(g.finished)
    return pairs, finished, used


# ---------------------------------------------------------------------------------------------------------
# training examples and the loss


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


# ---------------------------------------------------------------------------------------------------------
# the job


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
    langs = {x for d in plan.recipe.directions for x in d.split("-") if x in LANGUAGE_NAMES} - {pivot}
    return sorted(langs)


def recover(
    specialist_dir: str | Path,
    out_dir: str | Path,
    mode: Mode = "sft",
    data: str | Path = Path("../shared/data/flores200"),
    parent: str | Path | None = None,
    languages: list[str] | None = None,
    direction: Direction = "to",
    split: str = "dev",
    limit: int | None = None,
    epochs: float = 1.0,
    steps: int | None = None,
    lr: float = 1e-5,
    batch_size: int = 8,
    warmup: int = 0,
    weight_decay: float = 0.0,
    max_len: int = 512,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    backend: Backend = "auto",
    max_new_tokens: int = 256,
    generate_batch_size: int = 16,
    keep_unfinished: bool = False,
    distilled: str | Path | None = None,
    save_data: str | Path | None = None,
    pivot: str = "en",
    experts_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    overwrite: bool = False,
    log_every: int = 10,
) -> Path:
    """Fine-tune every parameter of ``specialist_dir`` on translation tokens and write the recovered
    specialist to ``out_dir`` (plan.json lineage says how). ``sft``: pairs from ``data``. ``distill``: English
    passages of ``data`` translated by ``parent`` (default: the plan's base) into ``languages`` (default: the
    plan's languages), unfinished outputs dropped unless ``keep_unfinished``; or, with ``distilled``, the
    parent's translations saved by an earlier run (``save_data``), so several specialists learn one set;
    ``direction`` ``both`` also trains X->pivot on each distilled pair reversed (``with_reversed``).
    ``steps`` (default: ``epochs`` passes over the pairs) batches of ``batch_size``, trained in ``dtype``; the
    result is saved in the specialist's own dtype."""
    specialist_dir, out_dir = Path(specialist_dir), Path(out_dir)
    if mode not in ("sft", "distill"):
        raise ValueError(f"mode must be 'sft' or 'distill', not {mode!r}")
    if distilled is not None and mode != "distill":
        raise ValueError("distilled (the parent's saved translations) goes with mode 'distill'")
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; choose another folder or pass overwrite")
    config = read_config(specialist_dir)
    adapter = adapter_for(config)
    plan_path = specialist_dir / "plan.json"
    if not plan_path.is_file():
        raise ValueError(f"{specialist_dir} has no plan.json: recover a folder written by `apply` or `prune`")
    plan = Plan.load(plan_path)
    languages = languages or _default_languages(plan, pivot)

    distill: dict[str, Any] | None = None
    if mode == "sft":
        pairs = read_pairs(data, languages, direction, split, limit, pivot)
    elif distilled is not None:
        pairs = read_pairs(distilled, languages, "to", split, limit, pivot)
        distill = {"parent": str(parent or plan.base.id), "pairs_file": str(distilled), "generated": "earlier"}
    else:
        if not languages:
            raise ValueError(f"give target languages for distillation (the paper: {PAPER_DISTILL_LANGUAGES})")
        parent = parent or plan.base.id
        passages = read_passages(data, split, limit, pivot)
        if not passages:
            raise ValueError(f"no English passages in {data}")
        t0 = time.time()
        generated, finished, used = distillation_pairs(
            parent,
            passages,
            languages,
            backend,
            max_new_tokens,
            batch_size=generate_batch_size,
            device=device,
            dtype=dtype,
            seed=seed,
            pivot=pivot,
            experts_implementation=experts_implementation,
        )
        pairs = [p for p, ok in zip(generated, finished, strict=True) if p.tgt and (ok or keep_unfinished)]
        distill = {
            "parent": str(parent),
            "backend": used,
            "passages": len(passages),
            "passages_fingerprint": hashlib.sha256("\n".join(passages).encode()).hexdigest(),
            "partition": "passage i -> languages[i % n]",
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "dropped": len(generated) - len(pairs),
            "seconds": round(time.time() - t0, 1),
        }
        print(f"distillation data: {len(pairs)} pairs kept of {len(generated)} ({used})")
        if not pairs:
            raise ValueError("the parent produced no finished translation; raise max_new_tokens or keep_unfinished")
    if save_data:
        write_pairs(pairs, save_data)  # distill: the parent's pivot->X translations, reusable as `distilled`
    if mode == "distill":
        pairs = with_reversed(pairs, direction)

    tokenizer = AutoTokenizer.from_pretrained(specialist_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    examples = [e for e in encoded if len(e[0]) <= max_len and any(y != -100 for y in e[1][1:])]
    if not examples:
        raise ValueError(f"no pair fits max_len={max_len} tokens")
    total = steps if steps is not None else max(1, math.ceil(epochs * len(examples) / batch_size))

    model = load_causal_lm(specialist_dir, dtype, device, experts_implementation)
    counts_before = adapter.experts_per_layer(model.config)
    if gradient_checkpointing:  # recompute activations in the backward pass: memory for time on big models
        model.gradient_checkpointing_enable()
    t0 = time.time()
    losses = train(
        model, examples, pad_id, total, lr, batch_size, seed, warmup, weight_decay, device=device, log_every=log_every
    )
    seconds = time.time() - t0
    assert adapter.experts_per_layer(model.config) == counts_before
    saved_dtype = checkpoint_dtype(config) or dtype

    window = max(1, min(10, len(losses) // 2))  # mean training loss of the first and last steps
    recovery = {
        "mode": mode,
        "data": str(distilled or data),
        "data_fingerprint": pairs_fingerprint(pairs),
        "pairs": len(pairs),
        "examples": len(examples),
        "languages": languages,
        "direction": direction,
        "split": split,
        "limit": limit,
        "steps": total,
        "epochs": round(total * batch_size / len(examples), 3),
        "lr": lr,
        "schedule": f"linear warmup {warmup} steps, cosine to lr/10",
        "batch_size": batch_size,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "max_len": max_len,
        "seed": seed,
        "dtype": dtype,
        "saved_dtype": saved_dtype,
        "device": device,
        "experts_implementation": experts_implementation or "eager",
        "gradient_checkpointing": gradient_checkpointing,
        "optimizer": "AdamW(0.9, 0.98), grad clip 1.0",
        "trained": "all parameters (routers included)",
        "loss": "cross-entropy on translation tokens only; no router load-balancing loss",
        "loss_first": round(sum(losses[:window]) / window, 4),
        "loss_last": round(sum(losses[-window:]) / window, 4),
        "seconds": round(seconds, 1),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
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

    with building_dir(out_dir) as tmp:
        model.to(getattr(torch, saved_dtype)).save_pretrained(tmp)
        _copy_side_files(specialist_dir, tmp)
        saved = read_config(tmp)
        assert adapter.experts_per_layer(saved) == adapter.experts_per_layer(config)
        plan.model_copy(update={"lineage": lineage}).save(tmp / "plan.json")
    return out_dir
