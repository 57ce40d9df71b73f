"""Kubernetes manifests: built by the real kustomize (`kubectl kustomize`), every object validated against the
Kubernetes OpenAPI schemas with kubernetes-validate (PyPI; schemas bundled, offline, strict: unknown fields are
errors), and cross-checked: selectors match pods, probes and ports match the gateway's settings and the image,
the routing ConfigMap is a valid MOE_SPECIALISTS whose URLs are the backends' Services, GPUs are requested."""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from moe_specialists.service.settings import Settings
from tests.deploy.conftest import (
    BUNDLED_ENGINES,
    ROOT,
    VLLM_SHM_PER_ENGINE,
    env_of,
    k8s_quantity_bytes,
    need_module,
    need_tool,
    stage,
)

K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release still commonly run, and the newest the schemas know.
VERSIONS = ["1.30.0", "1.34.0"]


@cache
def build(path: Path = K8S) -> list[dict[str, Any]]:
    kubectl = need_tool("kubectl", "kubectl ships with the CI image; kustomize is built into it")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def objects(kind: str, docs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [d for d in (docs or build()) if d["kind"] == kind]


def one(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [d for d in objects(kind) if d["metadata"]["name"] == name or d["metadata"]["name"].startswith(name + "-")]
    return obj


def gateway_settings_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for cm in objects("ConfigMap"):
        env |= cm["data"]
    return env


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(version):
    kubernetes_validate = need_module("kubernetes_validate", "kubernetes-validate")
    docs = build()
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "Service", "ConfigMap", "PersistentVolumeClaim"}
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {e.message} at {list(e.path)}"
            )


def test_everything_lands_in_one_namespace():
    docs = build()
    (ns,) = objects("Namespace")
    assert all(d["metadata"].get("namespace") == ns["metadata"]["name"] for d in docs if d["kind"] != "Namespace")


