"""xCOMET (or any COMET model) segment scores from unbabel-comet, in its own Python (``comet_worker``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from moe_specialists.pruning.comet_worker import PREFIX

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # holds pruning/ (the moe_specialists folders)
WORKER = "pruning.comet_worker"


class CometScorer:
    """A ``SegmentScorer`` backed by a COMET model (hub id such as ``Unbabel/XCOMET-XL`` or a local .ckpt)
    loaded once in a child process of ``python`` (an interpreter with unbabel-comet installed)."""

    def __init__(self, model: str, python: str = sys.executable, batch_size: int = 8):
        self.model, self.python = model, python
        # only the folder holding our packages goes on the child's path (not our site-packages: its
        # transformers 5 would shadow comet's), so that ``-m pruning.comet_worker`` imports the worker alone
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if x)
        self.proc = subprocess.Popen(
            [python, "-m", WORKER, model, str(batch_size)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )

    def _failed(self) -> Exception:
        self.proc.kill()
        err = self.proc.stderr.read() if self.proc.stderr else ""
        if "No module named 'comet'" in err:
            return ImportError(
                f"{self.python} has no unbabel-comet. It pins transformers<5, so give it its own environment: "
                "python -m venv ~/comet && ~/comet/bin/pip install unbabel-comet; "
                "then --comet-python ~/comet/bin/python"
            )
        return RuntimeError(f"COMET scoring with {self.model} failed:\n{err[-3000:]}")

    def __call__(self, sources: list[str], hyps: list[str], refs: list[str]) -> list[float]:
        data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
        try:
            self.proc.stdin.write(json.dumps(data) + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith(PREFIX):
                    return json.loads(line.removeprefix(PREFIX))
        except (BrokenPipeError, ValueError):
            pass
        raise self._failed()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
