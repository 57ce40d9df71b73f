"""The OpenAPI fuzz loop both fuzz tests run (test_reliability.py on /v1/translate and the web routes,
test_fuzz_compat.py on the LibreTranslate and DeepL routes): schemathesis cases of every operation, valid and
invalid, each judged by the test's own ``judge``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

Key = tuple[str, str, str]  # (method, path, mode)
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class FuzzResult:
    sent: dict[Key, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def bad_answers(self) -> str:
        return f"{len(self.errors)} bad answers of {self.total}:\n" + "\n\n".join(self.errors[:5])

    def summary(self) -> str:
        return f"fuzz: {self.total} requests, statuses {dict(sorted(self.statuses.items()))}, per operation {self.sent}"


def fuzz(strategy, budget: int, send: Callable) -> None:
    """Call ``send(case)`` on ``budget`` generated cases: reproducible (derandomized), no shrinking (``send``
    records every bad answer itself)."""

    @settings(max_examples=budget, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:
        send(case)

    run()


def fuzz_operations(schema, url: str, budget: Mapping[Key, int], skip: Callable[[str], bool],
                    judge: Callable[[Key, schemathesis.Response], str | None]) -> FuzzResult:
    """Every operation of ``schema`` whose path ``skip`` does not take, ``budget[key]`` cases per mode (default:
    one positive, no negative), sent to ``url``; ``judge`` says what is wrong with an answer (None: fine)."""
    result = FuzzResult()
    with requests.Session() as session:
        for op in (r.ok() for r in schema.get_all_operations()):
            if skip(op.path):
                continue
            for mode in MODES:
                key = (op.method.upper(), op.path, mode.value)
                n = budget.get(key, 1 if mode is schemathesis.GenerationMode.POSITIVE else 0)
                if not n:
                    continue

                def send(case, key=key) -> None:
                    r = case.call(base_url=url, session=session, timeout=60)
                    result.sent[key] = result.sent.get(key, 0) + 1
                    result.statuses[r.status_code] = result.statuses.get(r.status_code, 0) + 1
                    if (wrong := judge(key, r)) is not None:
                        result.errors.append(f"{wrong}: {r.status_code} {r.text[:300]}\n{case.as_curl_command()}")

                fuzz(op.as_strategy(generation_mode=mode), n, send)
    return result
