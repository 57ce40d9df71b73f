"""``make_plan``: saved routing statistics + a recipe -> a plan (ranking, per-layer allocation, the kept
experts). The plan's schema and its application to a checkpoint are in ``models.plan`` / ``models.apply``."""

from __future__ import annotations

from moe_specialists.models.adapters import adapter_for, find_config
from moe_specialists.models.languages import canonical, split_direction
from moe_specialists.models.plan import BaseRef, Plan, Recipe, pruned_parameters
from moe_specialists.pruning.allocation import allocate, check_counts, check_drop
from moe_specialists.pruning.scores import importance, keep_top, routing_divergence
from moe_specialists.pruning.stats import RoutingStats


def make_plan(stats: RoutingStats, recipe: Recipe) -> Plan:
    """Rank experts per layer, allocate per-layer counts, keep the top experts of each layer; with
    ``recipe.dropped == "substitute"``, each dropped expert's constant is its mean output on the recipe's
    directions (``RoutingStats.mean_outputs``; statistics without them are refused)."""
    base = BaseRef(**stats.header["base"])
    if (config := find_config(base.id, base.revision)) is not None:  # else `apply` refuses it
        adapter_for(config).check_prunable(config)
    layers = stats.layers
    E, k = stats.num_experts, base.top_k
    check_drop(recipe.drop, E, k)
    group = stats.select_groups(recipe.directions)
    scores = importance(group, recipe.ranking, recipe.seed)
    divergence = None
    if recipe.allocation != "uniform":
        langs = recipe.divergence_languages or sorted(
            {lang for d in recipe.directions for lang in split_direction(d)} - {canonical(recipe.pivot)}
        )
        divergence = routing_divergence(stats.passages, langs, recipe.pivot).tolist()
        recipe = recipe.model_copy(update={"divergence_languages": langs})
    counts = allocate(len(layers), E, k, recipe.drop, recipe.allocation, divergence, recipe.kept_total)
    if recipe.kept_per_layer is not None:
        counts = check_counts(recipe.kept_per_layer, len(layers), E, k, sum(counts))
    kept = [keep_top(scores[slot], counts[slot], recipe.invert) for slot in range(len(layers))]
    plan = Plan(
        base=base,
        recipe=recipe,
        data_fingerprint=stats.header["data_fingerprint"],
        collector=stats.header["collector"],
        layers=layers,
        kept=kept,
        scores=scores.tolist(),
        divergence=divergence,
        parameters=pruned_parameters(base, layers, counts),
    )
    if recipe.dropped == "drop":
        return plan
    means = stats.mean_outputs(recipe.directions)  # [L, E, H]
    return plan.with_constants({layer: means[slot, dropped] for slot, (layer, dropped) in
                                enumerate(zip(layers, plan.dropped(), strict=True))})
