"""Shared fixtures: an engine on the memory store, and clients to it."""

from __future__ import annotations

import pytest

API_KEY = "test-api-key-0123456789"


@pytest.fixture
def api_key() -> str:
    return API_KEY
