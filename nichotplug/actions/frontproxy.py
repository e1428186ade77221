"""Who is asking, as kube-apiserver's aggregation layer tells us (delegated "request header" authentication).

kube-apiserver authenticates and authorises a request for ``subresources.nichotplug.io`` itself, then
proxies it to us over TLS with its front-proxy client certificate and the user in headers
(``X-Remote-User``, ``X-Remote-Group``). The headers are believed only on a connection whose client
certificate was issued by the ``requestheader-client-ca-file`` CA and, when
``requestheader-allowed-names`` is not empty, has one of those names as its common name: anyone
else could write the headers too. Both come from the ``kube-system/extension-apiserver-authentication``
ConfigMap (:func:`config_from_configmap`), which the service re-reads so a rotated CA is followed.

The TLS layer already checked the chain when the connection was made; :meth:`FrontProxyAuthenticator.authenticate`
checks the certificate again against the CA the ConfigMap holds *now*, so a CA that was dropped stops
being trusted at once, also on connections opened before.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

NAMESPACE: Final = "kube-system"
CONFIGMAP: Final = "extension-apiserver-authentication"
CLIENT_CA_KEY: Final = "requestheader-client-ca-file"
ALLOWED_NAMES_KEY: Final = "requestheader-allowed-names"
USERNAME_HEADERS_KEY: Final = "requestheader-username-headers"
GROUP_HEADERS_KEY: Final = "requestheader-group-headers"

DEFAULT_USERNAME_HEADERS: Final = ("X-Remote-User",)
DEFAULT_GROUP_HEADERS: Final = ("X-Remote-Group",)


class NotAuthenticated(Exception):
    """The request does not come from kube-apiserver's front proxy; the message says why (401)."""


class BadConfigMap(ValueError):
    """The ConfigMap cannot be used (no CA, a CA that does not parse, a list that is not a JSON list)."""


@dataclass(frozen=True, slots=True)
class RemoteUser:
    """The user kube-apiserver authenticated, as its front proxy named them."""

    name: str
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FrontProxyConfig:
    """What the ConfigMap says: the CA(s) of the front proxy, the names it may have, and its headers."""

    client_ca_pem: str
    client_cas: tuple[x509.Certificate, ...]
    allowed_names: frozenset[str]  # empty: any name the CA signed
    username_headers: tuple[str, ...]
    group_headers: tuple[str, ...]


def _string_list(data: Mapping[str, str], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    text = data.get(key)
    if text is None or not text.strip():
        return default
    try:
        decoded = json.loads(text)
    except ValueError as error:
        raise BadConfigMap(f"{key} is not a JSON list: {error}") from error
    if not isinstance(decoded, list) or not all(isinstance(item, str) for item in decoded):
        raise BadConfigMap(f"{key} must be a JSON list of strings, got {text!r}")
    return tuple(decoded) or default


def config_from_configmap(data: Mapping[str, str] | None) -> FrontProxyConfig | None:
    """The front-proxy settings in the ConfigMap's ``data``; None when it names no front-proxy CA.

    kube-apiserver writes the keys only when it runs with ``--requestheader-client-ca-file`` (that
    is, with an aggregation layer); without them nobody can be authenticated here.
    """
    if not data or not data.get(CLIENT_CA_KEY, "").strip():
        return None
    pem = data[CLIENT_CA_KEY]
    try:
        cas = tuple(x509.load_pem_x509_certificates(pem.encode()))
    except ValueError as error:
        raise BadConfigMap(f"{CLIENT_CA_KEY} holds no usable PEM certificate: {error}") from error
    return FrontProxyConfig(
        client_ca_pem=pem,
        client_cas=cas,
        allowed_names=frozenset(_string_list(data, ALLOWED_NAMES_KEY, ())),
        username_headers=_string_list(data, USERNAME_HEADERS_KEY, DEFAULT_USERNAME_HEADERS),
        group_headers=_string_list(data, GROUP_HEADERS_KEY, DEFAULT_GROUP_HEADERS),
    )


def _issued_by_one_of(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else ""
    return value if isinstance(value, str) else value.decode(errors="replace")


def _header_values(headers: Mapping[str, str], names: tuple[str, ...]) -> list[str]:
    """Every value of the named headers, in order; a multidict (aiohttp's headers) gives repeated ones."""
    getall = getattr(headers, "getall", None)
    values: list[str] = []
    for name in names:
        if getall is not None:
            values.extend(getall(name, []))
        elif name in headers:
            values.append(headers[name])
    return [value for value in values if value]


class FrontProxyAuthenticator:
    """Believes the user headers of requests that carry the front proxy's client certificate."""

    def __init__(self, config: FrontProxyConfig | None = None) -> None:
        self.config = config

    def authenticate(self, peer_cert_der: bytes | None, headers: Mapping[str, str],
                     now: datetime.datetime | None = None) -> RemoteUser:
        """The user the front proxy names; :class:`NotAuthenticated` for anything else."""
        config = self.config
        if config is None:
            raise NotAuthenticated(f"the front-proxy CA is not known ({NAMESPACE}/{CONFIGMAP} has no {CLIENT_CA_KEY}): "
                                   "only kube-apiserver's aggregation layer may call this API")
        if not peer_cert_der:
            raise NotAuthenticated("no client certificate: this API is reached through kube-apiserver "
                                   "(/apis/subresources.nichotplug.io/...), not directly")
        cert = x509.load_der_x509_certificate(peer_cert_der)
        self._check_certificate(config, cert, now or datetime.datetime.now(datetime.UTC))
        users = _header_values(headers, config.username_headers)
        if not users:
            raise NotAuthenticated(f"the front proxy named no user (headers {', '.join(config.username_headers)})")
        return RemoteUser(name=users[0], groups=tuple(_header_values(headers, config.group_headers)))

    @staticmethod
    def _check_certificate(config: FrontProxyConfig, cert: x509.Certificate, now: datetime.datetime) -> None:
        if not _issued_by_one_of(cert, config.client_cas):
            raise NotAuthenticated("the client certificate is not signed by the front-proxy CA")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise NotAuthenticated("the client certificate is expired or not yet valid")
        name = _common_name(cert)
        if config.allowed_names and name not in config.allowed_names:
            raise NotAuthenticated(f"client certificate name {name!r} is not in {ALLOWED_NAMES_KEY}")
