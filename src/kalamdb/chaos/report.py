"""report.html for a chaos run: one self-contained page (inline SVG and CSS, no scripts, no
external files) that shows what the clients saw while the nemesis broke the cluster: a timeline of
operations per client with the fault windows shaded, latency over time with quantiles, throughput
over time, every checker's verdict, the counterexample when there is one, and the anomaly graph (the
dependency cycles) when the transactional checker found some."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kalamdb.chaos.anomaly_graph import render_section as render_anomaly_graph
from kalamdb.chaos.history import Event
from kalamdb.chaos.live_report import live_section
from kalamdb.chaos.membership_report import membership_section

COLORS = {"ok": "#2e7d32", "fail": "#c62828", "info": "#ef6c00"}
FAULT_COLORS = {"partition": "#90caf9", "kill": "#ef9a9a", "pause": "#ce93d8", "delay": "#fff59d",
                "loss": "#ffcc80", "disk": "#bcaaa4", "cpu": "#a5d6a7", "memory": "#80cbc4", "clock": "#b0bec5",
                "membership": "#ffab91", "transfer": "#e6ee9c"}
WIDTH = 1100
LEFT = 90
RIGHT = 20
MAX_TIMELINE_OPS = 20_000  # beyond this the timeline samples `ok` ops evenly (the page stays light)
MAX_LATENCY_POINTS = 12_000


@dataclass
class OpSpan:
    """An operation as drawn: who, what, from when to when (s since t0), and how it ended."""

    process: Any
    lane: str
    f: str
    start: float
    end: float | None
    outcome: str  # ok | fail | info (info also for an operation still open at the end)

    @property
    def latency_ms(self) -> float | None:
        return None if self.end is None else (self.end - self.start) * 1000


def spans(events: Iterable[Event], t0_ns: int, n_clients: int | None = None) -> list[OpSpan]:
    """Pair invokes with completions per process (the recorder writes them in real-time order)."""
    open_: dict[Any, tuple[Event, float]] = {}
    out: list[OpSpan] = []

    def lane(p: Any) -> str:
        if isinstance(p, int) and n_clients:
            return f"client {p % n_clients}"
        return str(p) if not isinstance(p, int) else f"process {p}"

    for ev in events:
        t = ((ev.time or 0) - t0_ns) / 1e9
        if ev.type == "invoke":
            prev = open_.pop(ev.process, None)
            if prev is not None:
                out.append(OpSpan(ev.process, lane(ev.process), prev[0].f, prev[1], None, "info"))
            open_[ev.process] = (ev, t)
            continue
        start = open_.pop(ev.process, None)
        if start is None:
            continue
        out.append(OpSpan(ev.process, lane(ev.process), ev.f, start[1], t, ev.type))
    out.extend(OpSpan(p, lane(p), e.f, t, None, "info") for p, (e, t) in open_.items())
    out.sort(key=lambda s: s.start)
    return out


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted values (0 <= q <= 1)."""
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
    return values[k]


class _Axis:
    def __init__(self, t_max: float, width: int = WIDTH):
        self.t_max = max(t_max, 1e-3)
        self.width = width

    def x(self, t: float) -> float:
        return LEFT + (width_inner(self.width)) * max(0.0, min(t, self.t_max)) / self.t_max


def width_inner(width: int) -> int:
    return width - LEFT - RIGHT


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fault_rects(windows: list[dict], axis: _Axis, top: float, height: float, labels: bool) -> list[str]:
    parts = []
    for w in windows:
        start, end = w.get("start", 0.0), w.get("end")
        end = axis.t_max if end is None else end
        x0, x1 = axis.x(start), axis.x(end)
        color = FAULT_COLORS.get(w.get("kind", ""), "#e0e0e0")
        title = f"{w.get('kind')} {w.get('target')} nodes {w.get('nodes')} {start:.2f}-{end:.2f}s"
        parts.append(f'<rect class="fault" x="{x0:.1f}" y="{top:.1f}" width="{max(1.0, x1 - x0):.1f}" '
                     f'height="{height:.1f}" fill="{color}" opacity="0.45"><title>{_esc(title)}</title></rect>')
        if labels:
            parts.append(f'<text x="{x0 + 2:.1f}" y="{top + 10:.1f}" font-size="9">'
                         f'{_esc(w.get("kind"))} {_esc(",".join(map(str, w.get("nodes", []))))}</text>')
    return parts


