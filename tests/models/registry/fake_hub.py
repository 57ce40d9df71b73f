"""``FakeHub``: the hub is unreachable here (HF_HUB_OFFLINE=1, no network), so push/pull run against a local,
file-based stand-in implementing the four ``HfApi`` methods the registry calls, with one snapshot per commit."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path
from types import SimpleNamespace

from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import filter_repo_objects


class FakeHub:
    """Local, file-based stand-in for ``huggingface_hub.HfApi``: every upload is a commit holding a full
    snapshot of the repo under ``<root>/<repo_id>/<commit>/``."""

    def __init__(self, root: Path):
        self.root = root
        self.heads: dict[str, list[str]] = {}
        self._ids = itertools.count(1)

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False, **_):
        if repo_id in self.heads and not exist_ok:
            raise FileExistsError(repo_id)
        self.heads.setdefault(repo_id, [])
        return f"fake://{repo_id}"

    def _commit(self, repo_id: str, write) -> SimpleNamespace:
        commits = self.heads[repo_id]  # KeyError: repo not created, as the hub would refuse
        new = self.root / repo_id / f"c{next(self._ids):04d}"
        if commits:
            shutil.copytree(self.root / repo_id / commits[-1], new)
        else:
            new.mkdir(parents=True)
        write(new)
        commits.append(new.name)
        return SimpleNamespace(oid=new.name, commit_url=f"fake://{repo_id}/commit/{new.name}")

    def upload_folder(self, *, repo_id: str, folder_path, ignore_patterns=None, allow_patterns=None, **_):
        src = Path(folder_path)
        files = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]

        def write(dst: Path) -> None:
            kept = filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
            for rel in kept:
                (dst / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src / rel, dst / rel)

        return self._commit(repo_id, write)

    def upload_file(self, *, path_or_fileobj, path_in_repo: str, repo_id: str, **_):
        data = path_or_fileobj if isinstance(path_or_fileobj, bytes) else Path(path_or_fileobj).read_bytes()
        return self._commit(repo_id, lambda dst: (dst / path_in_repo).write_bytes(data))

    def snapshot_download(self, *, repo_id: str, revision: str | None = None, local_dir=None, **_) -> str:
        commits = self.heads.get(repo_id)
        if not commits or (revision not in (None, "main") and revision not in commits):
            raise LocalEntryNotFoundError(f"{repo_id}@{revision}: not found")
        snap = self.root / repo_id / (commits[-1] if revision in (None, "main") else revision)
        shutil.copytree(snap, local_dir, dirs_exist_ok=True)
        return str(local_dir)
