"""Fixtures for the in-process API server's own tests (helpers live in ``api_helpers``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from api_helpers import RawClient

from nichotplug.testing import ApiServer


@pytest_asyncio.fixture
async def raw(apiserver: ApiServer) -> AsyncIterator[RawClient]:
    """Plain HTTPS calls to the test's API server."""
    http = RawClient(apiserver)
    yield http
    await http.close()
