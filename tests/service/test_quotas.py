"""Per-key quotas (service.quotas) with a hand-driven clock."""

import pytest

from moe_specialists.service.metrics import GatewayMetrics
from moe_specialists.service.quotas import DAY_S, QuotaExceeded, Quotas, key_label


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_requests_per_minute_sliding_window():
    clock = Clock(1000.0)
    q = Quotas(2, None, clock=clock)
    q.request("k")
    clock.t = 1010
    q.request("k")
    clock.t = 1030
    with pytest.raises(QuotaExceeded) as e:
        q.request("k")
    assert e.value.kind == "requests" and e.value.retry_after_s == 30  # the first leaves the window at 1060
    q.request("other")  # another key has its own account
    clock.t = 1060.5
    q.request("k")


def test_characters_per_day_reset_at_midnight_utc():
    day = 20_000
    clock = Clock(day * DAY_S + DAY_S - 100)  # 100 s before midnight
    metrics = GatewayMetrics()
    q = Quotas(None, 10, metrics, clock=clock)
    q.characters("k", 6)
    with pytest.raises(QuotaExceeded) as e:
        q.characters("k", 5)
    assert e.value.kind == "characters" and e.value.retry_after_s == 100 and "4 left" in e.value.message
    assert q.usage("k") == (6, 10)  # the refused characters are not counted
    clock.t += 100
    assert q.usage("k") == (0, 10)
    q.characters("k", 10)
    text = metrics.render().decode()
    label = key_label("k")
    assert f'moe_gateway_quota_characters_total{{key="{label}"}} 16.0' in text
    assert f'moe_gateway_quota_rejections_total{{key="{label}",kind="characters"}} 1.0' in text


def test_unlimited_and_labels():
    q = Quotas(None, None)
    for _ in range(1000):
        q.request(None)
    q.characters(None, 10**9)
    assert key_label(None) == "anonymous" and key_label("secret") != "secret" and len(key_label("secret")) == 12
