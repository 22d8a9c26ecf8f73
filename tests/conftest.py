"""Shared pytest wiring: fixtures for real single-node servers (`server`, `unique_ns`, `fresh_server`)."""

pytest_plugins = ["kalamdb.testing.fixtures_single"]
