"""Parallel data: the shipped sample, FLORES-style folders and FLORES+ through the hub cache (a cache layout the
test writes from its own sentences, read by the real loading code with the hub offline)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import GatedRepoError
from huggingface_hub.file_download import repo_folder_name
from typer.testing import CliRunner

from moe_specialists.cli import app
from moe_specialists.pruning import data
from moe_specialists.pruning.data import (
    FLORES_PLUS_REPO,
    FLORES_PLUS_REVISION,
    DataError,
    available_languages,
    read_parallel,
)

SAMPLE_LANGUAGES = ["cs", "de", "en", "es", "fr", "ja", "ru", "zh"]
OURS = {  # three parallel sentences of our own, in the languages the fake FLORES+ files hold
    "eng_Latn": ["The kettle is on.", "It rains in April.", "Our bus is late."],
    "deu_Latn": ["Der Wasserkocher ist an.", "Im April regnet es.", "Unser Bus hat Verspätung."],
    "cmn_Hans": ["水壶开着。", "四月下雨。", "我们的公交车晚了。"],
}


def test_the_sample_is_parallel_in_every_language_of_the_bundled_translator():
    for split in ("dev", "devtest"):
        assert available_languages("sample", split) == SAMPLE_LANGUAGES
        texts = read_parallel("sample", split, SAMPLE_LANGUAGES)
        assert {len(lines) for lines in texts.values()} == {40}
        assert all(line.strip() == line and line for lines in texts.values() for line in lines)
    dev, devtest = (set(read_parallel("sample", s, ["en"])["en"]) for s in ("dev", "devtest"))
    assert not dev & devtest, "dev and devtest share a sentence"


def test_codes_are_normalised_and_limit_takes_the_first_lines():
    texts = read_parallel("sample", "dev", ["deu_Latn", "EN", "ces"], limit=3)
    assert list(texts) == ["de", "en", "cs"] and [len(v) for v in texts.values()] == [3, 3, 3]
    assert texts["en"] == read_parallel("sample", "dev", ["en"])["en"][:3]


def write_folder(root: Path, split: str, files: dict[str, list[str]]) -> Path:
    (root / split).mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        (root / split / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_a_folder_is_refused_naming_what_it_has(tmp_path):
    root = write_folder(tmp_path / "d", "dev", {"en": ["a", "b"], "deu_Latn": ["x", "y"], "README": ["not data"]})
    assert available_languages(root, "dev") == ["de", "en"]  # a FLORES-200 file name is a language too
    with pytest.raises(DataError, match=r"no dev passages for \['fr'\] in .*; it has \['de', 'en'\]"):
        read_parallel(root, "dev", ["en", "fr"])
    with pytest.raises(DataError, match=r"no split 'devtest' .*splits there: \['dev'\]"):
        read_parallel(root, "devtest", ["en"])
    write_folder(root, "dev", {"fr": ["only one line"]})
    with pytest.raises(DataError, match=r"not line-aligned: line counts \{'en': 2, 'fr': 1\}"):
        read_parallel(root, "dev", ["en", "fr"])
    with pytest.raises(DataError, match="--data DIR .* or --data sample"):
        read_parallel(tmp_path / "missing", "dev", ["en"])
    with pytest.raises(DataError, match="unknown language .xx-nonsense-123.: give BCP-47"):
        read_parallel(root, "dev", ["xx-nonsense-123"])


def write_hub_cache(cache: Path, files: dict[str, list[str]], revision: str = FLORES_PLUS_REVISION) -> None:
    """FLORES+ as the hub cache holds it: blobs named by content, snapshot links, refs/main, rows of
    ``{"id", "text", ...}`` (written shuffled: the reader orders them by id)."""
    import hashlib

    repo = cache / repo_folder_name(repo_id=FLORES_PLUS_REPO, repo_type="dataset")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    for rel, lines in files.items():
        rows = [{"id": i + 1, "iso_639_3": rel[-13:-10], "text": t, "domain": "ours"} for i, t in enumerate(lines)]
        random.Random(0).shuffle(rows)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
        blob = repo / "blobs" / hashlib.sha256(body).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(body)
        link = repo / "snapshots" / revision / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (rel.count("/") + 2)) / "blobs" / blob.name)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_flores_plus_is_read_from_the_hub_cache_in_id_order(offline_hub):
    write_hub_cache(offline_hub, {f"dev/{code}.jsonl": lines for code, lines in OURS.items()})
    assert available_languages("flores+", "dev") == ["de", "en", "zh"]  # cmn_Hans is Chinese
    texts = read_parallel("flores+", "dev", ["en", "de", "zh"], limit=2)
    assert texts == {"en": OURS["eng_Latn"][:2], "de": OURS["deu_Latn"][:2], "zh": OURS["cmn_Hans"][:2]}
    with pytest.raises(DataError, match=r"no dev passages for \['fr'\] in FLORES\+ .*; it has \['de', 'en', 'zh'\]"):
        read_parallel("flores+", "dev", ["en", "fr"])
    with pytest.raises(DataError, match=r"no split 'devtest' in FLORES\+.*its splits: \['dev'\]"):
        read_parallel("flores+", "devtest", ["en"])


def test_offline_without_a_cached_flores_plus_names_the_other_sources(offline_hub):
    with pytest.raises(DataError) as e:
        read_parallel("flores+", "dev", ["en", "de"])
    message = str(e.value)
    assert "\n" not in message and "HF_HUB_OFFLINE=1" in message
    assert "--data DIR" in message and "--data sample" in message


def test_a_gated_dataset_says_how_to_get_access(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/datasets/x"))

    def gated(*args, **kwargs):
        raise GatedRepoError("Access to dataset openlanguagedata/flores_plus is restricted", response=response)

    monkeypatch.setattr("huggingface_hub.HfApi.list_repo_files", gated)
    with pytest.raises(DataError, match=r"gated: accept its terms at https://huggingface.co/datasets/"
                                        r"openlanguagedata/flores_plus and log in \(`hf auth login`"):
        read_parallel("flores+", "dev", ["en"])


def test_a_broken_row_is_refused_with_its_line(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"id": 1, "text": "ok"}\n{"text": "no id"}\n')
    with pytest.raises(DataError, match=r"x.jsonl:2: not a FLORES\+ row"):
        data.jsonl_texts(bad)


@pytest.mark.parametrize("job", [
    ["calibrate", "no/such-model", "--out", "s.safetensors", "-l", "de"],
    ["evaluate", "no/such-model", "-d", "en-de"],
    ["prune", "no/such-model", "--out", "p", "-l", "de", "--drop", "1"],
    ["sweep", "no/such-model", "--work", "w"],
])
def test_jobs_without_data_stop_before_any_model_with_one_line(job, offline_hub, tmp_path, monkeypatch):
    """Offline, no --data and nothing cached: one line naming --data DIR and --data sample, before the model
    (a hub id that does not exist) is looked at."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, job)
    assert r.exit_code == 2, r.output
    (line,) = [x for x in r.output.splitlines() if x.strip()]
    assert "--data DIR" in line and "--data sample" in line, line
    assert "no/such-model" not in line
    assert list(tmp_path.iterdir()) == [offline_hub], "nothing written"
