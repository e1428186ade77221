"""Fixtures for the webhook tests: real certificates, a real TLS server, a verifying client."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from webhook_support import ServeFn

from nichotplug.certs import CertBundle, make_bundle, write_bundle
from nichotplug.webhook.tls import CertReloader


@pytest.fixture
def bundle() -> CertBundle:
    return make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])


@pytest.fixture
def cert_dir(tmp_path: Path, bundle: CertBundle) -> Path:
    write_bundle(bundle, tmp_path)
    return tmp_path


@pytest.fixture
async def reloader(cert_dir: Path) -> AsyncIterator[CertReloader]:
    tls = CertReloader(cert_dir / "tls.crt", cert_dir / "tls.key", poll_seconds=0.05)
    await tls.start()
    yield tls
    await tls.stop()


@pytest.fixture
def client_ssl(bundle: CertBundle) -> ssl.SSLContext:
    """A client context that trusts only the test CA and checks the host name, as the API server does."""
    return ssl.create_default_context(cadata=bundle.ca_cert_pem.decode())


@pytest.fixture
async def serve_tls(reloader: CertReloader) -> AsyncIterator[ServeFn]:
    """Start an app over TLS (the reloader's live context) on 127.0.0.1; all stopped at teardown."""
    servers: list[TestServer] = []

    async def start(app: web.Application) -> TestServer:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(ssl=reloader.context)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as client:
        yield client
