"""The `kalamdb` command. Each subcommand lives beside the layer it drives and is imported lazily,
so `kalamdb sim` never loads aiohttp and `kalamdb serve` never loads the simulator."""

from __future__ import annotations

import importlib

import click

from kalamdb import __version__

# name -> "module:attribute" of a click command
SUBCOMMANDS: dict[str, str] = {
    "serve": "kalamdb.server.cli:serve_command",
    "sql": "kalamdb.client_cli:sql_command",
    "sim": "kalamdb.sim.cli:sim_command",
    "check": "kalamdb.chaos.check_cli:check_command",
    "cluster": "kalamdb.node.cluster_cli:cluster_command",
    "bench": "kalamdb.bench.cli:bench_command",
    "chaos": "kalamdb.chaos.cli:chaos_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a layer not built yet
            raise click.ClickException(f"'kalamdb {name}' is not available: {exc}") from exc
        return getattr(module, attr)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="kalamdb")
def main() -> None:
    """kalamdb: a KalamDB-compatible SQL database on a Raft cluster."""
