"""Fixtures for the fault tests (helpers live in faults_frames.py, importable from here)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from faults_frames import FrameServer

from kalamdb.testing.netproxy import NetworkController


@pytest.fixture
def seed():
    value = int(os.environ.get("KALAMDB_TEST_SEED", "0")) or int.from_bytes(os.urandom(4), "big")
    print(f"netproxy seed={value} (replay with KALAMDB_TEST_SEED={value})")
    return value


@pytest.fixture
def net(seed):
    ctl = NetworkController(seed=seed)
    try:
        yield ctl
    finally:
        ctl.close()


@pytest.fixture
async def server():
    srv = FrameServer()
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
