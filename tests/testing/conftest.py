"""Fixtures for the in-process API server's own tests (helpers live in ``api_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from nichotplug.testing import ApiServer

from .api_support import RawClient


@pytest_asyncio.fixture
async def raw(apiserver: ApiServer) -> AsyncIterator[RawClient]:
    """Plain HTTPS calls to the test's API server."""
    http = RawClient(apiserver)
    yield http
    await http.close()
