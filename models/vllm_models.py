"""vLLM model classes for pruned specialists: MoE layers with different expert counts.

vLLM builds each MoE layer from ``hf_config``'s scalar expert count. These classes reuse vLLM's own Qwen3-MoE
and GPT-OSS code and hand every MoE layer a per-layer view of the config whose scalar count is that layer's
``num_experts_per_layer[l]``, so the layer's router (``GateLinear``) and ``FusedMoE`` are built with c_l
experts (vLLM's NemotronH-puzzle does the same with its ``block_configs``). The scalar count in config.json
(= max_l c_l) stays the count of the whole model. Expert ids in the checkpoint are 0..c_l-1 per layer.

Loading checks every expert tensor against the per-layer counts BEFORE vLLM copies it, so a specialist whose
config.json disagrees with its tensors fails with a message naming the layer and both numbers instead of a
shape error deep in vLLM (or, worse, silently uninitialised experts). Expert parallelism is refused: its
expert placement assumes one expert count for every layer.

A plan view (``models.plan_loading.plan_view``: the base's shards linked, the kept lists in config.json) is
sliced while it streams in, so a specialist can be served from its base and a plan without a sliced copy.

Substitution (config.json ``num_substituted_experts_per_layer``, ``models.modeling_pruned``): a substituting
layer's router keeps c_l + s_l rows and vLLM's FusedMoE holds the c_l kept experts. Its routing is a
``SubstitutingRouter``: vLLM's zero-expert router contract (LongCat-Flash's "zero experts": the MoE runner adds
the router's ``zero_expert_output`` to the experts' sum), with constants instead: the parent's top-k over all
rows, a slot past the kept experts sent to expert 0 with weight 0, and ``substitutes_part``, sum_j w_tj *
substitutes[i_tj - c_l] over those slots (one small matmul), as the extra output. Kernels that route inside
themselves (vLLM's "monolithic" MoE kernels) cannot take it and are refused.

Imported lazily by vLLM through ``models.vllm_plugin.register`` ("module:Class" strings).
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vllm.config import VllmConfig
from vllm.model_executor.layers.fused_moe.router.base_router import BaseRouter
from vllm.model_executor.layers.fused_moe.router.zero_expert_router import ZeroExpertRouter
from vllm.model_executor.layers.logits_processor import LogitsProcessor
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
from vllm.model_executor.models.gpt_oss import (
    GptOssForCausalLM,
    GptOssModel,
    MLPBlock,
    TransformerBlock,
)
from vllm.model_executor.models.qwen3_moe import (
    Qwen3MoeDecoderLayer,
    Qwen3MoeForCausalLM,
    Qwen3MoeModel,
    Qwen3MoeSparseMoeBlock,
)
from vllm.model_executor.models.utils import extract_layer_index, maybe_prefix

from moe_specialists.models.adapters import EXPERTS_PER_LAYER_KEY, GPT_OSS, QWEN3_MOE, FamilyAdapter
from moe_specialists.models.modeling_pruned import SUBSTITUTED_KEY, substituted_counts
from moe_specialists.models.plan_loading import VIEW_SUBSTITUTES, sliced_stream, view_kept, view_substitutes
from moe_specialists.models.pruned import check_expert_counts, layer_config

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ---- config plumbing ----
def refuse_expert_parallel(vllm_config: VllmConfig, adapter: FamilyAdapter) -> None:
    parallel = vllm_config.parallel_config
    if parallel.enable_expert_parallel or parallel.enable_eplb:
        raise ValueError(
            f"{adapter.pruned_architecture}: expert parallelism (enable_expert_parallel / enable_eplb) is not "
            "supported for specialists whose layers keep different numbers of experts. Serve it with tensor "
            "parallelism (tensor_parallel_size) and without --enable-expert-parallel / --enable-eplb."
        )


def layer_vllm_config(vllm_config: VllmConfig, adapter: FamilyAdapter, layer: int) -> VllmConfig:
    """``vllm_config`` whose hf config says layer ``layer``'s expert count (a shallow copy; every other
    part, e.g. cache and compilation config, is shared). The same object when the layer keeps them all."""
    hf_config = vllm_config.model_config.hf_text_config
    counts = check_expert_counts(hf_config, adapter)
    if counts[layer] in (0, adapter.num_experts(hf_config)):
        return vllm_config
    layer_hf = layer_config(hf_config, adapter, counts[layer])
    model_config = copy.copy(vllm_config.model_config)
    if model_config.hf_config is hf_config:
        model_config.hf_config = layer_hf
    model_config.hf_text_config = layer_hf
    out = copy.copy(vllm_config)
    out.model_config = model_config
    return out


# ---- substitution ----
def routed_over_all(logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], ids [T, k]) of the parent's routing over every router row, as vLLM's softmax
    top-k computes it: the top-k logits, their softmax when ``renormalize`` (= the renormalised top-k of the
    softmax), else their share of the softmax over all rows."""
    top, ids = torch.topk(logits, top_k, dim=-1)
    top = top.float()
    if renormalize:
        return torch.softmax(top, dim=-1), ids
    return (top - torch.logsumexp(logits.float(), dim=-1, keepdim=True)).exp(), ids


