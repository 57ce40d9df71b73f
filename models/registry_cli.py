"""``registry`` commands (mounted by the main CLI as ``moe-specialists registry ...``): a thin layer over
``models.registry`` (the store's ``Registry``, ``materialise``, the hub's ``push`` / ``pull``). Errors print one
line on stderr and exit with code 2."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from moe_specialists.models.registry import hub
from moe_specialists.models.registry.entries import SpecialistEntry
from moe_specialists.models.registry.errors import RegistryError
from moe_specialists.models.registry.materialise import materialise as materialise_plan
from moe_specialists.models.registry.store import REGISTRY_ENV, Registry, default_registry_dir

RegistryOption = Annotated[
    Path | None,
    typer.Option(help=f"Registry folder (default: ${REGISTRY_ENV}, else ~/.cache/moe-specialists/registry)."),
]

app = typer.Typer(
    name="registry", help="Register, materialise, list, show, remove, push and pull specialists.", no_args_is_help=True
)


@app.callback()
def main(ctx: typer.Context, root: RegistryOption = None) -> None:
    with _errors():
        ctx.obj = Registry(root if root is not None else default_registry_dir())


@contextmanager
def _errors() -> Iterator[None]:
    """Input problems and hub/file errors (all OSError) -> one line on stderr, exit code 2."""
    try:
        yield
    except (RegistryError, KeyError, ValueError, OSError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {msg.splitlines()[0] if msg else type(e).__name__}", err=True)
        raise typer.Exit(2) from None


def _reg(ctx: typer.Context) -> Registry:
    return ctx.obj


def _human(n: int) -> str:
    x = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if x < 1000 or unit == "TB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1000
    raise AssertionError


def _served(e: SpecialistEntry) -> str:
    if e.directions:
        return ",".join(e.directions)
    return ("multi:" + ",".join(e.languages)) if e.languages else "-"


def _count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _table(entries: list[SpecialistEntry]) -> str:
    cols: list[tuple[str, Callable[[SpecialistEntry], str]]] = [
        ("NAME", lambda e: e.name),
        ("FAMILY", lambda e: e.family),
        ("SERVES", _served),
        ("PARAMS", lambda e: _count(e.parameters)),
        ("WEIGHTS", lambda e: _human(e.weight_bytes)),
        ("SAVED", lambda e: _human(e.bytes_saved)),
        ("EXPERTS/LAYER", lambda e: ",".join(map(str, e.experts_per_layer)) or "-"),
        ("PATH", lambda e: e.path),
    ]
    rows = [[h for h, _ in cols]] + [[f(e) for _, f in cols] for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def _show(e: SpecialistEntry) -> str:
    data = json.loads(e.model_dump_json())
    data["bytes_saved"] = e.bytes_saved
    return json.dumps(data, indent=2)


Name = Annotated[str, typer.Argument(help="Specialist name (a-z 0-9 . _ -).")]
Directions = Annotated[list[str] | None, typer.Option(help="Served direction, e.g. en-de (repeatable).")]
Languages = Annotated[list[str] | None, typer.Option(help="Language of a multilingual specialist (repeatable).")]
Overwrite = Annotated[bool, typer.Option(help="Replace an entry of the same name.")]


@app.command("add")
def add(
    ctx: typer.Context,
    name: Name,
    path: Annotated[
        Path, typer.Argument(help="Folder with config.json and *.safetensors, or a plan .json (plan-only: served "
                             "from the base, no sliced copy).")
    ],
    base: Annotated[str | None, typer.Option(help="Base model: local folder (for bytes saved) or hub id.")] = None,
    plan: Annotated[Path | None, typer.Option(help="plan.json the specialist was pruned with.")] = None,
    direction: Directions = None,
    language: Languages = None,
    overwrite: Overwrite = False,
) -> None:
    """Register a specialist from a local folder, or plan-only from a plan file."""
    with _errors():
        if path.is_file() and path.suffix == ".json":
            e = _reg(ctx).register_plan(name, path, directions=direction, languages=language, overwrite=overwrite)
        else:
            e = _reg(ctx).register_dir(
                name, path, base=base, plan=plan, directions=direction, languages=language, overwrite=overwrite
            )
    typer.echo(f"registered {e.name}: {_count(e.parameters)} parameters, {_human(e.weight_bytes)} at {e.path}")


@app.command("materialise")
def materialise(
    ctx: typer.Context,
    name: Name,
    plan: Annotated[Path, typer.Argument(help="plan.json to apply.")],
    base: Annotated[str | None, typer.Option(help="Base model folder or hub id (default: the plan's).")] = None,
    direction: Directions = None,
    language: Languages = None,
    overwrite: Overwrite = False,
) -> None:
    """Apply a plan to its base (cached by plan hash) and register the result."""
    with _errors():
        e = materialise_plan(
            _reg(ctx), name, plan, base=base, directions=direction, languages=language, overwrite=overwrite
        )
    typer.echo(f"materialised {e.name}: {_count(e.parameters)} parameters, {_human(e.weight_bytes)} at {e.path}")


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """Table of the registered specialists."""
    with _errors():
        entries = _reg(ctx).list()
    typer.echo(_table(entries) if entries else f"no specialists registered in {_reg(ctx).root}")


@app.command("show")
def show(ctx: typer.Context, name: str) -> None:
    """One entry as JSON (with bytes_saved)."""
    with _errors():
        typer.echo(_show(_reg(ctx).get(name)))


@app.command("remove")
def remove(ctx: typer.Context, name: str) -> None:
    """Unregister a specialist (its weights stay on disk)."""
    with _errors():
        e = _reg(ctx).remove(name)
    typer.echo(f"removed {name}" + (f" (weights left at {e.path})" if e else " (its entry was damaged)"))


@app.command("push")
def push(ctx: typer.Context, name: str, repo_id: str, private: bool = False) -> None:
    """Upload a specialist and its entry to a hub repo."""
    with _errors():
        where = hub.push(_reg(ctx), name, repo_id, private=private)
    typer.echo(f"pushed {name} to {repo_id}: {where}")


@app.command("pull")
def pull(
    ctx: typer.Context,
    repo_id: str,
    name: str,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    overwrite: bool = False,
) -> None:
    """Download a specialist from a hub repo and register it."""
    with _errors():
        e = hub.pull(_reg(ctx), repo_id, name, revision=revision, overwrite=overwrite)
    typer.echo(f"pulled {repo_id} as {e.name} into {e.path}")


if __name__ == "__main__":
    app()
