"""report.html: self-contained, every section drawn, and rendered by a real browser."""

from __future__ import annotations

import html
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kalamdb.chaos.elle import check_txns
from kalamdb.chaos.elle.history import pair_txn_events
from kalamdb.chaos.history import Event
from kalamdb.chaos.report import quantile, render, sample, spans, write_report

SEED = 424242
T0 = 1_000_000_000


def _history(rng: random.Random, n_ops: int = 300, clients: int = 4) -> list[Event]:
    """Clients doing back-to-back operations with random latencies and outcomes."""
    events = []
    clock = {c: T0 + rng.randrange(10_000_000) for c in range(clients)}
    for _ in range(n_ops):
        c = rng.randrange(clients)
        f = rng.choice(["read", "write", "cas"])
        events.append(Event("invoke", c, f, 1, None, clock[c]))
        clock[c] += rng.randrange(1_000_000, 200_000_000)
        events.append(Event(rng.choice(["ok", "ok", "ok", "fail", "info"]), c, f, 1, 2, clock[c]))
        clock[c] += 1000
    events.sort(key=lambda e: e.time)
    return events


def _elle_checker() -> dict:
    """A real transactional checker result: a G-single (read skew) and a stale read."""
    events = [Event("invoke", 1, "txn", None, [["append", 1, 1], ["append", 2, 1]]),
              Event("invoke", 2, "txn", None, [["r", 1, None], ["r", 2, None]]),
              Event("ok", 1, "txn", None, [["append", 1, 1], ["append", 2, 1]]),
              Event("ok", 2, "txn", None, [["r", 1, [1]], ["r", 2, []]]),
              Event("invoke", 3, "txn", None, [["r", 2, None]]),
              Event("ok", 3, "txn", None, [["r", 2, [1]]])]
    res = check_txns(pair_txn_events(events)[0])
    return {"name": "elle", "workload": "append", "valid": False, "summary": res.summary(),
            "anomalies": res.anomalies, "counterexample": res.format()}


def _results(cex: str | None = None, elle: bool = False) -> dict:
    checkers = [{"name": "set-full", "workload": "set", "valid": True, "summary": "set-full: valid"}]
    if cex:
        checkers.append({"name": "linearizability", "workload": "register", "valid": False,
                         "summary": "NOT_LINEARIZABLE", "counterexample": cex})
    if elle:
        checkers.append(_elle_checker())
    return {"seed": SEED, "t0_ns": T0, "exit_code": 1 if cex else 0, "events": 600,
            "config": {"nodes": 2, "clients_per_node": 2, "time": 10},
            "windows": [{"kind": "partition", "target": "one", "nodes": [2], "start": 1.0, "end": 3.5, "params": {}},
                        {"kind": "kill", "target": "leader", "nodes": [1], "start": 5.0, "end": None, "params": {}}],
            "checkers": checkers}


def test_every_operation_and_fault_window_is_drawn():
    rng = random.Random(SEED)
    events = _history(rng)
    page = render(events, _results("key 1:\ncannot linearize: read 1 -> 3 <stale>"))
    assert page.count('class="op ') == 300
    # two fault windows on each of the three charts
    assert page.count('class="fault"') == 6
    assert '<pre id=\'counterexample\'>' in page and "&lt;stale&gt;" in page  # escaped, not markup
    assert "VIOLATION" in page
    assert not re.search(r"<script|https?://(?!www\.w3\.org/2000/svg)", page), "must be self-contained"


def test_anomaly_graph_draws_each_cycle_with_labelled_edges():
    page = render(_history(random.Random(SEED)), _results(elle=True))
    assert page.count("<section id='anomaly-graph'>") == 1
    checker = _elle_checker()
    cycles = [c for cases in checker["anomalies"].values() for c in cases if "steps" in c]
    assert cycles, checker["summary"]
    assert page.count('class="cycle"') == len(cycles)
    edges = sum(len(c["steps"]) for c in cycles)
    assert page.count('<path class="edge ') == edges
    for rel in ("rw", "wr"):
        assert f'<path class="edge {rel}"' in page
    # every reason is on the page, escaped
    for c in cycles:
        for step in c["steps"]:
            assert html.escape(step["text"], quote=True) in page
    assert "did not observe" in page or "initial (empty) state" in page
    assert "anomaly-graph" not in render(_history(random.Random(SEED)), _results())


def test_spans_pair_per_process_and_keep_open_operations():
    ev = [Event("invoke", 0, "write", 1, 1, T0), Event("invoke", 1, "read", 1, None, T0 + 10**9),
          Event("ok", 0, "write", 1, 1, T0 + 2 * 10**9)]
    s = spans(ev, T0, n_clients=2)
    assert [(x.lane, x.f, x.start, x.end, x.outcome) for x in s] == [
        ("client 0", "write", 0.0, 2.0, "ok"), ("client 1", "read", 1.0, None, "info")]


def test_quantile_is_nearest_rank():
    vals = list(range(1, 101))
    assert quantile(vals, 0.5) == 50 and quantile(vals, 0.99) == 99 and quantile(vals, 1.0) == 100


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (CI must apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path: Path):
    rng = random.Random(SEED)
    path = write_report(tmp_path, _history(rng), _results("key 1:\ncannot linearize: read 1 -> 3", elle=True))
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", path.as_uri()], check=False, capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # the browser parsed the page into a DOM with the charts as SVG elements
    for element_id in ("timeline", "latency", "throughput", "checkers", "quantiles", "counterexample",
                       "anomaly-graph", "cycle-0"):
        assert f'id="{element_id}"' in dom.stdout, element_id
    assert dom.stdout.count('class="edge ') >= 2  # the cycle's arrows are SVG paths in the DOM
    assert dom.stdout.count("<rect") >= 300
    shot = tmp_path / "shot.png"
    res = subprocess.run([*base, f"--screenshot={shot}", "--window-size=1200,1600", path.as_uri()],
                         check=False, capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "a blank page compresses to a few KB"


def test_large_histories_are_sampled_but_keep_every_failed_and_indeterminate_op():
    rng = random.Random(SEED)
    events = _history(rng, n_ops=3000)
    ops = spans(events, T0, 4)
    picked = sample(ops, 500)
    assert len(picked) <= 500 + sum(o.outcome != "ok" for o in ops)
    assert [o for o in picked if o.outcome != "ok"] == [o for o in ops if o.outcome != "ok"]
    assert any(o.outcome == "ok" for o in picked)
