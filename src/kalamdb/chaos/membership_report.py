"""The report's membership section: the configuration over time, each change with its outcome,
on the same time axis (seconds since the run's time zero) as the fault windows above it."""

from __future__ import annotations

import html
from typing import Any


def _esc(x: Any) -> str:
    return html.escape(str(x))


def membership_section(results: dict) -> str:
    """HTML for `results["configurations"]` and `results["membership"]` ("" when the run had none)."""
    configs = results.get("configurations") or []
    changes = results.get("membership") or []
    if not changes:
        return ""
    head = ("<h2>Configuration over time</h2><table id='configurations'><tr><th>from</th><th>voters</th>"
            "<th>because of</th></tr>")
    out = [head]
    for c in configs:
        out.append(f"<tr><td>{c.get('t', 0):.2f}s</td><td>{_esc(c.get('voters'))}</td><td>{_esc(c.get('reason'))}</td></tr>")
    out.append("</table><h2>Membership changes</h2><table id='membership'><tr><th>change</th><th>node</th>"
               "<th>new node</th><th>outcome</th><th>from</th><th>to</th><th>error</th></tr>")
    for ch in changes:
        out.append(f"<tr><td>{_esc(ch.get('op'))}</td><td>{_esc(ch.get('node') or '')}</td>"
                   f"<td>{_esc(ch.get('new_node') or '')}</td><td class='{_esc(ch.get('outcome'))}'>"
                   f"{_esc(ch.get('outcome'))}</td><td>{ch.get('start', 0):.2f}s</td><td>{ch.get('end', 0):.2f}s</td>"
                   f"<td>{_esc(ch.get('error') or '')}</td></tr>")
    out.append("</table>")
    return "\n".join(out)
