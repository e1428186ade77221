"""The plugin's commands run in-process (the same ``run`` the console script calls) against the
in-process API server: output, refusals, hints, contexts and exit codes. The kubectl-driven tests in
``test_kubectl_plugin.py`` prove the wiring through kubectl's plugin mechanism; these cover the
behaviour without paying a process start per case."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from actions.objects import (
    KUBE_OVN_CONFIG,
    NETWORK_GONE,
    create_nad,
    create_running_vm,
    grant,
    nad,
    read_vm,
    spec_interfaces,
    take_network_away,
    vm,
    vmi,
)
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions.commands import run as run_command
from nichotplug.plugin import build_parser

# The plugin's behaviour holds on the real kube-apiserver too (tests naming `apiserver` inject faults).
pytestmark = pytest.mark.both_servers


@dataclass
class Run:
    code: int
    out: str
    err: str


async def plugin(*args: str, kubeconfig: Path | None) -> Run:
    """``kubectl nichotplug [--kubeconfig FILE] ARGS...`` in this process."""
    prefix = ["--kubeconfig", str(kubeconfig)] if kubeconfig is not None else []
    out, err = io.StringIO(), io.StringIO()
    code = await run_command(build_parser().parse_args([*prefix, *args]), out, err)
    return Run(code, out.getvalue(), err.getvalue())


@pytest.fixture
async def running_vm(api_client: ApiClient) -> dict[str, Any]:
    await create_nad(api_client, nad())
    return await create_running_vm(api_client, vm(), vmi())


@pytest.fixture
def two_contexts(kubeconfig: Path, tmp_path: Path) -> Path:
    """The admin kubeconfig plus a current context "broken" whose token the API server rejects."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["users"].append({"name": "nobody", "user": {"token": "not-a-real-token"}})
    config["contexts"].append({"name": "broken", "context": {"cluster": "nichotplug-test", "user": "nobody"}})
    config["current-context"] = "broken"
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    return path




async def test_context_flag_picks_the_context(two_contexts: Path, running_vm: dict[str, Any]) -> None:
    as_nobody = await plugin("check", "vm1", kubeconfig=two_contexts)
    assert as_nobody.code == 1
    assert "error: Unauthorized" in as_nobody.err
    as_admin = await plugin("check", "vm1", "--context", "nichotplug-test",
                            kubeconfig=two_contexts)
    assert as_admin.code == 0, as_admin.err
    missing = await plugin("--context", "nope", "check", "vm1", kubeconfig=two_contexts)
    assert missing.code == 2
    assert "context 'nope' not found" in missing.err




async def test_list_shows_each_interface_and_whether_it_can_be_unplugged(
        kubeconfig: Path, running_vm: dict[str, Any]) -> None:
    run = await plugin("list", "vm1", kubeconfig=kubeconfig)
    assert run.code == 0, run.err
    header, default, nic1 = run.out.strip().splitlines()
    assert header.split() == ["NAME", "BINDING", "MODEL", "NETWORK", "MAC", "STATE", "HOT-UNPLUG"]
    assert default.split()[:7] == ["default", "masquerade", "virtio", "pod", "02:00:00:00:00:01", "up", "no:"]
    assert "only bridge interfaces can be hot-unplugged" in default
    assert nic1.split() == ["nic-1", "bridge", "virtio", "default/vlan1", "02:00:00:00:00:02", "up", "yes"]




@pytest.mark.parametrize("how", NETWORK_GONE)
async def test_a_nic_whose_network_is_gone_is_listed_as_removable_and_removed(
        kubeconfig: Path, api_client: ApiClient, running_vm: dict[str, Any], how: str) -> None:
    await take_network_away(api_client, how)
    listed = await plugin("list", "vm1", kubeconfig=kubeconfig)
    assert listed.code == 0, listed.err
    nic1 = listed.out.strip().splitlines()[2]
    assert nic1.split()[:7] == ["nic-1", "bridge", "virtio", "default/vlan1", "02:00:00:00:00:02", "up", "yes"]
    assert "(interface nic-1 of VM default/vm1 is on network default/vlan1, which is gone or not a bridge" in nic1
    checked = await plugin("check", "vm1", kubeconfig=kubeconfig)
    assert (checked.code, checked.out.strip()) == (0, "VM default/vm1 is eligible for NIC hot-plug and hot-unplug")
    removed = await plugin("remove-nic", "vm1", "--interface", "nic-1", kubeconfig=kubeconfig)
    assert removed.code == 0, removed.err
    assert spec_interfaces(await read_vm(api_client, "default", "vm1"))[1]["state"] == "absent"


async def test_list_of_an_ineligible_vm_says_why(kubeconfig: Path, api_client: ApiClient) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(host_devices=True), vmi())
    run = await plugin("list", "vm1", kubeconfig=kubeconfig)
    assert run.code == 0, run.err
    assert "no: the VM is not eligible" in run.out
    assert "VM default/vm1 is not eligible for NIC hot-plug:" in run.out
    assert "host devices" in run.out




