"""The evaluation harness: extraction, degenerate detection, scoring wiring, and a tiny model end to end."""

import json

import pytest
import sacrebleu

from moe_specialists.models.extract import extract_answer
from moe_specialists.pruning.comet import CometScorer
from moe_specialists.pruning.evaluate import EvaluationConfig, evaluate, parse_directions
from moe_specialists.pruning.quality import classify, corpus_scores, has_loop, segment_mean
from tests.tiny import save_tiny


@pytest.mark.parametrize(
    ("raw", "text", "residue"),
    [
        ("Hallo Welt.<eos>", "Hallo Welt.", False),
        ("  Hallo Welt. <|end|><|pad|><|pad|>", "Hallo Welt.", False),
        ("Hallo<|end|> trailing junk after the end", "Hallo", False),
        ("Hallo<|user|>Translate this", "HalloTranslate this", True),  # a new turn before any end marker
        ("<|assistant|>Hallo Welt.<eos>", "Hallo Welt.", True),
        ("<think>let me think</think>Hallo<|im_end|>", "Hallo", False),
        ("<think>still thinking", "", True),
        (
            "<|channel|>analysis<|message|>hmm<|end|><|start|>assistant<|channel|>final<|message|>Hallo<|return|>",
            "Hallo",
            False,
        ),
        ("<|channel|>analysis<|message|>thinking, cut off", "", True),
        ("Hallo\nassistant\n", "Hallo", True),
    ],
)
def test_extract(raw, text, residue):
    assert extract_answer(raw) == (text, residue)


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("The cat sat on the mat.", False),
        ("very very good", False),  # 2 repeats are language
        ("the the the the", True),  # a 1-gram 4 times
        ("I am here. I am here. I am here. I am here.", True),  # a 3-gram 4 times
        ("a b c d e f g h a b c d e f g h a b c d e f g h a b c d e f g h", True),  # an 8-gram
        ("Es ist 10.000.000 Euro wert.", False),
        ("哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈哈", True),  # no spaces: 1 char x 20
        ("我们我们我们我们我们我们我们我们我们我们", True),  # 2 chars x 10
        ("我们去商店买东西。", False),
        ("abcabcabcabc", False),  # a char loop shorter than 20 characters
    ],
)
def test_has_loop(text, loop):
    assert has_loop(text) is loop


def test_classify_order():
    assert classify("") == ("", "empty")
    assert classify("   <eos>") == ("", "empty")
    assert classify("<|user|>") == ("", "residue")
    assert classify("la la la la la<eos>") == ("la la la la la", "loop")
    assert classify("Bonjour.<eos>") == ("Bonjour.", None)


def test_corpus_scores_match_sacrebleu():
    hyps = ["The cat sat on the mat.", "A dog barks loudly", ""]
    refs = ["The cat is on the mat.", "The dog barks loudly.", "Hello there."]
    chrf, bleu = corpus_scores(hyps, refs, "en")
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert corpus_scores(refs, refs, "en") == (pytest.approx(100.0), pytest.approx(100.0))
    # an empty (degenerate) hypothesis lowers the corpus score
    assert corpus_scores(["The cat is on the mat.", ""], refs[:2], "en")[0] < corpus_scores(refs[:2], refs[:2], "en")[0]


def test_segment_mean_scores_degenerate_outputs_zero():
    seen = []

    def score(sources, hyps, refs):  # a stand-in segment scorer: 1 per matching word count, by hand
        seen.append(hyps)
        return [0.5 if h.split() == r.split() else 0.2 for h, r in zip(hyps, refs, strict=True)]

    got = segment_mean(
        score, ["a", "b", "c", "d"], ["x y", "", "z", "w"], ["x y", "q", "z", "v"], [False, True, False, False]
    )
    assert seen == [["x y", "z", "w"]]  # the degenerate output is not sent to the scorer
    assert got == pytest.approx(100 * (0.5 + 0 + 0.5 + 0.2) / 4)
    assert segment_mean(score, ["a"], [""], ["b"], [True]) == 0.0


# unbabel-comet cannot be installed beside transformers 5 and its models come from the hub, so the COMET child
# process runs a stand-in ``comet`` package with the same API (score = word overlap with the reference).
FAKE_COMET = """
class _Out:
    def __init__(self, scores):
        self.scores = scores


class _Model:
    def predict(self, data, batch_size, gpus, progress_bar):
        return _Out([len(set(d["mt"].split()) & set(d["ref"].split())) / max(len(d["ref"].split()), 1) for d in data])


def download_model(name):
    return name + ".ckpt"


def load_from_checkpoint(path):
    assert path == "Unbabel/XCOMET-XL.ckpt", path
    return _Model()
"""


