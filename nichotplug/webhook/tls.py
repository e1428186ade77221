"""The serving certificate: TLS 1.2+, read from files and reloaded when they change.

The listening socket keeps one SSLContext for its whole life. Its SNI callback
(which OpenSSL >= 1.1.1 calls on every handshake, with or without a server
name) hands each new connection the context built from the newest good
certificate/key pair. So a rotated certificate (a Secret volume update,
cert-manager, ``nichotplug certs``) is served from the next handshake on,
connections already open keep theirs, and nothing restarts.

The files are compared by content hash every few seconds: mtimes lie on
Secret volumes (symlink swaps) and copies, a hash does not. A new pair that
does not load (half-written, key not matching the certificate) is logged and
ignored: the old one stays in service, and it is retried while it differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from pathlib import Path

from cryptography import x509

from nichotplug.webhook import metrics

log = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 5.0


def _server_context(client_ca_pem: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_ca_pem:
        _request_client_certificates(context, client_ca_pem)
    return context


def _request_client_certificates(context: ssl.SSLContext, client_ca_pem: str) -> None:
    """Ask every client for a certificate signed by ``client_ca_pem``, and accept one that sends none.

    The subresource API needs kube-apiserver's front-proxy certificate; the webhooks, probes and
    action API on the same port are called without one and must keep working.
    """
    context.load_verify_locations(cadata=client_ca_pem)
    context.verify_mode = ssl.CERT_OPTIONAL


def _expiry(cert_file: Path) -> float:
    """When the first certificate of the PEM chain in ``cert_file`` (the one served) expires, Unix time.

    ``load_cert_chain`` just accepted the file, so it parses; a file swapped meanwhile gives 0.
    """
    try:
        return x509.load_pem_x509_certificate(cert_file.read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return 0.0


class CertReloader:
    """Owns the listening SSLContext and keeps its certificate in step with two PEM files."""

    def __init__(self, cert_file: Path | str, key_file: Path | str, *, poll_seconds: float = DEFAULT_POLL_SECONDS):
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.poll_seconds = poll_seconds
        self.context = _server_context()
        self.context.sni_callback = self._choose_context
        self.generation = 0  # how many pairs were loaded so far (0: none, not ready)
        self._current: ssl.SSLContext | None = None
        self._client_ca_pem: str | None = None
        self._digest: bytes | None = None
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        """True once a certificate/key pair is in service."""
        return self._current is not None

    def _choose_context(self, ssl_object: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> int | None:
        current = self._current
        if current is None:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        if current is not ssl_object.context:
            ssl_object.context = current
        return None

    def reload(self) -> bool:
        """Load the files if their content changed; True when a new pair went into service."""
        try:
            digest = self._read_digest()
        except OSError as error:
            self._note_failure(f"cannot read {self.cert_file} / {self.key_file}: {error}")
            return False
        if digest == self._digest:
            return False
        try:
            fresh = _server_context(self._client_ca_pem)
            fresh.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError, ValueError) as error:
            self._note_failure(f"new certificate/key in {self.cert_file} / {self.key_file} do not load: {error}")
            return False
        if self._current is None:
            # Also serve it from the listening context itself, in case a TLS library ever skips the callback.
            self.context.load_cert_chain(self.cert_file, self.key_file)
        self._current = fresh
        self._digest = digest
        self._last_error = None
        self.generation += 1
        metrics.TLS_RELOADS.labels("success").inc()
        metrics.CERT_EXPIRY.set(_expiry(self.cert_file))
        log.info("serving certificate loaded from %s (generation %d)", self.cert_file, self.generation)
        return True

    def trust_client_ca(self, client_ca_pem: str | None) -> None:
        """Request client certificates signed by this CA from the next handshake on (None: by none).

        The listening context only ever gains CAs (OpenSSL cannot forget one); the context each
        handshake is handed holds exactly the current ones. Whoever reads the certificate checks it
        against the current CA again (``actions.frontproxy``), so a CA dropped here is not trusted.
        """
        if client_ca_pem == self._client_ca_pem:
            return
        self._client_ca_pem = client_ca_pem
        if client_ca_pem:
            _request_client_certificates(self.context, client_ca_pem)
        else:  # each new connection takes its verify mode from the listening context
            self.context.verify_mode = ssl.CERT_NONE
        if self._current is not None:
            self._digest = None  # rebuild the handshake context from the same files with the new CA
            self.reload()
        log.info("client certificates %s", "requested (front-proxy CA loaded)" if client_ca_pem else "not requested")

    def _read_digest(self) -> bytes:
        hasher = hashlib.sha256(self.cert_file.read_bytes())
        hasher.update(b"\0")
        hasher.update(self.key_file.read_bytes())
        return hasher.digest()

    def _note_failure(self, message: str) -> None:
        # Log each distinct problem once (not every poll), but count every failed attempt.
        metrics.TLS_RELOADS.labels("failure").inc()
        if message != self._last_error:
            still = "keeping the certificate in service" if self.loaded else "no certificate in service yet"
            log.error("%s; %s", message, still)
            self._last_error = message

    async def start(self, *, require_loaded: bool = True) -> None:
        """Load the pair now and poll the files from then on.

        With ``require_loaded`` a pair that does not load is an error (a typo in
        a path should stop ``serve``, not leave it unready forever).
        """
        self.reload()
        if require_loaded and not self.loaded:
            raise RuntimeError(self._last_error or f"cannot load {self.cert_file} / {self.key_file}")
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="nichotplug-tls-reload")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                self.reload()
            except Exception:  # never let the watcher die: a dead watcher serves an expiring cert forever
                log.exception("unexpected error while checking the serving certificate")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
