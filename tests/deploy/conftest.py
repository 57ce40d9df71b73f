"""Shared helpers of the deployment tests: repository paths, YAML/JSON loaders, the dashboards' queries, a
Dockerfile parser, and ``need_tool`` (a missing tool skips here but fails in CI, where .ci/run installs it)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
# What Grafana puts in place of its variables when every value is selected (the dashboards' allValue).
GRAFANA_VARIABLES = {"__rate_interval": "1m", "specialist": ".*", "direction": ".*", "model_name": ".*"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need_tool(name: str, how: str) -> str:
    """Path of an executable (the venv's bin first): skip when missing, but fail in CI."""
    found = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if found:
        return found
    message = f"{name} is not installed ({how})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def need_module(name: str, package: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        message = f"python package {package} is not installed (it belongs in the test extra)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# What one in-process vLLM CPU engine asks of /dev/shm (measured: it refuses to start below), and how many the
# cpu image starts with no configuration (the bundled tiny translator's plans: en-de and multilingual).
VLLM_SHM_PER_ENGINE = 160 * 2**20
BUNDLED_ENGINES = 2

_K8S_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}
_COMPOSE_UNITS = {"b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


def k8s_quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes byte quantity ("1Gi", "512M", "1024") in bytes."""
    m = re.fullmatch(r"(\d+)([kMGT]i?|Ki)?", str(quantity))
    if not m or (m.group(2) or "") not in _K8S_SUFFIXES:
        raise ValueError(f"not a Kubernetes byte quantity: {quantity!r} (e.g. 512Mi, 1Gi, 1G)")
    return int(m.group(1)) * _K8S_SUFFIXES[m.group(2) or ""]


def compose_bytes(size: str | int) -> int:
    """A Compose byte value ("1gb", "512m", 1024) in bytes (Compose's units are powers of 1024)."""
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", str(size).strip().lower())
    if not m or m.group(2) not in _COMPOSE_UNITS | {"": 1}:
        raise ValueError(f"not a Compose byte value: {size!r} (e.g. 512m, 1gb)")
    return int(m.group(1)) * _COMPOSE_UNITS.get(m.group(2), 1)


_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}


def compose_seconds(duration: str) -> float:
    """A Compose duration ("45s", "1m30s", "500ms") in seconds: a sequence of <number><unit>, units us ms s m h."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Compose duration: {duration!r} (e.g. 45s, 1m30s)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def load_yaml_all(path: Path) -> list[Any]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def load_yaml(path: Path) -> Any:
    (doc,) = load_yaml_all(path)
    return doc


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those nested in collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str) -> str:
    """A dashboard expression as Grafana sends it with every variable at "All"."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {expr!r}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(id, PromQL) for every target of every panel: id = file/panel title/refId."""
    out = []
    for path in DASHBOARDS:
        for panel in all_panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                out.append((f"{path.stem}/{panel['title']}/{target['refId']}", target["expr"]))
    return out


def variable_queries() -> list[tuple[str, str, str]]:
    """(id, metric, label) of every ``label_values(metric, label)`` template variable."""
    out = []
    for path in DASHBOARDS:
        for var in load_dashboard(path).get("templating", {}).get("list", []):
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)", query)
            assert m, f"{path.name}: variable {var['name']} is not label_values(metric, label): {query!r}"
            out.append((f"{path.stem}/{var['name']}", m.group(1), m.group(2)))
    return out


# ---- the Dockerfile, parsed (no Docker engine here) ----


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [a for k, a in self.instructions if k == keyword]


def parse() -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) of the Dockerfile: continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", DOCKERFILE.read_text())
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), " ".join(rest.split())
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest, flags=re.IGNORECASE)
            stages.append(Stage(m.group(2), m.group(1)))
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return global_args, stages


def stage(name: str) -> Stage:
    (found,) = [s for s in parse()[1] if s.name == name]
    return found


def chain(name: str) -> list[Stage]:
    """A stage and the stages it is built FROM, nearest first."""
    stages = {s.name: s for s in parse()[1]}
    out = [stages[name]]
    while out[-1].base in stages:
        out.append(stages[out[-1].base])
    return out


def env_of(name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for s in reversed(chain(name)):
        for value in s.args("ENV"):
            env |= dict(item.split("=", 1) for item in shlex.split(value))
    return env
