"""The `search --fleet` job: a quality floor on every pair and a memory budget (GPUs x memory, KV cache per engine).
Each kind of specialist (one per direction, one per language, one for them all) is searched for its pairs with
``pruning.search``, ``pruning.fleet`` chooses the set that fits, and its plans are registered with one serve command
per GPU (``work_dir/fleet.json``, ``fleet.md``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ByteSize, Field, model_validator

from moe_specialists.models.registry.store import Registry, default_registry_dir
from moe_specialists.pruning.evaluate import parse_directions
from moe_specialists.pruning.fleet import Budget, choose_fleet, what_would_fit
from moe_specialists.pruning.fleet import Candidate as Choice
from moe_specialists.pruning.search import Criterion, SearchConfig, search, with_statistics

FleetKind = Literal["direction", "language", "multilingual"]


class FleetConfig(SearchConfig):
    """A quality floor (``max_loss``, every pair) and a memory budget: ``gpus`` x ``gpu_memory``, ``kv_cache``
    per engine. Each kind of specialist is searched for its pairs (one per direction, one per language, one for
    them all), then ``pruning.fleet`` chooses the set to build."""

    gpus: int = Field(1, ge=1)
    gpu_memory: ByteSize
    kv_cache: ByteSize
    kinds: list[FleetKind] = ["direction", "language", "multilingual"]
    criterion: Criterion = "worst"
    pivot: str = "en"

    @model_validator(mode="after")
    def _floor(self) -> FleetConfig:
        if self.max_loss is None:
            raise ValueError("a fleet needs a quality floor: max_loss, chrF points every pair may lose")
        return self


class FleetResult(BaseModel):
    candidates: list[dict[str, Any]]  # name, directions, weight_bytes, loss per pair
    gpus: list[list[str]]  # engines per GPU, empty when nothing fits
    routes: dict[str, str]
    memory_share: list[float]
    serve_commands: list[str]
    registered: list[str]
    problem: str | None = None


def fleet_groups(directions: list[str], kinds: list[str], pivot: str) -> dict[str, list[str]]:
    """Candidate name -> the directions it serves, for each kind asked (a language's group: its pairs)."""
    pairs = parse_directions(directions)
    groups: dict[str, list[str]] = {}
    if "direction" in kinds:
        groups |= {f"{a}-{b}": [f"{a}-{b}"] for a, b in pairs}
    if "language" in kinds:
        for lang in sorted({x for p in pairs for x in p} - {pivot}):
            groups.setdefault(lang, [f"{a}-{b}" for a, b in pairs if lang in (a, b)])
    if "multilingual" in kinds and len(pairs) > 1:
        groups["multilingual"] = [f"{a}-{b}" for a, b in pairs]
    return groups


def search_fleet(config: FleetConfig, log: Callable[[str], None] = print) -> FleetResult:
    """Search every candidate, choose the fleet, register its plans (``register_name`` is the prefix of their
    names) and write ``work_dir/fleet.json`` and ``fleet.md`` (the serve commands, one gateway per GPU)."""
    c = with_statistics(config, log)  # once, for every pair: each candidate's search shares them
    budget = Budget(c.gpus, int(c.gpu_memory), int(c.kv_cache))
    choices, plans = [], {}
    for name, dirs in fleet_groups(c.directions, c.kinds, c.pivot).items():
        one = SearchConfig(**{**c.model_dump(include=set(SearchConfig.model_fields)), "directions": dirs,
                              "confirm_split": None, "register_name": None, "out": c.work_dir / "fleet" /
                              f"{name}.plan.json", "max_bytes": None})
        result = search(one, log)
        chosen = result.chosen
        loss = chosen.pair_loss[c.split] if chosen else dict.fromkeys(dirs, 0.0)
        choices.append(Choice(name, chosen.weight_bytes if chosen else result.parent_bytes, loss))
        plans[name] = (result.plan, dirs)
    fleet = choose_fleet(choices, c.directions, c.max_loss, budget)  # type: ignore[arg-type]
    out = FleetResult(candidates=[{"name": x.name, "directions": plans[x.name][1], "weight_bytes": x.weight_bytes,
                                   "loss": x.loss} for x in choices], gpus=[], routes={}, memory_share=[],
                      serve_commands=[], registered=[])
    if fleet is None:
        would = what_would_fit(choices, c.directions, c.max_loss, budget)  # type: ignore[arg-type]
        out.problem = (f"no fleet serves every pair within {c.max_loss} chrF on {c.gpus} x "
                       f"{int(c.gpu_memory) / 1e9:.2f} GB with {int(c.kv_cache) / 1e9:.2f} GB of KV cache per engine; "
                       + (f"a floor of {would['floor']:.2f} would fit" if would["floor"] is not None
                          else "no looser floor fits this memory")
                       + (f", {would['gpus']} GPUs would at this floor" if would["gpus"] else ""))
    else:
        registry = Registry(c.registry if c.registry is not None else default_registry_dir())
        prefix = c.register_name or "fleet-"
        for gpu, group in enumerate(fleet.gpus):
            options = []
            for x in group:
                served = [p for p, n in fleet.routes.items() if n == x.name]
                entry = registry.register_plan(f"{prefix}{x.name}", plans[x.name][0], overwrite=c.overwrite,
                                               directions=served)
                out.registered.append(entry.name)
                options.append(f"-s {entry.name}={entry.path}:{','.join(served)}")
            share = fleet.memory_share(budget, gpu)
            out.memory_share.append(share)
            out.serve_commands.append(f"CUDA_VISIBLE_DEVICES={gpu} MOE_GPU_MEMORY_SHARE={share:.3f} "
                                      f"moe-specialists serve --port {8000 + gpu} " + " ".join(options))
        out.gpus = [[x.name for x in g] for g in fleet.gpus]
        out.routes = fleet.routes
    c.work_dir.mkdir(parents=True, exist_ok=True)
    (c.work_dir / "fleet.json").write_text(out.model_dump_json(indent=1))
    (c.work_dir / "fleet.md").write_text(render_fleet(c, out))
    return out


def render_fleet(config: FleetConfig, result: FleetResult) -> str:
    c = config
    lines = [f"# fleet: {', '.join(c.directions)}", "",
             f"floor {c.max_loss} chrF on every pair; {c.gpus} x {int(c.gpu_memory) / 1e9:.2f} GB, "
             f"{int(c.kv_cache) / 1e9:.2f} GB of KV cache per engine.", "",
             "| candidate | serves | weight GB | worst loss | chosen |", "|---|---|---|---|---|"]
    chosen = {n for g in result.gpus for n in g}
    for x in result.candidates:
        lines.append(f"| {x['name']} | {', '.join(x['directions'])} | {x['weight_bytes'] / 1e9:.4f} | "
                     f"{max(x['loss'].values()):+.2f} | {'yes' if x['name'] in chosen else ''} |")
    lines.append("")
    if result.problem:
        lines.append(f"No fleet: {result.problem}")
    else:
        lines += ["Routes: " + ", ".join(f"{p} -> {n}" for p, n in sorted(result.routes.items())), "",
                  "One gateway per GPU:", "", "```sh", *result.serve_commands, "```"]
    return "\n".join(lines) + "\n"
