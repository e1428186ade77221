"""Fixtures: the action API served over real TLS by aiohttp, in front of an API server (``cluster_server``)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions.http import setup_actions
from nichotplug.certs import CertBundle, make_bundle, server_ssl_context
from nichotplug.kube.client import api_client_with_token


@dataclass
class Answer:
    status: int
    body: Any  # decoded JSON, or None for an empty body


@pytest.fixture(scope="session")
def serving_bundle() -> CertBundle:
    return make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])


def client_context(bundle: CertBundle) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=bundle.ca_cert_pem.decode())


class ActionClient:
    """Posts action requests over HTTPS, verifying the server against our test CA."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession, token: str) -> None:
        self.base_url = base_url
        self.session = session
        self.token = token

    async def post(self, namespace: str, name: str, action: str, body: Any = None, *,
                   token: str | None = None, raw: bytes | None = None, short_path: bool = False) -> Answer:
        kind = "vm" if short_path else "kubevirt.io.virtualmachines"
        url = f"{self.base_url}/v1/harvester/{kind}/{namespace}/{name}"
        headers = {"Content-Type": "application/json"}
        use = self.token if token is None else token
        if use:
            headers["Authorization"] = f"Bearer {use}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        async with self.session.post(url, params={"action": action}, data=data, headers=headers) as response:
            text = await response.text()
            return Answer(response.status, json.loads(text) if text else None)


StartActions = Callable[..., Awaitable[ActionClient]]


@pytest.fixture
async def start_actions(aiohttp_server: Any, api_client: ApiClient, cluster_server: Any,
                        serving_bundle: CertBundle) -> AsyncIterator[StartActions]:
    """``await start_actions(migrate=True)``: the action API on its own TLS port; a client for it."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(*, migrate: bool = True) -> ActionClient:
        app = web.Application()
        setup_actions(app, api_client_factory=lambda token: api_client_with_token(api_client, token),
                      migrate=migrate)
        server = await aiohttp_server(app, ssl=server_ssl_context(serving_bundle))
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(serving_bundle)))
        sessions.append(session)
        return ActionClient(str(server.make_url("")).rstrip("/"), session, cluster_server.admin_token)

    yield start
    for session in sessions:
        await session.close()


@pytest.fixture
async def actions_client(start_actions: StartActions) -> ActionClient:
    return await start_actions()
