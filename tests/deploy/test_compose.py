"""docker-compose.yml, without a Docker engine: rendered by Compose itself (``docker compose config``, the
Compose v2 CLI plugin, which interpolates, merges and normalises without a daemon; .ci/run installs it), with
the variables each test sets and nothing else; validated against the Compose Specification's JSON schema
(vendored by PyPI ``check-jsonschema``) and cross-checked against the Dockerfile (targets, port), the gateway
settings (MOE_* variables), the Prometheus config (promtool) and the files it mounts from deploy/."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from moe_specialists.service.settings import Settings
from tests.deploy.conftest import (
    BUNDLED_ENGINES,
    ROOT,
    VLLM_SHM_PER_ENGINE,
    compose_bytes,
    compose_seconds,
    env_of,
    need_module,
    need_tool,
    parse,
)

COMPOSE = ROOT / "docker-compose.yml"
GATEWAYS = {"gateway": "cpu", "gateway-gpu": "gpu"}  # service -> Dockerfile target
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "secret"}
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@functools.cache
def docker_compose() -> str:
    """The docker CLI with its Compose v2 plugin: skip when missing, but fail in CI (as ``need_tool``)."""
    docker = need_tool("docker", "the Docker CLI; `docker compose` is its Compose v2 plugin, see .ci/run")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        message = f"`docker compose` is not installed (the Compose v2 CLI plugin, see .ci/run): {version.stderr}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return docker


def render(env: dict[str, str]) -> subprocess.CompletedProcess:
    """``docker compose config`` of the file, every profile, with exactly ``env`` for interpolation (no .env
    file, none of this process's variables but what the CLI needs to run)."""
    docker = docker_compose()
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "DOCKER_CONFIG")}
    return subprocess.run(
        [docker, "compose", "--file", str(COMPOSE), "--project-directory", str(ROOT), "--env-file", os.devnull,
         "--profile", "*", "config", "--format", "json"],
        capture_output=True, text=True, env=keep | env, cwd=ROOT,
    )


