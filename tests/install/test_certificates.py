"""Self-managed certificates (kube/certificates.py) against the in-process API server.

The manager runs with the chart's own ServiceAccount and RBAC, so every test also checks that the
chart grants what the certificate code needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from kubernetes_asyncio.client import AdmissionregistrationV1Api, ApiClient, CoreV1Api
from prometheus_client import REGISTRY

from nichotplug import certs
from nichotplug.cli import build_parser
from nichotplug.kube.certificates import (
    CertificateError,
    CertificateManager,
    CertificateSettings,
    Renewal,
    TlsMaterial,
    assess,
    ca_bundle_patch,
    parse_duration,
    renew,
    settings_from_args,
    start_certificate_manager,
)
from nichotplug.kube.client import load_api_client
from nichotplug.testing import ApiServer

from .support import (
    NAMESPACE,
    RELEASE,
    create_namespace,
    install_access,
    install_url_webhooks,
    overwrite_ca_bundles,
)

SECRET = f"{RELEASE}-tls"


def make_settings(folder: Path, **overrides: Any) -> CertificateSettings:
    fields: dict[str, Any] = {
        "namespace": NAMESPACE, "secret_name": SECRET, "service_name": RELEASE, "mutating_webhook": RELEASE,
        "validating_webhook": RELEASE, "cert_file": folder / "tls.crt", "key_file": folder / "tls.key",
    }
    fields.update(overrides)
    return CertificateSettings(**fields)


def untyped(api: Any) -> Any:
    """The client's stubs want model objects; the runtime takes plain dicts, which read better here."""
    return api


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def load_cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


# -- pure parts --------------------------------------------------------------------------------------


def test_every_rotation_kind_is_scraped_before_the_first_rotation() -> None:
    for kind in ("created", "serving", "ca"):
        assert REGISTRY.get_sample_value("nichotplug_certificate_rotations_total", {"kind": kind}) is not None


@pytest.mark.parametrize(("text", "seconds"), [("365d", 365 * 86400), ("12h", 43200), ("5m", 300), ("90s", 90)])
def test_durations_read_like_the_chart_writes_them(text: str, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "0d", "1y", "-5m", "1.5h", "forever"])
def test_bad_durations_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 365d"):
        parse_duration(text)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"namespace": ""}, "namespace"),
    ({"secret_name": ""}, "TLS Secret name"),
    ({"validity": datetime.timedelta(0)}, "validity must be positive"),
    ({"validity": datetime.timedelta(days=4000)}, "no longer than the CA"),
    ({"rotate_fraction": 1.0}, "rotate_fraction"),
    ({"check_interval": 0}, "check_interval"),
])
def test_bad_settings_are_refused(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_settings(tmp_path, **overrides)


def test_serve_flags_become_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "from-downward-api")
    args = build_parser().parse_args([
        "serve", "--self-managed-certs", "--tls-cert-file", str(tmp_path / "c"), "--tls-key-file",
        str(tmp_path / "k"), "--cert-validity", "2h", "--cert-check-interval", "5s",
        "--cert-extra-name", "127.0.0.1", "--cert-extra-name", "localhost",
    ])
    settings = settings_from_args(args)
    assert settings.namespace == "from-downward-api"
    assert settings.validity == datetime.timedelta(hours=2)
    assert settings.check_interval == 5
    assert settings.ip_addresses == ["127.0.0.1"]
    assert settings.dns_names[-1] == "localhost"
    assert settings.ca_file == tmp_path / "ca.crt"


def test_serve_flags_without_namespace_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    args = build_parser().parse_args(["serve", "--self-managed-certs"])
    with pytest.raises(ValueError, match="--namespace or \\$POD_NAMESPACE"):
        settings_from_args(args)


