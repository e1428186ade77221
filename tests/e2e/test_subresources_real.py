"""The subresource API through the real kube-apiserver's aggregation layer (needs ``KUBEBUILDER_ASSETS``).

``nichotplug serve --apiservice`` runs as a process with the chart's own service account and RBAC
(so the chart grants what the subresource API uses), its webhooks registered; the chart's APIService
and ``nichotplug-nic-operator`` ClusterRole are applied as rendered, the APIService pointed at the
process through a Service of type ExternalName ``localhost`` (no kube-proxy here). Users are real
service accounts with real RBAC, and the calls are the real ``kubectl``: what an operator would type.
Only the real server has an aggregation layer, hence ``real_apiserver`` (the in-process tier tests the
adapter with direct HTTPS calls, ``tests/actions/test_subresources.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from nichotplug.actions.apidocs import APISERVICE, GROUP_VERSION, SUBRESOURCES
from nichotplug.testing.envtest import RealApiServer
from nichotplug.webhook.registration import webhook_configurations

from .test_kubectl_e2e import Cluster, bridge_nad, free_port, run, start_running, wait_ready

pytestmark = [pytest.mark.kubectl,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

SUBRESOURCE_ROOT = f"/apis/{GROUP_VERSION}/namespaces/default/virtualmachines"
OPERATOR = "system:serviceaccount:default:nic-operator"


@dataclass
class Aggregated:
    cluster: Cluster
    url: str  # nichotplug's own port, reached directly
    ca_file: Path
    operator: Path  # kubeconfig of a user bound only to nichotplug-nic-operator
    stranger: Path  # kubeconfig of a user with no role at all

    async def kubectl_as(self, kubeconfig: Path, *args: str) -> Any:
        return await run("kubectl", "--kubeconfig", str(kubeconfig), *args)


def _chart_objects() -> dict[tuple[str, str], dict[str, Any]]:
    from chart.conftest import render_chart  # the chart's own rendering (helm-python-sdk)

    rendered = render_chart(namespace="default")
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered.objects}


async def _wait_available(real: RealApiServer) -> None:
    for _ in range(300):
        service = real.request("GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}").json()
        conditions = {c["type"]: c for c in service.get("status", {}).get("conditions", [])}
        if conditions.get("Available", {}).get("status") == "True":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"APIService {APISERVICE} not Available after 30 s: {conditions}")


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


async def _start_serve(kubeconfig: Path, certs: Path, port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", "0", "--tls-cert-file", str(certs / "tls.crt"),
        "--tls-key-file", str(certs / "tls.key"), "--namespace", "default", "--no-controller",
        "--apiservice", APISERVICE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)


@pytest_asyncio.fixture
async def aggregated(real_apiserver: RealApiServer, tmp_path: Path) -> AsyncIterator[Aggregated]:
    """nichotplug serving with the chart's own service account and RBAC, registered as the chart registers it."""
    real = real_apiserver
    cluster = Cluster(real, real.write_kubeconfig(tmp_path / "admin"), tmp_path)
    chart = _chart_objects()
    for (kind, _name), obj in chart.items():  # the service account and everything the chart grants it
        if kind in RBAC_KINDS:
            applied = await cluster.apply(obj)
            assert applied.returncode == 0, applied.stderr
    own_account = real.write_kubeconfig(tmp_path / "nichotplug", token=real.service_account_token("default",
                                                                                                  "nichotplug"))
    certs = tmp_path / "certs"
    made = await run(sys.executable, "-m", "nichotplug", "certs", "--out", str(certs),
                     "--dns", "nichotplug.default.svc", "localhost", "--ip", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    port = free_port()
    process = await _start_serve(own_account, certs, port)
    try:
        url = f"https://127.0.0.1:{port}"
        await wait_ready(url, certs / "ca.crt", process)
        for config in webhook_configurations("nichotplug", url=url, ca_bundle=(certs / "ca.crt").read_bytes()):
            assert (await cluster.apply(config)).returncode == 0
        assert (await cluster.apply(bridge_nad("vlan1", "bridge"))).returncode == 0
        apiservice = chart[("APIService", APISERVICE)]
        apiservice["spec"]["service"] = {"namespace": "default", "name": "nichotplug", "port": port}
        apiservice["spec"]["caBundle"] = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nichotplug", "namespace": "default"},
                   "spec": {"type": "ExternalName", "externalName": "localhost",
                            "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "nic-operator", "namespace": "default"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "nichotplug-nic-operator"},
                   "subjects": [{"kind": "ServiceAccount", "name": "nic-operator", "namespace": "default"}]}
        for obj in (service, apiservice, binding):
            applied = await cluster.apply(obj)
            assert applied.returncode == 0, applied.stderr
        await _wait_available(real)
        yield Aggregated(
            cluster, url, certs / "ca.crt",
            operator=real.write_kubeconfig(tmp_path / "operator", token=real.service_account_token("default",
                                                                                                    "nic-operator")),
            stranger=real.write_kubeconfig(tmp_path / "stranger", token=real.service_account_token("default",
                                                                                                    "stranger")))
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        real.reset()
        assert process.returncode == 0, stderr.decode()[-3000:]


async def test_discovery_through_kube_apiserver_lists_the_four_subresources(aggregated: Aggregated) -> None:
    done = await aggregated.kubectl_as(aggregated.operator, "get", "--raw", f"/apis/{GROUP_VERSION}")
    assert done.returncode == 0, done.stderr
    listed = {item["name"]: item["verbs"] for item in json.loads(done.stdout)["resources"]}
    assert listed == {f"virtualmachines/{item.name}": [item.verb] for item in SUBRESOURCES.values()}
    # the aggregator merges our OpenAPI v3 document (within seconds): kubectl finds the operations there
    for _ in range(100):
        index = json.loads((await aggregated.kubectl_as(aggregated.operator, "get", "--raw", "/openapi/v3")).stdout)
        if f"apis/{GROUP_VERSION}" in index["paths"]:
            break
        await asyncio.sleep(0.5)
    relative = index["paths"][f"apis/{GROUP_VERSION}"]["serverRelativeURL"]
    document = json.loads((await aggregated.kubectl_as(aggregated.operator, "get", "--raw", relative)).stdout)
    assert sorted(path.rsplit("/", 1)[1] for path in document["paths"]) == sorted(SUBRESOURCES)


async def test_a_user_with_only_the_nic_operator_role_hot_plugs_a_nic_with_kubectl(aggregated: Aggregated) -> None:
    cluster = aggregated.cluster
    await start_running(cluster, "vm1")
    body = cluster.workdir / "body.json"
    body.write_text(json.dumps({"networkName": "default/vlan1"}))

    done = await aggregated.kubectl_as(aggregated.operator, "create", "--raw", f"{SUBRESOURCE_ROOT}/vm1/addnic",
                                       "-f", str(body))

    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    stored = await cluster.get_vm("vm1")
    added = stored["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][-1]
    assert answer["interface"] == {"name": "nic-2", "macAddress": added["macAddress"], "networkName": "default/vlan1"}
    assert {key: added[key] for key in ("name", "model", "bridge")} == {"name": "nic-2", "model": "virtio",
                                                                       "bridge": {}}
    assert answer["migrationRequested"] is True
    events = await cluster.kubectl("get", "events", "--field-selector", "involvedObject.name=vm1", "-o", "json")
    messages = [event["message"] for event in json.loads(events.stdout)["items"]]
    assert any(message.startswith(f"{OPERATOR} hot-plugged interface nic-2") for message in messages), messages


async def test_the_nic_operator_may_not_patch_the_vm_itself(aggregated: Aggregated) -> None:
    await start_running(aggregated.cluster, "vm1")
    done = await aggregated.kubectl_as(aggregated.operator, "patch", "vm", "vm1", "--type=merge",
                                       "-p", '{"metadata": {"labels": {"touched": "yes"}}}')
    assert done.returncode != 0
    assert "forbidden" in done.stderr.lower()


async def test_a_user_without_the_role_gets_403_from_kube_apiserver_and_nothing_changes(
        aggregated: Aggregated) -> None:
    before = await start_running(aggregated.cluster, "vm1")
    body = aggregated.cluster.workdir / "body.json"
    body.write_text(json.dumps({"networkName": "default/vlan1"}))
    done = await aggregated.kubectl_as(aggregated.stranger, "create", "--raw", f"{SUBRESOURCE_ROOT}/vm1/addnic",
                                       "-f", str(body))
    assert done.returncode != 0
    assert "forbidden" in done.stderr.lower()
    after = await aggregated.cluster.get_vm("vm1")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_hotplugcheck_answers_through_kube_apiserver(aggregated: Aggregated) -> None:
    await start_running(aggregated.cluster, "vm1")
    done = await aggregated.kubectl_as(aggregated.operator, "get", "--raw", f"{SUBRESOURCE_ROOT}/vm1/hotplugcheck")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"eligible": True, "reasons": [], "hotplugPortsLeft": 6}


async def test_a_refusal_is_printed_by_kubectl_as_a_kubernetes_error(aggregated: Aggregated) -> None:
    await start_running(aggregated.cluster, "vm1")
    body = aggregated.cluster.workdir / "body.json"
    body.write_text(json.dumps({"networkName": "default/vlan1", "interfaceName": "nic-1"}))
    done = await aggregated.kubectl_as(aggregated.operator, "create", "--raw", f"{SUBRESOURCE_ROOT}/vm1/addnic",
                                       "-f", str(body))
    assert done.returncode != 0
    assert "Error from server (Conflict)" in done.stderr, done.stderr
    assert "nic-1" in done.stderr


async def test_a_direct_call_without_the_front_proxy_certificate_gets_401(aggregated: Aggregated) -> None:
    before = await start_running(aggregated.cluster, "vm1")
    context = ssl.create_default_context(cafile=str(aggregated.ca_file))
    async with aiohttp.ClientSession() as session, session.post(
            f"{aggregated.url}{SUBRESOURCE_ROOT}/vm1/addnic", ssl=context,
            headers={"X-Remote-User": "envtest-admin", "X-Remote-Group": "system:masters"},
            json={"networkName": "default/vlan1"}) as response:
        status = await response.json()
    assert (response.status, status["kind"], status["reason"]) == (401, "Status", "Unauthorized")
    after = await aggregated.cluster.get_vm("vm1")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def nichotplug_plugin(kubeconfig: Path, *args: str) -> Any:
    """``kubectl nichotplug ARGS`` through kubectl's plugin mechanism (the console script on PATH)."""
    venv_bin = Path(sys.executable).parent
    env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(kubeconfig.parent),
           "KUBECONFIG": str(kubeconfig)}
    return await run("kubectl", "nichotplug", *args, env=env)


