"""pytest fixtures for tests against one real server process.

`server`: the session's shared server (started lazily). `unique_ns`: a namespace name no other test
uses, so tests sharing the server never see each other's tables. `fresh_server`: a private server on
its own data dir (for tests that restart, kill or reconfigure it), always killed afterwards.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

from kalamdb.testing.single import ServerProcess, get_global_server, start_server

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def server() -> ServerProcess:
    return get_global_server()


@pytest.fixture
def unique_ns(request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-zA-Z0-9_]", "_", request.node.name)[:40].strip("_").lower() or "t"
    return f"{base}_{os.getpid()}_{next(_counter)}"


@pytest.fixture
def fresh_server(tmp_path):
    proc = start_server(tmp_path / "data")
    try:
        yield proc
    finally:
        proc.kill()
