"""docker-compose.yml, without a Docker engine: interpolated the way Compose does it, validated against the
Compose Specification's JSON schema (vendored by PyPI ``check-jsonschema``), and cross-checked against the
Dockerfile (targets, port), the gateway settings (MOE_* variables), the Prometheus config (promtool) and the
files it mounts from deploy/."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from importlib import resources
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

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[^}]+)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(ValueError):
    pass


def interpolate_str(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err},
    ${VAR:+alt}, ${VAR+alt}."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("plain"):
            return env.get(m.group("plain"), "")
        spec = m.group("braced")
        mm = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])(.*))?", spec, flags=re.S)
        assert mm, f"invalid interpolation ${{{spec}}}"
        name, colon, op, arg = mm.groups()
        value = env.get(name)
        is_set = value is not None and (value != "" or not colon)
        if op is None:
            return value or ""
        if op == "-":
            return value if is_set else interpolate_str(arg, env)
        if op == "+":
            return interpolate_str(arg, env) if is_set else ""
        if not is_set:
            raise MissingVariable(f"required variable {name} is missing a value: {arg}")
        return value

    return _VAR.sub(one, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())  # YAML anchors and merge keys resolved here
    return interpolate(raw, REQUIRED_ENV | (env or {}))


def required_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):?\?", COMPOSE.read_text()))


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


def test_required_variables_fail_loudly_and_are_documented():
    required = required_variables()
    assert required == set(REQUIRED_ENV)
    readme = (ROOT / "deploy" / "README.md").read_text()
    for name in required:
        with pytest.raises(MissingVariable, match=name):
            interpolate(yaml.safe_load(COMPOSE.read_text()), {k: v for k, v in REQUIRED_ENV.items() if k != name})
        with pytest.raises(MissingVariable):
            interpolate(yaml.safe_load(COMPOSE.read_text()), REQUIRED_ENV | {name: ""})  # `:?`: empty is missing
        assert name in readme, f"{name} is not explained in deploy/README.md"


def test_interpolation_follows_compose_rules():
    env = {"A": "a", "E": ""}
    assert interpolate_str("${A:-x} ${E:-x} ${E-x} ${U-x} $$A ${A:+y} ${U:+y}", env) == "a x  x $A y "
    with pytest.raises(MissingVariable, match="U is missing a value: say so"):
        interpolate_str("${U:?say so}", env)


@pytest.mark.parametrize(("service", "target"), GATEWAYS.items())
def test_gateway_services_build_the_dockerfile_targets(service, target):
    svc = compose()["services"][service]
    assert svc["build"] == {"context": ".", "target": target}
    assert target in [s.name for s in parse()[1]]
    assert svc["image"] == f"moe-specialists:{VERSION}-{target}"
    assert svc["profiles"] == [target]
    container_ports = {int(p.rsplit(":", 1)[1]) for p in svc["ports"]}
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
    volumes = compose({"MOE_REGISTRY_DIR": registry})["services"]["gateway-gpu"]["volumes"]
    assert f"{registry}:{registry}:ro" in volumes, "registry entries hold absolute paths: same path inside"


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
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_images_are_pinned():
    for name, svc in compose()["services"].items():
        tag = svc["image"].rpartition(":")[2]
        assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{name}: {svc['image']} is not pinned"


def test_prometheus_scrapes_the_gateway_and_its_config_is_valid():
    services = compose()["services"]
    config_mount = next(v for v in services["prometheus"]["volumes"] if "prometheus.yml" in v)
    host_path, container_path = config_mount.split(":")[:2]
    assert f"--config.file={container_path}" in services["prometheus"]["command"]
    config = yaml.safe_load((ROOT / host_path).read_text())
    (gateway_job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gateway"]
    (target,) = gateway_job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host == "gateway" and int(port) == int(services["gateway"]["environment"]["MOE_PORT"])
    promtool = need_tool("promtool", "Debian package `prometheus`")
    out = subprocess.run([promtool, "check", "config", str(ROOT / host_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_grafana_gets_the_datasource_and_dashboards():
    services = compose()["services"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("./"))
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert sorted(p.name for p in provisioning.iterdir()) == ["dashboards", "datasources"]
    assert services["grafana"]["depends_on"] == ["prometheus"]
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090" and "9090" in services["prometheus"]["ports"][0]
