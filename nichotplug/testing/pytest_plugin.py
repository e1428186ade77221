"""Pytest fixtures for the in-process API server (loaded by ``tests/conftest.py``).

- ``apiserver``: a started :class:`ApiServer` with the bundled CRDs installed (function scope).
- ``kubeconfig``: an admin kubeconfig for it in ``tmp_path``.
- ``api_client``: a kubernetes-asyncio ``ApiClient`` configured from that kubeconfig, closed after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nichotplug.testing.server import ApiServer


@pytest_asyncio.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    server = ApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(apiserver: ApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest_asyncio.fixture
async def api_client(kubeconfig: Path) -> AsyncIterator[Any]:
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        await api.close()
