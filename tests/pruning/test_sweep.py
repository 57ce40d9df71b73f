"""The sweep: IoU maths by hand and against Monte Carlo, config checks, and a toy sweep end to end."""

import json
import random

import pytest
from pydantic import ValidationError

from moe_specialists.pruning.methods import METHODS
from moe_specialists.pruning.overlap import excess_iou, expected_iou, expected_pair_iou, pooled_iou
from moe_specialists.pruning.sweep import Sweep, SweepConfig
from tests.tiny import save_tiny


def test_pooled_iou_by_hand():
    a = [[0, 1, 2, 3], [0, 1]]
    b = [[2, 3, 4, 5], [0, 1]]
    # layer 0: |∩| = 2, |∪| = 6; layer 1: |∩| = 2, |∪| = 2 -> 4 / 8
    assert pooled_iou([a, b]) == 0.5
    assert pooled_iou([a, a]) == 1.0
    c = [[3, 6], [1, 7]]
    # layer 0: ∩ = {3}, ∪ = {0..6} (7); layer 1: ∩ = {1}, ∪ = {0, 1, 7} -> 2 / 10
    assert pooled_iou([a, b, c]) == pytest.approx(0.2)


def test_expected_iou_by_hand():
    # one layer, E = 8, a = b = 4: E|∩| = 16/8 = 2, E|∪| = 8 - 2 = 6
    assert expected_iou([[4], [4]], 8) == pytest.approx(2 / 6)
    # E = 32, keep 24 each: 18 / 30; all kept -> 1
    assert expected_iou([[24, 24], [24, 24]], 32) == pytest.approx(0.6)
    assert expected_iou([[8], [8]], 8) == 1.0
    # three sets of 4 of 8: E|∩| = 8 / 8 = 1, E|∪| = 8 (1 - 1/8) = 7
    assert expected_iou([[4], [4], [4]], 8) == pytest.approx(1 / 7)
    # exact single-layer expectation: E = 4, a = b = 2: i = 0 (p 1/6, IoU 0), 1 (p 4/6, 1/3), 2 (p 1/6, 1)
    assert expected_pair_iou(2, 2, 4) == pytest.approx(4 / 6 / 3 + 1 / 6)
    assert excess_iou(0.6, 0.6) == 0.0 and excess_iou(1.0, 0.2) == 1.0
    assert excess_iou(0.877, 0.680) == pytest.approx(0.616, abs=1e-3)  # the paper's appendix I, drop 8


def test_expected_iou_matches_monte_carlo():
    rng = random.Random(0)
    E, sizes = 32, [[8, 12, 4, 20, 8, 6], [10, 4, 4, 24, 8, 12], [6, 8, 16, 12, 8, 4]]
    draws = 4000
    for group in ([0, 1], [0, 1, 2]):
        inter = union = ratio = 0.0
        for _ in range(draws):
            kept = [[rng.sample(range(E), sizes[i][layer]) for layer in range(6)] for i in group]
            for layer in zip(*kept, strict=True):
                sets = [set(s) for s in layer]
                inter += len(set.intersection(*sets))
                union += len(set.union(*sets))
            ratio += pooled_iou(kept)
        expected = expected_iou([sizes[i] for i in group], E)
        assert inter / union == pytest.approx(expected, rel=0.02)  # ratio of expectations: exact up to MC error
        assert ratio / draws == pytest.approx(expected, rel=0.05)  # close to the mean of the ratio
    single = [pooled_iou([[rng.sample(range(E), 8)], [rng.sample(range(E), 12)]]) for _ in range(20000)]
    assert sum(single) / len(single) == pytest.approx(expected_pair_iou(8, 12, E), rel=0.02)


def test_config_refuses_impossible_settings(tmp_path, sample_dir):
    with pytest.raises(ValidationError, match="unknown methods"):
        SweepConfig(model="m", data_dir=sample_dir, work_dir=tmp_path, methods=["magic"])
    with pytest.raises(ValidationError, match="unseen"):
        SweepConfig(model="m", data_dir=sample_dir, work_dir=tmp_path, languages=["de", "fr"], unseen="ru")
    model = save_tiny("qwen3_moe", tmp_path / "m", experts=8, layers=2)
    with pytest.raises(ValueError, match="drop"):
        Sweep(SweepConfig(model=str(model), data_dir=sample_dir, work_dir=tmp_path / "w", drops=[0, 6]))


def test_toy_sweep_end_to_end(tmp_path, sample_dir):
    model = save_tiny("qwen3_moe", tmp_path / "m", experts=8, layers=2)
    cfg = SweepConfig(
        model=str(model),
        data_dir=sample_dir,
        work_dir=tmp_path / "work",
        out_dir=tmp_path / "out",
        languages=["de"],
        drops=[0, 2],
        default_drops=[4],
        limit=4,
        calib_limit=4,
        max_new_tokens=8,
    )
    md = Sweep(cfg).run()
    text = md.read_text()
    for method in cfg.methods:
        assert METHODS[method].label in text
    assert "| 2 | 25% |" in text and "## Parent" in text and "Not measured" not in text
    summary = json.loads((tmp_path / "out" / "compression.json").read_text())
    assert {"parent", "rm-dynamic-d2", "rm-dynamic-d4", "random-uniform-d2"} <= set(summary["evals"])
    assert "rm-uniform-d4" not in summary["evals"]  # extra drop levels are for the default method only
    assert (tmp_path / "out" / "compression_curves.png").stat().st_size > 0
    # a rerun reuses the statistics and every cached evaluation
    again = Sweep(cfg)
    again.run()
    assert again.seconds == {}
