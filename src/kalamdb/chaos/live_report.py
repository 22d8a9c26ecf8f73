"""The chaos report's live-subscription section: every subscriber stream (query, whether it was
kept open to the end, changes received, reconnects, reloads) and the first anomalies of each kind,
so a reader sees which stream lost, doubled or invented which change."""

from __future__ import annotations

import html
from typing import Any


def _esc(x: Any) -> str:
    return html.escape(str(x))


def live_section(checkers: list[dict]) -> str:
    out: list[str] = []
    for c in checkers:
        if c.get("workload") != "live" or "streams" not in c:
            continue
        verdict = "valid" if c.get("valid") else ("unknown" if c.get("unknown") else "INVALID")
        out.append(f"<h2>Live subscriptions ({_esc(c.get('name'))}: <span class='{'pass' if c.get('valid') else 'fail'}'>"
                   f"{verdict}</span>)</h2>")
        stats = c.get("stats") or {}
        out.append("<p>" + _esc(", ".join(f"{k}={v}" for k, v in stats.items())) + "</p>")
        out.append("<table id='live-streams'><tr><th>stream</th><th>query</th><th>kept open</th><th>changes</th>"
                   "<th>reconnects</th><th>reloads</th><th>errors</th></tr>")
        for s in c["streams"]:
            out.append(f"<tr><td>{_esc(s['name'])}</td><td>{_esc(s['query'])}</td><td>{'yes' if s['kept_open'] else 'no'}"
                       f"</td><td>{s['changes']}</td><td>{s['reconnects']}</td><td>{s['reloads']}</td>"
                       f"<td>{s['errors']}</td></tr>")
        out.append("</table>")
        for kind, items in (c.get("anomalies") or {}).items():
            out.append(f"<h3>{_esc(kind)} ({stats.get(kind + '_count', len(items))})</h3><pre class='live-anomalies'>")
            out.extend(_esc(item) for item in items[:10])
            out.append("</pre>")
    return "\n".join(out)
