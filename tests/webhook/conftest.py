"""Fixtures for the webhook tests: real certificates, a real TLS server, a verifying client."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from nichotplug.certs import CertBundle, make_bundle, write_bundle
from nichotplug.serving import start_tls_runner
from nichotplug.webhook.tls import CertReloader

from .webhook_support import Served, ServeFn


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
    """Serve an app over TLS (the reloader's live context) on 127.0.0.1 as ``serve`` does, front door
    included; all stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> Served:
        runner, door = await start_tls_runner(app, "127.0.0.1", 0, reloader.context)
        runners.append(runner)
        return Served(runner, door, runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as client:
        yield client
