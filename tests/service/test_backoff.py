"""The supervision maths, no engine: restart delays, the expected wait behind Retry-After, failure labels;
and when the remote path must tokenize a prompt."""

from __future__ import annotations

import pytest

from moe_specialists.service.engines.base import backoff_delay, expected_wait, failure_reason, retry_after_header
from moe_specialists.service.engines.remote import prompt_may_not_fit


@pytest.mark.parametrize(("failures", "expected"), [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0),
                                                    (6, 10.0), (1000, 10.0)])
def test_backoff_doubles_up_to_the_maximum(failures, expected):
    assert backoff_delay(failures, initial=0.5, maximum=10) == expected


def test_backoff_refuses_negative_failures():
    with pytest.raises(ValueError, match="failures must be >= 0"):
        backoff_delay(-1, 1, 30)


FALLBACK = 2.0


@pytest.mark.parametrize(("state", "now", "retry_at", "began", "estimate", "expected"), [
    ("ready", 100.0, None, None, 12.0, 0.0),
    # failed: 3 s until the restart, then a start of 12 s (the last one's duration)
    ("failed", 100.0, 103.0, None, 12.0, 15.0),
    # failed, restart overdue: only the start remains
    ("failed", 100.0, 99.0, None, 12.0, 12.0),
    # failed, never started: the fallback stands in for the start
    ("failed", 100.0, 104.0, None, None, 6.0),
    # starting for 5 s of an expected 12
    ("starting", 100.0, None, 95.0, 12.0, 7.0),
    # starting for longer than expected: any moment now
    ("starting", 100.0, None, 80.0, 12.0, 0.0),
    ("given_up", 100.0, None, None, 12.0, None),
    ("stopped", 100.0, None, None, 12.0, None),
])
def test_expected_wait(state, now, retry_at, began, estimate, expected):
    assert expected_wait(state, now, retry_at, began, estimate, FALLBACK) == expected


@pytest.mark.parametrize(("wait", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (14.5, "15")])
def test_retry_after_header_rounds_up_to_whole_seconds(wait, header):
    assert retry_after_header(wait) == header


def test_failure_reason_is_a_short_first_line():
    assert failure_reason("the vLLM engine core died\ntraceback ...") == "the vLLM engine core died"
    assert failure_reason("x" * 500) == "x" * 120
    assert failure_reason(None) == failure_reason("  ") == "unknown"


@pytest.mark.parametrize(("prompt", "max_tokens", "context", "expected"), [
    ("a" * 100, 16, 1024, False),   # 100 + 8 + 16 = 124 <= 1024
    ("a" * 100, 916, 1024, False),  # exactly 1024
    ("a" * 100, 917, 1024, True),
    ("ü" * 100, 900, 1024, True),   # 200 bytes
    ("a", 10**6, None, False),      # no known context: the server clamps
])
def test_prompt_may_not_fit(prompt, max_tokens, context, expected):
    assert prompt_may_not_fit(prompt, max_tokens, context) is expected
