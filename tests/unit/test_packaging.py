"""pyproject.toml as an installer reads it: the license is an SPDX expression (PEP 639), not the
deprecated `{ text = ... }` table that made setuptools warn on every install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# setuptools reads a string `license` as an SPDX expression from 77.0 on; older ones reject it
SPDX_SETUPTOOLS = (77, 0)


def _load() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def test_license_is_an_spdx_expression_string():
    license_ = _load()["project"]["license"]
    assert isinstance(license_, str), f"license must be an SPDX string, got the table form {license_!r}"
    assert license_ == "Apache-2.0"


def test_the_build_backend_is_new_enough_to_read_it():
    requires = _load()["build-system"]["requires"]
    pins = [m for r in requires if (m := re.fullmatch(r"setuptools\s*>=\s*(\d+)(?:\.(\d+))?", r))]
    assert pins, f"setuptools must be pinned with >= in {requires}"
    assert (int(pins[0][1]), int(pins[0][2] or 0)) >= SPDX_SETUPTOOLS
