"""Shared pytest wiring. Fixtures (`server`, `unique_ns`, `fresh_server`, `cluster`, `fresh_cluster`,
`make_cluster`) come from the kalamdb pytest plugin, which the installed package registers as a
`pytest11` entry point; when plugin autoloading is off, this file loads it instead."""

import os
from importlib.metadata import entry_points


def _plugin_autoloaded() -> bool:
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == "kalamdb.testing.plugin" for ep in entry_points(group="pytest11"))


pytest_plugins = [] if _plugin_autoloaded() else ["kalamdb.testing.plugin"]
