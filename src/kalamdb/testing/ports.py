"""The kit's name for `kalamdb.node.ports` (the port picker of `kalamdb cluster up`)."""

from kalamdb.node.ports import free_port_block

__all__ = ["free_port_block"]
