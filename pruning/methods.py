"""The pruning methods a sweep compares: a ranking, an allocation and whether the ranking is inverted."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str
    ranking: str
    allocation: str
    invert: bool = False


# The default method first; the two inverted controls are the paper's appendix E.4: drop the HIGHEST
# routing-mass experts (vs random), and inverse-dynamic capacity (vs uniform).
METHODS: dict[str, Method] = {
    "rm-dynamic": Method(label="routing-mass, dynamic", ranking="routing-mass", allocation="dynamic"),
    "rm-uniform": Method(label="routing-mass, uniform", ranking="routing-mass", allocation="uniform"),
    "reap-uniform": Method(label="REAP, uniform", ranking="reap", allocation="uniform"),
    "random-uniform": Method(label="random, uniform", ranking="random", allocation="uniform"),
    "inverted-rm-uniform": Method(
        label="inverted routing-mass, uniform", ranking="routing-mass", allocation="uniform", invert=True
    ),
    "rm-inverse-dynamic": Method(
        label="routing-mass, inverse-dynamic", ranking="routing-mass", allocation="inverse-dynamic"
    ),
}
DEFAULT_METHOD = "rm-dynamic"
