"""Routing statistics: the maths (pure tensor functions) and the saved format shared by all collectors.

For MoE layer l and token t the router selects k experts with normalised weights w[t, e] (sum 1 over the k,
0 elsewhere). Per sequence x:  q_l(x)[e] = mean_t w[t, e]  (the routing mass, a distribution over experts).
Per group of calibration sequences G (one direction, e.g. "en-de"), accumulated in float64:
  mass_sum[l, e]   = sum_{x in G} q_l(x)[e]                 importance = mass_sum / num_sequences
  select[l, e]     = #tokens that select e                   frequency  = select / num_tokens
  reap_sum[l, e]   = sum_{t selects e} w[t,e] * ||f_e(h_t)||  REAP       = reap_sum / select
  out_sum[l, e, :] = sum_{t selects e} w[t,e] * f_e(h_t)     (float32)
  out_weight[l, e] = sum_{t selects e} w[t,e]                 mean output c_e = out_sum / out_weight
(c_e, the routing-weighted mean output, is what a substituted expert answers: ``models.masking``; collected with
REAP, in the same expert calls; files from before have none.)
Plain passages (no prompt) keep one q_l per passage: passage_mass[lang] is [N, L, E], for the divergence.

Saved as one safetensors file (tensors named ``calib/<src>-<tgt>/<stat>`` and ``passage/<lang>``) whose
metadata holds a JSON header (model, layers, expert counts, fingerprint): new drop levels need no new pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CALIB_STATS = ("mass_sum", "select", "reap_sum", "num_sequences", "num_tokens")


def dense_weights(indices: torch.Tensor, weights: torch.Tensor, num_experts: int) -> torch.Tensor:
    """w[t, e]: the k weights of each token scattered into a [T, E] float64 matrix (0 for unselected)."""
    out = torch.zeros(indices.shape[0], num_experts, dtype=torch.float64, device=indices.device)
    return out.scatter_(1, indices.long(), weights.to(torch.float64))


def sequence_mass(dense: torch.Tensor, seq_ids: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """q(x)[e] = mean over the tokens t of sequence x of w[t, e]; tokens with seq_id < 0 (padding) are
    ignored. Returns [num_sequences, E]."""
    keep = seq_ids >= 0
    ids = seq_ids[keep].long()
    sums = torch.zeros(num_sequences, dense.shape[1], dtype=torch.float64, device=dense.device)
    sums.index_add_(0, ids, dense[keep])
    counts = torch.bincount(ids, minlength=num_sequences).to(torch.float64).clamp_min(1)
    return sums / counts[:, None]


@dataclass
class GroupStats:
    """Float64 sums over one group of sequences (see module docstring), L MoE layers x E experts."""

    mass_sum: torch.Tensor
    select: torch.Tensor
    reap_sum: torch.Tensor
    num_sequences: int = 0
    num_tokens: int = 0
    out_sum: torch.Tensor | None = None  # [L, E, H] float32, None: not collected
    out_weight: torch.Tensor | None = None  # [L, E] float64

    @classmethod
    def zeros(cls, num_layers: int, num_experts: int) -> GroupStats:
        z = lambda: torch.zeros(num_layers, num_experts, dtype=torch.float64)  # noqa: E731
        return cls(z(), z(), z())

    def merge(self, other: GroupStats) -> GroupStats:
        """The sums of both; mean outputs only where both have them."""
        outputs = self.out_sum is not None and other.out_sum is not None
        return GroupStats(
            self.mass_sum + other.mass_sum,
            self.select + other.select,
            self.reap_sum + other.reap_sum,
            self.num_sequences + other.num_sequences,
            self.num_tokens + other.num_tokens,
            self.out_sum + other.out_sum if outputs else None,
            self.out_weight + other.out_weight if outputs else None,
        )


@dataclass
class RoutingStats:
    """Statistics of a calibration pass over one model."""

    header: dict[str, Any]  # model, revision, family, layers (decoder index of each MoE layer), num_experts,
    # top_k, collector, fingerprint, has_reap, ...
    groups: dict[str, GroupStats] = field(default_factory=dict)  # "en-de" -> sums
    passages: dict[str, torch.Tensor] = field(default_factory=dict)  # "de" -> [N, L, E] per-passage q

    @property
    def layers(self) -> list[int]:
        return list(self.header["layers"])

    @property
    def num_experts(self) -> int:
        return int(self.header["num_experts"])

    def select_groups(self, directions: list[str]) -> GroupStats:
        """Sum of the groups for these directions ("en-de", ...); a clear error for missing ones."""
        missing = [d for d in directions if d not in self.groups]
        if not directions:
            raise ValueError(f"no directions given; these statistics cover {sorted(self.groups)}")
        if missing:
            raise ValueError(
                f"no calibration statistics for {missing}; these statistics cover {sorted(self.groups)}. "
                "Calibrate those directions first."
            )
        groups = [self.groups[d] for d in directions]
        total = groups[0]
        for g in groups[1:]:
            total = total.merge(g)
        return total

    def mean_outputs(self, directions: list[str]) -> torch.Tensor:
        """c[l, e, :] = out_sum / out_weight over these directions' groups, float32 [L, E, H]; an expert no
        calibration token selected answers 0 (it contributes nothing anyway)."""
        g = self.select_groups(directions)
        if g.out_sum is None or g.out_weight is None:
            raise ValueError(
                "these statistics have no mean expert outputs (written before substitution, with --no-reap, or by "
                "the vLLM collector): substitution needs a recalibration with `calibrate --backend transformers` "
                "(REAP on, its default there)"
            )
        return (g.out_sum.double() / g.out_weight.clamp_min(1e-30)[..., None]).float()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name, g in self.groups.items():
            tensors[f"calib/{name}/mass_sum"] = g.mass_sum
            tensors[f"calib/{name}/select"] = g.select
            tensors[f"calib/{name}/reap_sum"] = g.reap_sum
            tensors[f"calib/{name}/num_sequences"] = torch.tensor([g.num_sequences], dtype=torch.int64)
            tensors[f"calib/{name}/num_tokens"] = torch.tensor([g.num_tokens], dtype=torch.int64)
            if g.out_sum is not None and g.out_weight is not None:
                tensors[f"calib/{name}/out_sum"] = g.out_sum.float()
                tensors[f"calib/{name}/out_weight"] = g.out_weight
        for lang, q in self.passages.items():
            tensors[f"passage/{lang}"] = q.to(torch.float64).contiguous()
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"header": json.dumps(self.header)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> RoutingStats:
        from safetensors import safe_open

        path = Path(path)
        try:
            with safe_open(path, "pt") as f:
                header = json.loads((f.metadata() or {})["header"])
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own error type for corrupt files
            raise ValueError(f"{path} is not a routing-statistics file written by `calibrate`: {e}") from e
        stats = cls(header)
        names = {k.split("/")[1] for k in tensors if k.startswith("calib/")}
        for name in sorted(names):
            t = {s: tensors[f"calib/{name}/{s}"] for s in CALIB_STATS}
            stats.groups[name] = GroupStats(
                t["mass_sum"], t["select"], t["reap_sum"], int(t["num_sequences"]), int(t["num_tokens"]),
                tensors.get(f"calib/{name}/out_sum"), tensors.get(f"calib/{name}/out_weight"),
            )
        for k, v in tensors.items():
            if k.startswith("passage/"):
                stats.passages[k.split("/", 1)[1]] = v
        return stats


class StatsAccumulator:
    """Accumulates routing of batches of sequences into GroupStats / per-passage masses.

    A collector calls ``add`` once per MoE layer per forward with the router's choice for the flattened
    tokens and the sequence index of each token (-1 for padding). Used by every collector backend.
    """

    def __init__(self, num_layers: int, num_experts: int):
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.groups: dict[str, GroupStats] = {}
        self.passages: dict[str, list[torch.Tensor]] = {}

    def add(
        self,
        group: str,
        slot: int,
        indices: torch.Tensor,
        weights: torch.Tensor,
        seq_ids: torch.Tensor,
        num_sequences: int,
        expert_norms: torch.Tensor | None = None,
        passage: bool = False,
        expert_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Add one layer's routing for a batch; returns q [num_sequences, E] for that layer.

        ``expert_norms`` [T, k]: ||f_e(h_t)|| of each selected expert (REAP), if collected;
        ``expert_outputs``: (sum_t w[t, e] f_e(h_t) [E, H], sum_t w[t, e] [E]) over the batch's real tokens. With
        ``passage=True`` the per-sequence q is kept for the divergence instead of the calibration sums.
        """
        dense = dense_weights(indices, weights, self.num_experts)
        q = sequence_mass(dense, seq_ids, num_sequences)
        if passage:
            return q
        g = self.groups.setdefault(group, GroupStats.zeros(self.num_layers, self.num_experts))
        valid = seq_ids >= 0
        g.mass_sum[slot] += q.sum(0).cpu()
        sel = torch.zeros_like(dense)
        sel.scatter_(1, indices.long(), 1.0)
        g.select[slot] += sel[valid].sum(0).cpu()
        if expert_norms is not None:
            reap = torch.zeros_like(dense)
            reap.scatter_(1, indices.long(), weights.to(torch.float64) * expert_norms.to(torch.float64))
            g.reap_sum[slot] += reap[valid].sum(0).cpu()
        if expert_outputs is not None:
            out_sum, out_weight = expert_outputs
            if g.out_sum is None or g.out_weight is None:
                g.out_sum = torch.zeros(self.num_layers, *out_sum.shape, dtype=torch.float32)
                g.out_weight = torch.zeros(self.num_layers, self.num_experts, dtype=torch.float64)
            g.out_sum[slot] += out_sum.float().cpu()
            g.out_weight[slot] += out_weight.double().cpu()
        return q

    def finish_batch(self, group: str, num_sequences: int, num_tokens: int) -> None:
        """Count a batch once (after all its layers were added)."""
        g = self.groups.setdefault(group, GroupStats.zeros(self.num_layers, self.num_experts))
        g.num_sequences += num_sequences
        g.num_tokens += num_tokens

    def add_passages(self, lang: str, q: torch.Tensor) -> None:
        """Keep per-passage masses q [N, L, E] of plain passages in ``lang``."""
        self.passages.setdefault(lang, []).append(q.to(torch.float64).cpu())

    def result(self, header: dict[str, Any]) -> RoutingStats:
        passages = {k: torch.cat(v) for k, v in self.passages.items()}
        return RoutingStats(dict(header), dict(self.groups), passages)