def substitutes_part(
    weights: torch.Tensor, ids: torch.Tensor, rows: int, kept: int, substitutes: torch.Tensor
) -> torch.Tensor:
    """sum_{j: i_tj >= kept} w_tj * substitutes[i_tj - kept] [T, H], in the substitutes' dtype, of a routing
    ``weights``/``ids`` [T, k] over ``rows`` router rows: the weights scattered over the rows [T, rows], those past
    the kept experts times ``substitutes`` [rows - kept, H] (one small matmul)."""
    dense = torch.zeros(weights.shape[0], rows, dtype=torch.float32, device=weights.device).scatter_(1, ids, weights)
    return dense[:, kept:].to(substitutes.dtype) @ substitutes


class SubstitutingRouter(ZeroExpertRouter):
    """The routing of a substituting layer of ``kept`` experts (module docstring); ``substitutes`` [E - kept, H]
    is the block's parameter, read at each call (it is loaded after the router is made)."""

    def __init__(self, top_k: int, kept: int, renormalize: bool, substitutes: nn.Parameter):
        BaseRouter.__init__(self, top_k=top_k, global_num_experts=kept)  # none of ZeroExpertRouter's own state
        self.kept, self.renormalize, self.substitutes = kept, renormalize, substitutes
        self._zero_expert_output: torch.Tensor | None = None

    def _compute_routing(
        self, hidden_states: torch.Tensor, router_logits: torch.Tensor, indices_type: torch.dtype | None,
        *, input_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weights, ids = routed_over_all(router_logits, self.top_k, self.renormalize)
        self._zero_expert_output = substitutes_part(weights, ids, router_logits.shape[-1], self.kept,
                                                    self.substitutes)
        dropped = ids >= self.kept
        return weights.masked_fill(dropped, 0.0), ids.masked_fill(dropped, 0).to(indices_type or torch.int32)


def make_substituting(block: nn.Module, gate_attr: str, kept: int, count: int, hidden: int) -> None:
    """Widen ``block``'s router to kept + count rows, give it ``substitutes`` [count, hidden] (in the model's
    dtype) and route its FusedMoE (``block.experts``, vLLM's MoE runner) with a ``SubstitutingRouter``."""
    gate = getattr(block, gate_attr)
    width = kept + count
    gate.weight.data = gate.weight.data.new_empty(width, gate.weight.shape[1])
    if getattr(gate, "bias", None) is not None:
        gate.bias.data = gate.bias.data.new_empty(width)
    gate.output_size, gate.output_partition_sizes = width, [width]
    block.substitutes = nn.Parameter(torch.empty(count, hidden), requires_grad=False)
    old = block.experts.router
    block.experts.router = SubstitutingRouter(old.top_k, kept, bool(getattr(old, "renormalize", True)),
                                              block.substitutes)


def refuse_monolithic(blocks: Iterable[nn.Module]) -> None:
    """Substituting blocks whose MoE kernel routes by itself (and so would never call the router) are refused."""
    for block in blocks:
        method = block.experts.routed_experts.quant_method
        if isinstance(block.experts.router, SubstitutingRouter) and method.is_monolithic:
            raise ValueError(
                f"substituted specialists ({SUBSTITUTED_KEY}) need a MoE kernel that takes the router's choice; "
                f"this one ({type(method).__name__}) routes by itself: not supported. Serve the plan with dropped "
                "experts (`plan --dropped drop`) here."
            )


def load_substitutes(
    model: nn.Module, adapter: FamilyAdapter, weights: Iterable[tuple[str, torch.Tensor]], loaded: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """``weights`` without the substitutes tensors, each copied into its block's parameter (shape checked) and
    its name added to ``loaded``."""
    for name, tensor in weights:
        role = _SUBSTITUTES.search(name)
        if role is None:
            yield name, tensor
            continue
        block = adapter.moe_block(model, int(role.group(1)))
        param = getattr(block, "substitutes", None)
        if param is None or param.shape != tensor.shape:
            raise ValueError(
                f"specialist config and tensors disagree in layer {role.group(1)}: {name} has shape "
                f"{list(tensor.shape)}, config.json {SUBSTITUTED_KEY} asks for "
                f"{None if param is None else list(param.shape)}. Re-run `apply` or fix config.json."
            )
        param.data.copy_(tensor)
        loaded.add(name)


_SUBSTITUTES = re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.substitutes$")


class ExpertCountCheck:
    """Compares checkpoint tensors with ``num_experts_per_layer`` while they stream into vLLM.

    Router rows and packed expert stacks must have c_l entries on dim 0; per-expert tensors must be numbered
    0..c_l-1, all present (checked in ``finish``). Names are checkpoint (HF) names.
    """

    def __init__(self, adapter: FamilyAdapter, hf_config: Any):
        self.adapter = adapter
        self.counts = check_expert_counts(hf_config, adapter)
        self.substituted = substituted_counts(hf_config)
        self.seen: dict[int, set[int]] = {}

    def _mismatch(self, layer: int, name: str, what: str) -> ValueError:
        return ValueError(
            f"specialist config and tensors disagree in layer {layer}: config.json {EXPERTS_PER_LAYER_KEY}"
            f"[{layer}] = {self.counts[layer]}, but {what} ({name}). Re-run `apply` or fix config.json."
        )

    def check(self, name: str, tensor: torch.Tensor) -> None:
        role = self.adapter.tensor_role(name)
        if role is None:
            return
        if role.layer >= len(self.counts):
            raise ValueError(
                f"checkpoint tensor {name} belongs to layer {role.layer}, but config.json has "
                f"{len(self.counts)} layers ({EXPERTS_PER_LAYER_KEY} has {len(self.counts)} entries)"
            )
        if role.kind == "router":
            if tensor.shape[0] != self.counts[role.layer] + self.substituted[role.layer]:
                raise self._mismatch(role.layer, name, f"the router routes over {tensor.shape[0]} experts ("
                                     f"{SUBSTITUTED_KEY}[{role.layer}] = {self.substituted[role.layer]})")
        elif role.kind == "packed":
            if tensor.shape[0] != self.counts[role.layer]:
                raise self._mismatch(role.layer, name, f"the tensor holds {tensor.shape[0]} experts on dim 0")
        else:
            assert role.expert is not None
            if role.expert >= self.counts[role.layer]:
                raise self._mismatch(
                    role.layer, name, f"the checkpoint has an expert numbered {role.expert} (ids must be < "
                    f"{self.counts[role.layer]})"
                )
            self.seen.setdefault(role.layer, set()).add(role.expert)

    def watch(self, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            self.check(name, tensor)
            yield name, tensor

    def finish(self) -> None:
        for layer, ids in sorted(self.seen.items()):
            missing = sorted(set(range(self.counts[layer])) - ids)
            if missing:
                raise self._mismatch(
                    layer, f"layer {layer}", f"the checkpoint has only {len(ids)} experts (missing ids {missing})"
                )


def _from_view(
    adapter: FamilyAdapter, config: Any, weights: Iterable[tuple[str, torch.Tensor]], folder: str
) -> Iterable[tuple[str, torch.Tensor]]:
    """A plan view streams the BASE's tensors: keep the kept experts' rows, renumber them (as ``apply`` does);
    a substitute view's constants follow from its own file."""
    kept = view_kept(config)
    if kept is None:
        return weights
    substitute = view_substitutes(config)
    stream = sliced_stream(adapter, weights, kept, substitute)
    if not substitute:
        return stream
    from safetensors.torch import load_file

    return itertools.chain(stream, load_file(Path(folder) / VIEW_SUBSTITUTES).items())


def load_checked(
    model: nn.Module, adapter: FamilyAdapter, weights: Iterable[tuple[str, torch.Tensor]],
    load: Callable[[Iterable[tuple[str, torch.Tensor]]], set[str]],
) -> set[str]:
    """``load`` (the family's own loader) over ``weights``: a plan view's sliced, the substitutes taken out,
    every expert tensor checked against the per-layer counts; substituting blocks on a kernel that routes by
    itself refused."""
    check = ExpertCountCheck(adapter, model.config)
    substitutes: set[str] = set()
    stream = load_substitutes(model, adapter, _from_view(adapter, model.config, weights, model.folder), substitutes)
    loaded = load(check.watch(stream))
    check.finish()
    refuse_monolithic(m for m in model.modules() if hasattr(m, "substitutes"))
    return loaded | substitutes


def _moe_attributes(model: nn.Module, moe_blocks: list[nn.Module], counts: list[int]) -> None:
    """vLLM's MixtureOfExperts bookkeeping (used by EPLB, which is refused): the max count stands for all."""
    model.moe_layers = [b.experts for b in moe_blocks]
    model.num_moe_layers = len(moe_blocks)
    model.num_expert_groups = 1
    model.num_shared_experts = 0
    model.num_logical_experts = model.num_physical_experts = max(counts)
    model.num_local_physical_experts = model.num_routed_experts = max(counts)
    model.num_redundant_experts = 0


# ---- Qwen3-MoE ----
class PrunedQwen3MoeDecoderLayer(Qwen3MoeDecoderLayer):
    """Qwen3-MoE decoder layer built from its own expert count (and substitutes)."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = "", **kwargs: Any) -> None:
        layer = extract_layer_index(prefix)
        super().__init__(vllm_config=layer_vllm_config(vllm_config, QWEN3_MOE, layer), prefix=prefix, **kwargs)
        config = vllm_config.model_config.hf_text_config
        count = substituted_counts(config)[layer]
        if count:
            make_substituting(self.mlp, "gate", check_expert_counts(config, QWEN3_MOE)[layer], count,
                              config.hidden_size)


class PrunedQwen3MoeForCausalLM(Qwen3MoeForCausalLM):
    """vLLM Qwen3-MoE with per-layer expert counts (config.json ``num_experts_per_layer``)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        refuse_expert_parallel(vllm_config, QWEN3_MOE)
        nn.Module.__init__(self)  # Qwen3MoeForCausalLM.__init__ hard-codes its decoder layer
        self.folder = vllm_config.model_config.model
        config = vllm_config.model_config.hf_text_config
        self.config, self.quant_config = config, vllm_config.quant_config
        self.counts = check_expert_counts(config, QWEN3_MOE)
        if getattr(config, "mlp_only_layers", []):
            self.packed_modules_mapping = {**self.packed_modules_mapping, "gate_up_proj": ["gate_proj", "up_proj"]}
        self.model = Qwen3MoeModel(
            vllm_config=vllm_config,
            prefix=maybe_prefix(prefix, "model"),
            decoder_layer_type=PrunedQwen3MoeDecoderLayer,
        )
        self.lm_head = ParallelLMHead(
            config.vocab_size, config.hidden_size, quant_config=self.quant_config,
            prefix=maybe_prefix(prefix, "lm_head"),
        )
        if config.tie_word_embeddings:
            self.lm_head = self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor(config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors
        blocks = [
            layer.mlp for layer in self.model.layers if isinstance(getattr(layer, "mlp", None), Qwen3MoeSparseMoeBlock)
        ]
        _moe_attributes(self, blocks, self.counts)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_checked(self, QWEN3_MOE, weights, super().load_weights)


# ---- GPT-OSS ----
class PrunedMLPBlock(MLPBlock):
    """GPT-OSS MoE block (router + FusedMoE) built from its layer's expert count."""

    def __init__(self, vllm_config: VllmConfig, layer_idx: int, prefix: str = ""):
        super().__init__(layer_vllm_config(vllm_config, GPT_OSS, layer_idx), layer_idx, prefix=prefix)
        config = vllm_config.model_config.hf_config
        count = substituted_counts(config)[layer_idx]
        if count:
            make_substituting(self, "router", check_expert_counts(config, GPT_OSS)[layer_idx], count,
                              config.hidden_size)


class PrunedTransformerBlock(TransformerBlock):
    mlp_cls = PrunedMLPBlock


class PrunedGptOssModel(GptOssModel):
    block_cls = PrunedTransformerBlock

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """GptOssModel's loaders read the scalar expert count (e.g. to reshape MXFP4 blocks); load each
        tensor while ``self.config`` says its layer's count."""
        full = self.config
        counts = check_expert_counts(full, GPT_OSS)
        per_layer = {i: layer_config(full, GPT_OSS, c) for i, c in enumerate(counts) if c not in (0, max(counts))}
        loaded: set[str] = set()
        for name, tensor in weights:
            m = _LAYER.search(name)
            self.config = per_layer.get(int(m.group(1)), full) if m else full
            try:
                loaded |= super().load_weights([(name, tensor)])
            finally:
                self.config = full
        return loaded


class PrunedGptOssForCausalLM(GptOssForCausalLM):
    """vLLM GPT-OSS with per-layer expert counts (config.json ``num_experts_per_layer``)."""

    def __init__(self, vllm_config: VllmConfig, prefix: str = ""):
        refuse_expert_parallel(vllm_config, GPT_OSS)
        nn.Module.__init__(self)  # GptOssForCausalLM.__init__ hard-codes its model class
        self.folder = vllm_config.model_config.model
        self.vllm_config = vllm_config
        self.config = vllm_config.model_config.hf_config
        self.counts = check_expert_counts(self.config, GPT_OSS)
        self.model = PrunedGptOssModel(vllm_config=vllm_config, prefix=maybe_prefix(prefix, "model"))
        self.lm_head = ParallelLMHead(
            self.config.vocab_size, self.config.hidden_size, prefix=maybe_prefix(prefix, "lm_head")
        )
        self.logits_processor = LogitsProcessor(self.config.vocab_size)
        self.make_empty_intermediate_tensors = self.model.make_empty_intermediate_tensors

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_checked(self, GPT_OSS, weights, super().load_weights)
