"""Split a request into statements on top-level `;` without parsing it, so that semicolons inside
string literals, quoted identifiers and comments never cut a statement in two."""

from __future__ import annotations

from kalamdb.errors import KalamError


def split_statements(sql: str) -> list[str]:
    """Return the non-empty statements of `sql`, stripped, comments removed at the edges."""
    out: list[str] = []
    buf: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"', "`"):
            j = i + 1
            while True:
                if j >= n:
                    raise KalamError("INVALID_SQL", f"Unterminated quoted string starting at offset {i}")
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # doubled quote escapes itself
                        j += 2
                        continue
                    break
                j += 1
            buf.append(sql[i : j + 1])
            i = j + 1
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j
            buf.append(" ")
        elif c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise KalamError("INVALID_SQL", f"Unterminated comment starting at offset {i}")
            i = j + 2
            buf.append(" ")
        elif c == ";":
            stmt = "".join(buf).strip()
            if stmt:
                out.append(stmt)
            buf = []
            i += 1
        else:
            # copy a run of ordinary characters at once (fast path for long statements)
            j = i + 1
            while j < n and sql[j] not in "'\"`-/;":
                j += 1
            buf.append(sql[i:j])
            i = j
    stmt = "".join(buf).strip()
    if stmt:
        out.append(stmt)
    return out
