"""pytest plugin (entry point `pytest11`): kalamdb fixtures for any test suite."""
