"""Routing statistics with transformers forward hooks (all scores: routing mass, frequency, REAP).

Every family's MoE block calls ``experts(hidden[T, H], top_k_index[T, k], top_k_weights[T, k])`` with the
router's normalised weights, so one pre-hook on each experts module sees the routing exactly as the model
computes it. Tokens are flattened batch-major (t = b * S + s); padding gets sequence id -1 and is ignored.
REAP's ||f_e(h_t)|| and the mean outputs (substitution) come from the model's own expert function applied to
the token alone with weight 1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from moe_specialists.models.adapters import FamilyAdapter, adapter_for
from moe_specialists.models.generation import TransformersGenerator
from moe_specialists.models.prompts import render
from moe_specialists.pruning.data import CalibrationSequence, Routing, check_routing
from moe_specialists.pruning.stats import RoutingStats, StatsAccumulator


def expert_outputs(
    experts: nn.Module, hidden: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor, real: torch.Tensor,
    num_experts: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's own expert function applied to each token alone, f_e(h_t) for every selected e = indices[t, j]:
    (||f_e(h_t)||_2 [T, k] float64 (REAP), sum_{real t} w[t, j] f_e(h_t) [E, H] float32 and sum_{real t} w[t, j]
    [E] float64 (the mean outputs, ``pruning.stats``)); ``real`` [T] marks the tokens that are no padding."""
    norms = torch.zeros(indices.shape, dtype=torch.float64, device=hidden.device)
    out_sum = torch.zeros(num_experts, hidden.shape[-1], dtype=torch.float32, device=hidden.device)
    out_weight = torch.zeros(num_experts, dtype=torch.float64, device=hidden.device)
    for e in indices.unique().tolist():
        t, j = (indices == e).nonzero(as_tuple=True)
        one = torch.ones(len(t), 1, dtype=hidden.dtype, device=hidden.device)
        # .forward bypasses the hooks of this very module
        out = experts.forward(hidden[t], torch.full_like(t[:, None], e), one)
        norms[t, j] = out.double().norm(dim=-1)
        w = weights[t, j].double() * real[t]
        out_sum[e] = (w[:, None] * out.double()).sum(0).float()
        out_weight[e] = w.sum()
    return norms, out_sum, out_weight