def test_services_select_pods_of_a_deployment_and_target_named_ports():
    deployments = objects("Deployment")
    for svc in objects("Service"):
        selector = svc["spec"]["selector"]
        matches = [d for d in deployments if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {len(matches)} Deployments"
        ports = {
            p["name"]: p["containerPort"]
            for c in matches[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{svc['metadata']['name']}: no container port {port['targetPort']}"
    for d in deployments:
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_gateway_is_replicated_and_probed_and_shares_its_state():
    gw = one("Deployment", "gateway")
    assert gw["spec"]["replicas"] >= 2
    pod = gw["spec"]["template"]["spec"]
    # Its one state, the glossaries, on a claim every replica can write, mounted where the image keeps it.
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert list(claims.values()) == ["gateway-state"]
    assert one("PersistentVolumeClaim", "gateway-state")["spec"]["accessModes"] == ["ReadWriteMany"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    for target in ("cpu", "gpu"):  # the image's XDG_STATE_HOME: MOE_STATE_DIR's default is under it
        env = " ".join(rest for keyword, rest in stage(target).instructions if keyword == "ENV")
        assert [mounts[name] for name in claims] == re.findall(r"XDG_STATE_HOME=(\S+)", env)
    (c,) = pod["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = gateway_settings_env()
    (port,) = c["ports"]
    assert port["containerPort"] == int(env["MOE_PORT"]) == 8000  # EXPOSE 8000 in the Dockerfile
    assert env["MOE_HOST"] == "0.0.0.0"
    pdb = one("PodDisruptionBudget", "gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= gw["spec"]["template"]["metadata"]["labels"].items()
    refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in c["envFrom"]}
    names = {cm["metadata"]["name"] for cm in objects("ConfigMap")}
    assert names <= refs, f"ConfigMaps {names - refs} are not used by the gateway"


def test_gateway_grace_period_covers_pre_stop_drain_and_close(monkeypatch):
    """The kubelet runs preStop, sends SIGTERM, and SIGKILLs after terminationGracePeriodSeconds (counted from
    the start of preStop): the pause, the gateway's drain (MOE_DRAIN_TIMEOUT_S) and 10 s to close must fit."""
    pod = one("Deployment", "gateway")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    for key, value in gateway_settings_env().items():
        monkeypatch.setenv(key, value)
    drain = Settings().drain_timeout_s
    assert pod.get("terminationGracePeriodSeconds", 30) >= pause + drain + 10, (pause, drain)


def test_gateway_configmaps_are_settings_the_gateway_reads(monkeypatch):
    """Every key is a MOE_* variable the settings know (or a library's), and together they load."""
    env = gateway_settings_env()
    fields = {f"MOE_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("MOE_") and k not in fields}
    assert not unknown, f"{sorted(unknown)} are not settings of service/settings.py"
    assert {k for k in env if not k.startswith("MOE_")} <= {"HF_HUB_OFFLINE"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.port == 8000 and len(settings.specialists) >= 1
    assert all(spec.remote for spec in settings.specialists), "scale-out: every specialist is a vLLM backend"


def test_routing_table_points_at_the_backend_services():
    specs = json.loads(gateway_settings_env()["MOE_SPECIALISTS"])
    services = {s["metadata"]["name"]: s for s in objects("Service")}
    backends = {
        d["spec"]["template"]["metadata"]["labels"]["moe-specialists/specialist"]: d
        for d in objects("Deployment")
        if d["metadata"]["name"].startswith("vllm-")
    }
    assert sorted(backends) == sorted(s["name"] for s in specs), "one backend Deployment per routed specialist"
    for spec in specs:
        url = urlparse(spec["path"])
        assert url.hostname in services, f"{spec['name']}: no Service {url.hostname}"
        assert url.port in [p["port"] for p in services[url.hostname]["spec"]["ports"]]
        pod_labels = backends[spec["name"]]["spec"]["template"]["metadata"]["labels"]
        assert services[url.hostname]["spec"]["selector"].items() <= pod_labels.items()
        # The backend serves the model under the name the gateway asks for.
        (c,) = backends[spec["name"]]["spec"]["template"]["spec"]["containers"]
        assert "--served-model-name=$(SPECIALIST)" in c["args"] and spec["served_model_name"] == spec["name"]


def test_each_backend_gets_a_gpu_on_a_gpu_node():
    for d in objects("Deployment"):
        if not d["metadata"]["name"].startswith("vllm-"):
            continue
        pod = d["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert c["image"].endswith("-gpu")
        assert c["command"] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["httpGet"]["path"] == "/health"
        # $(SPECIALIST) comes from the pod's specialist label: the one the Service selects on.
        (env,) = [e for e in c["env"] if e["name"] == "SPECIALIST"]
        label = env["valueFrom"]["fieldRef"]["fieldPath"].removeprefix("metadata.labels['").removesuffix("']")
        assert label in d["spec"]["template"]["metadata"]["labels"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims <= {p["metadata"]["name"] for p in objects("PersistentVolumeClaim")}


def test_pods_run_as_the_images_non_root_user():
    for d in objects("Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            if c["securityContext"].get("readOnlyRootFilesystem"):
                # Writable where the image keeps caches (HF_HOME, XDG_CACHE_HOME) and temporary files.
                mounts = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
                target = "gpu" if c["image"].endswith("-gpu") else "cpu"
                env = env_of(target)
                for path in ("/tmp", env["HF_HOME"], env["XDG_CACHE_HOME"]):
                    assert any(path == m or path.startswith(m + "/") for m in mounts), f"{c['name']}: {path}"


def test_scrape_annotations_match_the_metrics_port():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [objects("Namespace")[0]["metadata"]["name"]]
    for d in objects("Deployment"):
        notes = d["spec"]["template"]["metadata"]["annotations"]
        ports = [p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"] for p in c["ports"]]
        assert notes["prometheus.io/scrape"] == "true" and int(notes["prometheus.io/port"]) in ports
        assert notes["prometheus.io/path"] == "/metrics"


def test_servicemonitor_component_selects_the_services(tmp_path):
    """The optional Prometheus Operator component, added by an overlay as deploy/README.md shows."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(K8S, overlay)],
                "components": [os.path.relpath(K8S / "components" / "servicemonitor", overlay)],
            }
        )
    )
    docs = build(overlay)
    (monitor,) = objects("ServiceMonitor", docs)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in objects("Service", docs) if selector.items() <= s["metadata"].get("labels", {}).items()]
    assert {s["metadata"]["name"] for s in selected} == {s["metadata"]["name"] for s in objects("Service", docs)}
    port_names = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert all(e["port"] in port_names and e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])


def test_k8s_quantities_in_bytes():
    assert k8s_quantity_bytes("1Gi") == 1073741824
    assert k8s_quantity_bytes("160Mi") == 167772160
    assert k8s_quantity_bytes("512M") == 512000000
    assert k8s_quantity_bytes(1024) == 1024
    for bad in ("1GB", "1.5Gi", "Gi", "-1Mi"):
        with pytest.raises(ValueError, match="Kubernetes byte quantity"):
            k8s_quantity_bytes(bad)


@pytest.mark.parametrize("name", ["gateway", "vllm-en-de", "vllm-de-en"])
def test_vllm_pods_get_an_in_memory_dev_shm(name):
    """vLLM's engines share tensors through /dev/shm; the runtime's default is 64 MiB, too small for one engine.
    The gateway runs in-process engines when MOE_SPECIALISTS names local folders (the cpu image's default: the
    bundled specialists), so it gets room for those; a backend runs one (bigger, GPU) engine."""
    pod = one("Deployment", name)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory", "a disk-backed emptyDir is no shared memory"
    size = k8s_quantity_bytes(volume["emptyDir"]["sizeLimit"])
    engines = BUNDLED_ENGINES if name == "gateway" else 1
    assert size >= engines * VLLM_SHM_PER_ENGINE
    # Memory-backed: what is written there counts against the container's memory limit.
    assert size < k8s_quantity_bytes(c["resources"]["limits"]["memory"])
