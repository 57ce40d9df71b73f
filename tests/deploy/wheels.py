"""Package indexes on loopback, for the tests that resolve or build with pip as a user's machine would: a PEP 503
index over this machine's local wheel folders stands in for PyTorch's CPU wheel index (unreachable here)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def local_wheels() -> list[Path]:
    """Wheels in pip's find-links folders (pip config and PIP_FIND_LINKS): the CPU torch wheel lies there."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60)
    places = os.environ.get("PIP_FIND_LINKS", "").split()
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            places += value.strip("'\"").split()
    folders = {Path(p.removeprefix("file://")) for p in places if not p.startswith(("http://", "https://"))}
    return sorted({w for f in folders if f.is_dir() for w in f.glob("*.whl")})


def simple_index(root: Path, wheels: list[Path]) -> None:
    """A PEP 503 layout: root/simple/<normalised project>/<wheel> (links; http.server lists each folder)."""
    (root / "simple").mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        folder = root / "simple" / project
        folder.mkdir(parents=True, exist_ok=True)
        (folder / wheel.name).symlink_to(wheel)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_index(wheels: list[Path], port: int | None = None) -> Iterator[str]:
    """An index on 127.0.0.1 serving ``wheels`` (none: an empty index); yields its ``.../simple`` URL. ``port``
    when free (a stable URL keeps Docker's layer cache), else any."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="index-") as tmp:
        root = Path(tmp)
        simple_index(root, wheels)
        port = port if port and port_is_free(port) else _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}/simple"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(url + "/", timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)