def test_fresh_material_is_kept_and_covers_the_service_names(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    material = renew(None, Renewal.CA, settings, now())
    assert assess(material, settings, now()).renewal is Renewal.KEEP
    names = load_cert(material.cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"{RELEASE}.{NAMESPACE}.svc" in names.get_values_for_type(x509.DNSName)


def test_a_certificate_with_less_than_a_third_left_gets_a_new_one_from_the_same_ca(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    material = renew(None, Renewal.CA, settings, now())
    later = load_cert(material.cert_pem).not_valid_after_utc - datetime.timedelta(days=100)
    verdict = assess(material, settings, later)
    assert verdict.renewal is Renewal.SERVING
    assert "expires at" in verdict.reason
    renewed = renew(material, verdict.renewal, settings, later)
    assert renewed.ca_bundle_pem == material.ca_bundle_pem
    assert renewed.cert_pem != material.cert_pem
    load_cert(renewed.cert_pem).verify_directly_issued_by(load_cert(material.ca_bundle_pem))


def test_a_certificate_for_other_names_is_replaced(tmp_path: Path) -> None:
    material = renew(None, Renewal.CA, make_settings(tmp_path), now())
    verdict = assess(material, make_settings(tmp_path, service_name="renamed"), now())
    assert verdict.renewal is Renewal.SERVING
    assert "renamed" in verdict.reason


def test_a_key_that_does_not_match_is_replaced(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    one, other = renew(None, Renewal.CA, settings, now()), renew(None, Renewal.CA, settings, now())
    assert assess(TlsMaterial(one.ca_bundle_pem, one.ca_key_pem, one.cert_pem, other.key_pem), settings,
                  now()).renewal is Renewal.SERVING
    assert assess(TlsMaterial(one.ca_bundle_pem, other.ca_key_pem, one.cert_pem, one.key_pem), settings,
                  now()).renewal is Renewal.CA
    assert assess(TlsMaterial(one.ca_bundle_pem, one.ca_key_pem, other.cert_pem, other.key_pem), settings,
                  now()).renewal is Renewal.SERVING


def test_an_expiring_ca_is_replaced_and_stays_trusted_until_it_expires(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    material = renew(None, Renewal.CA, settings, now())
    late = load_cert(material.ca_bundle_pem).not_valid_after_utc - datetime.timedelta(days=30)
    assert assess(material, settings, late).renewal is Renewal.CA
    renewed = renew(material, Renewal.CA, settings, late)
    bundle = x509.load_pem_x509_certificates(renewed.ca_bundle_pem)
    assert len(bundle) == 2
    assert bundle[1] == load_cert(material.ca_bundle_pem)
    load_cert(renewed.cert_pem).verify_directly_issued_by(bundle[0])


def test_secret_data_round_trips_and_names_what_is_missing(tmp_path: Path) -> None:
    material = renew(None, Renewal.CA, make_settings(tmp_path), now())
    data = material.secret_data()
    assert TlsMaterial.from_secret_data(data) == material
    with pytest.raises(ValueError, match=r"no ca\.key"):
        TlsMaterial.from_secret_data({k: v for k, v in data.items() if k != "ca.key"})
    with pytest.raises(ValueError, match=r"tls\.crt is not base64"):
        TlsMaterial.from_secret_data({**data, "tls.crt": "not base64!"})


def test_ca_bundle_patch_is_guarded_and_empty_when_nothing_differs() -> None:
    config: dict[str, Any] = {"metadata": {"resourceVersion": "7"},
              "webhooks": [{"clientConfig": {"caBundle": "QUJD"}}, {"clientConfig": {}}]}
    assert ca_bundle_patch(config, "QUJD") == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "QUJD"},
    ]
    config["webhooks"][1]["clientConfig"]["caBundle"] = "QUJD"
    assert ca_bundle_patch(config, "QUJD") == []


# -- against the API server, with the chart's ServiceAccount ----------------------------------------


@pytest_asyncio.fixture
async def service_client(apiserver: ApiServer, kubeconfig: Path, tmp_path: Path) -> AsyncIterator[ApiClient]:
    """An API client holding the chart's ServiceAccount token (RBAC applied from the rendered chart)."""
    token = await install_access(apiserver, kubeconfig)
    api = await load_api_client(apiserver.write_kubeconfig(tmp_path / "sa-kubeconfig", token=token))
    try:
        yield api
    finally:
        await api.close()


async def read_secret(api: ApiClient) -> dict[str, Any]:
    secret = await CoreV1Api(api).read_namespaced_secret(SECRET, NAMESPACE)
    result: dict[str, Any] = api.sanitize_for_serialization(secret)
    return result


async def webhook_ca_bundles(api: ApiClient) -> list[bytes]:
    admission = AdmissionregistrationV1Api(api)
    configs: list[Any] = [await admission.read_mutating_webhook_configuration(RELEASE),
               await admission.read_validating_webhook_configuration(RELEASE)]
    return [base64.b64decode(hook.client_config.ca_bundle or "") for config in configs for hook in config.webhooks]


async def test_first_start_creates_the_secret_files_and_ca_bundles(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443")
    settings = make_settings(tmp_path / "files")
    material = await CertificateManager(service_client, settings).ensure()

    secret = await read_secret(api_client)
    assert secret["type"] == "kubernetes.io/tls"
    assert TlsMaterial.from_secret_data(secret["data"]) == material
    assert settings.cert_file.read_bytes() == material.cert_pem
    assert settings.key_file.read_bytes() == material.key_pem
    assert settings.key_file.stat().st_mode & 0o077 == 0, "the key must be private"
    assert settings.ca_file.read_bytes() == material.ca_bundle_pem
    assert await webhook_ca_bundles(api_client) == [material.ca_bundle_pem] * 2


async def test_replicas_racing_to_create_all_use_the_winners_secret(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443")
    managers = [CertificateManager(service_client, make_settings(tmp_path / f"replica{i}")) for i in range(3)]
    materials = await asyncio.gather(*(manager.ensure() for manager in managers))
    stored = TlsMaterial.from_secret_data((await read_secret(api_client))["data"])
    assert all(material == stored for material in materials)
    assert {m.settings.cert_file.read_bytes() for m in managers} == {stored.cert_pem}
    assert await webhook_ca_bundles(api_client) == [stored.ca_bundle_pem] * 2


async def test_expiring_certificate_is_rotated_once_and_the_ca_bundle_is_left_alone(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    # A Secret whose serving certificate has 1 of its 6 minutes left (signed 5 minutes in the past).
    settings = make_settings(tmp_path / "a", validity=datetime.timedelta(minutes=6))
    old = renew(None, Renewal.CA, settings, now())
    await untyped(CoreV1Api(api_client)).create_namespaced_secret(NAMESPACE, {
        "metadata": {"name": SECRET}, "type": "kubernetes.io/tls", "data": old.secret_data()})
    await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443", ca_bundle=old.ca_bundle_pem)
    version_before = (await AdmissionregistrationV1Api(api_client).read_mutating_webhook_configuration(
        RELEASE)).metadata.resource_version

    replicas = [CertificateManager(service_client, make_settings(tmp_path / name)) for name in ("a", "b")]
    rotated = await asyncio.gather(*(replica.ensure() for replica in replicas))

    stored = TlsMaterial.from_secret_data((await read_secret(api_client))["data"])
    assert rotated[0] == rotated[1] == stored, "the replica that lost the update race must use the winner's"
    assert stored.cert_pem != old.cert_pem
    assert stored.ca_bundle_pem == old.ca_bundle_pem
    assert stored.ca_key_pem == old.ca_key_pem
    assert load_cert(stored.cert_pem).not_valid_after_utc - now() > datetime.timedelta(days=300)
    version_after = (await AdmissionregistrationV1Api(api_client).read_mutating_webhook_configuration(
        RELEASE)).metadata.resource_version
    assert version_after == version_before, "the caBundle did not change, so it must not be patched"


async def test_a_broken_secret_is_replaced(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    await untyped(CoreV1Api(api_client)).create_namespaced_secret(NAMESPACE, {
        "metadata": {"name": SECRET}, "data": {"tls.crt": base64.b64encode(b"garbage").decode()}})
    material = await CertificateManager(service_client, make_settings(tmp_path)).ensure()
    assert TlsMaterial.from_secret_data((await read_secret(api_client))["data"]) == material


async def test_a_changed_ca_bundle_is_put_back(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443")
    manager = CertificateManager(service_client, make_settings(tmp_path))
    material = await manager.ensure()
    await overwrite_ca_bundles(kubeconfig, certs.make_ca()[0])
    await manager.ensure()
    assert await webhook_ca_bundles(api_client) == [material.ca_bundle_pem] * 2


async def test_missing_webhook_configurations_are_patched_once_they_exist(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = CertificateManager(service_client, make_settings(tmp_path))
    with caplog.at_level(logging.WARNING):
        material = await manager.ensure()
    assert "HTTP 404" in caplog.text
    await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443")
    await manager.ensure()
    assert await webhook_ca_bundles(api_client) == [material.ca_bundle_pem] * 2


async def test_until_the_ca_bundles_are_in_place_the_manager_checks_every_few_seconds(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    # A first install: the pods start before Helm has created the webhook configurations, and the
    # API server cannot call a webhook whose caBundle does not trust our CA. Waiting out the 10-minute
    # check interval would leave VM writes failing that long.
    manager = CertificateManager(service_client, make_settings(tmp_path, check_interval=600.0))
    material = await manager.ensure()
    assert manager.ca_bundles_in_place is False
    checking = asyncio.create_task(manager.run())
    try:
        await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443")
        for _ in range(75):  # 15 s, far less than the check interval
            if await webhook_ca_bundles(api_client) == [material.ca_bundle_pem] * 2:
                break
            await asyncio.sleep(0.2)
        else:
            pytest.fail("the caBundles were not set while the check interval ran")
        assert manager.ca_bundles_in_place is True
    finally:
        checking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checking


async def test_without_rbac_the_error_names_the_secret_and_nothing_is_written(
    apiserver: ApiServer, api_client: ApiClient, kubeconfig: Path, tmp_path: Path,
) -> None:
    await create_namespace(kubeconfig)
    token = apiserver.service_account_token(NAMESPACE, RELEASE)  # an account with no roles bound
    api = await load_api_client(apiserver.write_kubeconfig(tmp_path / "kc", token=token))
    settings = make_settings(tmp_path / "files")
    try:
        with pytest.raises(CertificateError, match=f"Secret {NAMESPACE}/{SECRET}: HTTP 403"):
            await CertificateManager(api, settings).ensure()
    finally:
        await api.close()
    assert not settings.cert_file.exists()
    secrets = await CoreV1Api(api_client).list_namespaced_secret(NAMESPACE)
    assert secrets.items == []


async def test_serve_seam_keeps_checking_until_stopped(
    api_client: ApiClient, kubeconfig: Path, service_client: ApiClient, tmp_path: Path,
) -> None:
    await install_url_webhooks(kubeconfig, "https://127.0.0.1:9443")
    args = build_parser().parse_args([
        "serve", "--self-managed-certs", "--namespace", NAMESPACE, "--tls-secret", SECRET,
        "--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key"),
        "--cert-check-interval", "1s",
    ])
    stop = await start_certificate_manager(api_client=service_client, args=args)
    try:
        first = (tmp_path / "tls.crt").read_bytes()
        # Someone resets the caBundle (e.g. a careless re-apply); the loop puts it back.
        await overwrite_ca_bundles(kubeconfig, certs.make_ca()[0])
        expected = [TlsMaterial.from_secret_data((await read_secret(api_client))["data"]).ca_bundle_pem] * 2
        for _ in range(100):
            if await webhook_ca_bundles(api_client) == expected:
                break
            await asyncio.sleep(0.1)
        assert await webhook_ca_bundles(api_client) == expected
        assert (tmp_path / "tls.crt").read_bytes() == first
    finally:
        await stop()


async def test_serve_seam_refuses_a_bad_validity_before_touching_the_cluster(
    api_client: ApiClient, service_client: ApiClient, tmp_path: Path,
) -> None:
    args = build_parser().parse_args([
        "serve", "--self-managed-certs", "--namespace", NAMESPACE, "--tls-secret", SECRET,
        "--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key"),
        "--cert-validity", "forever",
    ])
    with pytest.raises(ValueError, match="'forever' is not a duration"):
        await start_certificate_manager(api_client=service_client, args=args)
    assert (await CoreV1Api(api_client).list_namespaced_secret(NAMESPACE)).items == []
    assert not (tmp_path / "tls.crt").exists()
