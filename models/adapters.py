"""Model-family adapters: every name that differs between MoE families lives here and nowhere else.

A family adapter answers four questions:
  * config: where the expert count and top-k are, which layers are MoE layers;
  * modules: which module is the experts block of layer l (its forward is called as
    ``experts(hidden[T,H], top_k_index[T,k], top_k_weights[T,k])`` in every family transformers ships,
    so statistics hook the experts call and see the routing exactly as the model computed it);
  * checkpoint: which tensors belong to which expert, and along which axis they are sliced;
  * classes: the transformers classes the pruned (per-layer expert count) model is built from.

A third family (Mixtral, OLMoE, ...) is one more ``FamilyAdapter`` instance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from moe_specialists.models.checkpoint import read_config

# config.json key holding the per-layer expert counts of a pruned specialist (one entry per decoder layer,
# 0 for dense layers).
EXPERTS_PER_LAYER_KEY = "num_experts_per_layer"
# ... and of its substituted experts (a plan with dropped="substitute": the router keeps all E_l = c_l + s_l rows,
# the kept experts' first, and tensor ``substitutes_tensor(l)`` holds the s_l constants).
SUBSTITUTED_PER_LAYER_KEY = "num_substituted_experts_per_layer"


@dataclass(frozen=True)
class TensorRole:
    """What a checkpoint tensor is to pruning: ``kind`` is "router", "packed" (experts stacked on dim 0) or
    "expert" (one tensor per expert, ``expert`` is its index)."""

    layer: int
    kind: str
    expert: int | None = None


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_type: str
    base_architecture: str
    pruned_architecture: str
    num_experts_keys: tuple[str, ...]  # config.json keys that may hold the scalar expert count
    mlp_attr: str  # decoder-layer attribute holding the MoE block
    router_attr: str  # MoE-block attribute of the router
    experts_attr: str  # MoE-block attribute of the experts
    router_pattern: re.Pattern[str]  # tensors sliced along dim 0 by expert (router weight/bias)
    packed_pattern: re.Pattern[str]  # experts stacked along dim 0 (bf16, MXFP4 blocks/scales, biases)
    expert_pattern: re.Pattern[str] | None  # one tensor per expert: group 2 is the expert index
    renormalises_top_k: bool | str  # True, or the config key that says whether it does

    # ---- config ----
    def num_experts(self, config: Any) -> int:
        for key in self.num_experts_keys:
            value = _get(config, key)
            if value is not None:
                return int(value)
        raise KeyError(f"{self.name}: none of {self.num_experts_keys} in the config")

    def top_k(self, config: Any) -> int:
        return int(_get(config, "num_experts_per_tok"))

    def num_layers(self, config: Any) -> int:
        return int(_get(config, "num_hidden_layers"))

    def moe_layers(self, config: Any) -> list[int]:
        """Decoder layers that hold an MoE block."""
        n = self.num_layers(config)
        if self.model_type == "qwen3_moe":
            dense = set(_get(config, "mlp_only_layers") or [])
            step = int(_get(config, "decoder_sparse_step") or 1)
            return [i for i in range(n) if i not in dense and (i + 1) % step == 0]
        return list(range(n))

    def experts_per_layer(self, config: Any) -> list[int]:
        """Expert count of every decoder layer (0 for dense layers); uniform for an unpruned model."""
        counts = _get(config, EXPERTS_PER_LAYER_KEY)
        if counts is not None:
            return [int(c) for c in counts]
        moe = set(self.moe_layers(config))
        e = self.num_experts(config)
        return [e if i in moe else 0 for i in range(self.num_layers(config))]

    def renormalises(self, config: Any) -> bool:
        """True when the k selected weights are renormalised to sum 1 (so unselected experts can be removed
        without changing the output)."""
        if isinstance(self.renormalises_top_k, bool):
            return self.renormalises_top_k
        return bool(_get(config, self.renormalises_top_k))

    def check_prunable(self, config: Any) -> None:
        """Refuse a model whose outputs change when experts are removed: without top-k renormalisation the
        selected weights are a softmax over ALL experts, so slicing any expert changes every token's output."""
        if not self.renormalises(config):
            raise ValueError(
                f"{self.name}: {self.renormalises_top_k} is false in this config: its top-k routing weights are "
                "a softmax over all experts, not renormalised, so removing any expert would change every token's "
                f"output. Expert pruning needs a model that renormalises ({self.renormalises_top_k}: true)."
            )

    def pruned_config_dict(
        self, config: dict[str, Any], counts: list[int], substituted: list[int] | None = None
    ) -> dict[str, Any]:
        """config.json of a specialist: same model_type, pruned architecture, per-layer counts (and substituted
        counts), scalar = max kept."""
        out = dict(config)
        out["architectures"] = [self.pruned_architecture]
        out[EXPERTS_PER_LAYER_KEY] = list(counts)
        if substituted is not None:
            out[SUBSTITUTED_PER_LAYER_KEY] = list(substituted)
        present = [k for k in self.num_experts_keys if k in out] or [self.num_experts_keys[0]]
        for key in present:
            out[key] = max(counts)
        return out

    # ---- modules ----
    def moe_block(self, model: nn.Module, layer: int) -> nn.Module:
        return getattr(decoder_layers(model)[layer], self.mlp_attr)

    def experts(self, model: nn.Module, layer: int) -> nn.Module:
        return getattr(self.moe_block(model, layer), self.experts_attr)

    def router(self, model: nn.Module, layer: int) -> nn.Module:
        return getattr(self.moe_block(model, layer), self.router_attr)

    def substitutes_tensor(self, layer: int) -> str:
        """Checkpoint name of layer ``layer``'s substituted experts' constants [s_l, H]."""
        return f"model.layers.{layer}.{self.mlp_attr}.substitutes"

    # ---- checkpoint ----
    def tensor_role(self, name: str) -> TensorRole | None:
        """Role of a checkpoint tensor for slicing; None for tensors copied unchanged."""
        if m := self.router_pattern.search(name):
            return TensorRole(int(m.group(1)), "router")
        if m := self.packed_pattern.search(name):
            return TensorRole(int(m.group(1)), "packed")
        if self.expert_pattern is not None and (m := self.expert_pattern.search(name)):
            return TensorRole(int(m.group(1)), "expert", int(m.group(2)))
        return None

    def renumber_expert(self, name: str, new_index: int) -> str:
        """Name of a per-expert tensor once its expert is renumbered to ``new_index``."""
        assert self.expert_pattern is not None
        m = self.expert_pattern.search(name)
        assert m is not None, name
        return name[: m.start(2)] + str(new_index) + name[m.end(2) :]


