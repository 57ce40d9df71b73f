"""Routing policy on hand-built tables (no engines)."""

import pytest

from moe_specialists.service.routing import NoRoute, Tier, choose, make_route, served_pairs

EN_DE = make_route("en-de", ["en-de"])
DE_EN = make_route("de-en", ["de-en"])
BOTH = make_route("en-de-both", ["en-de", "de-en"])
MULTI = make_route("multi", languages=["en", "de", "fr", "cs"])
BASE = make_route("base", base=True)


@pytest.mark.parametrize(
    ("routes", "source", "target", "name", "tier"),
    [
        ([EN_DE, DE_EN, MULTI, BASE], "en", "de", "en-de", Tier.EXACT),
        ([EN_DE, DE_EN, MULTI, BASE], "de", "en", "de-en", Tier.EXACT),
        ([EN_DE, MULTI, BASE], "de", "en", "en-de", Tier.PAIR),  # reverse direction beats multilingual
        ([BOTH, EN_DE], "en", "de", "en-de", Tier.EXACT),  # narrowest exact specialist wins
        ([EN_DE, MULTI, BASE], "fr", "cs", "multi", Tier.MULTILINGUAL),
        ([EN_DE, MULTI, BASE], "en", "ru", "base", Tier.BASE),
        ([make_route("b", ["en-de"]), make_route("a", ["en-de"])], "en", "de", "a", Tier.EXACT),  # by name
    ],
)
def test_choose(routes, source, target, name, tier):
    choice = choose(routes, source, target)
    assert (choice.route.name, choice.tier) == (name, tier)


def test_ready_engine_preferred_within_and_across_tiers():
    down = make_route("en-de", ["en-de"], ready=False)
    other = make_route("en-de-2", ["en-de", "de-en"])
    assert choose([down, other], "en", "de").route.name == "en-de-2"
    # Only a lower tier is ready: it answers rather than a down exact specialist.
    assert choose([down, MULTI], "en", "de").route.name == "multi"
    # Nothing ready: the best one is returned (the gateway answers 503 for it).
    assert choose([down], "en", "de").route.name == "en-de"


def test_no_route_lists_what_is_served():
    with pytest.raises(NoRoute) as err:
        choose([EN_DE, MULTI], "en", "ja")
    assert err.value.served == {"en-de": ["en-de"], "multi": ["multilingual(cs,de,en,fr)"]}
    assert "en->ja" in str(err.value) and "en-de" in str(err.value)


def test_same_language_is_not_routed():
    with pytest.raises(NoRoute):
        choose([BASE], "en", "en")


def test_served_pairs():
    pairs = served_pairs([EN_DE, make_route("m", languages=["fr", "cs"])])
    assert set(pairs) == {("en", "de"), ("de", "en"), ("fr", "cs"), ("cs", "fr")}
    assert pairs[("de", "en")].tier == Tier.PAIR
