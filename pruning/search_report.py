"""What the `search` job writes besides search.json: ``search.md`` (every candidate, the Pareto front, the chosen
plan) and ``search.png`` (mean chrF against weight bytes)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moe_specialists.pruning.search import Candidate, SearchConfig, SearchResult


def pareto(candidates: list[Candidate], split: str) -> list[Candidate]:
    """Candidates no other beats on both bytes (fewer) and chrF (higher or equal), by bytes."""
    rows = sorted((x for x in candidates if split in x.chrf), key=lambda x: (x.weight_bytes, -x.chrf[split]))
    front, best = [], float("-inf")
    for x in rows:
        if x.chrf[split] > best:
            front.append(x)
            best = x.chrf[split]
    return front


def render(config: SearchConfig, result: SearchResult) -> str:
    c = config
    front = {(x.kept_total, x.dropped) for x in pareto(result.candidates, c.split)}
    unit = "COMET" if c.metric == "comet" else "chrF"
    comet_head = f" {c.split} COMET |" if c.metric == "comet" else ""
    lines = [
        f"# search: {', '.join(c.directions)}",
        "",
        ("no floor" if c.max_loss is None else f"floor {c.max_loss} {unit} ({c.criterion} over the directions)")
        + f", budget {'none' if c.max_bytes is None else f'{int(c.max_bytes) / 1e9:.3f} GB'}; parent "
        + ", ".join(f"{s} chrF {v:.2f}" for s, v in sorted(result.parent.items()))
        + "".join(f", {s} COMET {v:.2f}" for s, v in sorted(result.parent_comet.items()))
        + f", {result.parent_bytes / 1e9:.3f} GB. {result.evaluations} candidates evaluated on {c.split} "
        f"({result.new_evaluations} measured in this run), {result.seconds / 60:.1f} min.",
        "",
        f"| kept experts | dropped experts | per layer | GB | {c.split} chrF |{comet_head} loss ({unit}) | degenerate "
        "| Pareto |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if comet_head else ""),
    ]
    for x in result.candidates:
        if c.split not in x.chrf:
            continue
        lines.append(
            f"| {x.kept_total} | {x.dropped} | {' '.join(map(str, x.experts_per_layer))} | {x.weight_bytes / 1e9:.4f} "
            f"| {x.chrf[c.split]:.2f} |{f' {x.comet[c.split]:.2f} |' if comet_head else ''} {x.loss[c.split]:+.2f} | "
            f"{x.degenerate_rate[c.split]:.3f} | "
            f"{'yes' if (x.kept_total, x.dropped) in front else ''} |")
    lines.append("")
    if result.chosen is not None:
        ch = result.chosen
        lines.append(f"Chosen: {ch.kept_total} experts (the others {ch.dropped}ped), {ch.weight_bytes / 1e9:.4f} GB ("
                     f"{ch.weight_bytes / result.parent_bytes:.1%} of the parent); "
                     + ", ".join(f"{s} loss {v:+.2f}" for s, v in sorted(ch.loss.items())) + f"; plan {result.plan}")
    elif result.plan is not None:
        lines.append(f"Chosen: the parent itself (nothing can be dropped within the floor); plan {result.plan}")
    if result.problem:
        lines.append(f"No plan: {result.problem}")
    return "\n".join(lines) + "\n"


def plot(config: SearchConfig, result: SearchResult, out: Path, log: Callable[[str], None]) -> Path | None:
    """Mean chrF against weight GB for every candidate (red: more than 1% degenerate outputs), the Pareto front,
    the parent, the floor and the chosen plan; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot (pip install matplotlib)")
        return None
    c, split = config, config.split
    rows = [x for x in result.candidates if split in x.chrf]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.scatter([x.weight_bytes / 1e9 for x in rows], [x.chrf[split] for x in rows], s=22,
               c=["tab:red" if x.degenerate_rate[split] > 0.01 else "tab:blue" for x in rows], label="candidates")
    front = pareto(rows, split)
    ax.plot([x.weight_bytes / 1e9 for x in front], [x.chrf[split] for x in front], "-", color="tab:blue",
            alpha=0.5, label="Pareto front")
    if split in result.parent:
        ax.scatter([result.parent_bytes / 1e9], [result.parent[split]], marker="s", color="black", label="parent")
        if c.max_loss is not None and c.criterion == "mean":  # the worst pair's floor is not a line in the mean
            ax.axhline(result.parent[split] - c.max_loss, ls="--", color="gray", label=f"floor ({c.max_loss} chrF)")
    if c.max_bytes is not None:
        ax.axvline(int(c.max_bytes) / 1e9, ls=":", color="gray", label="budget")
    if result.chosen is not None and split in result.chosen.chrf:
        ax.scatter([result.chosen.weight_bytes / 1e9], [result.chosen.chrf[split]], marker="*", s=160,
                   color="tab:orange", label="chosen", zorder=3)
    ax.set_xlabel("weight GB (as stored)")
    ax.set_ylabel(f"mean chrF ({split}, {c.limit} passages per direction)")
    ax.set_title(", ".join(c.directions), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