def _get(config: Any, key: str) -> Any:
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM (``model.model.layers`` in both families)."""
    inner = getattr(model, "model", model)
    return inner.layers


_LAYER = r"(?:^|\.)layers\.(\d+)\."

QWEN3_MOE = FamilyAdapter(
    name="qwen3_moe",
    model_type="qwen3_moe",
    base_architecture="Qwen3MoeForCausalLM",
    pruned_architecture="PrunedQwen3MoeForCausalLM",
    num_experts_keys=("num_experts", "num_local_experts"),
    mlp_attr="mlp",
    router_attr="gate",
    experts_attr="experts",
    router_pattern=re.compile(_LAYER + r"mlp\.gate\.weight$"),
    packed_pattern=re.compile(_LAYER + r"mlp\.experts\.(?:gate_up_proj|down_proj)$"),
    expert_pattern=re.compile(_LAYER + r"mlp\.experts\.(\d+)\."),
    renormalises_top_k="norm_topk_prob",
)

GPT_OSS = FamilyAdapter(
    name="gpt_oss",
    model_type="gpt_oss",
    base_architecture="GptOssForCausalLM",
    pruned_architecture="PrunedGptOssForCausalLM",
    num_experts_keys=("num_local_experts",),
    mlp_attr="mlp",
    router_attr="router",
    experts_attr="experts",
    router_pattern=re.compile(_LAYER + r"mlp\.router\.(?:weight|bias)$"),
    # bf16: gate_up_proj, down_proj (+ _bias); MXFP4 release: *_blocks [E, rows, cols/32, 16] uint8,
    # *_scales [E, rows, cols/32] uint8, biases bf16. All stacked by expert on dim 0.
    packed_pattern=re.compile(_LAYER + r"mlp\.experts\.(?:gate_up_proj|down_proj)(?:_bias|_blocks|_scales)?$"),
    expert_pattern=None,
    renormalises_top_k=True,  # softmax over the top-k logits
)

ADAPTERS: dict[str, FamilyAdapter] = {a.model_type: a for a in (QWEN3_MOE, GPT_OSS)}


def find_config(ref: str, revision: str | None = None) -> dict[str, Any] | None:
    """config.json of a local model folder, or of a hub id found in the local hub cache (nothing is
    downloaded); None when it is neither."""
    if (Path(ref) / "config.json").is_file():
        return read_config(Path(ref))
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(ref), "config.json", revision=revision)
    except Exception:  # not a valid hub id (e.g. a local path that is gone)
        return None
    return read_config(Path(cached).parent) if isinstance(cached, str) else None


def adapter_for(config: Any) -> FamilyAdapter:
    """The adapter of a config (object or dict), by model_type."""
    model_type = _get(config, "model_type")
    if model_type not in ADAPTERS:
        raise ValueError(
            f"unsupported model family {model_type!r}; supported: {sorted(ADAPTERS)}. "
            "A new family needs one FamilyAdapter in models/adapters.py."
        )
    return ADAPTERS[model_type]
