"""The distribution as users get it: a real (non-editable) wheel of the checkout, installed with --no-deps into
a fresh virtual environment that sees this environment's dependencies (a .pth listing its site-packages
folders; their own .pth files, such as the editable install's finder, are not run, so the checkout stays
invisible). Checked in a subprocess run outside the checkout: the four subpackages import from the wheel, no
generic top-level name is installed, every committed file of the package folders (the bundled model and its
plans included) is inside the wheel, the console script runs, and vLLM's own plugin loader finds our plugin,
which registers the pruned architectures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "moe_specialists"
FOLDERS = ("cli", "models", "pruning", "service")  # each installs as moe_specialists.<folder>
GENERIC = ("models", "pruning", "service", "cli")  # must not become top-level names
PRUNED_ARCHITECTURES = {"PrunedGptOssForCausalLM", "PrunedQwen3MoeForCausalLM"}

pytestmark = pytest.mark.timeout(600)


def checkout_files() -> list[str]:
    """Files of the checkout (committed, or new and not ignored), relative to its root."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{cmd[:4]} exited with {proc.returncode}:\n{tail}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built by the project's build backend from a copy of the checkout (no build/ or egg-info
    written into the checkout); the backend must come from this environment (no download)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for rel in checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--check-build-dependencies",
         "--no-index", "-q", "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the wheel installed, then given this environment's site-packages folders."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)])
    python = env_dir / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
         str(wheel)])
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    assert deps, sys.path
    (site / "zz-dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return env_dir


CHECK = r"""
import importlib, importlib.metadata, importlib.util, json, os, sys

from vllm.plugins import load_general_plugins, load_plugins_by_group
from vllm import ModelRegistry

namespace, generic = sys.argv[1], sys.argv[2].split(",")
files = {sub: importlib.import_module(f"{namespace}.{sub}").__file__ for sub in ("pruning", "models", "service", "cli")}
plugins = load_plugins_by_group("vllm.general_plugins")
plugin = plugins.get("moe_specialists")
before = set(ModelRegistry.get_supported_archs())
load_general_plugins()
after = set(ModelRegistry.get_supported_archs())
dist = importlib.metadata.distribution("moe-specialists")
print(json.dumps({
    "files": files,
    "generic": {name: importlib.util.find_spec(name) is not None for name in generic},
    "plugin": None if plugin is None else f"{plugin.__module__}:{plugin.__qualname__}",
    "plugin_file": None if plugin is None else sys.modules[plugin.__module__].__file__,
    "registered": sorted(after - before),
    "lazy_modules": {a: getattr(ModelRegistry.models.get(a), "module_name", None) for a in after - before},
    "vllm_models_file": importlib.util.find_spec(f"{namespace}.models.vllm_models").origin,
    "dist_files": str(dist.locate_file("")),
    "checkout_on_path": [p for p in sys.path if p and os.path.realpath(p) == os.path.realpath(sys.argv[3])],
    "editable_finders": [p for p in sys.path if "__editable__" in p]
    + [type(f).__module__ for f in sys.meta_path if "editable" in type(f).__module__],
}))
"""


@pytest.fixture(scope="module")
def installed(venv, tmp_path_factory) -> dict:
    """What the fresh venv's python sees, run from a folder outside the checkout."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VLLM_PLUGINS", "PYTHONHOME")}
    env |= {"HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    proc = run([str(venv / "bin" / "python"), "-c", CHECK, NAMESPACE, ",".join(GENERIC), str(ROOT)], cwd=cwd,
               env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_wheel_holds_one_top_level_name_and_every_package_file(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
        recorded = {line.split(",")[0] for line in whl.read(record).decode().splitlines() if line}
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points_text = whl.read(entry_points).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: Apache-2.0" in whl.read(metadata).decode().splitlines()
    assert recorded == names
    dist_info = record.split("/")[0]
    assert {n.split("/")[0] for n in names} == {NAMESPACE, dist_info}
    assert not any(n.split("/")[0] in GENERIC for n in recorded)
    expected = {f"{NAMESPACE}/{rel}" for rel in checkout_files() if rel.split("/")[0] in FOLDERS}
    assert f"{NAMESPACE}/models/tiny_translator/model.safetensors.index.json" in expected
    assert f"{NAMESPACE}/models/tiny_translator/plans/en-de.json" in expected
    assert f"{NAMESPACE}/pruning/sample/dev/en.txt" in expected, "--data sample ships in the wheel"
    assert f"{NAMESPACE}/pruning/recipes/fsdp.json" in expected, "the --sharding-config defaults ship in the wheel"
    assert {f"{dist_info}/licenses/LICENSE", f"{dist_info}/licenses/NOTICE"} <= names
    missing = sorted(expected - names)
    assert not missing, f"files of the package folders missing from the wheel (package-data?): {missing}"
    extra = sorted(n for n in names - expected if not n.startswith(dist_info))
    assert not extra, f"files in the wheel that are not in the checkout: {extra}"
    assert "moe-specialists = moe_specialists.cli:app" in entry_points_text
    assert "moe_specialists = moe_specialists.models.vllm_plugin:register" in entry_points_text


def test_subpackages_import_from_the_wheel(installed, venv):
    site = str(venv.resolve())
    for sub, file in installed["files"].items():
        assert Path(file).resolve().is_relative_to(site), f"{NAMESPACE}.{sub} comes from {file}, not the wheel"
        assert not Path(file).resolve().is_relative_to(ROOT), file
    assert Path(installed["dist_files"]).resolve().is_relative_to(site), installed["dist_files"]
    assert installed["checkout_on_path"] == [] and installed["editable_finders"] == []


def test_no_generic_top_level_names(installed):
    assert installed["generic"] == dict.fromkeys(GENERIC, False)


def test_bundled_model_files_are_installed(installed):
    from moe_specialists.models.tiny_translator import __file__ as source_init

    installed_dir = Path(installed["files"]["models"]).parent / "tiny_translator"
    source_dir = Path(source_init).parent
    for rel in ("config.json", "tokenizer.json", "chat_template.jinja", "model.safetensors.index.json",
                "plans/en-de.json", "plans/multilingual.json"):
        assert (installed_dir / rel).read_bytes() == (source_dir / rel).read_bytes(), rel
    index = json.loads((installed_dir / "model.safetensors.index.json").read_text())
    for shard in set(index["weight_map"].values()):
        assert (installed_dir / shard).stat().st_size == (source_dir / shard).stat().st_size, shard


def test_console_script_runs_from_the_wheel(venv, tmp_path):
    script = venv / "bin" / "moe-specialists"
    assert script.is_file()
    assert script.read_text().splitlines()[0] == f"#!{venv / 'bin' / 'python'}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_HUB_OFFLINE": "1"}
    out = run([str(script), "--help"], cwd=tmp_path, env=env).stdout
    for command in ("serve", "registry", "prune"):
        assert command in out, out


def test_vllm_plugin_loader_finds_and_runs_the_plugin(installed, venv):
    assert installed["plugin"] == "moe_specialists.models.vllm_plugin:register"
    assert Path(installed["plugin_file"]).resolve().is_relative_to(venv.resolve())
    assert set(installed["registered"]) == PRUNED_ARCHITECTURES
    assert installed["lazy_modules"] == dict.fromkeys(PRUNED_ARCHITECTURES, f"{NAMESPACE}.models.vllm_models")
    assert Path(installed["vllm_models_file"]).resolve().is_relative_to(venv.resolve())
