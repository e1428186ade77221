"""Self-managed certificates keep the subresource APIService's caBundle in step (real kube-apiserver:
the in-process server serves no APIServices)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_asyncio
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions.apidocs import APISERVICE
from nichotplug.kube.certificates import CertificateManager, CertificateSettings
from nichotplug.kube.client import load_api_client
from nichotplug.testing.envtest import RealApiServer
from nichotplug.webhook.registration import ServiceRef, webhook_configurations

PATH = f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}"


@pytest_asyncio.fixture
async def admin_client(real_apiserver: RealApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    api = await load_api_client(str(real_apiserver.write_kubeconfig(tmp_path / "admin")))
    try:
        yield api
    finally:
        await api.close()
        real_apiserver.reset()


def _apiservice(real: RealApiServer) -> dict[str, Any]:
    found: dict[str, Any] = real.request("GET", PATH, expect=(200,)).json()
    return found


def _create_chart_apiservice(real: RealApiServer) -> None:
    from chart.conftest import render_chart

    apiservice = next(obj for obj in render_chart(namespace="default").objects if obj["kind"] == "APIService")
    real.request("POST", "/apis/apiregistration.k8s.io/v1/apiservices", apiservice, expect=(201,))


def _settings(folder: Path) -> CertificateSettings:
    return CertificateSettings(namespace="default", secret_name="nichotplug-tls", service_name="nichotplug",
                               mutating_webhook="nichotplug", validating_webhook="nichotplug",
                               cert_file=folder / "tls.crt", key_file=folder / "tls.key", apiservice=APISERVICE)


async def test_the_apiservice_gets_our_ca_and_a_changed_one_is_put_back(
        real_apiserver: RealApiServer, admin_client: ApiClient, tmp_path: Path) -> None:
    _create_chart_apiservice(real_apiserver)
    assert "caBundle" not in _apiservice(real_apiserver)["spec"]  # as the chart renders it in self-managed mode
    manager = CertificateManager(admin_client, _settings(tmp_path))

    material = await manager.ensure()
    assert _apiservice(real_apiserver)["spec"]["caBundle"] == material.ca_bundle_b64()

    real_apiserver.request("PATCH", PATH, {"spec": {"caBundle": "Zm9yZWlnbg=="}},
                           content_type="application/merge-patch+json", expect=(200,))
    await manager.ensure()
    assert _apiservice(real_apiserver)["spec"]["caBundle"] == material.ca_bundle_b64()


async def test_until_the_apiservice_exists_the_manager_keeps_checking_soon(
        real_apiserver: RealApiServer, admin_client: ApiClient, tmp_path: Path) -> None:
    for config in webhook_configurations("nichotplug", service=ServiceRef("default", "nichotplug")):
        plural = "mutatingwebhookconfigurations" if config["kind"].startswith("Mutating") else \
            "validatingwebhookconfigurations"
        real_apiserver.request("POST", f"/apis/admissionregistration.k8s.io/v1/{plural}", config, expect=(201,))
    manager = CertificateManager(admin_client, _settings(tmp_path))

    await manager.ensure()
    assert manager.ca_bundles_in_place is False  # both webhooks patched, the APIService not there yet

    _create_chart_apiservice(real_apiserver)
    material = await manager.ensure()
    assert manager.ca_bundles_in_place is True
    assert _apiservice(real_apiserver)["spec"]["caBundle"] == material.ca_bundle_b64()
