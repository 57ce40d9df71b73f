"""``registry`` CLI through typer's CliRunner: add/list/show/remove, push/pull (hub stand-in, the hub is
unreachable here), errors as one line with exit code 2, and mounting under a parent app."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import pytest
import typer
from typer.testing import CliRunner

from moe_specialists.models.registry.store import REGISTRY_ENV
from moe_specialists.models.registry_cli import app
from tests.models.registry.fake_hub import FakeHub
from tests.models.registry.tiny import PER_EXPERT, save_tiny, tiny_plan

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny-cli")
    save_tiny(root / "spec", [8, 4])
    save_tiny(root / "base", None)
    return root / "spec", root / "base"


def cli(root: Path, *args: object):
    return runner.invoke(app, ["--root", str(root), *map(str, args)])


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_add_list_show_remove(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec, base = tiny
    reg = tmp_path / "reg"
    r = cli(reg, "list")
    assert r.exit_code == 0 and "no specialists registered" in r.stdout

    r = cli(reg, "add", "tiny-en-de", spec, "--base", base, "--direction", "en-de", "--direction", "de-en")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("registered tiny-en-de: 428.4K parameters, 1.7 MB")
    r = cli(reg, "add", "multi", spec, "--language", "en", "--language", "fr")
    assert r.exit_code == 0, r.output

    r = cli(reg, "list")
    assert r.exit_code == 0
    header, *rows = r.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "FAMILY",
        "SERVES",
        "PARAMS",
        "WEIGHTS",
        "SAVED",
        "EXPERTS/LAYER",
        "PATH",
    ]
    assert rows[0].split()[:7] == ["multi", "qwen3_moe", "multi:en,fr", "428.4K", "1.7", "MB", "0"]
    assert rows[1].split()[:3] == ["tiny-en-de", "qwen3_moe", "en-de,de-en"]
    assert "8,4" in rows[1] and str(spec.resolve()) in rows[1]

    r = cli(reg, "show", "tiny-en-de")
    assert r.exit_code == 0
    shown = json.loads(r.stdout)
    assert shown["directions"] == ["en-de", "de-en"] and shown["experts_per_layer"] == [8, 4]
    assert shown["parameters"] == 428_416 and shown["bytes_saved"] == 4 * 4 * PER_EXPERT
    assert set(shown["checksums"]) == {"config.json", "generation_config.json", "model.safetensors"}

    r = cli(reg, "remove", "multi")
    assert r.exit_code == 0 and r.stdout.startswith("removed multi")
    assert [line.split()[0] for line in cli(reg, "list").stdout.splitlines()[1:]] == ["tiny-en-de"]


def test_errors_are_one_line_exit_2(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec, _ = tiny
    reg = tmp_path / "reg"
    assert cli(reg, "add", "tiny", spec).exit_code == 0
    assert "registered: ['tiny']" in error_line(cli(reg, "show", "nope"))
    assert "registered: ['tiny']" in error_line(cli(reg, "remove", "nope"))
    assert "already registered" in error_line(cli(reg, "add", "tiny", spec))
    assert cli(reg, "add", "tiny", spec, "--overwrite").exit_code == 0
    assert "invalid specialist name '../evil'" in error_line(cli(reg, "add", "../evil", spec))
    assert "invalid specialist name" in error_line(cli(reg, "show", "A/b"))
    assert "no config.json" in error_line(cli(reg, "add", "empty", tmp_path))
    (reg / "entries" / "broken.json").write_text("{")
    assert "broken.json: not a valid specialist entry" in error_line(cli(reg, "list"))
    # the hub is unreachable here (HF_HUB_OFFLINE=1): a clear line, not a traceback
    assert "error: " in error_line(cli(reg, "pull", "org/not-cached", "x"))
    assert "offline" in error_line(cli(reg, "push", "tiny", "me/tiny")).lower()


def test_push_pull_through_the_cli(tmp_path: Path, tiny: tuple[Path, Path], monkeypatch) -> None:
    spec, base = tiny
    fake = FakeHub(tmp_path / "remote")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: fake)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(a, "add", "tiny", spec, "--base", base, "--direction", "en-de").exit_code == 0
    r = cli(a, "push", "tiny", "me/tiny")
    assert r.exit_code == 0 and "pushed tiny to me/tiny" in r.stdout
    r = cli(b, "pull", "me/tiny", "tiny2", "--revision", fake.heads["me/tiny"][-1])
    assert r.exit_code == 0, r.output
    shown = json.loads(cli(b, "show", "tiny2").stdout)
    assert shown["directions"] == ["en-de"] and shown["source"].startswith("hub:me/tiny@c")


def test_root_from_environment_and_mounting(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    parent = typer.Typer()

    @parent.command()
    def prune() -> None:  # the main CLI has other commands beside the mounted group
        pass

    parent.add_typer(app, name="registry")
    env = {REGISTRY_ENV: str(tmp_path / "reg")}
    r = runner.invoke(parent, ["registry", "add", "tiny", str(tiny[0])], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "reg" / "entries" / "tiny.json").is_file()
    r = runner.invoke(parent, ["registry", "list"], env=env)
    assert r.exit_code == 0 and r.stdout.splitlines()[1].startswith("tiny ")


def test_one_default_registry_and_the_retired_variable_named(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    """No --root and no MOE_REGISTRY_DIR: $XDG_CACHE_HOME/moe-specialists/registry, the folder `serve` serves;
    the variable the registry CLI read before is refused, naming the one to set."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), REGISTRY_ENV: ""}
    r = runner.invoke(app, ["add", "tiny", str(tiny[0])], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cache" / "moe-specialists" / "registry" / "entries" / "tiny.json").is_file()
    r = runner.invoke(app, ["list"], env=env | {"MOE_SPECIALISTS_REGISTRY": str(tmp_path / "old")})
    assert r.exit_code == 2
    assert "MOE_SPECIALISTS_REGISTRY is no longer read: set MOE_REGISTRY_DIR" in r.output
    assert not (tmp_path / "old").exists()


def test_materialise(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    _, base = tiny
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan(base, [0, 1, 2])))
    r = cli(tmp_path / "reg", "materialise", "narrow", plan, "--base", base, "--direction", "en-de")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("materialised narrow: ")
    shown = json.loads(cli(tmp_path / "reg", "show", "narrow").stdout)
    assert shown["experts_per_layer"] == [8, 3] and shown["bytes_saved"] == 4 * 5 * PER_EXPERT
    plan.write_text(json.dumps(tiny_plan(tmp_path / "no-such-base", [0, 1, 2])))
    assert "error: " in error_line(cli(tmp_path / "reg", "materialise", "lost", plan))
