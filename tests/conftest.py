"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "ws"])
def transport(request: pytest.FixtureRequest) -> str:
    """Which client the test talks through: in-process, or a real websocket."""
    return request.param
