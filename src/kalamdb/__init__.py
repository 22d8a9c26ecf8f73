"""kalamdb: a KalamDB-compatible SQL database on a Raft cluster, and a kit that proves it correct."""

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy so that `import kalamdb` stays cheap for the server and the simulator.
    if name in ("Client", "AsyncClient"):
        from kalamdb import client

        return getattr(client, name)
    raise AttributeError(name)
