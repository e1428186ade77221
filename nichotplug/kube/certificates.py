"""Self-managed serving certificates: `nichotplug serve --self-managed-certs`.

Every replica runs one :class:`CertificateManager`. It keeps three things in step:

* the TLS Secret in the service's namespace (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key``): created
  with a fresh CA and serving certificate when missing; when two replicas race to create it, the loser
  of the ``409 AlreadyExists`` reads and uses the winner's;
* the certificate files the HTTPS server reloads from (written only when they change, key before
  certificate; the reloader keeps its old context if it catches the pair half-written);
* the ``caBundle`` of both webhook configurations and, when the subresource API is served, of its
  APIService (patched only when it differs, with a JSON Patch that tests ``metadata.resourceVersion``
  so a concurrent edit is never overwritten).

Rotation: when less than ``rotate_fraction`` of the serving certificate's validity remains, a replica
signs a new one with the same CA and updates the Secret with its ``resourceVersion``; a replica that
loses that race re-reads the Secret. Replicas poll the Secret every ``check_interval`` and pick up the
new files; the old certificate is still valid meanwhile and the CA does not change, so no call fails.
When the CA itself nears its end (ten years by default) a new CA is made and the old one stays in
``ca.crt`` (and so in the caBundle, which is patched *before* the Secret changes) until it expires.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import enum
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient, ApiregistrationV1Api, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter

from nichotplug import certs

log = logging.getLogger(__name__)

CA_KEY_FILE = "ca.key"  # Secret key holding the CA's private key, beside the kubernetes.io/tls keys
_SECRET_KEYS = (certs.CA_FILE, CA_KEY_FILE, certs.CERT_FILE, certs.KEY_FILE)
_JSON_PATCH = "application/json-patch+json"
CA_BUNDLE_RETRY_SECONDS = 2.0

CERT_ROTATIONS = Counter(
    "nichotplug_certificate_rotations_total",
    "Certificates this replica issued into the TLS Secret.", ["kind"],
)


def _seed_rotation_kinds() -> None:
    """Every kind at 0 from the start, so a rate() or an alert sees the series before the first rotation."""
    for kind in ("created", *(renewal.value for renewal in Renewal if renewal is not Renewal.KEEP)):
        CERT_ROTATIONS.labels(kind=kind)


class CertificateError(RuntimeError):
    """The certificate Secret cannot be created, read or updated (e.g. RBAC forbids it)."""


_DURATION = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> datetime.timedelta:
    """``"365d"``, ``"12h"``, ``"30m"``, ``"90s"`` as a timedelta (the chart's duration format)."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration: write a whole number and s, m, h or d, e.g. 365d")
    return datetime.timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True)