@functools.cache
def _compose(env: tuple[tuple[str, str], ...]) -> str:
    out = render(dict(env))
    assert out.returncode == 0, out.stderr
    return out.stdout


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The file as Compose runs it (long syntax everywhere, paths absolute, sizes in bytes), with the required
    variables set and ``env``."""
    return json.loads(_compose(tuple(sorted((REQUIRED_ENV | (env or {})).items()))))


def required_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", COMPOSE.read_text()))


def volume(svc: dict[str, Any], target: str) -> dict[str, Any]:
    (found,) = [v for v in svc["volumes"] if v["target"] == target]
    return found


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MOE_REGISTRY_DIR": "/data/registry", "GATEWAY_PORT": "8080", "MOE_API_KEYS": '["k1"]', "HF_HUB_OFFLINE": "0"},
    ],
    ids=["defaults", "set"],
)
def test_valid_against_the_compose_specification(env):
    need_module("check_jsonschema", "check-jsonschema")
    import jsonschema

    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose(env)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_variables_reach_the_services():
    env = {"GATEWAY_PORT": "8080", "MOE_API_KEYS": '["k1"]', "HF_HUB_OFFLINE": "0", "MOE_REGISTRY_DIR": "/data/r"}
    services = compose(env)["services"]
    for name in GATEWAYS:
        assert [(p["published"], p["target"]) for p in services[name]["ports"]] == [("8080", 8000)]
        assert services[name]["environment"]["MOE_API_KEYS"] == '["k1"]'
        assert services[name]["environment"]["HF_HUB_OFFLINE"] == "0"
    assert services["gateway-gpu"]["environment"]["MOE_REGISTRY_DIR"] == "/data/r"
    defaults = compose()["services"]
    assert defaults["gateway"]["environment"]["HF_HUB_OFFLINE"] == "1"  # the cpu demo is offline by default
    assert defaults["gateway-gpu"]["environment"]["HF_HUB_OFFLINE"] == "0"  # the gpu one fetches from the hub
    assert defaults["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED_ENV["GRAFANA_ADMIN_PASSWORD"]


def test_required_variables_fail_loudly_and_are_documented():
    required = required_variables()
    assert required == set(REQUIRED_ENV)
    readme = (ROOT / "deploy" / "README.md").read_text()
    for name in required:
        others = {k: v for k, v in REQUIRED_ENV.items() if k != name}
        for env in (others, others | {name: ""}):  # `:?`: empty is missing too
            out = render(env)
            assert out.returncode != 0 and f"required variable {name} is missing a value" in out.stderr, out
        assert name in readme, f"{name} is not explained in deploy/README.md"


@pytest.mark.parametrize(("service", "target"), GATEWAYS.items())
def test_gateway_services_build_the_dockerfile_targets(service, target):
    svc = compose()["services"][service]
    assert svc["build"] == {"context": str(ROOT), "dockerfile": "Dockerfile", "target": target}
    assert target in [s.name for s in parse()[1]]
    assert svc["image"] == f"moe-specialists:{VERSION}-{target}"
    assert svc["profiles"] == [target]
    container_ports = {p["target"] for p in svc["ports"]}
    assert container_ports == {int(svc["environment"]["MOE_PORT"])} == {int(env_of(target)["MOE_PORT"])}
    assert svc["networks"]["default"]["aliases"] == ["gateway"]


@pytest.mark.parametrize("service", GATEWAYS)
def test_gateway_environment_is_read_by_the_settings(service, monkeypatch):
    env = compose({"MOE_REGISTRY_DIR": "/data/registry"})["services"][service]["environment"]
    fields = {f"MOE_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("MOE_") and k not in fields}
    assert not unknown, f"{sorted(unknown)} are not settings of service/settings.py"
    assert {k for k in env if not k.startswith("MOE_")} <= {"HF_HUB_OFFLINE"}
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    settings = Settings()
    assert settings.host == "0.0.0.0" and settings.api_keys == []


def test_gpu_profile_reserves_an_nvidia_gpu_for_the_gateway():
    services = compose()["services"]
    (device,) = services["gateway-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
    assert "deploy" not in services["gateway"]
    registry = "/data/registry"
    mount = volume(compose({"MOE_REGISTRY_DIR": registry})["services"]["gateway-gpu"], registry)
    assert mount["type"] == "bind" and mount["source"] == registry and mount["read_only"], (
        "registry entries hold absolute paths: the same path inside, read-only")


def test_compose_byte_values():
    assert compose_bytes("1gb") == compose_bytes("1g") == 2**30
    assert compose_bytes("512m") == 512 * 2**20 and compose_bytes(4096) == 4096 and compose_bytes("10b") == 10
    for bad in ("1.5g", "1gib", "g", ""):
        with pytest.raises(ValueError, match="Compose byte value"):
            compose_bytes(bad)


@pytest.mark.parametrize("service", GATEWAYS)
def test_gateway_services_have_room_in_dev_shm_for_their_engines(service):
    """Docker's default /dev/shm (64 MiB) is less than one vLLM engine asks for: the cpu profile serves the two
    bundled specialists in-process, the gpu profile one or more bigger engines."""
    svc = compose()["services"][service]
    assert "shm_size" in svc, f"{service}: no shm_size (Docker's default 64 MiB /dev/shm stops vLLM)"
    assert compose_bytes(svc["shm_size"]) >= BUNDLED_ENGINES * VLLM_SHM_PER_ENGINE


def test_compose_durations():
    assert compose_seconds("45s") == 45 and compose_seconds("1m30s") == 90 and compose_seconds("500ms") == 0.5
    for bad in ("45", "1m 30s", "s", "", "1d"):
        with pytest.raises(ValueError, match="Compose duration"):
            compose_seconds(bad)


@pytest.mark.parametrize("service", GATEWAYS)
def test_gateway_stop_grace_outlasts_its_drain(service, monkeypatch):
    """Docker kills a container 10 s after SIGTERM unless told otherwise: the gateway's drain must fit, with
    10 s to close the engines."""
    svc = compose()["services"][service]
    for key, value in svc["environment"].items():
        monkeypatch.setenv(key, str(value))
    drain = Settings().drain_timeout_s
    assert compose_seconds(svc.get("stop_grace_period", "10s")) >= drain + 10, f"{service}: drain {drain} s"


def test_bind_mounts_exist():
    for name, svc in compose()["services"].items():
        for mount in svc.get("volumes", []):
            if mount["type"] == "bind" and Path(mount["source"]).is_relative_to(ROOT):
                assert Path(mount["source"]).exists(), f"{name}: {mount['source']} does not exist"


def test_images_are_pinned():
    for name, svc in compose()["services"].items():
        tag = svc["image"].rpartition(":")[2]
        assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{name}: {svc['image']} is not pinned"


def test_prometheus_scrapes_the_gateway_and_its_config_is_valid():
    services = compose()["services"]
    config_mount = next(v for v in services["prometheus"]["volumes"] if v["target"].endswith("prometheus.yml"))
    host_path, container_path = Path(config_mount["source"]), config_mount["target"]
    assert host_path.is_relative_to(ROOT), f"{host_path}: not a file of this repository"
    assert f"--config.file={container_path}" in services["prometheus"]["command"]
    config = yaml.safe_load(host_path.read_text())
    (gateway_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gateway"]
    (target,) = gateway_job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "gateway" and int(port) == int(services["gateway"]["environment"]["MOE_PORT"])
    promtool = need_tool("promtool", "Debian package `prometheus`")
    out = subprocess.run([promtool, "check", "config", str(host_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_gets_the_datasource_and_dashboards():
    services = compose()["services"]
    mounts = {v["source"]: v["target"] for v in services["grafana"]["volumes"] if v["type"] == "bind"}
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts[str(provisioning)] == "/etc/grafana/provisioning"
    assert sorted(p.name for p in provisioning.iterdir()) == ["dashboards", "datasources"]
    assert list(services["grafana"]["depends_on"]) == ["prometheus"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert [p["target"] for p in services["prometheus"]["ports"]] == [9090]
