"""pytest plugin (entry point `pytest11`, active wherever kalamdb is installed): kalamdb fixtures.

Fixtures:
  cluster        the shared 3-node cluster of the test process (get_cluster_server()), or the
                 external cluster named by KALAMDB_CLUSTER_URLS; for tests that leave it as they
                 found it (stopped or paused nodes are brought back before the next test).
  fresh_cluster  a new cluster for one test; `@pytest.mark.cluster(nodes=5, faults=True, ...)`
                 sets its options (ClusterTestServer fields). Skipped against an external cluster.
  make_cluster   a factory of fresh clusters (several per test, each shut down at its end).
  server, unique_ns, fresh_server   one real single-node server (see fixtures_single).
  chaos_run      runs one chaos scenario (`@pytest.mark.chaos(...)`) and returns its result.

Markers: `cluster(**options)` (options of `fresh_cluster`), `process_control` (the test kills,
pauses or restarts nodes of the shared `cluster`: skipped when that cluster is external, since the
kit has no process control over it).

`--kalamdb-keep` keeps data dirs and logs. A failed test keeps them too, and its report gets a
"kalamdb cluster" section with each node's log tail, the seed and where the artifacts are.
With `-s` the kit prints progress lines (🚀 … ✅); quiet otherwise. KALAMDB_LOG=debug raises the
nodes' log level.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from kalamdb.chaos.pytest_support import chaos_run_fixture  # noqa: F401 - provides `chaos_run`
from kalamdb.testing.fixtures_single import fresh_server, server, unique_ns  # noqa: F401 - fixtures

if TYPE_CHECKING:
    from kalamdb.testing.ops import ClusterOps

_CLUSTERS = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kalamdb")
    group.addoption("--kalamdb-keep", action="store_true", default=False,
                    help="keep kalamdb clusters' data dirs and node logs after the run")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster(nodes=3, **options): a test against real multi-node kalamdb clusters; the "
                   "options configure the `fresh_cluster` fixture (see ClusterTestServer's fields)")
    config.addinivalue_line(
        "markers", "process_control: the test stops, kills, pauses or restarts nodes of the shared `cluster` "
                   "(skipped against an external cluster, KALAMDB_CLUSTER_URLS)")


def _verbose(config: pytest.Config) -> bool:
    return config.getoption("capture") == "no"


def _track(request: pytest.FixtureRequest, cluster: ClusterOps[Any]) -> None:
    request.node.stash.setdefault(_CLUSTERS, []).append(cluster)


def marker_options(item: pytest.Item) -> dict[str, Any]:
    """The merged keyword options of every `cluster` marker on the test (closest wins)."""
    options: dict[str, Any] = {}
    for mark in item.iter_markers("cluster"):
        if mark.args:
            raise pytest.UsageError(f"{item.nodeid}: use keywords in @pytest.mark.cluster(...), e.g. "
                                    f"cluster(nodes=5); got positional {mark.args}")
        for k, v in mark.kwargs.items():
            options.setdefault(k, v)
    return options


def _is_external() -> bool:
    import os

    return bool(os.environ.get("KALAMDB_CLUSTER_URLS", "").strip())


@pytest.fixture
def cluster(request: pytest.FixtureRequest):
    """The shared cluster (started on first use, reused by every test of the process)."""
    from kalamdb.testing.cluster import get_cluster_server

    if _is_external() and request.node.get_closest_marker("process_control") is not None:
        pytest.skip(f"{request.node.name} needs process control (@pytest.mark.process_control), which the kit "
                    "does not have over an external cluster (KALAMDB_CLUSTER_URLS)")
    c = get_cluster_server(verbose=_verbose(request.config))
    if request.config.getoption("kalamdb_keep"):
        c.keep_after_shutdown()
    _track(request, c)
    return c


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest) -> Iterator:
    """Factory for fresh clusters owned by one test (shut down at its end, whatever happens)."""
    from kalamdb.testing.cluster import start_cluster_server

    made: list = []

    def make(nodes: int = 3, **options: Any):
        if _is_external():
            pytest.skip("a fresh cluster needs process control, which the kit does not have over an "
                        "external cluster (KALAMDB_CLUSTER_URLS)")
        options.setdefault("verbose", _verbose(request.config))
        options.setdefault("keep", request.config.getoption("kalamdb_keep"))
        c = start_cluster_server(nodes, **options)
        made.append(c)
        _track(request, c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.shutdown()


@pytest.fixture
def fresh_cluster(request: pytest.FixtureRequest, make_cluster):
    """A new cluster for this test only; `@pytest.mark.cluster(nodes=5, ...)` sets its options."""
    options = marker_options(request.node)
    return make_cluster(options.pop("nodes", 3), **options)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    clusters = item.stash.get(_CLUSTERS, [])
    if not rep.failed or not clusters:
        return
    parts = []
    for c in clusters:
        c.keep_after_shutdown()  # a failed test keeps what explains it
        try:
            parts.append(c.describe())
        except Exception as exc:  # noqa: BLE001 - the report must not hide the test's failure
            parts.append(f"(could not describe the cluster: {exc!r})")
    rep.sections.append(("kalamdb cluster", "\n\n".join(parts)))