class CertificateSettings:
    """Where the certificate lives, what it is for, and how long it lasts."""

    namespace: str
    secret_name: str
    service_name: str
    mutating_webhook: str
    validating_webhook: str
    cert_file: Path
    key_file: Path
    validity: datetime.timedelta = datetime.timedelta(days=365)
    ca_validity: datetime.timedelta = datetime.timedelta(days=3650)
    rotate_fraction: float = 1 / 3  # rotate when less than this share of the validity remains
    check_interval: float = 30.0  # seconds between polls of the Secret and the caBundles
    extra_names: tuple[str, ...] = ()  # more DNS names or IP addresses for the serving certificate
    apiservice: str = ""  # the APIService whose caBundle is kept in step too ("" = none)

    def __post_init__(self) -> None:
        for label, value in (("namespace", self.namespace), ("TLS Secret name", self.secret_name),
                             ("service name", self.service_name)):
            if not value:
                raise ValueError(f"self-managed certificates need a {label}")
        if self.validity <= datetime.timedelta(0) or self.ca_validity < self.validity:
            raise ValueError("certificate validity must be positive and no longer than the CA's")
        if not 0 < self.rotate_fraction < 1:
            raise ValueError(f"rotate_fraction must be between 0 and 1, got {self.rotate_fraction}")
        if self.check_interval <= 0:
            raise ValueError(f"check_interval must be positive, got {self.check_interval}")

    @property
    def ca_file(self) -> Path:
        return self.cert_file.with_name(certs.CA_FILE)

    @property
    def dns_names(self) -> list[str]:
        """The names the API server uses for the Service, then the extra DNS names."""
        svc, ns = self.service_name, self.namespace
        names = [svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local"]
        return names + [name for name in self.extra_names if not _is_ip(name)]

    @property
    def ip_addresses(self) -> list[str]:
        return [name for name in self.extra_names if _is_ip(name)]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def settings_from_args(args: argparse.Namespace) -> CertificateSettings:
    """Settings from the ``nichotplug serve`` flags (``--namespace`` falls back to $POD_NAMESPACE).

    Without ``--tls-cert-file``/``--tls-key-file`` the files go to a fresh private temporary folder.
    """
    namespace = args.namespace or os.environ.get("POD_NAMESPACE", "")
    if not namespace:
        raise ValueError("--self-managed-certs needs --namespace or $POD_NAMESPACE for its TLS Secret")
    if bool(args.tls_cert_file) != bool(args.tls_key_file):
        raise ValueError("give both --tls-cert-file and --tls-key-file, or neither")
    if args.tls_cert_file:
        cert_file, key_file = Path(args.tls_cert_file), Path(args.tls_key_file)
    else:
        folder = Path(tempfile.mkdtemp(prefix="nichotplug-tls-"))
        cert_file, key_file = folder / certs.CERT_FILE, folder / certs.KEY_FILE
    return CertificateSettings(
        namespace=namespace,
        secret_name=args.tls_secret,
        service_name=args.service_name,
        mutating_webhook=args.mutating_webhook,
        validating_webhook=args.validating_webhook,
        cert_file=cert_file,
        key_file=key_file,
        validity=parse_duration(args.cert_validity),
        check_interval=parse_duration(args.cert_check_interval).total_seconds(),
        extra_names=tuple(args.cert_extra_name),
        apiservice=getattr(args, "apiservice", "") or "",
    )


@dataclass(frozen=True)
class TlsMaterial:
    """The Secret's content: the CA bundle (signing CA first), the CA key, the serving pair (PEM)."""

    ca_bundle_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> TlsMaterial:
        """Decode a Secret's ``data``; raises ValueError naming the first missing or undecodable key."""
        data = data or {}
        decoded: dict[str, bytes] = {}
        for key in _SECRET_KEYS:
            if not data.get(key):
                raise ValueError(f"the TLS Secret has no {key}")
            try:
                decoded[key] = base64.b64decode(data[key], validate=True)
            except ValueError as exc:
                raise ValueError(f"the TLS Secret's {key} is not base64: {exc}") from exc
        return cls(decoded[certs.CA_FILE], decoded[CA_KEY_FILE], decoded[certs.CERT_FILE], decoded[certs.KEY_FILE])

    def secret_data(self) -> dict[str, str]:
        values = (self.ca_bundle_pem, self.ca_key_pem, self.cert_pem, self.key_pem)
        return {key: base64.b64encode(value).decode("ascii") for key, value in zip(_SECRET_KEYS, values, strict=True)}

    def ca_bundle_b64(self) -> str:
        return base64.b64encode(self.ca_bundle_pem).decode("ascii")


class Renewal(enum.Enum):
    """What the Secret's material needs."""

    KEEP = "keep"
    SERVING = "serving"  # a new serving certificate from the same CA
    CA = "ca"  # a new CA (the old one stays trusted until it expires) and a serving certificate


_seed_rotation_kinds()


@dataclass(frozen=True)
class Assessment:
    """What :func:`assess` found: the renewal the material needs, and why (for the log and the Event)."""

    renewal: Renewal
    reason: str = ""


def _nearly_expired(cert: x509.Certificate, now: datetime.datetime, fraction: float) -> bool:
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now < lifetime * fraction


def _san_names(cert: x509.Certificate) -> set[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _public_key_der(key_or_cert: Any) -> bytes:
    der: bytes = key_or_cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


def assess(material: TlsMaterial, settings: CertificateSettings, now: datetime.datetime) -> Assessment:
    """Whether the material can stay, needs a new serving certificate, or needs a new CA (pure)."""
    try:
        ca_cert = x509.load_pem_x509_certificates(material.ca_bundle_pem)[0]
        ca_key = serialization.load_pem_private_key(material.ca_key_pem, password=None)
    except ValueError as exc:
        return Assessment(Renewal.CA, f"the CA in the Secret is unreadable: {exc}")
    if _public_key_der(ca_key) != _public_key_der(ca_cert):
        return Assessment(Renewal.CA, "ca.key does not belong to the CA certificate")
    if _nearly_expired(ca_cert, now, settings.rotate_fraction):
        return Assessment(Renewal.CA, f"the CA expires at {ca_cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    try:
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        key = serialization.load_pem_private_key(material.key_pem, password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError) as exc:
        return Assessment(Renewal.SERVING, f"the serving certificate is unreadable or not from the CA: {exc}")
    except Exception as exc:  # cryptography's InvalidSignature is not a ValueError
        return Assessment(Renewal.SERVING, f"the serving certificate is not signed by the CA: {exc!r}")
    if _public_key_der(key) != _public_key_der(cert):
        return Assessment(Renewal.SERVING, "tls.key does not belong to tls.crt")
    missing = set(settings.dns_names) | set(settings.ip_addresses)
    missing -= _san_names(cert)
    if missing:
        return Assessment(Renewal.SERVING, f"the serving certificate does not cover {sorted(missing)}")
    if _nearly_expired(cert, now, settings.rotate_fraction):
        return Assessment(Renewal.SERVING,
                       f"the serving certificate expires at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return Assessment(Renewal.KEEP)


def _still_valid_cas(bundle_pem: bytes, now: datetime.datetime) -> list[bytes]:
    try:
        cas = x509.load_pem_x509_certificates(bundle_pem)
    except ValueError:
        return []
    return [ca.public_bytes(serialization.Encoding.PEM) for ca in cas if ca.not_valid_after_utc > now]


def renew(material: TlsMaterial | None, renewal: Renewal, settings: CertificateSettings,
          now: datetime.datetime) -> TlsMaterial:
    """New material: a serving certificate from the current CA, or a new CA too (old CAs stay trusted)."""
    if material is not None and renewal is Renewal.SERVING:
        ca_cert_pem = x509.load_pem_x509_certificates(material.ca_bundle_pem)[0].public_bytes(
            serialization.Encoding.PEM)
        ca_key_pem, bundle = material.ca_key_pem, material.ca_bundle_pem
    else:
        ca_days = max(1, round(settings.ca_validity / datetime.timedelta(days=1)))
        ca_cert_pem, ca_key_pem = certs.make_ca(f"{settings.service_name}.{settings.namespace}-ca", days=ca_days)
        old = _still_valid_cas(material.ca_bundle_pem, now) if material is not None else []
        bundle = b"".join([ca_cert_pem, *old])
    cert_pem, key_pem = certs.make_serving_cert(
        ca_cert_pem, ca_key_pem, dns_names=settings.dns_names, ip_addresses=settings.ip_addresses,
        valid_for=settings.validity,
    )
    return TlsMaterial(ca_bundle_pem=bundle, ca_key_pem=ca_key_pem, cert_pem=cert_pem, key_pem=key_pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class CertificateManager:
    """Keeps this replica's certificate files, the TLS Secret and the webhooks' caBundle in step."""

    api: ApiClient
    settings: CertificateSettings
    material: TlsMaterial | None = field(default=None, init=False)
    # Whether the last pass found both webhook configurations trusting our CA. Until then the API
    # server cannot call us (on a first install Helm creates them after the Deployment), so passes
    # come every CA_BUNDLE_RETRY_SECONDS instead of every check_interval.
    ca_bundles_in_place: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        # Typed as Any: we read raw JSON (_preload_content=False returns the HTTP response, not a model)
        # and name the PATCH content type, which the runtime accepts but the shipped stubs leave out.
        self._core: Any = CoreV1Api(self.api)
        self._admission: Any = AdmissionregistrationV1Api(self.api)
        self._registration: Any = ApiregistrationV1Api(self.api)

    @property
    def cert_file(self) -> Path:
        return self.settings.cert_file

    @property
    def key_file(self) -> Path:
        return self.settings.key_file

    async def ensure(self) -> TlsMaterial:
        """One pass: Secret created or renewed if needed, files written, caBundles patched.

        Raises CertificateError when the Secret cannot be read or written (the server cannot start
        without a certificate). A missing webhook configuration is only logged: Helm creates the
        configurations after the Deployment, and the next pass patches them.
        """
        material = await self._current_material()
        self._write_files(material)
        self.ca_bundles_in_place = await self._sync_ca_bundles(material.ca_bundle_b64())
        self.material = material
        return material

    async def run(self) -> None:
        """Repeat :meth:`ensure` every ``check_interval`` until cancelled; errors are logged, not raised."""
        while True:
            await asyncio.sleep(self.settings.check_interval if self.ca_bundles_in_place
                                else min(self.settings.check_interval, CA_BUNDLE_RETRY_SECONDS))
            try:
                await self.ensure()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("certificate check failed; serving with the current certificate, retrying")

    # -- the Secret ------------------------------------------------------------------------------------

    async def _current_material(self) -> TlsMaterial:
        for _attempt in range(5):
            secret = await self._read_secret()
            if secret is None:
                created = await self._create_secret(renew(None, Renewal.CA, self.settings, _now()))
                if created is not None:
                    return created
                continue  # another replica won the race: use its Secret
            material, assessment = self._assess_secret(secret)
            if assessment.renewal is Renewal.KEEP and material is not None:
                return material
            log.info("renewing certificate in Secret %s/%s: %s", self.settings.namespace,
                     self.settings.secret_name, assessment.reason)
            renewed = renew(material, assessment.renewal, self.settings, _now())
            if assessment.renewal is Renewal.CA:
                # Trust the new CA before any replica can serve a certificate signed by it.
                await self._sync_ca_bundles(renewed.ca_bundle_b64())
            updated = await self._update_secret(secret, renewed)
            if updated is not None:
                CERT_ROTATIONS.labels(kind=assessment.renewal.value).inc()
                return updated
        raise CertificateError(f"Secret {self.settings.namespace}/{self.settings.secret_name} kept changing "
                               "under us; giving up this pass")

    def _assess_secret(self, secret: Mapping[str, Any]) -> tuple[TlsMaterial | None, Assessment]:
        try:
            material = TlsMaterial.from_secret_data(secret.get("data"))
        except ValueError as exc:
            return None, Assessment(Renewal.CA, str(exc))
        return material, assess(material, self.settings, _now())

    async def _read_secret(self) -> dict[str, Any] | None:
        try:
            secret = await _json_call(self._core.read_namespaced_secret(
                self.settings.secret_name, self.settings.namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._secret_error("read", exc) from exc
        return secret

    async def _create_secret(self, material: TlsMaterial) -> TlsMaterial | None:
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": self.settings.secret_name, "namespace": self.settings.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "nichotplug"}},
            "data": material.secret_data(),
        }
        try:
            await _json_call(self._core.create_namespaced_secret(
                self.settings.namespace, body, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                log.info("Secret %s/%s was created by another replica; using it",
                         self.settings.namespace, self.settings.secret_name)
                return None
            raise self._secret_error("create", exc) from exc
        log.info("created TLS Secret %s/%s", self.settings.namespace, self.settings.secret_name)
        CERT_ROTATIONS.labels(kind="created").inc()
        return material

    async def _update_secret(self, secret: Mapping[str, Any], material: TlsMaterial) -> TlsMaterial | None:
        body = {**secret, "data": material.secret_data()}  # keeps metadata.resourceVersion: optimistic
        try:
            await _json_call(self._core.replace_namespaced_secret(
                self.settings.secret_name, self.settings.namespace, body, _preload_content=False))
        except ApiException as exc:
            if exc.status == 409:
                log.info("Secret %s/%s changed while renewing; re-reading it",
                         self.settings.namespace, self.settings.secret_name)
                return None
            raise self._secret_error("update", exc) from exc
        return material

    def _secret_error(self, verb: str, exc: ApiException) -> CertificateError:
        return CertificateError(
            f"cannot {verb} Secret {self.settings.namespace}/{self.settings.secret_name}: "
            f"HTTP {exc.status} {_status_message(exc)}")

    # -- the files the server reloads -----------------------------------------------------------------

    def _write_files(self, material: TlsMaterial) -> None:
        # Key before certificate: a reloader that catches the pair half-written fails to load it and
        # keeps serving the old pair until the next check.
        for path, content, mode in ((self.settings.ca_file, material.ca_bundle_pem, 0o644),
                                    (self.settings.key_file, material.key_pem, 0o600),
                                    (self.settings.cert_file, material.cert_pem, 0o644)):
            if _read_or_none(path) != content:
                path.parent.mkdir(parents=True, exist_ok=True)
                certs.atomic_write(path, content, mode=mode)

    # -- the webhook configurations --------------------------------------------------------------------

    async def _sync_ca_bundles(self, ca_bundle_b64: str) -> bool:
        """Patch both webhook configurations' caBundles (and the APIService's, if any); whether all
        now hold ``ca_bundle_b64``."""
        in_place = [await self._sync_ca_bundle(kind, name, ca_bundle_b64)
                    for kind, name in (("mutating", self.settings.mutating_webhook),
                                       ("validating", self.settings.validating_webhook))]
        if self.settings.apiservice:
            in_place.append(await self._sync_apiservice_ca_bundle(self.settings.apiservice, ca_bundle_b64))
        return all(in_place)

    async def _sync_apiservice_ca_bundle(self, name: str, ca_bundle_b64: str) -> bool:
        try:
            service = await _json_call(self._registration.read_api_service(name, _preload_content=False))
            ops = apiservice_ca_bundle_patch(service, ca_bundle_b64)
            if ops:
                await _json_call(self._registration.patch_api_service(
                    name, ops, _content_type=_JSON_PATCH, _preload_content=False))
                log.info("set the caBundle of APIService %s", name)
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # not there yet, or changed under us: the next pass retries
                log.warning("APIService %s: HTTP %s %s; retrying in %.0f s", name, exc.status,
                            _status_message(exc), CA_BUNDLE_RETRY_SECONDS)
                return False
            raise CertificateError(f"cannot update the caBundle of APIService {name}: "
                                   f"HTTP {exc.status} {_status_message(exc)}") from exc
        return True

    async def _sync_ca_bundle(self, kind: str, name: str, ca_bundle_b64: str) -> bool:
        read = (self._admission.read_mutating_webhook_configuration if kind == "mutating"
                else self._admission.read_validating_webhook_configuration)
        patch = (self._admission.patch_mutating_webhook_configuration if kind == "mutating"
                 else self._admission.patch_validating_webhook_configuration)
        try:
            config = await _json_call(read(name, _preload_content=False))
            ops = ca_bundle_patch(config, ca_bundle_b64)
            if ops:
                await _json_call(patch(name, ops, _content_type=_JSON_PATCH, _preload_content=False))
                log.info("set the caBundle of %s webhook configuration %s", kind, name)
        except ApiException as exc:
            if exc.status in (404, 409, 422):  # not there yet, or changed under us: the next pass retries
                log.warning("%s webhook configuration %s: HTTP %s %s; retrying in %.0f s", kind, name,
                            exc.status, _status_message(exc), CA_BUNDLE_RETRY_SECONDS)
                return False
            raise CertificateError(f"cannot update the caBundle of {kind} webhook configuration {name}: "
                                   f"HTTP {exc.status} {_status_message(exc)}") from exc
        return True


def ca_bundle_patch(config: Mapping[str, Any], ca_bundle_b64: str) -> list[dict[str, Any]]:
    """JSON Patch ops setting every webhook's caBundle, guarded by the resourceVersion; [] if all match."""
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(config.get("webhooks") or []):
        if (webhook.get("clientConfig") or {}).get("caBundle") != ca_bundle_b64:
            ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": ca_bundle_b64})
    if not ops:
        return []
    version = (config.get("metadata") or {}).get("resourceVersion")
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": version}, *ops]


def apiservice_ca_bundle_patch(service: Mapping[str, Any], ca_bundle_b64: str) -> list[dict[str, Any]]:
    """JSON Patch ops setting an APIService's ``spec.caBundle``, guarded by the resourceVersion; [] if it matches."""
    if (service.get("spec") or {}).get("caBundle") == ca_bundle_b64:
        return []
    version = (service.get("metadata") or {}).get("resourceVersion")
    return [{"op": "test", "path": "/metadata/resourceVersion", "value": version},
            {"op": "add", "path": "/spec/caBundle", "value": ca_bundle_b64}]


async def _json_call(request: Awaitable[Any]) -> dict[str, Any]:
    """Await a raw (``_preload_content=False``) API call; its JSON body, or ApiException when not 2xx.

    Raw calls skip kubernetes-asyncio's model decoding (we want plain dicts) and with it its status
    check, so the check is done here.
    """
    response = await request
    try:
        body: bytes = await response.read()
    finally:
        response.release()
    if not 200 <= response.status <= 299:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body
        raise error
    decoded: dict[str, Any] = orjson.loads(body) if body else {}
    return decoded


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _status_message(exc: ApiException) -> str:
    try:
        body = orjson.loads(exc.body or b"{}")
    except orjson.JSONDecodeError:
        return str(exc.reason or "")
    return str(body.get("message") or exc.reason or "") if isinstance(body, dict) else str(exc.reason or "")


async def start_certificate_manager(
    *, api_client: ApiClient, args: argparse.Namespace
) -> Callable[[], Awaitable[None]]:
    """``serve --self-managed-certs``: make sure a certificate is on disk, then keep it fresh.

    Returns the coroutine function that stops the background loop. Raises ValueError for bad flags
    and CertificateError when the Secret cannot be read or written.
    """
    manager = CertificateManager(api_client, settings_from_args(args))
    await manager.ensure()
    task = asyncio.create_task(manager.run(), name="nichotplug-certificates")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return stop
