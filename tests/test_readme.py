"""README.md's pruning walkthrough, run as written: each line of its first code block in a fresh working
directory outside the checkout (HOME there too, so `~/.cache/...` is the default registry of a new user), the
console scripts of this environment on PATH, the hub offline. The last line, `serve`, runs until the new
specialist has answered a translation through the gateway (real vLLM, CPU)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import serve_command

ROOT = Path(__file__).resolve().parents[1]


def walkthrough() -> list[str]:
    """The command lines of the first ```bash block under '## Pruning a model' (comments and `. activate` out)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Pruning a model\n"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    lines = [line.strip() for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith(("#", ". ", "source "))]


def test_the_walkthrough_is_the_one_the_issue_asks_for():
    lines = walkthrough()
    assert lines[0].startswith("moe-specialists calibrate models/tiny_translator ") and "--data sample" in lines[0]
    assert [shlex.split(line)[1] for line in lines] == [
        "calibrate", "plan", "apply", "evaluate", "registry", "serve"]


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOE_", "XDG_"))}
    # MOE_ENFORCE_EAGER: vLLM's torch.compile costs two minutes of start-up on 2 cores (the bundled demo skips it)
    return env | {"HOME": str(home), "HF_HUB_OFFLINE": "1", "MOE_ACCESS_LOG": "false", "MOE_ENFORCE_EAGER": "true",
                  "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"}


@pytest.mark.slow
def test_the_walkthrough_runs_and_its_specialist_translates(tmp_path: Path, user_env: dict[str, str]):
    work = tmp_path / "anywhere"
    work.mkdir()
    *steps, serve = walkthrough()
    for line in steps:
        out = subprocess.run(["bash", "-c", line], cwd=work, env=user_env, capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, f"{line}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert (work / "de-50" / "config.json").is_file()
    registry = Path(user_env["HOME"]) / ".cache" / "moe-specialists" / "registry"
    assert (registry / "entries" / "de-50.json").is_file()

    home = user_env["HOME"]  # the shell's tilde expansion, for this user
    args = [home + a[1:] if a.startswith("~/") else a for a in shlex.split(serve)[2:]]
    with serve_command(args, user_env, tmp_path / "serve.log", cwd=work) as url:
        r = httpx.post(f"{url}/v1/translate", timeout=120,
                       json={"text": "The children are playing in the garden.", "source": "en", "target": "de"})
    assert r.status_code == 200, r.text
    (item,) = r.json()["translations"]
    assert item["specialist"] == "de-50" and item["route"] == "exact" and item["text"].strip()
