"""Rankings and the routing divergence, with hand-computed values."""

import math

import pytest
import torch

from moe_specialists.pruning.scores import importance, jsd, keep_top, routing_divergence
from moe_specialists.pruning.stats import GroupStats


def _group():
    t = lambda *v: torch.tensor([list(v)], dtype=torch.float64)  # noqa: E731
    return GroupStats(
        mass_sum=t(2.0, 1.0, 0.0, 1.0),
        select=t(4.0, 1.0, 0.0, 3.0),
        reap_sum=t(2.0, 3.0, 0.0, 3.0),
        num_sequences=4,
        num_tokens=4,
    )


def test_importance_by_hand():
    g = _group()
    assert importance(g, "routing-mass").tolist() == [[0.5, 0.25, 0.0, 0.25]]
    assert importance(g, "frequency").tolist() == [[1.0, 0.25, 0.0, 0.75]]
    assert importance(g, "reap").tolist() == [[0.5, 3.0, 0.0, 1.0]]  # never-selected expert scores 0
    r1, r2 = importance(g, "random", seed=3), importance(g, "random", seed=3)
    assert torch.equal(r1, r2) and not torch.equal(r1, importance(g, "random", seed=4))


def test_reap_needs_reap_statistics():
    g = _group()
    g.reap_sum.zero_()
    with pytest.raises(ValueError, match="no REAP"):
        importance(g, "reap")


def test_keep_top_ties_and_invert():
    s = torch.tensor([0.5, 0.25, 0.0, 0.25])
    assert keep_top(s, 2) == [0, 1]  # tie between 1 and 3 goes to the lower index
    assert keep_top(s, 3) == [0, 1, 3]
    assert keep_top(s, 2, invert=True) == [2, 3]  # control: keep the least important


def test_jsd_known_values():
    p = torch.tensor([1.0, 0.0])
    q = torch.tensor([0.0, 1.0])
    assert jsd(p, q).item() == pytest.approx(1.0)  # disjoint supports: 1 bit
    assert jsd(p, p).item() == pytest.approx(0.0)
    # p=[1,0], q=[.5,.5]: m=[.75,.25]; H(m)=0.811278, H(p)=0, H(q)=1 -> 0.311278
    hm = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert jsd(p, torch.tensor([0.5, 0.5])).item() == pytest.approx(hm - 0.5)


def test_routing_divergence_means_passages_then_languages():
    en = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # 2 passages, 1 layer, 2 experts
    de = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])  # JSD 1 then 0 -> mean 0.5
    fr = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])  # JSD 0
    assert routing_divergence({"en": en, "de": de, "fr": fr}, ["de"]).tolist() == pytest.approx([0.5])
    assert routing_divergence({"en": en, "de": de, "fr": fr}, ["de", "fr"]).tolist() == pytest.approx([0.25])
    with pytest.raises(ValueError, match="no per-passage routing"):
        routing_divergence({"en": en}, ["ja"])
