"""Weight bytes of a model's plans as stored, from its checkpoint's safetensors headers: the dense part, one
expert per MoE layer, and a substituted expert (``pruning.budget.plan_bytes`` does the sums)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from moe_specialists.models.checkpoint import header_entries
from moe_specialists.models.plan_loading import kept_weight_stats
from moe_specialists.pruning.budget import plan_bytes


class ModelBytes(BaseModel):
    """Weight bytes of the model as stored: ``dense`` (no expert) and one expert per MoE layer."""

    dense: int
    per_expert: list[int]
    num_experts: int = 0
    per_substitute: int = 0  # a substituted expert: its router row (as stored) and its constant (H float32)

    @classmethod
    def of(cls, model_dir: Path, layers: list[int], num_experts: int = 0) -> ModelBytes:
        entries = list(header_entries(model_dir))  # read once, weighed L + 2 ways

        def stored(kept: dict[int, list[int]], substitute: bool = False) -> int:
            return kept_weight_stats(model_dir, kept, substitute, entries)[1]

        none = {layer: [] for layer in layers}
        dense = stored(none)
        per_expert = [stored({m: [0] if m == layer else [] for m in layers}) - dense for layer in layers]
        substituted = stored(none, substitute=True) - dense  # every expert substituted
        return cls(dense=dense, per_expert=per_expert, num_experts=num_experts,
                   per_substitute=substituted // max(1, len(layers) * num_experts))

    def of_counts(self, counts: list[int], substitute: bool = False) -> int:
        """plan_bytes; ``substitute``: + per_substitute for each of the (E - n_l) dropped experts of a layer."""
        extra = sum(self.num_experts - n for n in counts) * self.per_substitute if substitute else 0
        return plan_bytes(self.dense, self.per_expert, counts) + extra
