"""The pytest plugin seen from a user's test suite: a real `pytest` run in a subprocess whose tests
use the fixtures, with and without -s, --kalamdb-keep and KALAMDB_LOG=debug."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

SUITE = textwrap.dedent('''
    import os
    import pytest

    pytestmark = pytest.mark.cluster

    @pytest.mark.cluster(nodes=1, heartbeat_ms=40)
    def test_passes(fresh_cluster):
        assert len(fresh_cluster.nodes) == 1 and fresh_cluster.heartbeat_ms == 40
        fresh_cluster.step("Step 1: write")
        r = fresh_cluster.execute_sql_on_random("CREATE NAMESPACE plugin_ns")
        fresh_cluster.wait_for_replication(r.raft_index)
        with open(os.environ["ROOTS_FILE"], "a") as f:
            f.write(f"{fresh_cluster.root}\\n")

    def test_fails(fresh_cluster):
        with open(os.environ["ROOTS_FILE"], "a") as f:
            f.write(f"{fresh_cluster.root}\\n")
        assert fresh_cluster.leader().node_id == 99, "deliberate failure"
''')


def _run(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[Path]]:
    (tmp_path / "test_user_suite.py").write_text(SUITE)
    roots_file = tmp_path / "roots.txt"
    roots_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KALAMDB_", "PYTEST_"))}
    env["ROOTS_FILE"] = str(roots_file)
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hypothesispytest",
           "test_user_suite.py", *args]
    run = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    roots = [Path(line) for line in roots_file.read_text().split()] if roots_file.exists() else []
    return run, roots


def test_a_failure_report_shows_node_logs_and_kept_artifacts_and_s_shows_progress(tmp_path):
    run, roots = _run(tmp_path, "-s", "--kalamdb-keep", env_extra={"KALAMDB_LOG": "debug"})
    try:
        out = run.stdout + run.stderr
        assert run.returncode == 1 and "1 failed, 1 passed" in out, out
        # -s: progress lines in the seed's style
        for line in ("🚀 Starting 1-node cluster", "📍 Starting node 1 of 1", "✅ 1-node cluster started",
                     "📝 Step 1: write", "⏳ Waiting for replication", "✅ Replicated to all nodes"):
            assert line in out, (line, out)
        # the failure report: a section with the seed, where artifacts are, each node's log tail
        assert "kalamdb cluster" in out and "deliberate failure" in out, out
        failing_root = roots[1]
        assert f"artifacts (data dirs, node logs): {failing_root}" in out, out
        assert "KALAMDB_SEED=" in out and "node1.log" in out, out
        assert "---- kit: starting node 1" in out, out  # a node's log tail is shown
        # --kalamdb-keep kept both clusters' dirs; KALAMDB_LOG=debug reached the nodes
        assert all((r / "node1" / "state.sqlite").exists() for r in roots), roots
        assert any(" DEBUG " in log.read_text() for log in roots[1].glob("node*.log")), roots[1]
    finally:
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)


def test_quiet_without_s_a_passing_test_leaves_nothing_a_failed_one_keeps_its_artifacts(tmp_path):
    run, roots = _run(tmp_path)
    try:
        out = run.stdout + run.stderr
        assert run.returncode == 1 and "1 failed, 1 passed" in out, out
        assert "🚀" not in out and "📝" not in out and "⏳" not in out, out
        passed_root, failed_root = roots
        assert not passed_root.exists(), f"a passing test's cluster dir was left: {passed_root}"
        assert f"artifacts (data dirs, node logs): {failed_root}" in out, out
        logs = [log.read_text() for log in failed_root.glob("node*.log")]
        assert len(logs) == 3 and all(" INFO " in t and " DEBUG " not in t for t in logs)
    finally:
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)