async def test_refused_add_nic_exits_1_with_the_reason_and_a_hint(
        kubeconfig: Path, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    taken = await plugin("add-nic", "vm1", "--network", "vlan1", "--interface", "nic-1",
                         kubeconfig=kubeconfig)
    assert taken.code == 1
    assert "error: VM default/vm1 already has an interface or network named 'nic-1'" in taken.err
    missing = await plugin("add-nic", "ghost", "--network", "vlan1", kubeconfig=kubeconfig)
    assert (missing.code, missing.err.strip()) == (1, "error: VM default/ghost not found")
    stored = await read_vm(api_client, "default", "vm1")
    assert stored["metadata"]["resourceVersion"] == running_vm["metadata"]["resourceVersion"]




async def test_refused_remove_nic_points_to_list(kubeconfig: Path, running_vm: dict[str, Any]) -> None:
    run = await plugin("remove-nic", "vm1", "--interface", "default", kubeconfig=kubeconfig)
    assert run.code == 1
    assert "masquerade" in run.err
    assert (f"hint: run 'kubectl nichotplug list vm1 -n default --kubeconfig {kubeconfig}' to see which "
            "interfaces can be unplugged") in run.err




async def test_rbac_refusal_is_shown_with_a_hint(cluster_server: Any, tmp_path: Path, api_client: ApiClient,
                                                 running_vm: dict[str, Any]) -> None:
    await grant(api_client, "default", "nobody", [
        {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines", "virtualmachineinstances"], "verbs": ["get"]},
        {"apiGroups": ["k8s.cni.cncf.io"], "resources": ["network-attachment-definitions"], "verbs": ["get"]},
    ])
    reader = cluster_server.write_kubeconfig(tmp_path / "reader.yaml", token=cluster_server.nobody_token)
    run = await plugin("remove-nic", "vm1", "--interface", "nic-1", kubeconfig=reader)
    assert run.code == 1
    assert 'User "nobody" cannot patch resource "virtualmachines"' in run.err
    assert "hint: ask your cluster administrator" in run.err
    assert spec_interfaces(await read_vm(api_client, "default", "vm1"))[1].get("state") is None




async def test_no_kubeconfig_anywhere_exits_2_saying_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent.yaml"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = await plugin("check", "vm1", kubeconfig=None)
    assert result.code == 2
    assert "no Kubernetes credentials" in result.err
    assert str(tmp_path / "absent.yaml") in result.err


async def test_a_missing_kubeconfig_file_given_explicitly_exits_2(tmp_path: Path) -> None:
    result = await plugin("check", "vm1", kubeconfig=tmp_path / "absent.yaml")
    assert result.code == 2
    assert f"kubeconfig {tmp_path / 'absent.yaml'} does not exist" in result.err


async def test_namespace_and_context_come_from_kubeconfig_env(
        cluster_server: Any, api_client: ApiClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await create_nad(api_client, nad())
    await create_running_vm(api_client, vm(), vmi())
    monkeypatch.setenv("KUBECONFIG", str(cluster_server.write_kubeconfig(tmp_path / "env.yaml", namespace="default")))
    result = await plugin("check", "vm1", kubeconfig=None)
    assert (result.code, result.out.strip()) == (0, "VM default/vm1 is eligible for NIC hot-plug and hot-unplug")


async def test_not_hotpluggable_network_is_refused_with_a_hint(kubeconfig: Path, api_client: ApiClient,
                                                              running_vm: dict[str, Any]) -> None:
    await create_nad(api_client, nad("ovn1", config=KUBE_OVN_CONFIG))
    result = await plugin("add-nic", "vm1", "--network", "ovn1", kubeconfig=kubeconfig)
    assert result.code == 1
    assert "kube-ovn" in result.err
    assert "hint: pick a bridge network" in result.err


async def test_failed_migration_request_is_a_warning_and_the_change_stays(
        apiserver: Any, kubeconfig: Path, api_client: ApiClient, running_vm: dict[str, Any]) -> None:
    apiserver.faults.add(method="POST", path_regex=r"/virtualmachineinstancemigrations", status=503, times=1,
                         message="migration controller unavailable")
    result = await plugin("remove-nic", "vm1", "--interface", "nic-1", kubeconfig=kubeconfig)
    assert result.code == 0, result.err
    assert "warning: the interface change of VM default/vm1 is saved" in result.err
    assert "migration controller unavailable" in result.err
    assert spec_interfaces(await read_vm(api_client, "default", "vm1"))[1]["state"] == "absent"


async def test_verbose_says_the_direct_path_is_used_when_no_subresource_api_is_served(
        kubeconfig: Path, running_vm: dict[str, Any]) -> None:
    done = await plugin("check", "vm1", "-v", kubeconfig=kubeconfig)
    assert done.code == 0, done.err
    assert ("using the Kubernetes API directly: the subresource API subresources.nichotplug.io/v1 is not available "
            "(HTTP 404 for /apis/subresources.nichotplug.io/v1)") in done.err
    assert "is eligible for NIC hot-plug" in done.out


async def test_no_migrate_takes_the_direct_path_and_verbose_says_why(
        kubeconfig: Path, running_vm: dict[str, Any]) -> None:
    done = await plugin("-v", "remove-nic", "vm1", "--interface", "nic-1", "--no-migrate", kubeconfig=kubeconfig)
    assert done.code == 0, done.err
    assert "using the Kubernetes API directly: --no-migrate" in done.err
