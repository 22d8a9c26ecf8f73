"""Jepsen's bank checker: transfers move money between accounts, so every read of all balances
must add up to the same total; with `negative_allowed=False` no balance may go below zero."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from kalamdb.chaos.history import Operation
from kalamdb.chaos.result import CheckerResult


def check_bank(
    ops: Iterable[Operation],
    *,
    total: int,
    accounts: Iterable | None = None,
    negative_allowed: bool = False,
    read: str = "read",
) -> CheckerResult:
    """Reads' `output` is a mapping account -> balance (or a list of balances)."""
    expected_accounts = set(accounts) if accounts is not None else None
    wrong_total, negative, malformed, unexpected = [], [], [], []
    n = 0
    for op in ops:
        if op.f != read or op.ret is None:
            continue
        n += 1
        out = op.output
        if isinstance(out, Mapping):
            balances = dict(out)
        elif isinstance(out, (list, tuple)):
            balances = dict(enumerate(out))
        else:
            malformed.append({"op": op, "why": f"balances must be a mapping or list, got {out!r}"})
            continue
        if not all(isinstance(b, int) for b in balances.values()):
            malformed.append({"op": op, "why": f"non-integer balance in {balances!r}"})
            continue
        if expected_accounts is not None and set(balances) - expected_accounts:
            unexpected.append({"op": op, "accounts": sorted(set(balances) - expected_accounts, key=repr)})
        seen = sum(balances.values())
        if seen != total:
            wrong_total.append({"op": op, "total": seen, "expected": total})
        if not negative_allowed:
            below = {a: b for a, b in balances.items() if b < 0}
            if below:
                negative.append({"op": op, "negative": below})
    valid = not (wrong_total or negative or malformed or unexpected)
    return CheckerResult(
        "bank",
        valid,
        {"wrong_total": wrong_total, "negative": negative, "malformed": malformed, "unexpected_accounts": unexpected},
        {"reads": n},
    )