class RoutingHooks:
    """Owns one pre-hook per MoE layer's experts module; ``batch(...)`` says which sequences are routed."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, acc: StatsAccumulator, reap: bool):
        self.layers = adapter.moe_layers(model.config)
        self.modules = [adapter.experts(model, i) for i in self.layers]
        self.acc, self.reap = acc, reap
        self.group, self.passage, self.seq_ids, self.num_sequences = "", False, None, 0
        self.passage_q: list[torch.Tensor | None] = []
        self._handles: list[Any] = []

    def __enter__(self) -> RoutingHooks:
        for slot, module in enumerate(self.modules):
            self._handles.append(module.register_forward_pre_hook(self._hook(slot), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @contextmanager
    def batch(self, group: str, passage: bool, seq_ids: torch.Tensor, num_sequences: int) -> Iterator[None]:
        self.group, self.passage, self.seq_ids, self.num_sequences = group, passage, seq_ids, num_sequences
        self.passage_q = [None] * len(self.modules)
        yield
        if passage:
            assert all(q is not None for q in self.passage_q), "a MoE layer was not reached"
            self.acc.add_passages(group, torch.stack(self.passage_q, dim=1))  # [N, L, E]
        else:
            self.acc.finish_batch(group, num_sequences, int((seq_ids >= 0).sum()))
        self.seq_ids = None

    def _hook(self, slot: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self.seq_ids is None:
                return
            hidden, indices, weights = (list(args) + [kwargs.get(n) for n in ("top_k_index", "top_k_weights")])[:3]
            if indices is None or weights is None:
                raise RuntimeError(f"unexpected experts call signature in layer {self.layers[slot]}")
            norms = outputs = None
            if self.reap and not self.passage:
                real = (self.seq_ids >= 0).to(hidden.device)
                norms, *sums = expert_outputs(module, hidden, indices, weights, real, self.acc.num_experts)
                outputs = (sums[0], sums[1])
            q = self.acc.add(
                self.group,
                slot,
                indices,
                weights,
                self.seq_ids.to(indices.device),
                self.num_sequences,
                norms,
                self.passage,
                outputs,
            )
            if self.passage:
                self.passage_q[slot] = q.cpu()

        return hook


def _batches(sequences: list[CalibrationSequence], batch_size: int) -> Iterator[list[CalibrationSequence]]:
    """Consecutive chunks that never mix groups (order preserved, so passage i stays line i)."""
    chunk: list[CalibrationSequence] = []
    for seq in sequences:
        if chunk and (len(chunk) == batch_size or (seq.group, seq.passage) != (chunk[0].group, chunk[0].passage)):
            yield chunk
            chunk = []
        chunk.append(seq)
    if chunk:
        yield chunk


def pad_batch(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids [B, S], attention mask [B, S] and flat sequence ids [B*S] (-1 on padding)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for b, x in enumerate(ids):
        input_ids[b, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[b, : len(x)] = 1
    seq_ids = torch.where(mask.bool(), torch.arange(len(ids))[:, None], -1).flatten()
    return input_ids, mask, seq_ids


def sequences_fingerprint(sequences: list[CalibrationSequence]) -> str:
    """sha256 over the JSON of every calibration sequence (group, passage flag, text), in order."""
    h = hashlib.sha256()
    for s in sequences:
        h.update(json.dumps([s.group, s.passage, s.text]).encode())
    return h.hexdigest()


def generate_translations(
    model: nn.Module, tokenizer: Any, sequences: list[CalibrationSequence], max_new_tokens: int, batch_size: int
) -> list[list[int]]:
    """Token ids of every token the model READS while it writes its own greedy translation of each calibration
    sequence (``models.generation``): the prompt and all generated tokens but the last (no forward pass sees
    the last one; vLLM's collector records exactly these)."""
    generator = TransformersGenerator(model, tokenizer, batch_size)
    prompts = [generator.encode(render(tokenizer, s.source, s.target, s.source_text)) for s in sequences]
    outputs = generator.generate(prompts, max_new_tokens)
    return [p + g.ids[:-1] for p, g in zip(prompts, outputs, strict=True)]


@torch.no_grad()
def collect_transformers(
    model: nn.Module,
    tokenizer: Any,
    sequences: list[CalibrationSequence],
    batch_size: int = 8,
    reap: bool = True,
    routing: Routing = "reference",
    max_new_tokens: int = 256,
    header: dict[str, Any] | None = None,
    progress: bool = True,
) -> RoutingStats:
    """Route every sequence through ``model`` and return its statistics (see pruning/stats.py).

    ``routing``: "reference" routes each calibration sequence as it is (teacher forcing on the reference);
    "generated" routes the prompt + the model's own greedy translation (``generate_translations``) instead.
    Plain passages are always routed as they are.
    """
    check_routing(routing)
    adapter = adapter_for(model.config)
    layers = adapter.moe_layers(model.config)
    num_experts = max(adapter.experts_per_layer(model.config))
    acc = StatsAccumulator(len(layers), num_experts)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    token_ids = {id(s): tokenizer(s.text, add_special_tokens=False)["input_ids"] for s in sequences}
    if routing == "generated":
        calib = [s for s in sequences if not s.passage]
        for s, ids in zip(
            calib, generate_translations(model, tokenizer, calib, max_new_tokens, batch_size), strict=True
        ):
            token_ids[id(s)] = ids
    model.eval()
    chunks = list(_batches(sequences, batch_size))
    with RoutingHooks(model, adapter, acc, reap) as hooks:
        for chunk in tqdm(chunks, desc="routing statistics", disable=not progress):
            input_ids, mask, seq_ids = pad_batch([token_ids[id(s)] for s in chunk], pad_id)
            with hooks.batch(chunk[0].group, chunk[0].passage, seq_ids, len(chunk)):
                model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False)
    info = {
        "family": adapter.name,
        "layers": layers,
        "num_experts": num_experts,
        "top_k": adapter.top_k(model.config),
        "collector": "transformers",
        "routing": routing,
        "has_reap": reap,
        "has_mean_outputs": reap,
        "data_fingerprint": sequences_fingerprint(sequences),
    }
    return acc.result({**(header or {}), **info})
