"""Fixtures for the fault tests (helpers live in faults_frames.py, importable from here)."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from faults_frames import FrameServer

from kalamdb.testing.netproxy import NetworkController
from kalamdb.testing.seeds import default_seed, replay_hint


@pytest.fixture
def seed():
    value = default_seed()
    print(f"netproxy seed={value} ({replay_hint(value)})")
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
