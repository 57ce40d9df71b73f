"""Registry API: names, add/get/list/remove, entries built from a tiny specialist folder, materialisation from
base + plan (real ``models.apply.apply_plan``), hub push/pull.

The hub is unreachable here (HF_HUB_OFFLINE=1, no network), so push/pull run against ``FakeHub``: a local,
file-based stand-in implementing the four ``HfApi`` methods the registry calls, with one snapshot per commit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub.errors import LocalEntryNotFoundError
from huggingface_hub.utils import filter_repo_objects
from pydantic import ValidationError
from transformers import Qwen3MoeConfig

from moe_specialists.models.pruned import PrunedQwen3MoeForCausalLM
from moe_specialists.models.registry import (
    ENTRY_FILE,
    ChecksumError,
    CorruptEntryError,
    DuplicateSpecialistError,
    InvalidNameError,
    Quality,
    Registry,
    SpecialistEntry,
    UnknownSpecialistError,
    entry_from_dir,
    plan_hash,
    validate_name,
)

# ---------------------------------------------------------------- tiny checkpoints

H, V, HEAD, NH, NKV, MOE_I = 128, 128, 64, 2, 1, 64
ATTN = H * NH * HEAD + 2 * H * NKV * HEAD + NH * HEAD * H + 2 * HEAD  # q, k, v, o, q_norm, k_norm
NORMS = 2 * H  # input + post-attention layernorms
PER_EXPERT = 3 * MOE_I * H + H  # gate, up, down + its router row
EMBED_HEAD_NORM = 2 * V * H + H  # embeddings, untied lm_head, final norm


def tiny_config(counts: list[int] | None) -> Qwen3MoeConfig:
    extra = {"num_experts_per_layer": counts, "architectures": ["PrunedQwen3MoeForCausalLM"]}
    return Qwen3MoeConfig(
        vocab_size=V, hidden_size=H, intermediate_size=256, moe_intermediate_size=MOE_I, num_hidden_layers=2,
        num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HEAD, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True,  # prunable: the top-k weights are renormalised
        **(extra if counts else {}),
    )  # fmt: skip


def save_tiny(folder: Path, counts: list[int] | None) -> int:
    """Save a tiny Qwen3-MoE (pruned to ``counts`` per layer, or the unpruned base); its parameter count."""
    model = PrunedQwen3MoeForCausalLM(tiny_config(counts))
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("tiny")
    spec_params = save_tiny(root / "spec", [8, 4])
    base_params = save_tiny(root / "base", None)
    return SimpleNamespace(
        spec=root / "spec", base=root / "base", spec_params=spec_params, base_params=base_params
    )


def make_entry(name: str = "a", **kw) -> SpecialistEntry:
    fields = {"base": "org/base", "path": "/nowhere", "family": "qwen3_moe", "directions": ["en-de"]} | kw
    return SpecialistEntry(name=name, **fields)


# ---------------------------------------------------------------- names


BAD_NAMES = [
    "",  # empty
    "../x",  # traversal
    "..",
    "a/../../x",
    "/abs",  # absolute
    "a/b",  # separator
    "a\\b",
    ".hidden",  # leading dot
    "-x",  # leading dash (looks like an option)
    "_x",
    "Upper",  # case look-alikes collide on case-insensitive file systems
    "\u0430bc",  # Cyrillic a
    "\uff41bc",  # fullwidth a
    "caf\u00e9",  # non-ASCII letter
    "a\u200bb",  # zero-width space
    "a b",
    "a\n",  # trailing newline ($ would accept it in Python's re)
    "a\x00b",  # NUL
    "x" * 65,  # too long
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[ascii(n)[:20] for n in BAD_NAMES])
def test_bad_names_are_refused_everywhere(tmp_path: Path, name: str) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(InvalidNameError, match="invalid specialist name") as err:
        validate_name(name)
    assert "a-z 0-9" in str(err.value)  # says what is accepted
    assert isinstance(err.value, ValueError)
    with pytest.raises(ValidationError):
        make_entry(name)
    for call in (reg.get, reg.remove):
        with pytest.raises(InvalidNameError):
            call(name)
    with pytest.raises(InvalidNameError):  # an entry that bypassed validation is still refused
        reg.add(SpecialistEntry.model_construct(**make_entry().model_dump() | {"name": name}))
    with pytest.raises(InvalidNameError):
        entry_from_dir(name, tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    assert written == []


@pytest.mark.parametrize("name", ["a", "7", "qwen3-30b-a3b.en-de_v2", "x" * 64, "a..b"])
def test_good_names(tmp_path: Path, name: str) -> None:
    reg = Registry(tmp_path)
    reg.add(make_entry(name))
    assert reg.get(name).name == name
    assert (tmp_path / "entries" / f"{name}.json").is_file()


# ---------------------------------------------------------------- add / get / list / remove


def test_add_get_list_remove_round_trip(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    assert reg.list() == [] and reg.names() == []
    q = Quality(metric="chrF", direction="en-de", score=51.25, num_sentences=1012)
    a = reg.add(make_entry("b", quality=[q], weight_bytes=10, base_weight_bytes=25))
    reg.add(make_entry("a", languages=["en", "de", "fr"], directions=[]))
    assert reg.get("b") == a and reg.get("b").bytes_saved == 15
    assert [e.name for e in reg.list()] == ["a", "b"]
    assert "a" in reg and "zz" not in reg
    assert reg.remove("a").name == "a"
    assert reg.names() == ["b"]


def test_unknown_and_duplicate_names_say_what_exists(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.add(make_entry("en-de"))
    reg.add(make_entry("de-en"))
    with pytest.raises(UnknownSpecialistError) as err:
        reg.get("fr-en")
    assert isinstance(err.value, KeyError)
    assert str(err.value) == f"no specialist named 'fr-en' in {tmp_path}; registered: ['de-en', 'en-de']"
    with pytest.raises(KeyError, match="registered: \\['de-en', 'en-de'\\]"):
        reg.remove("fr-en")
    with pytest.raises(DuplicateSpecialistError, match="already registered.*overwrite") as dup:
        reg.add(make_entry("en-de", base="other"))
    assert isinstance(dup.value, ValueError)
    assert reg.get("en-de").base == "org/base"
    reg.add(make_entry("en-de", base="other"), overwrite=True)
    assert reg.get("en-de").base == "other"
    with pytest.raises(UnknownSpecialistError, match="registered: none"):
        Registry(tmp_path / "empty").get("x")


def test_entries_are_plain_json_and_damage_is_reported(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.add(make_entry("a"))
    data = json.loads((tmp_path / "entries" / "a.json").read_text())
    assert data["name"] == "a" and data["directions"] == ["en-de"]
    (tmp_path / "entries" / "b.json").write_text('{"name": "b", "surprise": 1}')
    with pytest.raises(CorruptEntryError, match="b.json: not a valid specialist entry") as err:
        reg.get("b")
    assert "base: Field required" in str(err.value) and "surprise: Extra inputs" in str(err.value)
    assert "\n" not in str(err.value)
    (tmp_path / "entries" / ".tmp-c.json.xyz").write_text('{"name": "c"')  # a dead writer's leftover
    (tmp_path / "entries" / "notes.txt").write_text("ignored")
    assert reg.names() == ["a", "b"]
    assert reg.remove("b") is None  # a damaged entry can be removed; a writer cleans the leftovers
    assert sorted(p.name for p in (tmp_path / "entries").iterdir()) == ["a.json", "notes.txt"]


def test_extra_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="surprise"):
        SpecialistEntry.model_validate(make_entry().model_dump() | {"surprise": 1})


# ---------------------------------------------------------------- entry_from_dir


def test_entry_from_dir_counts_from_headers(tiny: SimpleNamespace) -> None:
    spec_params = EMBED_HEAD_NORM + 2 * (ATTN + NORMS) + (8 + 4) * PER_EXPERT  # = 428_416
    base_params = EMBED_HEAD_NORM + 2 * (ATTN + NORMS) + (8 + 8) * PER_EXPERT  # = 527_232
    assert (spec_params, base_params) == (428_416, 527_232)
    assert (tiny.spec_params, tiny.base_params) == (spec_params, base_params)

    e = entry_from_dir("tiny-en-de", tiny.spec, base=tiny.base, directions=["en-de"])
    assert e.family == "qwen3_moe"
    assert e.experts_per_layer == [8, 4]
    assert e.parameters == spec_params
    assert e.weight_bytes == 4 * spec_params  # float32, one tensor per weight, no padding
    assert e.base_weight_bytes == 4 * base_params
    assert e.bytes_saved == 4 * 4 * PER_EXPERT  # layer 1 dropped 4 experts (with their router rows)
    assert e.base == str(tiny.base.resolve()) and e.path == str(tiny.spec.resolve())
    assert e.plan is None and e.created_at is not None
    files = sorted(p.name for p in tiny.spec.iterdir())
    assert sorted(e.checksums) == files == ["config.json", "generation_config.json", "model.safetensors"]
    for f, h in e.checksums.items():
        assert h == hashlib.sha256((tiny.spec / f).read_bytes()).hexdigest()


def test_entry_from_dir_base_model_and_errors(tiny: SimpleNamespace, tmp_path: Path) -> None:
    e = entry_from_dir("base", tiny.base, with_checksums=False)
    assert e.base == e.path and e.bytes_saved == 0 and e.experts_per_layer == [8, 8] and e.checksums == {}
    with pytest.raises(FileNotFoundError, match="no config.json"):
        entry_from_dir("x", tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    with pytest.raises(ValueError, match="no \\*.safetensors"):
        entry_from_dir("x", tmp_path)


def test_register_dir(tiny: SimpleNamespace, tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    e = reg.register_dir("tiny", tiny.spec, base=tiny.base, languages=["en", "de"])
    assert reg.get("tiny") == e and e.source == "local"
    with pytest.raises(DuplicateSpecialistError):
        reg.register_dir("tiny", tiny.spec)


# ---------------------------------------------------------------- materialise (real apply_plan)


def tiny_plan(base: Path, kept1: list[int]) -> dict:
    from moe_specialists.models.plan import Plan

    return json.loads(
        Plan.model_validate(
            {
                "base": {
                    "id": str(base),
                    "family": "qwen3_moe",
                    "experts_per_layer": [8, 8],
                    "top_k": 2,
                    "parameters": 527_232,
                    "weight_bytes": 4 * 527_232,
                    "parameters_per_expert": [PER_EXPERT] * 2,
                },
                "recipe": {"drop": 2, "directions": ["en-de"]},
                "data_fingerprint": "test",
                "collector": "test",
                "layers": [0, 1],
                "kept": [list(range(8)), kept1],
                "scores": [[1.0] * 8, [float(i) for i in range(8)]],
                "parameters": EMBED_HEAD_NORM + 2 * (ATTN + NORMS) + (8 + len(kept1)) * PER_EXPERT,
            }  # fmt: skip
        ).model_dump_json()
    )


def test_materialise_from_base_and_plan_is_cached(tiny: SimpleNamespace, tmp_path: Path) -> None:
    from moe_specialists.models.registry import _default_apply

    calls = []

    def counting_apply(plan, base, out):
        calls.append(out)
        return _default_apply(plan, base, out)

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan(tiny.base, [0, 2, 5, 7])))
    reg = Registry(tmp_path / "reg")
    e = reg.materialise("en-de", plan, base=tiny.base, directions=["en-de"], apply=counting_apply)
    key = plan_hash(plan, tiny.base)
    assert e.plan_hash == key and e.source == "materialised" and e.plan == str(plan.resolve())
    assert Path(e.path) == (tmp_path / "reg" / "cache" / key).resolve()
    assert e.experts_per_layer == [8, 4]
    assert e.parameters == 428_416 == json.loads(plan.read_text())["parameters"]
    assert e.base_weight_bytes == 4 * 527_232 and e.bytes_saved == 4 * 4 * PER_EXPERT
    assert reg.get("en-de") == e

    again = reg.materialise("en-de-2", plan, base=tiny.base, apply=counting_apply)  # cache hit
    assert len(calls) == 1 and again.path == e.path and again.checksums == e.checksums
    with pytest.raises(DuplicateSpecialistError):
        reg.materialise("en-de", plan, base=tiny.base, apply=counting_apply)

    other = tmp_path / "plan2.json"  # another plan: another cache folder
    other.write_text(json.dumps(tiny_plan(tiny.base, [1, 3, 4])))
    e3 = reg.materialise("narrow", other, base=tiny.base, apply=counting_apply)
    assert len(calls) == 2 and e3.path != e.path and e3.experts_per_layer == [8, 3]


def test_materialise_failure_leaves_nothing(tiny: SimpleNamespace, tmp_path: Path) -> None:
    def broken_apply(plan, base, out):
        raise ValueError("this plan was made for another model")

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(tiny_plan(tiny.base, [0, 1])))
    reg = Registry(tmp_path / "reg")
    with pytest.raises(ValueError, match="another model"):
        reg.materialise("x", plan, base=tiny.base, apply=broken_apply)
    assert reg.names() == [] and not (tmp_path / "reg" / "cache" / plan_hash(plan, tiny.base)).exists()


# ---------------------------------------------------------------- hub (offline stand-in)


class FakeHub:
    """Local, file-based stand-in for ``huggingface_hub.HfApi`` (the hub is unreachable in tests): every
    upload is a commit holding a full snapshot of the repo under ``<root>/<repo_id>/<commit>/``."""

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


@pytest.fixture
def hub(tmp_path: Path) -> FakeHub:
    return FakeHub(tmp_path / "hub-remote")


def test_push_pull_round_trip(tiny: SimpleNamespace, tmp_path: Path, hub: FakeHub) -> None:
    here = Registry(tmp_path / "here")
    q = Quality(metric="chrF", direction="en-de", score=48.0)
    e = here.register_dir("tiny", tiny.spec, base=tiny.base, directions=["en-de"], quality=[q])
    url = here.push("tiny", "me/tiny-en-de", api=hub)
    assert url.startswith("fake://me/tiny-en-de/commit/")

    there = Registry(tmp_path / "there")
    got = there.pull("me/tiny-en-de", "tiny-copy", api=hub)
    assert got == there.get("tiny-copy")
    assert got.name == "tiny-copy" and got.source == "hub:me/tiny-en-de@main"
    assert Path(got.path) == (tmp_path / "there" / "hub" / "tiny-copy").resolve()
    same = {"name", "path", "source", "created_at"}
    assert got.model_dump(exclude=same) == e.model_dump(exclude=same)
    assert got.created_at == e.created_at  # the entry travelled, it was not rebuilt
    for f in e.checksums:
        assert (Path(got.path) / f).read_bytes() == (tiny.spec / f).read_bytes()
    assert (Path(got.path) / ENTRY_FILE).is_file()


def test_pull_revision_tampering_and_plain_repos(tiny: SimpleNamespace, tmp_path: Path, hub: FakeHub) -> None:
    here = Registry(tmp_path / "here")
    here.register_dir("tiny", tiny.spec, base=tiny.base, directions=["en-de"])
    here.push("tiny", "me/tiny", api=hub)
    first = hub.heads["me/tiny"][-1]
    here.register_dir("tiny", tiny.spec, base=tiny.base, directions=["de-en"], overwrite=True)
    here.push("tiny", "me/tiny", api=hub)

    there = Registry(tmp_path / "there")
    assert there.pull("me/tiny", "old", revision=first, api=hub).directions == ["en-de"]
    assert there.pull("me/tiny", "new", api=hub).directions == ["de-en"]
    with pytest.raises(DuplicateSpecialistError):
        there.pull("me/tiny", "new", api=hub)
    with pytest.raises(FileNotFoundError):
        there.pull("me/absent", "absent", api=hub)

    # a corrupted file on the hub: refused, nothing registered, the earlier pull untouched
    latest = hub.root / "me/tiny" / hub.heads["me/tiny"][-1]
    with open(latest / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ChecksumError, match="model.safetensors"):
        there.pull("me/tiny", "new", api=hub, overwrite=True)
    assert there.get("new").directions == ["de-en"] and Path(there.get("new").path).is_dir()
    assert not [p for p in (tmp_path / "there" / "hub").iterdir() if p.name.startswith(".tmp-")]

    # a repo that is not a pushed specialist (e.g. a base model): described from its files
    hub.create_repo("org/base-model")
    hub.upload_folder(repo_id="org/base-model", folder_path=tiny.base)
    base = there.pull("org/base-model", "base", api=hub)
    assert base.base == "org/base-model" and base.experts_per_layer == [8, 8]
    assert base.source == "hub:org/base-model@main" and base.parameters == 527_232
