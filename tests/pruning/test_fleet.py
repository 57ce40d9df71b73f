"""The fleet choice on small made-up tables, by hand."""

from __future__ import annotations

from moe_specialists.pruning.fleet import Budget, Candidate, choose_fleet, pack, what_would_fit

GB = 10**9
PAIRS = ["en-de", "de-en", "en-fr", "fr-en"]
DE = Candidate("de", 4 * GB, {"en-de": 0.4, "de-en": 0.8})
FR = Candidate("fr", 4 * GB, {"en-fr": 0.3, "fr-en": 0.6})
MULTI = Candidate("multi", 7 * GB, {"en-de": 0.9, "de-en": 1.5, "en-fr": 0.5, "fr-en": 0.7})
EN_DE = Candidate("en-de", 3 * GB, {"en-de": 0.2})
DE_EN = Candidate("de-en", 3 * GB, {"de-en": 0.3})
ALL = [DE, FR, MULTI, EN_DE, DE_EN]


def test_the_lightest_cover_that_fits_is_chosen():
    roomy = Budget(gpus=2, gpu_bytes=40 * GB, kv_bytes=2 * GB)
    fleet = choose_fleet(ALL, PAIRS, floor=1.0, budget=roomy)
    assert sorted(c.name for c in fleet.engines) == ["de", "fr"]  # 8 GB, lighter than en-de + de-en + fr (10 GB)
    assert fleet.routes == {"en-de": "de", "de-en": "de", "en-fr": "fr", "fr-en": "fr"}
    assert fleet.memory_share(roomy, 0) == 2 * 6 / 40  # both on one GPU: 2 engines x (4 + 2) GB of 40
    # at floor 2.0 the multilingual one serves all four pairs with 7 GB < 8 GB
    assert [c.name for c in choose_fleet(ALL, PAIRS, 2.0, roomy).engines] == ["multi"]


def test_the_even_split_decides_what_fits_on_a_gpu():
    # two engines of 6 GB need 2 x 6 = 12 GB of 0.9 x 12 GB: not on one GPU; on two GPUs they fit
    one = Budget(gpus=1, gpu_bytes=12 * GB, kv_bytes=2 * GB)
    assert pack([DE, FR], one) is None
    two = Budget(gpus=2, gpu_bytes=12 * GB, kv_bytes=2 * GB)
    assert sorted(len(g) for g in pack([DE, FR], two)) == [1, 1]
    assert choose_fleet(ALL, PAIRS, 1.0, one) is None  # multi is beyond the floor on de-en (1.5)
    assert what_would_fit(ALL, PAIRS, 1.0, one) == {"floor": 1.5, "gpus": 2}


def test_nothing_fits_and_nothing_would():
    tiny = Budget(gpus=1, gpu_bytes=4 * GB, kv_bytes=1 * GB)  # no engine fits 3.6 GB
    assert choose_fleet(ALL, PAIRS, 5.0, tiny) is None
    assert what_would_fit(ALL, PAIRS, 5.0, tiny) == {"floor": None, "gpus": None}
    assert what_would_fit([DE, MULTI], ["en-de", "de-en"], 0.5, Budget(1, 40 * GB, GB)) == {"floor": 0.8,
                                                                                           "gpus": None}
