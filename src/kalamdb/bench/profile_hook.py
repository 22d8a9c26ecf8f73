"""`kalamdb bench --profile-dir DIR`: run each kalamdb node under cProfile, one .pstats per node.

The nodes are ordinary `python -m kalamdb serve` processes started by the test kit, so the hook is
a `sitecustomize` module put first on their PYTHONPATH: it starts cProfile at interpreter start-up
and dumps the stats when the node exits normally (the bench stops nodes with SIGTERM). Only the
event-loop thread is profiled; read the files with `python -m pstats FILE` (sort tottime).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

PROFILE_ENV = "KALAMDB_BENCH_PROFILE"

_SITECUSTOMIZE = '''\
import os
_dir = os.environ.get("KALAMDB_BENCH_PROFILE")
if _dir:
    import atexit
    import cProfile

    _profile = cProfile.Profile()
    _profile.enable()

    def _dump():
        _profile.disable()
        name = f"node{os.environ.get('KALAMDB_NODE_ID', 'x')}-{os.getpid()}.pstats"
        _profile.dump_stats(os.path.join(_dir, name))

    atexit.register(_dump)
'''


def profile_env(out_dir: Path) -> dict[str, str]:
    """Environment for node processes that makes each write a cProfile dump into `out_dir`."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"PYTHONPATH": pythonpath_with_sitecustomize(_SITECUSTOMIZE, "kalamdb-bench-profhook-"),
            PROFILE_ENV: str(out_dir)}


def pythonpath_with_sitecustomize(source: str, prefix: str) -> str:
    """A PYTHONPATH for node processes whose first entry is a new temporary directory holding
    `sitecustomize.py` with `source` (removed when this process exits, after the nodes it ran)."""
    hook = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, hook, ignore_errors=True)  # the nodes are stopped by then
    (hook / "sitecustomize.py").write_text(source)
    return os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)
