import atexit
import os
import shutil
import sys
import tempfile
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "MOE_CACHE_DIR" not in os.environ:  # the hashes the suite learns (models.file_hashes) are its own
    os.environ["MOE_CACHE_DIR"] = tempfile.mkdtemp(prefix="moe-specialists-cache-")
    atexit.register(shutil.rmtree, os.environ["MOE_CACHE_DIR"], True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SESSION_MARK = "PYTEST_SESSION_MARK"  # not MOE_*: the settings refuse unknown MOE_ variables


def become_subreaper() -> bool:
    """Make this process the reaper of the orphans among its descendants (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``):
    a process whose parent dies is re-parented here instead of to init, so it stays a descendant."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_child_subreaper = 36
    return ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, *map(ctypes.c_ulong, (1, 0, 0, 0))) == 0


def processes_left(mark: str) -> list:
    """Processes alive now (zombies aside) that this session started: every one whose environment carries
    ``SESSION_MARK=mark`` (inherited through exec, orphans too), and every descendant of this process, which
    covers those whose environment cannot be read back: a child forked without exec shows the environment from
    before the mark, and vLLM's processes rename themselves (setproctitle), which overwrites it. Not counted:
    multiprocessing's resource tracker of this process (it ends when this process does)."""
    import psutil

    me = psutil.Process()
    found = {p.pid: p for p in me.children(recursive=True)}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(SESSION_MARK) == mark:
                found.setdefault(proc.pid, proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue  # not ours to read, or gone
    left = []
    for pid, proc in sorted(found.items()):
        try:
            if pid == me.pid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.ppid() == me.pid and "multiprocessing.resource_tracker" in " ".join(proc.cmdline()):
                continue
            left.append(proc)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return left


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session():
    """The session marks itself (``SESSION_MARK``, a value of its own, inherited by every process it starts) and
    becomes a subreaper (an orphan of anything it started stays its descendant); at its end, once the last
    fixture has closed what it started, no process of it may still run: the session fails, listing them (pid,
    name, command line; then they are killed), after 10 s of grace for those that are exiting."""
    import psutil

    mark = uuid.uuid4().hex
    os.environ[SESSION_MARK] = mark
    become_subreaper()
    yield
    left = processes_left(mark)
    if left:
        psutil.wait_procs(left, timeout=10)
        left = processes_left(mark)
    if left:
        lines = []
        for proc in left:
            try:
                lines.append(f"pid {proc.pid} ({proc.name()}, parent {proc.ppid()}): {' '.join(proc.cmdline())[:300]}")
                proc.kill()  # listed, then ended: a leftover must not hold its memory until the machine reboots
            except psutil.Error:
                continue
        psutil.wait_procs(left, timeout=5)  # reaped, those that were re-parented here
        if lines:
            pytest.fail("processes started by this test session still run after it:\n" + "\n".join(lines),
                        pytrace=False)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Whatever thread count a test sets for torch, the next test starts with the one before it (a test that
    pinned one thread and left it so made later tests pass only in suite order)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and before is not None and torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The parallel sample shipped with the project (``--data sample``), as a FLORES-style folder."""
    from moe_specialists.pruning.data import SAMPLE_DIR

    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_pairs(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """English-X rows in the tiny translator's training-corpus shape (``pairs.jsonl.gz``: lang, en, xx, source),
    made from the shipped sample's sentences."""
    import gzip
    import json

    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for split in ("dev", "devtest"):
            english = (sample_dir / split / "en.txt").read_text(encoding="utf-8").splitlines()
            for lang in ("de", "fr", "cs", "ru", "es", "zh", "ja"):
                other = (sample_dir / split / f"{lang}.txt").read_text(encoding="utf-8").splitlines()
                for en, xx in zip(english, other, strict=True):
                    f.write(json.dumps({"lang": lang, "en": en, "xx": xx, "source": f"sample-{split}"}) + "\n")
    return path


@pytest.fixture
def cpu_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine made to answer "no CUDA GPU, a CPU without AMX tiles", where vLLM has no MXFP4 kernel (the
    hardware probes are the only fake: the same on every machine)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
