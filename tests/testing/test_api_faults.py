"""Injected faults (fail or delay chosen requests) and restarts, as client resilience tests use them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.testing import ApiServer

from .api_support import MERGE, VMS, RawClient, vm


async def test_fault_fails_matching_requests_the_given_number_of_times(raw: RawClient, apiserver: ApiServer) -> None:
    await raw.call("POST", VMS, vm("vm1"))
    apiserver.faults.add(method="PATCH", path_regex=r"/virtualmachines/vm1$", status=500, times=2,
                         message="etcd is on fire")
    answers = [await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"n": str(i)}}}, content_type=MERGE)
               for i in range(3)]
    assert [a.status for a in answers] == [500, 500, 200]
    assert answers[0].body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": "etcd is on fire", "reason": "InternalError", "details": {}, "code": 500}
    assert (await raw.call("GET", f"{VMS}/vm1")).body["metadata"]["labels"] == {"n": "2"}


async def test_fault_only_hits_its_method_and_path(raw: RawClient, apiserver: ApiServer) -> None:
    apiserver.faults.add(method="DELETE", path_regex=r"/virtualmachines/", status=503, times=None)
    assert (await raw.call("POST", VMS, vm("vm1"))).status == 201
    assert (await raw.call("GET", f"{VMS}/vm1")).status == 200
    assert (await raw.call("DELETE", f"{VMS}/vm1")).status == 503
    assert (await raw.call("DELETE", f"{VMS}/vm1")).status == 503
    apiserver.faults.clear()
    assert (await raw.call("DELETE", f"{VMS}/vm1")).status == 200


async def test_delay_fault_makes_an_impatient_client_time_out(apiserver: ApiServer, kubeconfig: Path) -> None:
    apiserver.faults.add(method="GET", path_regex=r"/namespaces/default$", status=0, delay=5.0)
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        with pytest.raises(asyncio.TimeoutError):
            await client.CoreV1Api(api).read_namespace("default", _request_timeout=0.2)
        # The fault fired once; the next call goes through.
        assert (await client.CoreV1Api(api).read_namespace("default")).metadata.name == "default"


@pytest.mark.parametrize("arguments", [{"status": 200}, {"status": 700}, {"delay": -1.0}])
def test_nonsense_faults_are_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"status|delay"):
        ApiServer(crds=False).faults.add(**arguments)


async def test_kubernetes_client_survives_a_restart(apiserver: ApiServer, api_client: Any) -> None:
    custom = client.CustomObjectsApi(api_client)
    await custom.create_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines", vm("vm1"))
    await apiserver.restart()
    for _ in range(3):  # a pooled connection the restart cut may fail once; the client's next try works
        try:
            fetched = await custom.get_namespaced_custom_object("kubevirt.io", "v1", "default", "virtualmachines",
                                                               "vm1")
            break
        except Exception:
            continue
    assert fetched["metadata"]["name"] == "vm1"


async def test_stopped_server_refuses_connections(apiserver: ApiServer, raw: RawClient) -> None:
    await apiserver.stop()
    with pytest.raises(OSError, match="onnect"):
        await raw.call("GET", "/version")
    await apiserver.start()
    assert (await raw.call("GET", "/version")).status == 200


async def test_start_twice_is_an_error(apiserver: ApiServer) -> None:
    with pytest.raises(RuntimeError):
        await apiserver.start()


async def test_kubeconfig_for_a_restricted_user(apiserver: ApiServer, tmp_path: Path) -> None:
    path = apiserver.write_kubeconfig(tmp_path / "viewer", token="viewer-token")
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(path), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        assert [n.metadata.name for n in (await client.CoreV1Api(api).list_namespace()).items]
        with pytest.raises(ApiException) as caught:
            await client.CoreV1Api(api).delete_namespace("default")
        assert caught.value.status == 403
