"""kube.client: finding credentials, and per-caller clients whose requests RBAC judges as the caller."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, VersionApi

from nichotplug.kube.client import KubeConfigError, api_client_with_token, load_api_client
from nichotplug.kube.patch import Forbidden, as_kube_error
from nichotplug.testing.auth import VIEWER_TOKEN
from nichotplug.testing.server import ApiServer


async def whoami_can_create_namespaces(api: ApiClient) -> bool:
    """Whether the client's identity may create a Namespace (admin yes, viewer no)."""
    from kubernetes_asyncio.client.exceptions import ApiException

    try:
        await CoreV1Api(api).create_namespace({"metadata": {"name": "probe"}}, dry_run="All")  # type: ignore[arg-type]
    except ApiException as exc:
        if isinstance(as_kube_error(exc), Forbidden):
            return False
        raise
    return True


async def test_explicit_kubeconfig_and_context(kubeconfig: Path) -> None:
    api = await load_api_client(kubeconfig, context="nichotplug-test")
    try:
        version = await VersionApi(api).get_code()
        assert version.git_version
    finally:
        await api.close()


async def test_kubeconfig_from_the_environment(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    api = await load_api_client()
    try:
        assert (await VersionApi(api).get_code()).git_version
    finally:
        await api.close()


async def test_no_credentials_anywhere_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(KubeConfigError, match=r"missing.*\.kube/config"):
        await load_api_client()
    with pytest.raises(KubeConfigError, match="not-there"):
        await load_api_client(tmp_path / "not-there")


async def test_unknown_context_is_a_clear_error(kubeconfig: Path) -> None:
    with pytest.raises(KubeConfigError, match="no-such-context"):
        await load_api_client(kubeconfig, context="no-such-context")


async def test_client_with_token_acts_as_the_caller_not_as_us(apiserver: ApiServer, api_client: ApiClient) -> None:
    assert await whoami_can_create_namespaces(api_client)
    for token in (VIEWER_TOKEN, f"Bearer {VIEWER_TOKEN}"):
        viewer = api_client_with_token(api_client, token)
        try:
            assert viewer.configuration.host == api_client.configuration.host
            assert not await whoami_can_create_namespaces(viewer)
            assert (await VersionApi(viewer).get_code()).git_version  # same server, same CA: TLS works
        finally:
            await viewer.close()
    # The service's own client is untouched by deriving callers' clients from it.
    assert await whoami_can_create_namespaces(api_client)


@pytest.mark.parametrize("token", ["", "   ", "Bearer ", "bearer  "])
async def test_an_empty_token_is_refused(api_client: ApiClient, token: str) -> None:
    with pytest.raises(ValueError, match="empty bearer token"):
        api_client_with_token(api_client, token)


async def test_in_cluster_service_account_is_used_in_a_pod(apiserver: ApiServer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from nichotplug.kube import client as kube_client

    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "token").write_text(VIEWER_TOKEN)
    (mounted / "ca.crt").write_bytes(apiserver.ca_pem)
    monkeypatch.setattr(kube_client, "SERVICE_ACCOUNT_DIR", mounted)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver.port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # a ~/.kube/config must not win over the pod's account

    api = await load_api_client()
    try:
        assert api.configuration.host == f"https://127.0.0.1:{apiserver.port}"
        assert (await VersionApi(api).get_code()).git_version
        assert not await whoami_can_create_namespaces(api)  # it is the viewer whose token is mounted
    finally:
        await api.close()
