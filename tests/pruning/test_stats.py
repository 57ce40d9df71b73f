"""Routing statistics maths, checked against values computed by hand."""

import pytest
import torch

from moe_specialists.pruning.stats import GroupStats, RoutingStats, StatsAccumulator, dense_weights, sequence_mass


def test_dense_weights_scatters_topk():
    idx = torch.tensor([[0, 2], [1, 2]])
    w = torch.tensor([[0.75, 0.25], [0.5, 0.5]])
    assert dense_weights(idx, w, 4).tolist() == [[0.75, 0.0, 0.25, 0.0], [0.0, 0.5, 0.5, 0.0]]


def test_sequence_mass_means_tokens_and_ignores_padding():
    dense = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [9.0, 9.0]], dtype=torch.float64)
    seq = torch.tensor([0, 0, 1, -1])  # last token is padding
    q = sequence_mass(dense, seq, 2)
    assert q.tolist() == [[0.5, 0.5], [0.5, 0.5]]


def test_accumulator_mass_frequency_reap_by_hand():
    # 1 layer, 3 experts, k=2. Sequence 0: tokens t0, t1; sequence 1: token t2; t3 is padding.
    idx = torch.tensor([[0, 1], [0, 2], [1, 2], [0, 1]])
    w = torch.tensor([[0.6, 0.4], [0.8, 0.2], [0.5, 0.5], [0.5, 0.5]])
    norms = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [100.0, 100.0]])
    acc = StatsAccumulator(1, 3)
    acc.add("en-de", 0, idx, w, torch.tensor([0, 0, 1, -1]), 2, expert_norms=norms)
    acc.finish_batch("en-de", 2, 3)
    g = acc.groups["en-de"]
    # q(seq0) = [(0.6+0.8)/2, 0.4/2, 0.2/2] = [0.7, 0.2, 0.1]; q(seq1) = [0, 0.5, 0.5]
    assert torch.allclose(g.mass_sum[0], torch.tensor([0.7, 0.7, 0.6], dtype=torch.float64))
    assert g.select[0].tolist() == [2.0, 2.0, 2.0]
    # reap_sum: e0: 0.6*1 + 0.8*3 = 3.0; e1: 0.4*2 + 0.5*5 = 3.3; e2: 0.2*4 + 0.5*6 = 3.8
    assert torch.allclose(g.reap_sum[0], torch.tensor([3.0, 3.3, 3.8], dtype=torch.float64))
    assert (g.num_sequences, g.num_tokens) == (2, 3)


def test_save_load_round_trip(tmp_path):
    g = GroupStats(
        torch.rand(2, 4, dtype=torch.float64),
        torch.rand(2, 4, dtype=torch.float64),
        torch.rand(2, 4, dtype=torch.float64),
        5,
        17,
    )
    stats = RoutingStats({"layers": [0, 1], "num_experts": 4}, {"en-de": g}, {"de": torch.rand(3, 2, 4)})
    back = RoutingStats.load(stats.save(tmp_path / "s.safetensors"))
    assert back.header == stats.header
    assert torch.equal(back.groups["en-de"].mass_sum, g.mass_sum)
    assert (back.groups["en-de"].num_sequences, back.groups["en-de"].num_tokens) == (5, 17)
    assert torch.allclose(back.passages["de"], stats.passages["de"].double())


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a safetensors file")
    try:
        RoutingStats.load(bad)
    except ValueError as e:
        assert "not a routing-statistics file" in str(e)
    else:
        raise AssertionError("corrupt statistics were accepted")


def test_mean_outputs_by_hand_saved_and_merged_over_directions(tmp_path):
    # 1 layer, 2 experts, hidden 2; en-de: e0 gave 0.5 * [2, 4] + 0.25 * [6, 0]; de-en: e0 gave 0.25 * [0, 8]
    acc = StatsAccumulator(1, 2)
    idx, w, seq = torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    acc.add("en-de", 0, idx, w, seq, 1, expert_outputs=(torch.tensor([[2.5, 2.0], [0.0, 0.0]]),
                                                        torch.tensor([0.75, 0.0])))
    acc.add("de-en", 0, idx, w, seq, 1, expert_outputs=(torch.tensor([[0.0, 2.0], [1.0, 1.0]]),
                                                        torch.tensor([0.25, 0.5])))
    stats = acc.result({"layers": [0], "num_experts": 2})
    # en-de: c0 = [2.5, 2] / 0.75; e1 never selected: 0
    assert torch.allclose(stats.mean_outputs(["en-de"]), torch.tensor([[[10 / 3, 8 / 3], [0.0, 0.0]]]))
    # both: c0 = ([2.5, 2] + [0, 2]) / (0.75 + 0.25) = [2.5, 4]; c1 = [1, 1] / 0.5 = [2, 2]
    back = RoutingStats.load(stats.save(tmp_path / "s.safetensors"))
    assert torch.allclose(back.mean_outputs(["en-de", "de-en"]), torch.tensor([[[2.5, 4.0], [2.0, 2.0]]]))


def test_statistics_without_mean_outputs_say_substitution_needs_a_recalibration(tmp_path):
    old = RoutingStats({"layers": [0], "num_experts": 2}, {"en-de": GroupStats.zeros(1, 2)})
    back = RoutingStats.load(old.save(tmp_path / "old.safetensors"))
    with pytest.raises(ValueError, match="no mean expert outputs .* substitution needs a recalibration"):
        back.mean_outputs(["en-de"])
