"""The remote-client CPU benchmark: its SSE parsing and table by hand, and a run at toy size (a real stand-in
server in its own process, both clients, both call kinds): it checks the plumbing, not the numbers."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.remote_client_cpu import parse_event, table

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "remote_client_cpu.py"


def test_parse_event_reads_text_usage_and_done():
    state = {"text": "", "tokens": 0}
    assert parse_event(state, "")  # the blank line between events
    assert parse_event(state, 'data: {"choices": [{"text": " Wort"}], "usage": null}')
    assert parse_event(state, 'data: {"choices": [{"text": " Hund"}]}')
    assert parse_event(state, 'data: {"choices": [], "usage": {"completion_tokens": 5}}')
    assert state == {"text": " Wort Hund", "tokens": 5}  # usage corrects the count of events
    assert not parse_event(state, "data: [DONE]")


def test_table_by_hand():
    rows = [{"kind": "plain", "concurrency": 4, "calls": 10,
             "rounds": {"httpx": [1.0, 2.0, 3.0, 1.5], "aiohttp": [0.5, 0.5, 3.5, 1.0]}}]
    assert table(rows).splitlines()[2] == (
        "| plain | 4 | 10 x 4 | 1.750 [1.000, 3.000] | 0.750 [0.500, 3.500] | 0.500 [-0.500, 1.500] | 3 / 4 |"
    )


def test_a_toy_run_measures_both_clients(tmp_path):
    out = tmp_path / "rounds.json"
    cmd = [sys.executable, str(SCRIPT), "--calls", "20", "--streams", "4", "--tokens", "3", "--rounds", "2",
           "--concurrency", "2", "--token-delay-ms", "0", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["kind"], r["concurrency"]) for r in rows] == [("plain", 2), ("stream", 2)]
    for r in rows:
        assert all(len(v) == 2 and min(v) > 0 for v in r["rounds"].values()), r
    assert run.stdout.count("\n| plain | 2 | 20 x 2 |") == 1 and "| stream | 2 | 4 x 2 |" in run.stdout