def _time_ticks(axis: _Axis, y: float, height: float) -> list[str]:
    step = max(1, round(axis.t_max / 10))
    parts = []
    t = 0
    while t <= axis.t_max + 1e-9:
        x = axis.x(t)
        parts.append(f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{x:.1f}" y2="{y + height:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{x:.1f}" y="{y + height + 12:.1f}" font-size="10" text-anchor="middle">{t}s</text>')
        t += step
    return parts


def timeline_svg(ops: list[OpSpan], windows: list[dict], t_max: float) -> str:
    lanes = sorted({o.lane for o in ops}, key=_lane_key)
    row = 14
    top = 20
    height = top + row * max(1, len(lanes)) + 20
    axis = _Axis(t_max)
    idx = {ln: i for i, ln in enumerate(lanes)}
    parts = [(f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}">')]
    parts += _fault_rects(windows, axis, top, row * len(lanes), labels=True)
    parts += _time_ticks(axis, top, row * len(lanes))
    for ln, i in idx.items():
        parts.append(f'<text x="{LEFT - 4}" y="{top + i * row + 10}" font-size="10" text-anchor="end">{_esc(ln)}</text>')
    shown = sample(ops, MAX_TIMELINE_OPS)
    for o in shown:
        x0 = axis.x(o.start)
        x1 = axis.x(o.end if o.end is not None else t_max)
        y = top + idx[o.lane] * row + 2
        lat = "open" if o.latency_ms is None else f"{o.latency_ms:.1f} ms"
        parts.append(f'<rect class="op {o.outcome}" x="{x0:.1f}" y="{y}" width="{max(0.8, x1 - x0):.1f}" '
                     f'height="{row - 4}" fill="{COLORS[o.outcome]}"><title>{_esc(o.f)} {o.outcome} {lat}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def sample(ops: list[OpSpan], limit: int) -> list[OpSpan]:
    """At most about `limit` ops: every fail and info op (the interesting ones), ok ops evenly."""
    if len(ops) <= limit:
        return ops
    rare = [o for o in ops if o.outcome != "ok"]
    ok = [o for o in ops if o.outcome == "ok"]
    room = max(1, limit - len(rare))
    return sorted(rare + ok[:: math.ceil(len(ok) / room)], key=lambda o: o.start)


def _lane_key(lane: str) -> tuple:
    head, _, num = lane.rpartition(" ")
    return (head, int(num)) if num.isdigit() else (lane, 0)


def latency_svg(ops: list[OpSpan], windows: list[dict], t_max: float) -> str:
    pts = [(o.start, o.latency_ms, o.outcome) for o in ops if o.latency_ms is not None]
    height, top, plot = 260, 10, 220
    axis = _Axis(t_max)
    lo, hi = 0.0, math.log10(max([p[1] for p in pts] + [10.0]) * 1.2)

    def y(ms: float) -> float:
        v = math.log10(max(ms, 1.0))
        return top + plot - plot * (v - lo) / (hi - lo)

    parts = [f'<svg id="latency" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height + 20}">']
    parts += _fault_rects(windows, axis, top, plot, labels=False)
    parts += _time_ticks(axis, top, plot)
    for grid_ms in (1, 10, 100, 1000, 10000):
        if math.log10(grid_ms) <= hi:
            gy = y(grid_ms)
            parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#eee"/>'
                         f'<text x="{LEFT - 4}" y="{gy + 3:.1f}" font-size="10" text-anchor="end">{grid_ms} ms</text>')
    step = math.ceil(len(pts) / MAX_LATENCY_POINTS) if len(pts) > MAX_LATENCY_POINTS else 1
    for t, ms, outcome in pts[::step]:
        parts.append(f'<circle cx="{axis.x(t):.1f}" cy="{y(ms):.1f}" r="1.6" fill="{COLORS[outcome]}" opacity="0.6"/>')
    parts.append("</svg>")
    return "".join(parts)


def throughput_svg(ops: list[OpSpan], windows: list[dict], t_max: float, bucket: float = 0.5) -> str:
    n_buckets = max(1, math.ceil(t_max / bucket))
    counts: dict[str, list[int]] = {k: [0] * n_buckets for k in COLORS}
    for o in ops:
        if o.end is None:
            continue
        b = min(n_buckets - 1, max(0, int(o.end / bucket)))
        counts[o.outcome][b] += 1
    height, top, plot = 220, 10, 180
    axis = _Axis(t_max)
    peak = max([max(v) for v in counts.values()] + [1]) / bucket

    def y(rate: float) -> float:
        return top + plot - plot * rate / (peak * 1.1)

    parts = [f'<svg id="throughput" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height + 20}">']
    parts += _fault_rects(windows, axis, top, plot, labels=False)
    parts += _time_ticks(axis, top, plot)
    for frac in (0.0, 0.5, 1.0):
        r = peak * frac
        parts.append(f'<text x="{LEFT - 4}" y="{y(r) + 3:.1f}" font-size="10" text-anchor="end">{r:.0f}/s</text>')
    for outcome, series in counts.items():
        pts = " ".join(f"{axis.x((i + 0.5) * bucket):.1f},{y(c / bucket):.1f}" for i, c in enumerate(series))
        parts.append(f'<polyline class="rate {outcome}" points="{pts}" fill="none" stroke="{COLORS[outcome]}" '
                     f'stroke-width="1.5"/>')
    parts.append("</svg>")
    return "".join(parts)


def quantile_rows(ops: list[OpSpan]) -> list[dict]:
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for o in ops:
        if o.latency_ms is not None:
            groups[(o.f, o.outcome)].append(o.latency_ms)
    rows = []
    for (f, outcome), vals in sorted(groups.items()):
        vals.sort()
        rows.append({"f": f, "outcome": outcome, "count": len(vals), "p50": quantile(vals, 0.5),
                     "p90": quantile(vals, 0.9), "p99": quantile(vals, 0.99), "max": vals[-1]})
    return rows


CSS = """body{font-family:system-ui,sans-serif;margin:20px;color:#222}h1{font-size:20px}h2{font-size:16px;
margin-top:28px}table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left}.pass{color:#2e7d32;font-weight:bold}.fail{color:#c62828;font-weight:bold}
pre{background:#f6f6f6;padding:10px;font-size:12px;overflow:auto}.legend span{display:inline-block;
margin-right:12px;font-size:12px}.sw{display:inline-block;width:10px;height:10px;margin-right:4px}"""


def render(events: Sequence[Event], results: dict) -> str:
    t0 = int(results.get("t0_ns") or (events[0].time if events and events[0].time else 0))
    cfg = results.get("config", {})
    n_clients = int(cfg.get("nodes", 0)) * int(cfg.get("clients_per_node", 0)) or None
    ops = spans(events, t0, n_clients)
    windows = results.get("windows", [])
    t_max = max([o.end or o.start for o in ops] + [w.get("end") or 0.0 for w in windows] + [1.0])
    verdict = {0: "PASS", 1: "VIOLATION", 3: "UNKNOWN"}.get(results.get("exit_code", -1), "ERROR")
    out = [("<!DOCTYPE html><html><head><meta charset='utf-8'><title>kalamdb chaos run "
           f"seed {_esc(results.get('seed'))}</title><style>{CSS}</style></head><body>")]
    cls = "pass" if verdict == "PASS" else "fail"
    out.append(f"<h1>kalamdb chaos run — seed {_esc(results.get('seed'))}: "
               f"<span id='verdict' class='{cls}'>{verdict}</span></h1>")
    out.append("<p>" + _esc(", ".join(f"{k}={v}" for k, v in cfg.items() if k in (
        "nodes", "time", "workloads", "faults", "unsafe_local_reads", "clients_per_node"))) +
        f"; {len(ops)} operations, {results.get('events', 0)} events</p>")
    if results.get("skipped_faults"):
        out.append(f"<p>Faults not available here (skipped): {_esc(', '.join(results['skipped_faults']))}</p>")
    out.append("<h2>Checkers</h2><table id='checkers'><tr><th>checker</th><th>workload</th><th>verdict</th>"
               "<th>summary</th></tr>")
    for c in results.get("checkers", []):
        v = "valid" if c.get("valid") else ("unknown" if c.get("unknown") else "INVALID")
        out.append(f"<tr><td>{_esc(c.get('name'))}</td><td>{_esc(c.get('workload'))}</td>"
                   f"<td class='{'pass' if c.get('valid') else 'fail'}'>{v}</td><td>{_esc(c.get('summary'))}</td></tr>")
    out.append("</table>")
    out.append(render_anomaly_graph(results.get("checkers", [])))
    out.append(live_section(results.get("checkers", [])))
    for c in results.get("checkers", []):
        if c.get("counterexample"):
            out.append(f"<h2>Counterexample ({_esc(c.get('name'))})</h2><pre id='counterexample'>"
                       f"{_esc(c['counterexample'])}</pre>")
    legend = "".join(f"<span><i class='sw' style='background:{col}'></i>{k}</span>" for k, col in COLORS.items())
    legend += "".join(f"<span><i class='sw' style='background:{col};opacity:.6'></i>{k}</span>"
                      for k, col in FAULT_COLORS.items() if any(w.get("kind") == k for w in windows))
    note = "" if len(ops) <= MAX_TIMELINE_OPS else (
        f" (all fail/info operations, ok operations sampled to about {MAX_TIMELINE_OPS} in total)")
    out.append(f"<h2>Operations per client{note}</h2><div class='legend'>{legend}</div>")
    out.append(timeline_svg(ops, windows, t_max))
    out.append("<h2>Latency over time (log scale)</h2>" + latency_svg(ops, windows, t_max))
    out.append("<h2>Latency quantiles (ms)</h2><table id='quantiles'><tr><th>op</th><th>outcome</th><th>count</th>"
               "<th>p50</th><th>p90</th><th>p99</th><th>max</th></tr>")
    for r in quantile_rows(ops):
        out.append(f"<tr><td>{_esc(r['f'])}</td><td>{r['outcome']}</td><td>{r['count']}</td><td>{r['p50']:.1f}</td>"
                   f"<td>{r['p90']:.1f}</td><td>{r['p99']:.1f}</td><td>{r['max']:.1f}</td></tr>")
    out.append("</table>")
    out.append("<h2>Throughput over time (completions/s, 0.5 s buckets)</h2>" + throughput_svg(ops, windows, t_max))
    out.append("<h2>Fault windows</h2><table id='faults'><tr><th>fault</th><th>target</th><th>nodes</th>"
               "<th>from</th><th>to</th><th>params</th><th>error</th></tr>")
    for w in windows:
        end = w.get("end")
        out.append(f"<tr><td>{_esc(w.get('kind'))}</td><td>{_esc(w.get('target'))}</td><td>{_esc(w.get('nodes'))}</td>"
                   f"<td>{w.get('start', 0):.2f}s</td><td>{'' if end is None else f'{end:.2f}s'}</td>"
                   f"<td>{_esc(w.get('params'))}</td><td>{_esc(w.get('error') or '')}</td></tr>")
    out.append("</table>")
    out.append(membership_section(results))  # configuration over time, next to the fault windows
    out.append("</body></html>")
    return "\n".join(out)


def write_report(out_dir: Path | str, events: Sequence[Event], results: dict) -> Path:
    path = Path(out_dir) / "report.html"
    path.write_text(render(events, results), encoding="utf-8")
    return path
