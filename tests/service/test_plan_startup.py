"""Start-up of specialists served from plans, on in-memory engines (tests/service/fake_engine.py: what is
checked here is the gateway's start-up and supervision, which needs no model; the plans, their bases, the
hash check and the views are real, on the tiny random Qwen3-MoE checkpoint). An unusable plan fails only its
specialist (reported in /readyz with the reason, its pairs served by the next capable one), the gateway
answers /healthz while a base is being hashed, sizes of a plan are absent until its check passed, and a
repaired base is served at the next restart. The real vLLM engine: tests/service/test_plan_serving.py."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from moe_specialists.models import plan_loading
from moe_specialists.models.apply import apply_plan
from moe_specialists.models.plan import Plan, plan_from_kept
from moe_specialists.models.registry.entries import weight_stats
from moe_specialists.models.tiny_translator import BUNDLED_MODEL_DIR
from moe_specialists.service.app import create_app
from moe_specialists.service.settings import Settings, SpecialistSpec
from tests.service.conftest import flip_last_byte, metric, states, wait_for
from tests.service.fake_engine import fake_engines

KEPT = [[0, 1, 2, 3, 4, 5], [0, 2, 4, 6]]


def plan_on_copy(model_dir, root, name: str) -> tuple[Plan, object]:
    """(plan saved as ROOT/NAME.json, its path) for KEPT on a copy of the tiny model at ROOT/NAME-base."""
    base = shutil.copytree(model_dir, root / f"{name}-base")
    plan = plan_from_kept(base, KEPT)
    path = root / f"{name}.json"
    plan.save(path)
    return plan, path


def settings(root, good, bad, **kw) -> Settings:
    """``multi`` (en, de, fr) from the good plan, ``en-de`` (en-de, en-zh) from the bad one."""
    return Settings(
        specialists=[SpecialistSpec(name="multi", path=str(good), languages=["en", "de", "fr"]),
                     SpecialistSpec(name="en-de", path=str(bad), directions=["en-de", "en-zh"])],
        views_dir=root / "views", max_model_len=512, health_interval_s=0.2, engine_restart_initial_delay_s=0.1,
        engine_restart_max_delay_s=0.5, **kw,
    )


def shard_of(plan: Plan, base) -> str:
    (shard,) = [name for name in plan.base.files if name.endswith(".safetensors")]
    return shard


def test_an_unusable_plan_fails_only_its_specialist_and_healthz_answers_while_hashing(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Hashing is made slow by monkeypatching ``check_base_files`` to wait for the test's event before it runs
    the real check: meanwhile the gateway is started and answers."""
    good_plan, good = plan_on_copy(tiny_model_dir, tmp_path, "good")
    bad_plan, bad = plan_on_copy(tiny_model_dir, tmp_path, "bad")
    shard = shard_of(bad_plan, tmp_path / "bad-base")
    flip_last_byte(tmp_path / "bad-base" / shard)
    hashing, release = threading.Event(), threading.Event()
    real = plan_loading.check_base_files

    def slow_check(*args, **kwargs):
        hashing.set()
        assert release.wait(30), "the test never released the hash check"
        return real(*args, **kwargs)

    monkeypatch.setattr(plan_loading, "check_base_files", slow_check)
    app = create_app(settings(tmp_path, good, bad, engine_max_restarts=1), engine_factory=fake_engines())
    with TestClient(app) as client:
        assert hashing.wait(10)
        began = time.monotonic()
        assert client.get("/healthz").status_code == 200
        r = client.get("/readyz")
        assert r.status_code == 503 and {s["state"] for s in r.json()["specialists"].values()} == {"starting"}
        assert time.monotonic() - began < 2, "the gateway did not answer while the base was hashed"
        assert metric(client, "moe_specialist_weight_bytes", absent=None, specialist="multi") is None
        assert {s["name"]: s["weight_bytes"] for s in client.get("/v1/specialists").json()} == \
            {"multi": None, "en-de": None}
        release.set()

        now = wait_for(client, lambda s: s["multi"]["state"] == "ready" and s["en-de"]["state"] == "given_up", 30,
                       "multi ready, en-de given up")
        error = now["en-de"]["error"]
        assert f"{shard} has sha256" in error and "the plan expects" in error and str(bad) in error, error
        assert now["en-de"]["restarts"] == 1  # engine_max_restarts: rechecked once, then given up
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert client.get("/healthz").status_code == 200

        # the sliced copy's sizes for the good plan, none for the bad one
        params, nbytes = weight_stats(apply_plan(good_plan, tmp_path / "copy"))
        assert metric(client, "moe_specialist_weight_bytes", specialist="multi") == nbytes
        assert metric(client, "moe_specialist_parameters", specialist="multi") == params
        assert metric(client, "moe_specialist_weight_bytes", absent=None, specialist="en-de") is None
        assert metric(client, "moe_specialist_bytes_saved_ratio", absent=None, specialist="en-de") is None
        served = {s["name"]: s for s in client.get("/v1/specialists").json()}
        assert served["multi"]["weight_bytes"] == nbytes and served["en-de"]["weight_bytes"] is None
        assert served["multi"]["path"].startswith(str(tmp_path / "views"))

        # en-de falls to the multilingual specialist; en-zh has no other specialist: 503 saying why
        r = client.post("/v1/translate", json={"text": "Hello world", "source": "en", "target": "de"})
        item = r.json()["translations"][0]
        assert r.status_code == 200 and (item["specialist"], item["route"]) == ("multi", "multilingual"), r.text
        r = client.post("/v1/translate", json={"text": "Hello world", "source": "en", "target": "zh"})
        assert r.status_code == 503 and "Retry-After" not in r.headers, r.text
        assert "'en-de' is given up" in r.json()["error"] and f"{shard} has sha256" in r.json()["error"]
        assert metric(client, "moe_engine_failures_total", specialist="en-de") == 2


