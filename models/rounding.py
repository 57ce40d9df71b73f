"""Largest-remainder (Hamilton) rounding, a pure function: the experts each layer keeps
(``pruning.allocation``) and the conversations each task gets in the bundled model's mixture
(``models.tiny_translator.mixture``)."""

from __future__ import annotations

import math


def hamilton_round(values: list[float], total: int) -> list[int]:
    """Largest-remainder rounding: floor each value, then give the leftover units to the largest fractional
    parts (ties to the lower index). The result sums to ``total`` (= round(sum(values)))."""
    floors = [math.floor(v + 1e-9) for v in values]
    leftover = total - sum(floors)
    assert 0 <= leftover <= len(values), (values, total)
    order = sorted(range(len(values)), key=lambda i: (-(values[i] - floors[i]), i))
    for i in order[:leftover]:
        floors[i] += 1
    return floors
