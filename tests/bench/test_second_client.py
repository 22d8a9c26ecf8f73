"""tools/second_client.py, the independent cross-check of the bench: it starts both systems, writes
to each through every member, and reports per-round figures and the medians' ratios."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "second_client.py"


def test_the_second_client_imports_nothing_of_kalamdb():
    source = SCRIPT.read_text()
    assert not re.search(r"^\s*(import|from)\s+kalamdb", source, re.MULTILINE)


@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd-server not installed (apt-get install etcd-server)")
def test_one_short_round_against_both_systems_reports_ratios():
    kalamdb_bin = str(Path(sys.executable).parent / "kalamdb")
    out = subprocess.run([sys.executable, str(SCRIPT), "--clients", "1,4", "--duration", "0.5", "--rounds", "1",
                          "--seed", "7", "--kalamdb-bin", kalamdb_bin],
                         capture_output=True, text=True, timeout=180, check=True).stdout
    rounds = re.findall(r"round 1 (\w+)\s+clients\s+(\d+):\s+(\d+) writes/s.*errors (\d+)", out)
    assert {(s, int(c)) for s, c, _, _ in rounds} == {("kalamdb", 1), ("kalamdb", 4), ("etcd", 1), ("etcd", 4)}, out
    assert all(int(w) > 0 and int(e) == 0 for _, _, w, e in rounds), out
    assert re.search(r"clients\s+4: kalamdb .* \| p50 x[\d.]+, throughput x[\d.]+", out), out
