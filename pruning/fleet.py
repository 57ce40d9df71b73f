"""Which specialists to build so that every language pair meets a quality floor and the set fits the GPUs. Pure.

Candidates (per direction, per language, multilingual: each the smallest plan `search` found for its pairs)
carry their weight bytes and their loss on each pair they serve. A fleet is a set of candidates that covers
every pair with a loss <= the floor, packed onto ``gpus`` GPUs of ``gpu_bytes``. Each engine needs its weights
plus ``kv_bytes`` of KV cache; the gateway splits a GPU's memory share evenly among the engines it runs
there, so a GPU holding n engines needs n * max(need) <= ``usable * gpu_bytes``. Among the fleets that fit,
the one with the fewest total bytes (then the fewest engines) is chosen: covers are enumerated by branch and
bound (the first uncovered pair, each candidate that covers it), packings by backtracking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    name: str
    weight_bytes: int
    loss: dict[str, float]  # pair -> chrF lost against the parent, for every pair it serves


@dataclass(frozen=True)
class Budget:
    gpus: int
    gpu_bytes: int
    kv_bytes: int  # per engine
    usable: float = 0.9  # of each GPU, as vLLM's gpu_memory_utilization

    def need(self, c: Candidate) -> int:
        return c.weight_bytes + self.kv_bytes

    @property
    def capacity(self) -> float:
        return self.usable * self.gpu_bytes


@dataclass(frozen=True)
class Fleet:
    gpus: list[list[Candidate]]  # engines per GPU
    routes: dict[str, str]  # pair -> the candidate serving it

    @property
    def engines(self) -> list[Candidate]:
        return [c for group in self.gpus for c in group]

    @property
    def total_bytes(self) -> int:
        return sum(c.weight_bytes for c in self.engines)

    def memory_share(self, budget: Budget, gpu: int) -> float:
        """The gateway's memory share on GPU ``gpu``: n * max(need) / gpu_bytes."""
        group = self.gpus[gpu]
        return len(group) * max(budget.need(c) for c in group) / budget.gpu_bytes


def serves(c: Candidate, pair: str, floor: float) -> bool:
    return pair in c.loss and c.loss[pair] <= floor


def fits(group: Sequence[Candidate], budget: Budget) -> bool:
    return not group or len(group) * max(budget.need(c) for c in group) <= budget.capacity


def pack(engines: Sequence[Candidate], budget: Budget) -> list[list[Candidate]] | None:
    """Engines onto ``budget.gpus`` GPUs so that every GPU ``fits``, or None: largest first, each onto every
    GPU in turn (an empty GPU tried once: they are all alike)."""
    order = sorted(engines, key=budget.need, reverse=True)
    groups: list[list[Candidate]] = [[] for _ in range(budget.gpus)]

    def place(i: int) -> bool:
        if i == len(order):
            return True
        tried_empty = False
        for group in groups:
            if not group:
                if tried_empty:
                    continue
                tried_empty = True
            group.append(order[i])
            if fits(group, budget) and place(i + 1):
                return True
            group.pop()
        return False

    return [g for g in groups if g] if place(0) else None


def choose_fleet(candidates: Sequence[Candidate], pairs: Sequence[str], floor: float, budget: Budget) -> Fleet | None:
    """The lightest fleet serving every pair within ``floor`` that ``pack`` fits, or None."""
    best: list[Fleet] = []

    def cost(chosen: list[Candidate]) -> tuple[int, int]:
        return sum(c.weight_bytes for c in chosen), len(chosen)

    def extend(chosen: list[Candidate]) -> None:
        if best and cost(chosen) >= cost(best[0].engines):
            return
        uncovered = [p for p in pairs if not any(serves(c, p, floor) for c in chosen)]
        if not uncovered:
            if (gpus := pack(chosen, budget)) is not None:
                routes = {p: min((c for c in chosen if serves(c, p, floor)), key=lambda c: c.loss[p]).name
                          for p in pairs}
                best[:] = [Fleet(gpus, routes)]
            return
        for c in sorted((c for c in candidates if serves(c, uncovered[0], floor) and c not in chosen),
                        key=lambda c: c.weight_bytes):
            extend([*chosen, c])

    extend([])
    return best[0] if best else None


def what_would_fit(
    candidates: Sequence[Candidate], pairs: Sequence[str], floor: float, budget: Budget
) -> dict[str, object]:
    """When no fleet fits: the loosest floor needed at this budget (None: none), and the GPUs needed at this
    floor (None: some pair has no candidate within the floor)."""
    looser = sorted({loss for c in candidates for loss in c.loss.values() if loss > floor})
    floor_needed = next((f for f in looser if choose_fleet(candidates, pairs, f, budget) is not None), None)
    gpus_needed = None
    if all(any(serves(c, p, floor) for c in candidates) for p in pairs):
        for n in range(budget.gpus + 1, budget.gpus + len(pairs) + 1):
            more = Budget(n, budget.gpu_bytes, budget.kv_bytes, budget.usable)
            if choose_fleet(candidates, pairs, floor, more) is not None:
                gpus_needed = n
                break
    return {"floor": floor_needed, "gpus": gpus_needed}
