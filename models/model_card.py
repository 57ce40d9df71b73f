"""The model card (README.md) ``apply`` writes into a specialist: base model and its licence, recipe, experts per
layer, bytes saved, quality when measured, how to load it."""

from __future__ import annotations

from moe_specialists.models.plan import Plan


def model_card(plan: Plan, base_card: str | None, weight_bytes: int, fmt: str, quality: dict | None) -> str:
    """The specialist's README.md: base model and its licence, recipe, experts per layer, bytes, quality."""
    licence = "unknown"
    if base_card and base_card.startswith("---"):
        for line in base_card.split("---")[1].splitlines():
            if line.strip().startswith("license:"):
                licence = line.split(":", 1)[1].strip()
    r, counts = plan.recipe, [len(k) for k in plan.kept]
    saved = plan.base.weight_bytes - weight_bytes if plan.base.weight_bytes else None
    lines = [
        "---",
        f"base_model: {plan.base.id}",
        f"license: {licence}",
        "library_name: transformers",
        "tags: [moe, pruned, expert-pruning, translation]",
        "---",
        f"# Translation specialist of {plan.base.id}",
        "",
        f"Experts pruned from `{plan.base.id}`" + (f" (revision {plan.base.revision})" if plan.base.revision else "")
        + f" with moe-specialists; the base's licence ({licence}) applies. Weights: {fmt}.",
        "",
        "## Recipe",
        "",
        f"- directions: {', '.join(r.directions)} (pivot {r.pivot}); ranking {r.ranking}"
        + (" inverted" if r.invert else "") + f", allocation {r.allocation}, {r.drop} experts dropped per layer"
        " on average",
        f"- calibration: {plan.collector}" + (f", data {plan.data_fingerprint}" if plan.data_fingerprint else ""),
        f"- experts kept per MoE layer (of {max(plan.base.experts_per_layer)}): {counts}"
        + ("; each dropped expert is answered by a constant, its mean output on the calibration data "
           "(substitution: the router keeps every row)" if r.dropped == "substitute" else ""),
        f"- parameters: {plan.parameters:,} of {plan.base.parameters:,} "
        f"({plan.parameters / plan.base.parameters:.1%})",
        f"- weight bytes: {weight_bytes:,}" + (f" ({saved:,} saved, {saved / plan.base.weight_bytes:.1%})"
                                               if saved is not None else ""),
        "",
        "## Quality",
        "",
    ]
    if quality:
        lines += [f"- {k}: {v}" for k, v in sorted(quality.items())]
    else:
        lines.append("Not measured yet: `moe-specialists evaluate FOLDER -d DIRECTIONS`.")
    lines += [
        "",
        "## Loading",
        "",
        "`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` (modeling_pruned.py, per-layer "
        "expert counts in config.json `num_experts_per_layer`), or without remote code after "
        "`import moe_specialists.models.pruned`; vLLM with the moe-specialists plugin installed.",
        "",
    ]
    return "\n".join(lines)