def test_comet_scorer_runs_comet_in_a_child_python(tmp_path, monkeypatch):
    (tmp_path / "comet").mkdir()
    (tmp_path / "comet" / "__init__.py").write_text(FAKE_COMET)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    scorer = CometScorer("Unbabel/XCOMET-XL")
    try:
        assert scorer(["s1", "s2"], ["a b", "x"], ["a b c d", "y"]) == [0.5, 0.0]
        assert scorer(["s"], ["same words"], ["same words"]) == [1.0]  # one model load, several batches
    finally:
        scorer.close()


def test_comet_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # an empty folder: no comet package anywhere
    scorer = CometScorer("Unbabel/XCOMET-XL")
    with pytest.raises(ImportError, match="own environment"):
        scorer(["s"], ["h"], ["r"])


def test_parse_directions():
    assert parse_directions(["en-de", ("fr", "en")]) == [("en", "de"), ("fr", "en")]
    for bad in (["en"], ["en-en"], []):
        with pytest.raises(ValueError, match="direction"):
            parse_directions(bad)


def test_evaluate_tiny_model_greedy_and_sampled(tmp_path, sample_dir):
    model = save_tiny("qwen3_moe", tmp_path / "m")
    out = tmp_path / "res.json"
    res = evaluate(
        EvaluationConfig(
            model=model, data_dir=sample_dir, directions=["en-de", "de-en"], limit=3, max_new_tokens=12, out=out
        )
    )
    assert set(res.directions) == {"en-de", "de-en"}
    r = res.directions["en-de"]
    assert r.n == 3 and len(r.seeds) == 1 and r.chrf_std == 0.0
    assert 0.0 <= r.degenerate_rate <= 1.0 and 0.0 <= r.chrf <= 100.0
    assert sum(r.seeds[0].degenerate.values()) == round(r.degenerate_rate * 3)
    assert json.loads(out.read_text())["directions"]["de-en"]["n"] == 3
    # greedy is deterministic; a COMET scorer (a stand-in here: xCOMET needs the hub and a GPU-size model)
    # scores the same outputs, degenerate ones as 0
    constant = lambda sources, hyps, refs: [0.5] * len(hyps)  # noqa: E731
    again = evaluate(
        EvaluationConfig(model=model, data_dir=sample_dir, directions=["en-de"], limit=3, max_new_tokens=12),
        comet=constant,
    )
    assert again.directions["en-de"].chrf == r.chrf
    assert again.directions["en-de"].comet == pytest.approx(50 * (1 - r.degenerate_rate))
    sampled = evaluate(
        EvaluationConfig(
            model=model,
            data_dir=sample_dir,
            directions=["en-de"],
            limit=3,
            max_new_tokens=12,
            temperature=1.0,
            seeds=[0, 1, 2],
        )
    )
    s = sampled.directions["en-de"]
    assert [x.seed for x in s.seeds] == [0, 1, 2]
    assert s.chrf == pytest.approx(sum(x.chrf for x in s.seeds) / 3)


def test_evaluate_refuses_bad_requests(tmp_path, sample_dir):
    with pytest.raises(ValueError, match="temperature"):
        evaluate(EvaluationConfig(model=tmp_path, data_dir=sample_dir, directions=["en-de"], temperature=-1))
    with pytest.raises(ValueError, match="unknown language 'xx' in 'en-xx'"):
        evaluate(EvaluationConfig(model=tmp_path, data_dir=sample_dir, directions=["en-xx"]))
    with pytest.raises(ValueError, match=r"no devtest passages for \['bn'\] in .*; it has \['cs', 'de'"):
        evaluate(EvaluationConfig(model=tmp_path, data_dir=sample_dir, directions=["en-bn"]))
    with pytest.raises(ValueError, match="backend"):
        evaluate(
            EvaluationConfig(
                model=save_tiny("qwen3_moe", tmp_path / "m"),
                data_dir=sample_dir,
                directions=["en-de"],
                limit=1,
                backend="onnx",
            )
        )


def test_cli_evaluate(tmp_path, sample_dir):
    from typer.testing import CliRunner

    from moe_specialists.cli import app

    model = save_tiny("qwen3_moe", tmp_path / "m")
    out = tmp_path / "r.json"
    args = ["evaluate", str(model), "-d", "en-de", "--data", str(sample_dir), "--limit", "2", "--max-new-tokens", "6"]
    r = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["directions"]["en-de"]["n"] == 2
    fast = tmp_path / "fast.json"  # the grouped_mm experts kernel translates exactly like the default
    kernel = ["--experts-implementation", "grouped_mm", "--device", "cpu"]
    r = CliRunner().invoke(app, [*args, *kernel, "--out", str(fast)])
    assert r.exit_code == 0, r.output
    default, quick = (json.loads(f.read_text())["directions"]["en-de"] for f in (out, fast))
    assert quick["seeds"] == default["seeds"]  # chrF, BLEU, degenerate and truncated counts
    bad = CliRunner().invoke(app, [*args[:3], "en-xx", *args[4:]])
    assert bad.exit_code == 2 and "unknown language 'xx'" in bad.output
