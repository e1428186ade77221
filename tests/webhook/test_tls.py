"""The serving certificate: TLS 1.2+, reloaded from its files while clients stay connected."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import REGISTRY

from nichotplug.certs import CertBundle, make_serving_cert, write_bundle
from nichotplug.webhook.tls import CertReloader

from .webhook_support import ServeFn


def _hello_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def _new_serving_pair(bundle: CertBundle) -> CertBundle:
    """A second serving certificate from the same CA (what a rotation produces)."""
    cert, key = make_serving_cert(
        bundle.ca_cert_pem, bundle.ca_key_pem, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
    )
    return CertBundle(ca_cert_pem=bundle.ca_cert_pem, cert_pem=cert, key_pem=key)


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


async def _fresh_handshake_cert(port: int, client_ssl: ssl.SSLContext) -> bytes:
    """The certificate a brand-new TLS connection is shown."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        cert: bytes = ssl_object.getpeercert(binary_form=True)
        return cert
    finally:
        writer.close()
        await writer.wait_closed()


async def _wait_for(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110 - the state belongs to a poller we only observe
            await asyncio.sleep(0.01)
    assert condition(), what


def _reload_failures() -> float:
    return REGISTRY.get_sample_value("nichotplug_webhook_tls_reloads_total", {"result": "failure"}) or 0.0


async def _http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive HTTP/1.1 GET on an open connection; the body."""
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    headers = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
    length = int(headers[b"content-length"])
    return await reader.readexactly(length)


async def test_rotation_keeps_open_connection_and_serves_new_cert_to_new_handshakes(
    serve_tls: ServeFn, reloader: CertReloader, cert_dir: Path, bundle: CertBundle, client_ssl: ssl.SSLContext
) -> None:
    server = await serve_tls(_hello_app())
    rotated = _new_serving_pair(bundle)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ssl)
    try:
        assert await _http_get(reader, writer) == b"hello"
        assert writer.get_extra_info("ssl_object").getpeercert(True) == _der(bundle.cert_pem)

        write_bundle(rotated, cert_dir)
        await _wait_for(lambda: reloader.generation == 2, "the poller never loaded the rotated pair")

        # The open keep-alive connection goes on answering, on its original certificate...
        assert await _http_get(reader, writer) == b"hello"
        assert writer.get_extra_info("ssl_object").getpeercert(True) == _der(bundle.cert_pem)
        # ...while a new handshake is shown the new one, and a verifying client is happy with it.
        assert await _fresh_handshake_cert(server.port, client_ssl) == _der(rotated.cert_pem)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl)) as session,
            session.get(f"https://127.0.0.1:{server.port}/") as response,
        ):
            assert await response.text() == "hello"
    finally:
        writer.close()
        await writer.wait_closed()


def _served_expiry() -> float | None:
    return REGISTRY.get_sample_value("nichotplug_serving_certificate_expiry_timestamp_seconds")


def _not_after(pem: bytes) -> float:
    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


async def test_the_expiry_metric_follows_the_certificate_in_service(
    reloader: CertReloader, cert_dir: Path, bundle: CertBundle
) -> None:
    # Whoever wrote the files (cert-manager, a mounted Secret, nichotplug certs): an expiry alert reads this.
    assert _served_expiry() == _not_after(bundle.cert_pem)
    cert, key = make_serving_cert(bundle.ca_cert_pem, bundle.ca_key_pem, dns_names=["localhost"],
                                  valid_for=datetime.timedelta(days=30))
    write_bundle(CertBundle(ca_cert_pem=bundle.ca_cert_pem, cert_pem=cert, key_pem=key), cert_dir)
    await _wait_for(lambda: reloader.generation == 2, "the poller never loaded the rotated pair")
    assert _served_expiry() == _not_after(cert) < _not_after(bundle.cert_pem)


async def test_bad_new_pair_keeps_the_old_certificate(
    serve_tls: ServeFn, reloader: CertReloader, cert_dir: Path, bundle: CertBundle, client_ssl: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await serve_tls(_hello_app())
    other = _new_serving_pair(bundle)
    failures = _reload_failures()
    # A certificate with somebody else's key: what a half-finished rotation looks like.
    (cert_dir / "tls.crt").write_bytes(other.cert_pem)
    await _wait_for(lambda: _reload_failures() > failures, "the bad pair was never tried")
    assert reloader.loaded
    assert reloader.generation == 1
    assert await _fresh_handshake_cert(server.port, client_ssl) == _der(bundle.cert_pem)
    assert "do not load" in caplog.text
    # Once the key arrives too, the pair is good and goes into service.
    (cert_dir / "tls.key").write_bytes(other.key_pem)
    await _wait_for(lambda: reloader.generation == 2, "the completed pair was never loaded")
    assert await _fresh_handshake_cert(server.port, client_ssl) == _der(other.cert_pem)


async def test_missing_files_at_start_is_a_clear_error(tmp_path: Path) -> None:
    tls = CertReloader(tmp_path / "tls.crt", tmp_path / "tls.key")
    with pytest.raises(RuntimeError, match=r"cannot read .*tls\.crt"):
        await tls.start()
    assert not tls.loaded


async def test_unready_reloader_refuses_handshakes_then_serves_once_files_appear(
    tmp_path: Path, bundle: CertBundle, client_ssl: ssl.SSLContext
) -> None:
    tls = CertReloader(tmp_path / "tls.crt", tmp_path / "tls.key", poll_seconds=0.02)
    await tls.start(require_loaded=False)
    server = TestServer(_hello_app(), host="127.0.0.1")
    await server.start_server(ssl=tls.context)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):  # the server aborts the handshake
            await _fresh_handshake_cert(server.port, client_ssl)
        write_bundle(bundle, tmp_path)
        await _wait_for(lambda: tls.loaded, "the files were never picked up")
        assert await _fresh_handshake_cert(server.port, client_ssl) == _der(bundle.cert_pem)
    finally:
        await server.close()
        await tls.stop()


async def test_tls_1_2_is_the_minimum_and_1_3_is_offered(
    serve_tls: ServeFn, reloader: CertReloader, client_ssl: ssl.SSLContext
) -> None:
    server = await serve_tls(_hello_app())
    assert reloader.context.minimum_version == ssl.TLSVersion.TLSv1_2
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client_ssl.minimum_version = client_ssl.maximum_version = version
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client_ssl)
        assert writer.get_extra_info("ssl_object").version() == version.name.replace("_", ".")
        writer.close()
        await writer.wait_closed()
