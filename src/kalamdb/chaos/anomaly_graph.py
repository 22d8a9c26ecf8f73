"""The anomaly graph of a chaos report: each cycle the transactional checker found, drawn as inline
SVG (the transactions on a circle, one arrow per dependency, labelled ww / wr / rw / rt / process
and coloured by kind, the reason in the arrow's tooltip), followed by the table of reasons and the
transactions themselves. Pure string building, no scripts: the report stays self-contained."""

from __future__ import annotations

import html
import math
from typing import Any

REL_COLORS = {"ww": "#c62828", "wr": "#1565c0", "rw": "#ef6c00", "rt": "#546e7a", "process": "#6a1b9a"}
REL_MEANING = {"ww": "write-write: the later txn overwrote (appended after) the earlier",
               "wr": "write-read: the later txn read what the earlier wrote",
               "rw": "read-write (anti-dependency): the earlier txn read a state the later txn's write replaced",
               "rt": "real time: the earlier txn completed before the later one was invoked",
               "process": "process order: one client ran the earlier txn, then the later"}
MAX_CYCLES = 6  # per report: the most severe first
MAX_VALUE_CHARS = 300  # a final read of every key is long: shorten it on the page
NODE_R = 18


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " ..."


def cycles_of(checkers: list[dict]) -> list[tuple[str, str, dict]]:
    """(workload, anomaly name, cycle case) for every explained cycle in the checker results,
    the first cycle of each anomaly before the second of any (the page shows a few)."""
    ranked = []
    for c in checkers:
        for name, cases in (c.get("anomalies") or {}).items():
            if not isinstance(cases, list):
                continue
            cycles = [case for case in cases if isinstance(case, dict) and case.get("steps") and case.get("txns")]
            ranked += [(i, str(c.get("workload")), name, case) for i, case in enumerate(cycles)]
    ranked.sort(key=lambda r: r[0])  # stable: anomalies keep the checker's (severity) order
    return [(w, name, case) for _, w, name, case in ranked]


def cycle_svg(case: dict, element_id: str) -> str:
    """One cycle: transactions on a circle, curved arrows between consecutive ones."""
    names = [t["name"] for t in case["txns"]]
    n = len(names)
    radius = max(70.0, 26.0 * n)
    size = int(2 * radius + 4 * NODE_R + 60)
    cx = cy = size / 2
    pos = {name: (cx + radius * math.sin(2 * math.pi * i / n), cy - radius * math.cos(2 * math.pi * i / n))
           for i, name in enumerate(names)}
    parts = [(f'<svg id="{_esc(element_id)}" class="cycle" xmlns="http://www.w3.org/2000/svg" width="{size}" '
             f'height="{size}" viewBox="0 0 {size} {size}">'), "<defs>"]
    for rel, color in REL_COLORS.items():
        parts.append(f'<marker id="{_esc(element_id)}-arrow-{rel}" viewBox="0 0 10 10" refX="9" refY="5" '
                     f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
                     f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')
    parts.append("</defs>")
    for step in case["steps"]:
        (x1, y1), (x2, y2) = pos[step["from"]], pos[step["to"]]
        dx, dy = x2 - x1, y2 - y1
        dist = math.hypot(dx, dy) or 1.0
        ux, uy = dx / dist, dy / dist
        # start and end on the node circles; bend to the left of the direction of travel
        sx, sy = x1 + ux * NODE_R, y1 + uy * NODE_R
        ex, ey = x2 - ux * (NODE_R + 2), y2 - uy * (NODE_R + 2)
        bend = 0.18 * dist
        mx, my = (sx + ex) / 2 + uy * bend, (sy + ey) / 2 - ux * bend
        rel = step["rel"]
        color = REL_COLORS.get(rel, "#000")
        title = f"{step['from']} < {step['to']} ({rel}): {step.get('text', '')}"
        parts.append(f'<path class="edge {_esc(rel)}" d="M{sx:.1f},{sy:.1f} Q{mx:.1f},{my:.1f} {ex:.1f},{ey:.1f}" '
                     f'fill="none" stroke="{color}" stroke-width="2" '
                     f'marker-end="url(#{_esc(element_id)}-arrow-{_esc(rel)})"><title>{_esc(title)}</title></path>')
        lx, ly = (sx + ex) / 4 + mx / 2, (sy + ey) / 4 + my / 2
        parts.append(f'<text class="edge-label" x="{lx + uy * 10:.1f}" y="{ly - ux * 10 + 4:.1f}" font-size="12" '
                     f'font-weight="bold" text-anchor="middle" fill="{color}">{_esc(rel)}'
                     f'<title>{_esc(title)}</title></text>')
    for t in case["txns"]:
        x, y = pos[t["name"]]
        value = _shorten(" ".join(f"[{m[0]} {m[1]} {m[2]}]" for m in t.get("value") or []))
        title = f"{t['name']} = txn {t.get('index')} ({t.get('type')}, process {t.get('process')}): {value}"
        parts.append(f'<g class="txn"><circle cx="{x:.1f}" cy="{y:.1f}" r="{NODE_R}" fill="#fafafa" '
                     f'stroke="#333" stroke-width="1.5"/><text x="{x:.1f}" y="{y + 4:.1f}" font-size="12" '
                     f'text-anchor="middle">{_esc(t["name"])}</text><title>{_esc(title)}</title></g>')
    parts.append("</svg>")
    return "".join(parts)


def render_section(checkers: list[dict]) -> str:
    """The report section, or "" when no checker explained a cycle."""
    found = cycles_of(checkers)
    if not found:
        return ""
    out = ["<h2>Anomaly graph</h2><section id='anomaly-graph'>",
           ("<p>Each cycle below is a set of transactions that no serial order can explain: every arrow "
           "says one transaction must come before the next, and following them returns to the start. "
           "Hover an arrow or a transaction for details.</p><div class='legend'>")]
    out += [f"<span><i class='sw' style='background:{c}'></i>{rel}: {_esc(REL_MEANING[rel])}</span><br>"
            for rel, c in REL_COLORS.items()]
    out.append("</div>")
    for i, (workload, name, case) in enumerate(found[:MAX_CYCLES]):
        out.append(f"<figure class='anomaly'><figcaption><b>{_esc(name)}</b> ({_esc(workload)}): a cycle of "
                   f"{len(case['txns'])} transactions</figcaption>")
        out.append(cycle_svg(case, f"cycle-{i}"))
        out.append("<table class='steps'><tr><th>edge</th><th>kind</th><th>why</th></tr>")
        for step in case["steps"]:
            out.append(f"<tr><td>{_esc(step['from'])} &rarr; {_esc(step['to'])}</td><td>{_esc(step['rel'])}</td>"
                       f"<td>{_esc(step.get('text', ''))}</td></tr>")
        out.append("</table><table class='txns'><tr><th>txn</th><th>history</th><th>type</th><th>process</th>"
                   "<th>node</th><th>micro-operations</th></tr>")
        for t in case["txns"]:
            value = _shorten(" ".join(f"[{m[0]} {m[1]} {m[2]}]" for m in t.get("value") or []))
            out.append(f"<tr><td>{_esc(t['name'])}</td><td>{_esc(t.get('index'))}</td><td>{_esc(t.get('type'))}</td>"
                       f"<td>{_esc(t.get('process'))}</td><td>{_esc(t.get('node') or '')}</td>"
                       f"<td><code>{_esc(value)}</code></td></tr>")
        out.append("</table></figure>")
    if len(found) > MAX_CYCLES:
        out.append(f"<p>{len(found) - MAX_CYCLES} more cycle(s) in results.json.</p>")
    out.append("</section>")
    return "".join(out)