def test_a_repaired_base_is_served_at_the_next_restart(tiny_model_dir, tmp_path):
    good_plan, good = plan_on_copy(tiny_model_dir, tmp_path, "good")
    bad_plan, bad = plan_on_copy(tiny_model_dir, tmp_path, "bad")
    shard = tmp_path / "bad-base" / shard_of(bad_plan, tmp_path / "bad-base")
    original = flip_last_byte(shard)
    app = create_app(settings(tmp_path, good, bad, engine_max_restarts=100), engine_factory=fake_engines())
    with TestClient(app) as client:
        wait_for(client, lambda s: s["en-de"]["state"] == "failed" and s["en-de"]["restarts"] >= 2, 30,
                 "en-de failed and rechecked")
        shard.write_bytes(original)  # the user puts the right shard back
        now = wait_for(client, lambda s: s["en-de"]["state"] == "ready", 30, "en-de served after the repair")
        assert now["en-de"]["error"] is None
        _, nbytes = weight_stats(apply_plan(bad_plan, tmp_path / "copy"))
        assert metric(client, "moe_specialist_weight_bytes", specialist="en-de") == nbytes
        r = client.post("/v1/translate", json={"text": "Hello world", "source": "en", "target": "de"})
        assert r.status_code == 200 and r.json()["translations"][0]["route"] == "exact", r.text


def unreadable(plan: Plan, path, root) -> str:
    path.write_text("{ not a plan")
    return "cannot be served"


def missing_shard(plan: Plan, path, root) -> str:
    shard = shard_of(plan, root / "bad-base")
    (root / "bad-base" / shard).unlink()
    return f"{shard} is missing"


def no_base_folder(plan: Plan, path, root) -> str:
    shutil.rmtree(root / "bad-base")
    return "is not a local folder"


def another_model(plan: Plan, path, root) -> str:
    plan.base.id = str(BUNDLED_MODEL_DIR)  # a gpt-oss checkpoint with 32 experts a layer
    plan.save(path)
    return "made for another model"


@pytest.mark.parametrize("spoil", [unreadable, missing_shard, no_base_folder, another_model])
def test_every_unusable_plan_is_reported_and_does_not_stop_the_gateway(tiny_model_dir, tmp_path, spoil):
    _, good = plan_on_copy(tiny_model_dir, tmp_path, "good")
    bad_plan, bad = plan_on_copy(tiny_model_dir, tmp_path, "bad")
    expected = spoil(bad_plan, bad, tmp_path)
    app = create_app(settings(tmp_path, good, bad, engine_max_restarts=0), engine_factory=fake_engines())
    with TestClient(app) as client:
        now = wait_for(client, lambda s: s["en-de"]["state"] == "given_up" and s["multi"]["state"] == "ready", 30,
                       "en-de given up, multi ready")
        assert expected in now["en-de"]["error"] and "PlanUnusable" in now["en-de"]["error"], now["en-de"]
        assert states(client)["multi"]["error"] is None
        assert client.get("/readyz").status_code == 200
