"""Scenarios that do not pass yet, with the reason: each still runs and is reported as xfail, so a
scenario that starts passing shows as XPASS and its line here should go (helpers "fidelity" and
"topics" remove lines as they land the features; see issue 14)."""

KNOWN_FAILURES: dict[str, str] = {}
