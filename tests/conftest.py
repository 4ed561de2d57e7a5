"""Shared fixtures."""

from __future__ import annotations

import pytest

from .helpers import API_KEY


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture(params=["memory", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    """Which client the test talks through: in-process, or a real websocket."""
    return request.param
