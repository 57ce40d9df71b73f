"""Layers import downward only: models <- pruning, models <- service, cli on top; benchmarks use the package.

Two views: what a fresh interpreter has in ``sys.modules`` after importing a module (lazy imports that run at
import time included), and every import statement in the source (function-level ones included).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def loaded_after(module: str) -> list[str]:
    """Names in ``sys.modules`` after ``import module`` in a fresh interpreter."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _under(names: list[str], package: str) -> list[str]:
    return [n for n in names if n == package or n.startswith(package + ".")]


def imported_names(path: Path) -> set[str]:
    """Every module an ``import`` / ``from ... import`` statement of ``path`` names (anywhere in the file)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = sorted(n for n in imported_names(path) if n.startswith(forbidden))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


def test_offenders_sees_function_level_imports(tmp_path: Path) -> None:
    """The static check itself: a lazy import inside a function counts."""
    (tmp_path / "m.py").write_text("def f():\n    from moe_specialists.pruning.plan import make_plan\n")
    assert imported_names(tmp_path / "m.py") == {"moe_specialists.pruning.plan"}


@pytest.mark.parametrize("module", ["moe_specialists.service", "moe_specialists.service.app"])
def test_the_gateway_needs_no_pruning(module: str) -> None:
    assert _under(loaded_after(module), "moe_specialists.pruning") == []


def test_prompts_import_no_torch() -> None:
    loaded = loaded_after("moe_specialists.models.prompts")
    assert "torch" not in loaded and "transformers" not in loaded


@pytest.mark.parametrize("module", ["entries", "store", "materialise", "hub"])
def test_registry_imports_no_pruning_or_service(module: str) -> None:
    loaded = loaded_after(f"moe_specialists.models.registry.{module}")
    assert _under(loaded, "moe_specialists.pruning") == [] and _under(loaded, "moe_specialists.service") == []
    assert "torch" not in loaded  # checkpoint, plan and registry read JSON and headers only


REGISTRY_ORDER = ["errors", "entries", "store", "materialise", "hub"]  # each imports only those before it


def test_registry_modules_import_downward() -> None:
    for i, module in enumerate(REGISTRY_ORDER):
        later = tuple(f"moe_specialists.models.registry.{m}" for m in REGISTRY_ORDER[i + 1 :])
        names = imported_names(ROOT / "models" / "registry" / f"{module}.py")
        assert [n for n in names if n.startswith(later)] == [], module


def test_modeling_pruned_is_self_contained() -> None:
    """It is copied alone into every specialist folder (trust_remote_code): torch, transformers, safetensors
    and the standard library only."""
    allowed = {"torch", "transformers", "safetensors", "__future__", *sys.stdlib_module_names}
    names = imported_names(ROOT / "models" / "modeling_pruned.py")
    assert sorted(n for n in names if n.split(".")[0] not in allowed) == []


def test_models_import_neither_pruning_nor_service() -> None:
    assert offenders("models", ("moe_specialists.pruning", "moe_specialists.service")) == {}


def test_pruning_imports_no_service() -> None:
    assert offenders("pruning", ("moe_specialists.service",)) == {}


def test_service_imports_no_pruning() -> None:
    assert offenders("service", ("moe_specialists.pruning",)) == {}


def test_benchmarks_import_no_tests() -> None:
    assert offenders("benchmarks", ("tests",)) == {}
