"""Fixtures that drive a real Database (SQLite files in tmp_path) through tests/engine/harness.py."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import ROOT, Node

__all__ = ["ROOT", "Node"]


@pytest.fixture
def node(tmp_path):
    n = Node(tmp_path / "n1")
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def make_node(tmp_path):
    made: list[Node] = []

    def make(name: str = "n", **kwargs) -> Node:
        n = Node(tmp_path / name, **kwargs)
        made.append(n)
        return n

    try:
        yield make
    finally:
        for n in made:
            n.close()
