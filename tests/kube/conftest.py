"""Fixtures for the nichotplug.kube tests (helpers live in ``kube_support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from kubernetes_asyncio.client import ApiClient

from nichotplug.kube.cache import ClusterView
from nichotplug.testing.server import ApiServer

from .kube_support import FAST


@pytest_asyncio.fixture
async def small_history_server() -> AsyncIterator[ApiServer]:
    """An API server that keeps only 3 watch events, so a watch that falls behind gets 410 Expired."""
    server = ApiServer(watch_history=3)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def view(api_client: ApiClient) -> AsyncIterator[ClusterView]:
    """A started ClusterView on the default test server (not yet synced: tests await it)."""
    cluster_view = ClusterView(api_client, settings=FAST)
    await cluster_view.start()
    try:
        yield cluster_view
    finally:
        await cluster_view.stop()
