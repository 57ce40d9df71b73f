"""The recovery benchmark driver: its table by hand, the data slices, and a resumable run at toy size on the
bundled translator (one FLORES line, one training step: it checks the plumbing, not the quality)."""

import gzip
import json

import pytest

from benchmarks.recovery import parser, prepare, run, table
from moe_specialists.models.plan import Plan
from moe_specialists.pruning.pairs import read_pairs, read_passages


def _row(chrf: dict[str, float], degenerate: dict[str, float], parameters: int, recovery=None) -> dict:
    directions = {d: {"chrf": c, "degenerate_rate": degenerate[d]} for d, c in chrf.items()}
    return {"eval": {"directions": directions}, "parameters": parameters, "recovery": recovery}


def test_table_by_hand():
    rows = {
        "parent": _row({"en-de": 40.0, "de-en": 30.0}, {"en-de": 0.0, "de-en": 0.0}, 23_590_000),
        "d24": _row({"en-de": 31.0, "de-en": 20.0}, {"en-de": 0.1, "de-en": 0.3}, 9_390_000),
        "d24-sft": _row(
            {"en-de": 38.0, "de-en": 29.0}, {"en-de": 0.0, "de-en": 0.02}, 9_390_000, {"seconds": 12.4, "pairs": 100}
        ),
    }
    assert table(rows).splitlines() == [
        "| model | params | en-de | de-en | en->X | X->en | all | degenerate | train s | pairs |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| parent | 23.59M | 40.0 | 30.0 | 40.0 | 30.0 | 35.0 | 0.0% |  |  |",
        "| d24 | 9.39M | 31.0 | 20.0 | 31.0 (-9.0) | 20.0 (-10.0) | 25.5 (-9.5) | 20.0% |  |  |",
        "| d24-sft | 9.39M | 38.0 | 29.0 | 38.0 (-2.0) | 29.0 (-1.0) | 33.5 (-1.5) | 1.0% | 12 | 100 |",
    ]


def _write_corpus(path):
    english = [f"Sentence number {i}." for i in range(6)]
    rows = [{"lang": "de", "en": e, "xx": f"Satz Nummer {i}.", "source": "own"} for i, e in enumerate(english)]
    rows += [{"lang": "fr", "en": e, "xx": f"Phrase numéro {i}.", "source": "own"} for i, e in enumerate(english[:4])]
    rows += [
        {"lang": "de", "en": "A caption.", "xx": "Eine andere Beschreibung.", "source": "multi30k_task2_test"},
        {"lang": "de", "en": "Long " * 80, "xx": "Lang " * 80, "source": "own"},
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def test_prepare_slices_pairs_and_other_passages(tmp_path, sample_dir):
    corpus = tmp_path / "pairs.jsonl.gz"
    _write_corpus(corpus)
    prepare(corpus, sample_dir, tmp_path / "out", ["de", "fr"], sft_per_language=2, passages=10)
    sft = read_pairs(tmp_path / "out" / "sft.jsonl.gz")
    assert [p.target for p in sft] == ["de", "de", "fr", "fr"] and {p.source for p in sft} == {"en"}
    passages = read_passages(tmp_path / "out" / "passages.jsonl.gz")
    english = {f"Sentence number {i}." for i in range(6)}
    # every short English sentence not used for SFT; no caption row, nothing of 300+ characters
    assert set(passages) == english - {p.src for p in sft} and len(passages) == len(set(passages))
    for split in ("dev", "devtest"):
        for lang in ("en", "de", "fr"):
            copied = tmp_path / "out" / "flores200" / split / f"{lang}.txt"
            assert copied.read_text() == (sample_dir / split / f"{lang}.txt").read_text()
    prepare(corpus, sample_dir, tmp_path / "out", ["de", "fr"], sft_per_language=2, passages=10)  # rerun overwrites


@pytest.mark.slow  # make test-fast skips it: a recovery run end to end
def test_run_resumes_and_shares_the_distilled_data(tmp_path, sample_dir):
    corpus = tmp_path / "pairs.jsonl.gz"
    _write_corpus(corpus)
    prepare(corpus, sample_dir, tmp_path / "data", ["de"], sft_per_language=3, passages=2)
    results = tmp_path / "results"
    args = [
        "run", "--data", str(tmp_path / "data"), "--results", str(results), "--work", str(tmp_path / "work"),
        "--languages", "de", "--drops", "24", "28", "--limit", "1", "--calib-limit", "2", "--steps", "1",
        "--batch-size", "2", "--eval-batch-size", "2", "--eval-dtype", "float32", "--device", "cpu",
        "--experts-implementation", "grouped_mm",
    ]  # fmt: skip
    run(parser().parse_args(args))
    rows = json.loads((results / "results.json").read_text())
    variants = ["", "-distill", "-distill-both", "-sft"]
    assert list(rows) == ["parent", *[f"d24{v}" for v in variants], *[f"d28{v}" for v in variants]]
    assert set(rows["d24"]["eval"]["directions"]) == {"en-de", "de-en"}
    assert rows["d24"]["experts_per_layer"] == Plan.load(tmp_path / "work" / "d24" / "plan.json").experts_per_layer()
    assert sum(rows["d24"]["experts_per_layer"]) == 8 * (32 - 24) and sum(rows["d28"]["experts_per_layer"]) == 8 * 4
    first, second = rows["d24-distill"]["recovery"], rows["d28-distill"]["recovery"]
    assert first["distillation"]["passages"] == 2 and second["distillation"]["generated"] == "earlier"
    assert first["data_fingerprint"] == second["data_fingerprint"]  # one distilled set for every drop
    both = rows["d24-distill-both"]["recovery"]
    assert (first["direction"], both["direction"]) == ("to", "both") and both["pairs"] == 2 * first["pairs"]
    assert rows["d24-sft"]["recovery"]["mode"] == "sft" and rows["d24-sft"]["recovery"]["pairs"] == 3
    before = (results / "results.json").read_text()
    run(parser().parse_args(args))  # everything is there: nothing is redone
    assert (results / "results.json").read_text() == before