async def test_the_plugin_goes_through_the_subresources_for_a_user_with_only_the_role(
        aggregated: Aggregated) -> None:
    await start_running(aggregated.cluster, "vm1")

    added = await nichotplug_plugin(aggregated.operator, "-v", "add-nic", "vm1", "--network", "vlan1")
    assert added.returncode == 0, added.stderr
    assert "using the subresource API subresources.nichotplug.io/v1 through kube-apiserver" in added.stderr
    mac = (await aggregated.cluster.get_vm("vm1"))["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][-1][
        "macAddress"]
    assert f"interface nic-2 (MAC {mac}) added to VM default/vm1" in added.stdout
    assert "live migration vm1-" in added.stdout

    listed = await nichotplug_plugin(aggregated.operator, "list", "vm1")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[:3] == ["HOT-UNPLUGGABLE INTERFACES", "nic-1", "nic-2"]

    removed = await nichotplug_plugin(aggregated.operator, "remove-nic", "vm1", "--interface", "nic-1")
    assert removed.returncode == 0, removed.stderr
    interfaces = (await aggregated.cluster.get_vm("vm1"))["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert [i.get("state") for i in interfaces if i["name"] == "nic-1"] == ["absent"]


async def test_the_plugin_shows_kube_apiservers_refusal_with_a_hint(aggregated: Aggregated) -> None:
    await start_running(aggregated.cluster, "vm1")
    done = await nichotplug_plugin(aggregated.stranger, "add-nic", "vm1", "--network", "vlan1")
    assert done.returncode == 1
    assert "forbidden" in done.stderr
    assert "hint: ask your cluster administrator for permission" in done.stderr


async def test_the_plugin_check_through_the_subresources_says_why_not_and_exits_1(aggregated: Aggregated) -> None:
    await start_running(aggregated.cluster, "vm1")
    aggregated.cluster.server.request(  # the VM stops being a plain VM: a guest-cluster node
        "PATCH", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1",
        {"metadata": {"labels": {"harvesterhci.io/creator": "docker-machine-driver-harvester"}}},
        content_type="application/merge-patch+json", expect=(200,))
    done = await nichotplug_plugin(aggregated.operator, "check", "vm1")
    assert done.returncode == 1, done.stderr
    assert "VM default/vm1 is not eligible for NIC hot-plug:" in done.stdout
    assert "docker-machine-driver-harvester" in done.stdout
