"""Routing statistics inside vLLM during real generation (routing mass and frequency; no REAP).

The paper's scalable path for 20B+ models. Two halves:

* worker side, ``RoutingStatsWorker`` (vLLM ``worker_extension_cls``): forward hooks on every MoE layer's router
  module (the adapter's ``router_attr``; vLLM keeps the transformers names) see the router logits [T, E_l].
  The weights are computed as the model computes them: w = softmax(logits) restricted to the top-k,
  renormalised to sum 1 when the family renormalises (GPT-OSS's "softmax over the top-k logits, bias included"
  is the same number, since softmax(l)_i / sum_topk softmax(l)_j = exp(l_i) / sum_topk exp(l_j)).
  A pre-hook on the model maps each token of the step to its request (the runner's ``input_batch.req_ids`` and
  ``query_start_loc``) and keeps only positions not routed before (recomputation after preemption or a
  chunked prefill never counts a token twice). Per request it sums w[t, e] and the selections in float64.
* client side, ``collect_vllm``: sends token ids (``tokenizer(text, add_special_tokens=False)``), fetches the
  per-request sums over ``collective_rpc`` and folds them into the same ``RoutingStats`` as the transformers
  collector: q_l(x) = sum_t w[t, e] / |x| per sequence, mass_sum += q, select += selections, plain passages
  kept per passage.

Routing "reference" (default: teacher forcing) routes the given sequence exactly (max_tokens=1: the sampled
token is never fed back). Routing "generated" routes the prompt and the model's own greedy translation as vLLM
generates it: every token the model reads, i.e. all but the last generated token (which no forward pass ever
sees), as the transformers collector does.

The engine must be built with ``stats_engine_args()``: the worker extension, eager mode (hooks do not run
inside compiled graphs) and no prefix caching (cached prompt tokens are never routed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from moe_specialists.models.adapters import FamilyAdapter, adapter_for
from moe_specialists.models.vllm_worker import EngineMemoryProbe
from moe_specialists.pruning.collect import sequences_fingerprint
from moe_specialists.pruning.data import CalibrationSequence, Routing, check_routing
from moe_specialists.pruning.stats import GroupStats, RoutingStats, StatsAccumulator

WORKER_EXTENSION = "moe_specialists.pruning.collect_vllm.RoutingStatsWorker"


def stats_engine_args() -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM(model, **stats_engine_args(), ...)`` so that it can collect."""
    return {"worker_extension_cls": WORKER_EXTENSION, "enforce_eager": True, "enable_prefix_caching": False}


def router_weights(logits: torch.Tensor, top_k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [T, k], weights [T, k] float32): softmax over the experts, top-k, renormalised if asked."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = probs.topk(top_k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return indices, weights


