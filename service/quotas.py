"""Per-API-key quotas: requests per minute (sliding 60 s window) and characters per UTC day. A refused
request gets ``QuotaExceeded`` with the seconds until it would pass (Retry-After)."""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from dataclasses import dataclass, field

from moe_specialists.service.metrics import GatewayMetrics

DAY_S = 86_400


class QuotaExceeded(Exception):
    def __init__(self, kind: str, message: str, retry_after_s: int):
        super().__init__(message)
        self.kind, self.message, self.retry_after_s = kind, message, retry_after_s


def key_label(key: str | None) -> str:
    """What metrics show for a key: 'anonymous' or the first 12 hex digits of its sha256."""
    return "anonymous" if not key else hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class _Account:
    requests: deque[float] = field(default_factory=deque)
    day: int = -1
    characters: int = 0


class Quotas:
    """``requests_per_minute`` / ``characters_per_day`` None: unlimited. ``clock``: seconds (UTC epoch)."""

    def __init__(self, requests_per_minute: int | None, characters_per_day: int | None,
                 metrics: GatewayMetrics | None = None, clock=time.time):
        self.rpm, self.cpd, self.metrics, self.clock = requests_per_minute, characters_per_day, metrics, clock
        self.accounts: dict[str, _Account] = {}

    def _account(self, key: str | None, now: float) -> _Account:
        account = self.accounts.setdefault(key_label(key), _Account())
        day = int(now // DAY_S)
        if account.day != day:
            account.day, account.characters = day, 0
        while account.requests and account.requests[0] <= now - 60:
            account.requests.popleft()
        return account

    def _refuse(self, key: str | None, kind: str, message: str, retry: float) -> QuotaExceeded:
        if self.metrics is not None:
            self.metrics.quota_rejections.labels(key_label(key), kind).inc()
        return QuotaExceeded(kind, message, max(1, math.ceil(retry)))

    def request(self, key: str | None) -> None:
        """Count one request, or raise when the key made ``requests_per_minute`` in the last 60 s."""
        now = self.clock()
        account = self._account(key, now)
        if self.rpm is not None and len(account.requests) >= self.rpm:
            retry = account.requests[0] + 60 - now
            raise self._refuse(key, "requests", f"more than {self.rpm} requests per minute for this key; "
                               f"retry in {math.ceil(retry)} s", retry)
        account.requests.append(now)
        if self.metrics is not None:
            self.metrics.quota_requests.labels(key_label(key)).inc()

    def characters(self, key: str | None, n: int) -> None:
        """Count ``n`` characters, or raise (counting nothing) when they exceed what is left today."""
        now = self.clock()
        account = self._account(key, now)
        if self.cpd is not None and account.characters + n > self.cpd:
            retry = (account.day + 1) * DAY_S - now
            left = self.cpd - account.characters
            raise self._refuse(key, "characters", f"{n} characters asked, {left} left of this key's {self.cpd} "
                               "characters per day (resets at 00:00 UTC)", retry)
        account.characters += n
        if self.metrics is not None:
            self.metrics.quota_characters.labels(key_label(key)).inc(n)

    def usage(self, key: str | None) -> tuple[int, int | None]:
        """(characters used today, daily limit or None)."""
        return self._account(key, self.clock()).characters, self.cpd
