"""Progress lines in the style of upstream's cluster tests (🚀 … ✅), shown only when asked for
(pytest -s, or verbose=True), so a quiet run stays quiet."""

from __future__ import annotations

import os
import sys
import time

_t0 = time.monotonic()


def progress(message: str, verbose: bool = False) -> None:
    if verbose or os.environ.get("KALAMDB_KIT_VERBOSE") == "1":
        print(f"[{time.monotonic() - _t0:7.2f}s] {message}", file=sys.stderr, flush=True)
