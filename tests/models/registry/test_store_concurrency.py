"""Registry writes under crashes and contention, with real processes.

The worker processes import only the registry's modules (the standard library and pydantic; no torch), so
each starts in well under a second.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moe_specialists.models.registry.entries import SpecialistEntry
from moe_specialists.models.registry.errors import UnknownSpecialistError
from moe_specialists.models.registry.store import Registry

PRELUDE = """
import json, os, sys, time
from moe_specialists.models.registry.entries import Quality, SpecialistEntry
from moe_specialists.models.registry.errors import DuplicateSpecialistError
from moe_specialists.models.registry.store import Registry

def entry(name, n_quality=0, base="org/base"):
    q = [Quality(metric="chrF", direction="en-de", score=float(i)) for i in range(n_quality)]
    return SpecialistEntry(name=name, base=base, path="/w/" + name, family="qwen3_moe", quality=q)
"""

# Stalls the first entry write half-way through (after the first half of the bytes is on disk), says so in
# a marker file, and waits to be killed.
STALL_MID_WRITE = """
root, marker, name, overwrite = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
real_write = os.write
def half_write(fd, data):
    n = real_write(fd, bytes(data[: len(data) // 2]))
    open(marker, "w").close()
    time.sleep(120)
    return n
os.write = half_write
Registry(root).add(entry(name, n_quality=200, base="new"), overwrite=overwrite)
"""

# Writes as fast as it can: overwrites "hot" with entries of changing size and adds fresh names.
HAMMER = """
root, marker = sys.argv[1], sys.argv[2]
reg = Registry(root)
for i in range(100000):
    reg.add(entry("hot", n_quality=(i * 37) % 300, base=f"v{i}"), overwrite=True)
    reg.add(entry(f"n{os.getpid()}-{i}"))
    if i == 3:
        open(marker, "w").close()
"""

# Waits for the start signal, then adds its own names and races the others for "shared".
CONCURRENT_ADDER = """
root, go, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
reg = Registry(root)
while not os.path.exists(go):
    time.sleep(0.001)
won = []
for i in range(count):
    reg.add(entry(f"w{worker}-{i:03d}", n_quality=i % 50))
    if i == count // 2:
        try:
            reg.add(entry("shared", base=f"worker{worker}"))
            won.append(worker)
        except DuplicateSpecialistError:
            pass
print(json.dumps({"worker": worker, "won": won}))
"""


def start(script: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early ({proc.returncode}): {proc.stderr.read()}")
        assert time.monotonic() < deadline, "worker never reached the point to kill it at"
        time.sleep(0.005)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def all_entries_valid(root: Path) -> list[SpecialistEntry]:
    """Every entry file parses (Registry.list raises on a damaged one) and no half entry is listed."""
    entries = Registry(root).list()
    for file in (root / "entries").glob("*.json"):
        SpecialistEntry.model_validate_json(file.read_bytes())
    return entries


def entry(name: str, base: str = "org/base") -> SpecialistEntry:
    return SpecialistEntry(name=name, base=base, path="/w/" + name, family="qwen3_moe")


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-entry", "overwrite"])
def test_writer_killed_mid_write_leaves_no_half_entry(tmp_path: Path, overwrite: bool) -> None:
    root, marker = tmp_path / "reg", tmp_path / "mid-write"
    reg = Registry(root)
    reg.add(entry("keep"))
    if overwrite:
        reg.add(entry("victim", base="old"))
    before = {e.name: e for e in reg.list()}

    proc = start(STALL_MID_WRITE, root, marker, "victim", int(overwrite))
    wait_for(marker, proc)
    leftovers = [p.name for p in (root / "entries").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1  # the half-written temp file exists: the writer really died mid-write
    kill(proc)

    assert {e.name: e for e in all_entries_valid(root)} == before
    if overwrite:
        assert reg.get("victim").base == "old"  # the old version survives intact
    else:
        with pytest.raises(UnknownSpecialistError):
            reg.get("victim")
    reg.add(entry("after"))  # the lock died with the writer; the next writer removes its temp file
    assert not [p for p in (root / "entries").iterdir() if p.name.startswith(".tmp-")]
    assert sorted(reg.names()) == sorted([*before, "after"])


def test_writer_killed_at_random_moments_never_corrupts(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    Registry(root).add(entry("keep"))
    for round_ in range(3):
        marker = tmp_path / f"started-{round_}"
        proc = start(HAMMER, root, marker)
        wait_for(marker, proc)
        deadline = time.monotonic() + 0.2 + 0.15 * round_
        while time.monotonic() < deadline:  # a reader racing the writer never sees a half entry
            all_entries_valid(root)
        kill(proc)
        entries = {e.name: e for e in all_entries_valid(root)}
        assert "keep" in entries and "hot" in entries
        assert entries["hot"].base.startswith("v")


def test_concurrent_adds_from_several_processes(tmp_path: Path) -> None:
    root, go = tmp_path / "reg", tmp_path / "go"
    workers, count = 4, 25
    procs = [start(CONCURRENT_ADDER, root, go, w, count) for w in range(workers)]
    time.sleep(0.5)  # let them all import and spin on the start signal
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out))

    names = Registry(root).names()
    expected = {f"w{w}-{i:03d}" for w in range(workers) for i in range(count)} | {"shared"}
    assert set(names) == expected  # all landed
    entries = all_entries_valid(root)  # none corrupt
    assert len(entries) == workers * count + 1
    winners = [w for r in results for w in r["won"]]
    assert len(winners) == 1  # exactly one process added "shared"; the others got DuplicateSpecialistError
    assert Registry(root).get("shared").base == f"worker{winners[0]}"
    assert not [p for p in os.listdir(root / "entries") if p.startswith(".tmp-")]