class RouterTaps:
    """Hooks on one vLLM model: per-request float64 sums of w[t, e] and of selections, [rows, L, E]."""

    def __init__(self, model: nn.Module, adapter: FamilyAdapter, runner: Any):
        config = model.config
        self.runner = runner
        self.layers = adapter.moe_layers(config)
        self.num_experts = max(adapter.experts_per_layer(config))
        self.top_k, self.renormalise = adapter.top_k(config), adapter.renormalises(config)
        self.device = next(model.parameters()).device
        self._reset(16)
        self._token_rows: torch.Tensor | None = None  # row of each token of this step, -1: padding/seen
        self._num_tokens = 0
        self._handles = [model.register_forward_pre_hook(self._on_step, with_kwargs=True)]
        for slot, layer in enumerate(self.layers):
            self._handles.append(adapter.router(model, layer).register_forward_hook(self._on_router(slot)))

    def _reset(self, capacity: int) -> None:
        shape = (capacity, len(self.layers), self.num_experts)
        self.mass = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.select = torch.zeros(shape, dtype=torch.float64, device=self.device)
        self.tokens = torch.zeros(capacity, dtype=torch.int64)
        self.routed_upto = torch.zeros(capacity, dtype=torch.int64)  # next position not yet routed
        self.row_of: dict[str, int] = {}

    def _row(self, req_id: str) -> int:
        if req_id not in self.row_of:
            n = len(self.row_of)
            if n == self.mass.shape[0]:
                grow = lambda t: torch.cat([t, torch.zeros_like(t)])  # noqa: E731
                self.mass, self.select = grow(self.mass), grow(self.select)
                self.tokens, self.routed_upto = grow(self.tokens), grow(self.routed_upto)
            self.row_of[req_id] = n
        return self.row_of[req_id]

    def _on_step(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Before each forward: which request (row) each token belongs to."""
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        batch = self.runner.input_batch
        num_reqs = batch.num_reqs
        if positions is None or num_reqs == 0:
            self._token_rows, self._num_tokens = None, 0
            return
        assert positions.dim() == 1, "multi-dimensional (M-RoPE) positions are not supported"
        qsl = np.asarray(self.runner.query_start_loc.np[: num_reqs + 1]).copy()
        rows = torch.tensor([self._row(r) for r in batch.req_ids[:num_reqs]], dtype=torch.int64)
        token_rows = torch.repeat_interleave(rows, torch.from_numpy(np.diff(qsl)).long())
        n = int(qsl[-1])
        pos = positions[:n].to("cpu", torch.int64)
        fresh = pos >= self.routed_upto[token_rows]
        self.routed_upto.scatter_reduce_(0, token_rows, pos + 1, reduce="amax")
        self.tokens.index_add_(0, token_rows, fresh.long())
        self._token_rows = torch.where(fresh, token_rows, -1).to(self.device)
        self._num_tokens = n

    def _on_router(self, slot: int):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if self._token_rows is None:
                return
            logits = output[0] if isinstance(output, tuple) else output
            indices, weights = router_weights(logits[: self._num_tokens], self.top_k, self.renormalise)
            keep = self._token_rows >= 0
            rows, indices, weights = self._token_rows[keep], indices[keep], weights[keep]
            dense = torch.zeros(len(rows), self.num_experts, dtype=torch.float64, device=self.device)
            self.mass[:, slot].index_add_(0, rows, dense.scatter(1, indices, weights.double()))
            self.select[:, slot].index_add_(0, rows, dense.scatter_(1, indices, 1.0))

        return hook

    def fetch(self) -> dict[str, dict[str, Any]]:
        """Per-request sums since the last fetch, as plain types (bytes of float64 [L, E]); then forget them."""
        out = {}
        for req_id, row in self.row_of.items():
            out[req_id] = {
                "mass": self.mass[row].cpu().numpy().tobytes(),
                "select": self.select[row].cpu().numpy().tobytes(),
                "tokens": int(self.tokens[row]),
            }
        self._reset(max(16, len(self.row_of)))
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class RoutingStatsWorker(EngineMemoryProbe):
    """Methods mixed into the vLLM worker (``worker_extension_cls``); called with ``llm.collective_rpc(name)``.
    The memory probes (``engine_memory``, ``model_weight_bytes``) come with it."""

    def routing_stats_start(self) -> dict[str, Any]:
        self.routing_stats_stop()
        model = self.model_runner.get_model()
        adapter = adapter_for(model.config)
        self._routing_taps = RouterTaps(model, adapter, self.model_runner)
        return {
            "family": adapter.name,
            "layers": self._routing_taps.layers,
            "num_experts": self._routing_taps.num_experts,
            "top_k": self._routing_taps.top_k,
            "experts_per_layer": adapter.experts_per_layer(model.config),
        }

    def routing_stats_fetch(self) -> dict[str, dict[str, Any]]:
        taps = getattr(self, "_routing_taps", None)
        if taps is None:
            raise RuntimeError("routing statistics were not started: call routing_stats_start first")
        return taps.fetch()

    def routing_stats_stop(self) -> None:
        taps = getattr(self, "_routing_taps", None)
        if taps is not None:
            taps.close()
            self._routing_taps = None


def stats_engine_problems(config: Any) -> list[str]:
    """Why an engine with this VllmConfig would miss tokens (empty when it can collect)."""
    from vllm.config import CompilationMode

    problems = []
    if config.compilation_config.mode != CompilationMode.NONE:
        problems.append("it compiles the model (hooks do not run inside compiled graphs): use enforce_eager=True")
    if config.cache_config.enable_prefix_caching:
        problems.append("prefix caching is on (cached prompt tokens are never routed): enable_prefix_caching=False")
    if config.parallel_config.pipeline_parallel_size > 1:
        problems.append("pipeline parallelism splits the layers over workers: use pipeline_parallel_size=1")
    if config.parallel_config.worker_extension_cls != WORKER_EXTENSION:
        problems.append(f"the worker lacks the statistics hooks: worker_extension_cls={WORKER_EXTENSION!r}")
    return problems


def check_stats_engine(llm: Any) -> None:
    """Refuse an engine in which the hooks would miss tokens, saying how to build one that works."""
    problems = stats_engine_problems(llm.llm_engine.vllm_config)
    if problems:
        raise ValueError(
            "this vLLM engine cannot collect routing statistics: " + "; ".join(problems)
            + ". Build it as vllm.LLM(model, **pruning.collect_vllm.stats_engine_args(), ...)."
        )


def _internal_to_external(req_id: str, external: set[str]) -> str:
    """vLLM appends '-<8 random chars>' to each request id inside the engine."""
    return req_id if req_id in external else req_id.rsplit("-", 1)[0]


def collect_vllm(
    llm: Any,
    tokenizer: Any,
    sequences: list[CalibrationSequence],
    batch_size: int = 256,
    routing: Routing = "reference",
    max_new_tokens: int = 256,
    header: dict[str, Any] | None = None,
    progress: bool = True,
    end_ids: Sequence[int] = (),
) -> RoutingStats:
    """Route ``sequences`` through the vLLM engine ``llm`` and return their routing statistics (mass and
    frequency, as pruning.stats defines them; ``has_reap`` is False).

    ``routing``: "reference" routes each sequence as it is; "generated": calibration sequences are the prompt
    plus the model's own greedy translation, generated by vLLM while the hooks record (stopping at
    ``end_ids`` too, e.g. ``VllmGenerator.end_ids``); plain passages are routed as they are.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from moe_specialists.models.prompts import render

    check_routing(routing)
    check_stats_engine(llm)
    info = llm.collective_rpc("routing_stats_start")[0]
    num_layers, num_experts = len(info["layers"]), info["num_experts"]
    acc = StatsAccumulator(num_layers, num_experts)
    teacher = SamplingParams(max_tokens=1, temperature=0.0)
    translate = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=list(end_ids))
    try:
        chunks = [sequences[i : i + batch_size] for i in range(0, len(sequences), batch_size)]
        for chunk in tqdm(chunks, desc="routing statistics (vLLM)", disable=not progress):
            prompts, params = [], []
            for s in chunk:
                gen = routing == "generated" and not s.passage
                text = render(tokenizer, s.source, s.target, s.source_text) if gen else s.text
                prompts.append(TokensPrompt(prompt_token_ids=tokenizer(text, add_special_tokens=False)["input_ids"]))
                params.append(translate if gen else teacher)
            outputs = llm.generate(prompts, params, use_tqdm=False)
            fetched = llm.collective_rpc("routing_stats_fetch")[0]
            external = {o.request_id for o in outputs}
            by_request = {_internal_to_external(k, external): v for k, v in fetched.items()}
            for s, out in zip(chunk, outputs, strict=True):
                _fold(acc, s, by_request[out.request_id], num_layers, num_experts)
    finally:
        llm.collective_rpc("routing_stats_stop")
    info = {
        **info,
        "collector": "vllm",
        "routing": routing,
        "has_reap": False,
        "data_fingerprint": sequences_fingerprint(sequences),
    }
    return acc.result({**(header or {}), **info})


def _fold(acc: StatsAccumulator, seq: CalibrationSequence, sums: dict[str, Any], layers: int, experts: int) -> None:
    """Add one sequence: q = sum_t w / |x|; the selections; its token count."""
    as_tensor = lambda b: torch.from_numpy(np.frombuffer(b, dtype=np.float64).reshape(layers, experts).copy())  # noqa: E731
    n = sums["tokens"]
    assert n > 0, f"no token of sequence {seq.group}#{seq.index} was routed"
    q = as_tensor(sums["mass"]) / n
    if seq.passage:
        acc.add_passages(seq.group, q[None])
        return
    g = acc.groups.setdefault(seq.group, GroupStats.zeros(layers, experts))
    g.mass_sum += q
    g.select += as_tensor(sums["select"])
    acc.finish_batch(seq.group, 1, n)
