"""Helpers of tests/deploy/test_image.py: the docker CLI with timeouts, plain HTTP and waiting, Prometheus's
text format, the debootstrapped stand-in base image (Docker Hub cannot be reached here), and the compose
override that puts the stack on the host network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, load_yaml, need_tool

COMPOSE_FILE = ROOT / "docker-compose.yml"
STANDIN_LABEL = "org.moe-specialists.stand-in"
DEBIAN_SUITE, DEBIAN_MIRROR = "bookworm", "http://deb.debian.org/debian"
STANDIN_PACKAGES = "python3.11,python3.11-venv,python3-pip,ca-certificates"
PULL_TIMEOUT = 120
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def docker(*args: str, timeout: float = 120, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check:
        assert out.returncode == 0, f"docker {' '.join(args)}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def image_labels(name: str) -> dict[str, str] | None:
    """The labels of a local image, None when there is no such image."""
    out = docker("image", "inspect", "--format", "{{json .Config.Labels}}", name, check=False)
    return None if out.returncode else (json.loads(out.stdout) or {})


def try_pull(name: str) -> str | None:
    """Pull an image; None on success, else why not."""
    try:
        out = docker("pull", name, check=False, timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"no answer in {PULL_TIMEOUT} s"
    return None if out.returncode == 0 else (out.stderr.strip().splitlines() or ["?"])[-1]


def http(url: str, data: Any = None, timeout: float = 60) -> tuple[int, str]:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    """Call ``probe`` until it returns something truthy (its value is returned); fail after ``timeout``."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, ValueError) as e:  # connection refused, reset, bad JSON while starting
            value, last = None, e
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last error: {last})")


def metric_values(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of one metric in Prometheus text format."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(\{{[^}}]*\}})?\s+(\S+)", line)
        if m:
            out[m.group(1) or ""] = float(m.group(2))
    return out


def build_standin_base(name: str, workdir: Path) -> None:
    """Debian bookworm (debootstrap, minbase) with python3.11, venv and pip, imported as image ``name``."""
    debootstrap = need_tool("debootstrap", "Debian package debootstrap; .ci/run installs it")
    rootfs = workdir / "rootfs"
    out = subprocess.run(
        [debootstrap, "--variant=minbase", f"--include={STANDIN_PACKAGES}", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, f"debootstrap failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    # The host's CA bundle: it holds whatever authority the machine's TLS to the package registries needs.
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt")
    (rootfs / "usr" / "bin" / "python").symlink_to("python3.11")
    for cache in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        cache.unlink()
    changes = [
        f"LABEL {STANDIN_LABEL}=debootstrap-{DEBIAN_SUITE}-minbase-python3.11",
        f"ENV PATH={DEFAULT_PATH}",
        "ENV LANG=C.UTF-8",
        'CMD ["python3"]',
    ]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
    try:
        imported = subprocess.run(
            ["docker", "import", *[a for c in changes for a in ("--change", c)], "-", name],
            stdin=tar.stdout, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    finally:
        tar.stdout.close()
        tar.wait(timeout=60)
    assert imported.returncode == 0 and tar.returncode == 0, imported.stderr
    shutil.rmtree(rootfs, ignore_errors=True)


class ResetList(list):
    """Compose's ``!reset []``: drop the attribute of the base file."""


class ResetMap(dict):
    """Compose's ``!reset {}``."""


class Override(list):
    """Compose's ``!override [...]``: replace the base file's list instead of merging."""


yaml.SafeDumper.add_representer(ResetList, lambda d, v: d.represent_sequence("!reset", []))
yaml.SafeDumper.add_representer(ResetMap, lambda d, v: d.represent_mapping("!reset", {}))
yaml.SafeDumper.add_representer(Override, lambda d, v: d.represent_sequence("!override", list(v)))


def host_network_override(gateway_port: int, prometheus_port: int, prometheus_config: Path) -> dict[str, Any]:
    """Compose override: both services on the host network, bound to 127.0.0.1 (the compose file's network
    aliases and published ports dropped), Prometheus scraping the gateway there."""
    base = load_yaml(COMPOSE_FILE)["services"]
    prometheus_volumes = [v for v in base["prometheus"]["volumes"] if not v.startswith("./")]
    return {
        "services": {
            "gateway": {
                "network_mode": "host",
                "networks": ResetMap(),
                "ports": ResetList(),
                "environment": {"MOE_HOST": "127.0.0.1", "MOE_PORT": str(gateway_port)},
            },
            "prometheus": {
                "network_mode": "host",
                "ports": ResetList(),
                "command": Override(
                    [*base["prometheus"]["command"], f"--web.listen-address=127.0.0.1:{prometheus_port}"]
                ),
                "volumes": Override([f"{prometheus_config}:/etc/prometheus/prometheus.yml:ro", *prometheus_volumes]),
            },
        }
    }
