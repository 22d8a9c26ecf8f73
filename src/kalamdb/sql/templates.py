"""Query templates: literals lifted out of a statement's text into `$n` parameters, so statements that
differ only in their values share one parse and one compilation (on every replica too: the command
carries the template and the values). Only positions where a parameter means exactly what the
literal meant are lifted."""

from __future__ import annotations

from kalamdb.sql.tokens import tokenize


def parameterize_values(sql: str) -> tuple[str, list] | None:
    """Turn the literal values of `INSERT ... VALUES (...)` into `$n` parameters, so that inserts
    that differ only in their values share one parse and one compilation (on every replica: the
    command carries the template). Only whole values directly inside a VALUES tuple are replaced,
    so expressions keep their meaning. Returns None when there is nothing to gain."""
    if "$" in sql:
        return None
    toks = tokenize(sql)
    start = None
    depth = 0
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text == "(":
            depth += 1
        elif t.kind == "op" and t.text == ")":
            depth -= 1
        elif depth == 0 and t.upper == "VALUES":
            start = i + 1
            break
    if start is None:
        return None
    pieces: list[str] = []
    values: list = []
    last = 0
    depth = 0
    for i in range(start, len(toks)):
        t = toks[i]
        if t.kind == "op" and t.text == "(":
            depth += 1
            continue
        if t.kind == "op" and t.text == ")":
            depth -= 1
            if depth < 0:
                break
            continue
        if depth != 1 or not (0 < i < len(toks) - 1):
            if depth == 0 and not (t.kind == "op" and t.text == ","):
                break  # the VALUES list has ended (ON CONFLICT, RETURNING, ...)
            continue
        before, after = toks[i - 1], toks[i + 1]
        if not (before.kind == "op" and before.text in "(," and after.kind == "op" and after.text in ",)"):
            continue
        if t.kind == "str":
            value = t.value
        elif t.kind == "num":
            value = t.value
            if isinstance(value, int) and not -(2**63) <= value < 2**63:
                continue
        elif t.upper in ("TRUE", "FALSE", "NULL"):
            value = {"TRUE": True, "FALSE": False, "NULL": None}[t.upper]
        else:
            continue
        values.append(value)
        pieces.append(sql[last:t.pos])
        pieces.append(f"${len(values)} ")
        last = t.pos + len(t.text)
    if not values or len(values) > 10_000:
        return None
    pieces.append(sql[last:])
    return "".join(pieces), values


#: Lifting stops being worth it beyond this many literals: a statement that long is rarely sent twice
#: with the same shape, and SQLite resolves each named parameter of a statement by a linear search of
#: the names before it (quadratic: 20,000 lifted IN items cost 1.7 s per execution on every replica)
MAX_LIFTED = 1_000

#: items one IN (...) list may have: each costs a parse and a compile step on every replica, so
#: the parser refuses a longer list before it starts (see `longest_in_list`)
MAX_IN_LIST_ITEMS = 10_000

_REGION_ON = {"WHERE", "HAVING", "SET"}
_REGION_OFF = {"SELECT", "FROM", "ORDER", "GROUP", "LIMIT", "OFFSET", "RETURNING", "WINDOW", "UNION",
               "EXCEPT", "INTERSECT", "VALUES", "JOIN", "ON"}


def parameterize_conditions(sql: str) -> tuple[str, list] | None:
    """Lift literals out of WHERE/HAVING/SET clauses: the operand of a comparison, LIKE, arithmetic,
    or an element of an IN list. Never in a select list (result column names come from its text),
    GROUP/ORDER BY (integers are column positions there) or LIMIT."""
    if "$" in sql:
        return None
    toks = tokenize(sql)
    on = False
    stack: list[tuple[bool, bool]] = []
    in_list = False
    pieces: list[str] = []
    values: list = []
    last = 0
    for i, t in enumerate(toks):
        if t.kind == "op" and t.text == "(":
            stack.append((on, in_list))
            in_list = i > 0 and toks[i - 1].upper == "IN"
            continue
        if t.kind == "op" and t.text == ")":
            if stack:
                on, in_list = stack.pop()
            continue
        word = t.upper
        if word in _REGION_ON:
            on = True
            continue
        if word in _REGION_OFF:
            on = False
            continue
        if not on or t.kind not in ("str", "num") or i == 0:
            continue
        prev = toks[i - 1]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if nxt is not None and nxt.text in ("(", "."):
            continue
        p = prev.text
        comparison = p in ("=", "<", ">", "+", "-", "*", "/", "%") or prev.upper in ("LIKE", "ILIKE")
        listed = in_list and p in ("(", ",")
        if not (comparison or listed):
            continue
        if isinstance(t.value, int) and not -(2**63) <= t.value < 2**63:
            continue
        values.append(t.value)
        pieces.append(sql[last:t.pos])
        pieces.append(f"${len(values)} ")
        last = t.pos + len(t.text)
    if not values or len(values) > MAX_LIFTED:
        return None
    pieces.append(sql[last:])
    return "".join(pieces), values


def longest_in_list(sql: str) -> int:
    """The number of items of the longest `IN (...)` list of literals and expressions in `sql`
    (subqueries count as one item), found with the tokenizer alone: cheap enough to refuse an
    oversized list before the SQL parser spends seconds on it."""
    longest = 0
    stack: list[int] = []  # per open parenthesis: its IN list's item count so far, 0 if not a list
    prev = ""
    for t in tokenize(sql):
        if t.kind == "op" and t.text == "(":
            stack.append(1 if prev == "IN" else 0)
        elif t.kind == "op" and t.text == ")":
            if stack:
                longest = max(longest, stack.pop())
        elif t.kind == "op" and t.text == "," and stack and stack[-1]:
            stack[-1] += 1
        prev = t.upper
    return max([longest, *stack])  # unclosed lists count too (the parser refuses them anyway)

