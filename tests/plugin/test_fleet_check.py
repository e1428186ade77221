"""``kubectl nichotplug check -A | -n | -l`` and ``guest-config`` in-process, against the API server: the
state and codes of VMs of every kind, the summary and duplicate audit, RBAC refusals on their
namespace's rows, usage errors, and that the report lists instead of reading VM by VM."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from actions.objects import create_nad, create_running_vm, ensure_namespace, iface, multus_net, nad, pod_net, vm, vmi
from kubernetes_asyncio.client import ApiClient, CoreV1Api, RbacAuthorizationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.actions.commands import run as run_command
from nichotplug.plugin import build_parser

pytestmark = pytest.mark.both_servers

GUEST = {"harvesterhci.io/creator": "docker-machine-driver-harvester"}


async def plugin(*args: str, kubeconfig: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await run_command(build_parser().parse_args(["--kubeconfig", str(kubeconfig), *args]), out, err)
    return code, out.getvalue(), err.getvalue()


async def ensure(create: Any, *args: Any) -> None:
    """Create an object unless it exists (a real API server keeps cluster objects for the session)."""
    try:
        await create(*args)
    except ApiException as error:
        if error.status != 409:
            raise


def nic_vm(name: str, namespace: str = "default", *, mac: str = "02:00:00:00:01:01", **extra: Any) -> dict[str, Any]:
    """A VM with a pod-network NIC (its MAC unique per VM name) and ``nic-1`` on vlan1 with ``mac``."""
    pod_mac = "02:aa:" + ":".join(f"{byte:02x}" for byte in name.encode().ljust(4, b"-")[:4])
    return vm(name, namespace, interfaces=[iface("default", binding="masquerade", mac=pod_mac),
                                           iface("nic-1", mac=mac)],
              networks=[pod_net(), multus_net("nic-1", "default/vlan1")], **extra)


@pytest.fixture
async def fleet(api_client: ApiClient) -> None:
    """VMs of every kind in two namespaces, two of them sharing a MAC on cluster network mgmt."""
    await create_nad(api_client, nad())
    await ensure_namespace(api_client, "team")
    await create_running_vm(api_client, nic_vm("ready1", mac="02:00:00:00:01:01"), vmi("ready1"))
    no_macs = vm("nomac", interfaces=[iface("default", binding="masquerade"), iface("nic-1", mac="02:00:00:00:02:01")],
                 networks=[pod_net(), multus_net("nic-1", "vlan1")])
    await create_running_vm(api_client, no_macs, vmi("nomac"))
    await create_running_vm(api_client, nic_vm("halted", mac="02:00:00:00:03:01", run_strategy="Halted",
                                               printable_status="Stopped"), None)
    await create_running_vm(api_client, nic_vm("guest", "team", mac="02:00:00:00:04:01", labels=GUEST),
                            vmi("guest", "team"))
    await create_running_vm(api_client, nic_vm("gpu", "team", mac="02:00:00:00:01:01", host_devices=True,
                                               labels={"tier": "gpu"}), vmi("gpu", "team"))


async def test_all_namespaces_json_gives_each_vm_its_state_and_codes(fleet: None, kubeconfig: Path) -> None:
    code, out, err = await plugin("check", "-A", "-o", "json", kubeconfig=kubeconfig)
    assert code == 1, err
    document = json.loads(out)
    states = {(item["namespace"], item["name"]): (item["hotplug"], [r["code"] for r in item["reasons"]])
              for item in document["items"]}
    assert states == {
        ("default", "ready1"): ("ready", []),
        ("default", "nomac"): ("after-restart", ["vm-missing-macs"]),
        ("default", "halted"): ("stopped", ["vm-not-running", "vm-not-running"]),
        ("team", "guest"): ("never", ["vm-guest-cluster"]),
        ("team", "gpu"): ("never", ["vm-not-migratable"]),
    }
    assert document["summary"]["states"] == {"ready": 1, "after-restart": 1, "stopped": 1, "wait": 0, "never": 2,
                                             "error": 0}
    assert document["summary"]["duplicateMacs"] == [{
        "mac": "02:00:00:00:01:01", "clusterNetwork": "mgmt",
        "owners": [{"namespace": "default", "name": "ready1", "interface": "nic-1"},
                   {"namespace": "team", "name": "gpu", "interface": "nic-1"}]}]


async def test_table_has_the_columns_a_summary_and_the_duplicate_owners(fleet: None, kubeconfig: Path) -> None:
    code, out, _ = await plugin("check", "-A", kubeconfig=kubeconfig)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "HOTPLUG", "NEXT-STEP", "PORTS-LEFT", "REASON"]
    nomac = next(line for line in lines if " nomac " in line)
    assert nomac.split()[2:7] == ["after-restart", "stop", "and", "start", "the"]
    assert "have no macAddress" in nomac
    assert "5 VMs: 1 ready, 1 after-restart, 1 stopped, 0 wait, 2 never; duplicate MACs: 1" in lines
    assert ("  MAC 02:00:00:00:01:01 on cluster network mgmt: default/ready1 (nic-1), team/gpu (nic-1)"
            in lines)


async def test_wide_shows_every_reason(fleet: None, kubeconfig: Path) -> None:
    _, narrow, _ = await plugin("check", "-n", "default", kubeconfig=kubeconfig)
    _, wide, _ = await plugin("check", "-n", "default", "-o", "wide", kubeconfig=kubeconfig)
    halted_narrow = next(line for line in narrow.splitlines() if " halted " in line)
    halted_wide = next(line for line in wide.splitlines() if " halted " in line)
    assert " | " not in halted_narrow
    assert halted_wide.count(" | ") == 1  # both reasons it is not running


async def test_namespace_and_selector_narrow_the_report(fleet: None, kubeconfig: Path) -> None:
    code, out, _ = await plugin("check", "-n", "team", "-o", "yaml", kubeconfig=kubeconfig)
    assert code == 1
    assert [item["name"] for item in yaml.safe_load(out)["items"]] == ["gpu", "guest"]
    code, out, _ = await plugin("check", "-A", "-l", "tier=gpu", "-o", "json", kubeconfig=kubeconfig)
    assert [item["name"] for item in json.loads(out)["items"]] == ["gpu"]


async def test_exit_0_when_every_vm_is_ready_or_stopped(api_client: ApiClient, kubeconfig: Path) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, nic_vm("ready1"), vmi("ready1"))
    await create_running_vm(api_client, nic_vm("halted", mac="02:00:00:00:03:01", run_strategy="Halted",
                                               printable_status="Stopped"), None)
    code, out, err = await plugin("check", kubeconfig=kubeconfig)
    assert code == 0, err
    assert "2 VMs: 1 ready, 0 after-restart, 1 stopped, 0 wait, 0 never; duplicate MACs: 0" in out


async def test_single_vm_with_an_output_format(fleet: None, kubeconfig: Path) -> None:
    code, out, _ = await plugin("check", "nomac", "-o", "json", kubeconfig=kubeconfig)
    assert code == 1
    assert [item["hotplug"] for item in json.loads(out)["items"]] == ["after-restart"]


@pytest.mark.parametrize("args", [["check", "vm1", "-A"], ["check", "vm1", "-l", "a=b"]])
async def test_a_vm_name_with_a_fleet_flag_is_a_usage_error(kubeconfig: Path, args: list[str]) -> None:
    code, _, err = await plugin(*args, kubeconfig=kubeconfig)
    assert code == 2
    assert "not both" in err


async def _auditor_kubeconfig(server: Any, api: ApiClient, path: Path) -> Path:
    """A service account that may list namespaces everywhere, but VMs and VMIs only in ``team``."""
    await ensure(CoreV1Api(api).create_namespaced_service_account, "default", {"metadata": {"name": "auditor"}})
    rbac = RbacAuthorizationV1Api(api)
    subject = [{"kind": "ServiceAccount", "name": "auditor", "namespace": "default"}]
    await ensure(rbac.create_cluster_role, {
        "metadata": {"name": "auditor-namespaces"},
        "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]}]})
    await ensure(rbac.create_cluster_role_binding, {
        "metadata": {"name": "auditor-namespaces"}, "subjects": subject,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "auditor-namespaces"}})
    await ensure(rbac.create_namespaced_role, "team", {
        "metadata": {"name": "auditor"},
        "rules": [{"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines", "virtualmachineinstances"],
                   "verbs": ["list"]}]})
    await ensure(rbac.create_namespaced_role_binding, "team", {
        "metadata": {"name": "auditor"}, "subjects": subject,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "auditor"}})
    token = server.service_account_token("default", "auditor")
    return Path(server.write_kubeconfig(path, token=token))


async def test_rbac_refusals_are_reported_on_their_namespaces_rows(
    fleet: None, cluster_server: Any, api_client: ApiClient, tmp_path: Path,
) -> None:
    auditor = await _auditor_kubeconfig(cluster_server, api_client, tmp_path / "auditor")
    code, out, err = await plugin("check", "-A", "-o", "json", kubeconfig=auditor)
    assert code == 1
    items = {(item["namespace"], item["name"]): item for item in json.loads(out)["items"]}
    assert items[("team", "guest")]["hotplug"] == "never"
    refused = items[("default", "")]
    assert refused["hotplug"] == "error"
    assert refused["reasons"][0]["code"] == "Forbidden"
    assert "cannot list VirtualMachines in default" in refused["reasons"][0]["message"]
    assert "NetworkAttachmentDefinitions in default" in err  # the team VMs' NAD: only their MAC scope suffers
    _, table, _ = await plugin("check", "-A", kubeconfig=auditor)
    assert any(line.split()[:3] == ["default", "*", "error"] for line in table.splitlines())


async def test_no_credentials_accepted_is_an_error_not_a_traceback(fleet: None, cluster_server: Any,
                                                                    tmp_path: Path) -> None:
    broken = cluster_server.write_kubeconfig(tmp_path / "broken", token="not-a-real-token")
    code, out, err = await plugin("check", "-A", kubeconfig=broken)
    assert (code, out) == (1, "")
    assert "error: Unauthorized" in err


async def test_the_report_lists_and_never_reads_vm_by_vm(fleet: None, apiserver: Any, kubeconfig: Path) -> None:
    # kept on the in-process server: it needs fault injection to prove no per-VM read is made
    apiserver.faults.add(method="GET", path_regex=r"/(virtualmachines|virtualmachineinstances)/[^/?]+(\?|$)",
                         status=500, times=None)
    code, out, err = await plugin("check", "-A", "-o", "json", kubeconfig=kubeconfig)
    assert code == 1, err
    assert len(json.loads(out)["items"]) == 5


async def test_guest_config_names_each_nic_by_mac(api_client: ApiClient, kubeconfig: Path) -> None:
    await create_nad(api_client, nad())
    machine = vm(interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:01"), iface("nic-1")],
                 networks=[pod_net(), multus_net("nic-1", "vlan1")])
    await create_running_vm(api_client, machine, vmi(interface_macs={"nic-1": "02:00:00:00:00:02"}))
    code, out, err = await plugin("guest-config", "vm1", kubeconfig=kubeconfig)
    assert code == 0, err
    table, _, snippet = out.partition("\n\n")
    assert [line.split() for line in table.splitlines()] == [
        ["INTERFACE", "MAC", "NETWORK", "GUEST-NAME"],
        ["default", "02:00:00:00:00:01", "pod", "default"],
        ["nic-1", "02:00:00:00:00:02", "default/vlan1", "nic-1"]]
    config = yaml.safe_load(snippet)
    assert config["network"]["ethernets"]["nic-1"] == {"match": {"macaddress": "02:00:00:00:00:02"},
                                                       "set-name": "nic-1", "dhcp4": True}


async def test_guest_config_of_a_missing_vm(kubeconfig: Path) -> None:
    code, _, err = await plugin("guest-config", "nope", kubeconfig=kubeconfig)
    assert code == 1
    assert "VM default/nope not found" in err
