"""Fixtures of the quantizer and importer tests."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _fresh_rng(request):
    """A module's ``RNG`` is reseeded from each test's name, so that a test draws the same
    weights and data whatever ran before it (one module-wide generator made a case's data
    depend on the tests selected and their order)."""
    if hasattr(request.module, "RNG"):
        request.module.RNG = np.random.default_rng(zlib.crc32(request.node.name.encode()))
