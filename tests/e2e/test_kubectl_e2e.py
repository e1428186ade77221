"""nichotplug end to end: the real ``nichotplug serve`` process, registered with an API server (the
in-process one and a real kube-apiserver: ``any_apiserver``), driven by the real ``kubectl`` as an
operator drives it.

The service runs as a subprocess with certificates from ``nichotplug certs``; the API server calls
its webhooks over verified TLS. What is asserted is what the operator sees: the MACs kubectl shows,
the refusal kubectl prints, and that a refused edit changed nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml

from nichotplug.testing.envtest import RealApiServer
from nichotplug.testing.server import ApiServer
from nichotplug.webhook.registration import VALIDATING_WEBHOOK, webhook_configurations

pytestmark = [pytest.mark.kubectl,
              pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")]

DENIED = f'admission webhook "{VALIDATING_WEBHOOK.name}" denied the request: '


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


async def run(*argv: str, env: dict[str, str] | None = None, limit_seconds: float = 60) -> Done:
    """Run a command without blocking the event loop the API server answers on."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(process.communicate(), limit_seconds)
    assert process.returncode is not None
    return Done(process.returncode, out.decode(), err.decode())


@dataclass
class Cluster:
    server: ApiServer | RealApiServer
    kubeconfig: Path
    workdir: Path

    async def kubectl(self, *args: str, env: dict[str, str] | None = None) -> Done:
        return await run("kubectl", "--kubeconfig", str(self.kubeconfig),
                         "--cache-dir", str(self.workdir / "kube-cache"), *args, env=env)

    async def apply(self, obj: dict[str, Any]) -> Done:
        path = self.workdir / f"{obj['metadata']['name']}-{obj['kind']}.yaml"
        path.write_text(yaml.safe_dump(obj))
        return await self.kubectl("apply", "-f", str(path))

    async def get_vm(self, name: str) -> dict[str, Any]:
        done = await self.kubectl("get", "vm", name, "-o", "json")
        assert done.returncode == 0, done.stderr
        vm: dict[str, Any] = json.loads(done.stdout)
        return vm

    async def edit_vm(self, name: str, new_interface: dict[str, Any], network: dict[str, Any]) -> Done:
        """``kubectl edit vm`` with an EDITOR that appends an interface and its network to the file."""
        return await self.edit_vm_with(name, f"spec['domain']['devices']['interfaces'].append({new_interface!r})\n"
                                             f"spec['networks'].append({network!r})\n")

    async def unplug_by_edit(self, name: str, interface: str) -> Done:
        """``kubectl edit vm`` with an EDITOR that sets ``state: absent`` on one interface."""
        return await self.edit_vm_with(name, "for item in spec['domain']['devices']['interfaces']:\n"
                                             f"    if item['name'] == {interface!r}:\n"
                                             "        item['state'] = 'absent'\n")

    async def edit_vm_with(self, name: str, change: str) -> Done:
        """``kubectl edit vm`` with an EDITOR running ``change`` on ``spec`` (the template spec) of the file."""
        editor = self.workdir / "editor.py"
        editor.write_text(
            "import sys, yaml\n"
            "path = sys.argv[-1]\n"
            "vm = yaml.safe_load(open(path))\n"
            "spec = vm['spec']['template']['spec']\n"
            f"{change}"
            "open(path, 'w').write(yaml.safe_dump(vm))\n"
        )
        return await self.kubectl("edit", "vm", name, env={"KUBE_EDITOR": f"{sys.executable} {editor}"})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_ready(url: str, ca_file: Path, process: asyncio.subprocess.Process) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert process.returncode is None, "nichotplug serve exited before it became ready"
            try:
                async with session.get(f"{url}/readyz", ssl=context) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("nichotplug serve did not become ready in 30 s")


async def start_serve(kubeconfig: Path, workdir: Path, *, controller: bool = False,
                      ) -> tuple[str, Path, asyncio.subprocess.Process]:
    """``nichotplug serve`` (``--no-controller`` unless ``controller``) as a process with certificates
    from ``nichotplug certs``, once ready: (its URL, the CA file, the process). The caller stops it."""
    certs = workdir / "certs"
    made = await run(sys.executable, "-m", "nichotplug", "certs", "--out", str(certs), "--ip", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
        "--port", str(port), "--metrics-port", "0", "--tls-cert-file", str(certs / "tls.crt"),
        "--tls-key-file", str(certs / "tls.key"), "--namespace", "default",
        *(() if controller else ("--no-controller",)),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    url = f"https://127.0.0.1:{port}"
    try:
        await wait_ready(url, certs / "ca.crt", process)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    return url, certs / "ca.crt", process


async def register_webhooks(kubeconfig: Path, workdir: Path, url: str, ca_file: Path) -> None:
    """Our two webhook configurations, calling ``url``, applied with kubectl."""
    ca_bundle = await asyncio.to_thread(ca_file.read_bytes)
    for config in webhook_configurations("nichotplug", url=url, ca_bundle=ca_bundle):
        path = workdir / f"{config['kind']}.yaml"
        await asyncio.to_thread(path.write_text, yaml.safe_dump(config))
        applied = await run("kubectl", "--kubeconfig", str(kubeconfig), "apply", "-f", str(path))
        assert applied.returncode == 0, applied.stderr


@pytest_asyncio.fixture
async def cluster(any_apiserver: ApiServer | RealApiServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    """The API server with nichotplug serving (as a process) and registered, plus two networks."""
    kubeconfig = any_apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    url, ca_file, process = await start_serve(kubeconfig, tmp_path)
    try:
        state = Cluster(any_apiserver, kubeconfig, tmp_path)
        await register_webhooks(kubeconfig, tmp_path, url, ca_file)
        for nad in (bridge_nad("vlan1", "bridge"), bridge_nad("overlay", "kube-ovn")):
            applied = await state.apply(nad)
            assert applied.returncode == 0, applied.stderr
        yield state
    finally:
        await stop_serve(process)


async def stop_serve(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(process.communicate(), 30)
    # SIGTERM drains and exits cleanly: anything else is a crash worth seeing.
    assert process.returncode == 0, stderr.decode()[-3000:]


def bridge_nad(name: str, cni_type: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"network.harvesterhci.io/clusternetwork": "mgmt"}},
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": name, "type": cni_type, "bridge": "mgmt-br"})},
    }


def vm_manifest(name: str, *, macs: dict[str, str] | None = None, run_strategy: str = "Always") -> dict[str, Any]:
    macs = macs or {}
    interfaces: list[dict[str, Any]] = [
        {"name": "default", "masquerade": {}, "model": "virtio"},
        {"name": "nic-1", "bridge": {}, "model": "virtio"},
    ]
    for interface in interfaces:
        if interface["name"] in macs:
            interface["macAddress"] = macs[interface["name"]]
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": run_strategy, "template": {"spec": {
            "domain": {"devices": {"interfaces": interfaces}, "memory": {"guest": "1Gi"}},
            "networks": [{"name": "default", "pod": {}},
                         {"name": "nic-1", "multus": {"networkName": "default/vlan1"}}],
        }}},
    }


def macs_of(vm: dict[str, Any]) -> dict[str, str | None]:
    return {i["name"]: i.get("macAddress") for i in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]}


async def start_running(cluster: Cluster, name: str) -> dict[str, Any]:
    """Create a VM with MACs and play KubeVirt: a running, ready, live-migratable VMI and status Running."""
    applied = await cluster.apply(vm_manifest(name))
    assert applied.returncode == 0, applied.stderr
    vm = await cluster.get_vm(name)
    vmi = {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"domain": {"devices": {}}},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "True"}, {"type": "LiveMigratable", "status": "True"}],
                   "interfaces": [{"name": n, "mac": m} for n, m in macs_of(vm).items()]},
    }
    assert (await cluster.apply(vmi)).returncode == 0
    patched = await cluster.kubectl("patch", "vm", name, "--subresource=status", "--type=merge",
                                    "-p", '{"status": {"printableStatus": "Running"}}')
    assert patched.returncode == 0, patched.stderr
    await wait_until_hotpluggable(cluster, name)
    return await cluster.get_vm(name)


async def wait_until_hotpluggable(cluster: Cluster, name: str) -> None:
    """The webhook judges from its watch cache: wait until a valid hot-plug passes a server dry run."""
    probe = json.dumps([
        {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/-",
         "value": {"name": "probe", "model": "virtio", "bridge": {}}},
        {"op": "add", "path": "/spec/template/spec/networks/-",
         "value": {"name": "probe", "multus": {"networkName": "default/vlan1"}}},
    ])
    for _ in range(50):
        done = await cluster.kubectl("patch", "vm", name, "--dry-run=server", "--type=json", "-p", probe)
        if done.returncode == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"a valid hot-plug into {name} was still refused after 10 s: {done.stderr}")


async def test_kubectl_apply_of_a_vm_without_macs_gets_generated_ones(cluster: Cluster) -> None:
    applied = await cluster.apply(vm_manifest("fresh", run_strategy="Halted"))
    assert applied.returncode == 0, applied.stderr

    macs = macs_of(await cluster.get_vm("fresh"))

    assert set(macs) == {"default", "nic-1"}
    assert all(mac and int(mac[:2], 16) & 0b11 == 0b10 for mac in macs.values()), macs
    assert len(set(macs.values())) == 2


async def test_kubectl_edit_adding_a_non_bridge_nic_to_a_running_vm_is_refused(cluster: Cluster) -> None:
    before = await start_running(cluster, "runner")

    done = await cluster.edit_vm("runner", {"name": "extra", "model": "virtio", "masquerade": {}},
                                 {"name": "extra", "multus": {"networkName": "default/vlan1"}})

    assert done.returncode != 0
    assert DENIED in done.stderr, done.stderr
    assert "extra" in done.stderr
    assert "bridge" in done.stderr
    after = await cluster.get_vm("runner")
    assert macs_of(after) == macs_of(before)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


async def test_kubectl_edit_hot_plugging_a_virtio_bridge_nic_is_accepted_with_a_mac(cluster: Cluster) -> None:
    await start_running(cluster, "runner")

    done = await cluster.edit_vm("runner", {"name": "dynif1", "model": "virtio", "bridge": {}},
                                 {"name": "dynif1", "multus": {"networkName": "default/vlan1"}})

    assert done.returncode == 0, done.stderr
    macs = macs_of(await cluster.get_vm("runner"))
    assert list(macs) == ["default", "nic-1", "dynif1"]
    assert macs["dynif1"]
    assert int(macs["dynif1"][:2], 16) & 0b11 == 0b10


async def test_kubectl_edit_hot_plugging_onto_an_overlay_network_is_refused(cluster: Cluster) -> None:
    await start_running(cluster, "runner")

    done = await cluster.edit_vm("runner", {"name": "dynif1", "model": "virtio", "bridge": {}},
                                 {"name": "dynif1", "multus": {"networkName": "default/overlay"}})

    assert done.returncode != 0
    assert DENIED in done.stderr, done.stderr
    assert "default/overlay" in done.stderr


async def test_a_duplicate_mac_on_the_same_cluster_network_is_refused(cluster: Cluster) -> None:
    applied = await cluster.apply(vm_manifest("first", run_strategy="Halted"))
    assert applied.returncode == 0, applied.stderr
    taken = macs_of(await cluster.get_vm("first"))["nic-1"]
    assert taken is not None

    done = await cluster.apply(vm_manifest("second", macs={"nic-1": taken.upper()}, run_strategy="Halted"))

    assert done.returncode != 0
    assert DENIED in done.stderr, done.stderr
    # A refusal, not a lost race: client-go's IsConflict is false, so RetryOnConflict does not resend it.
    assert "Error from server (Forbidden)" in done.stderr
    assert taken in done.stderr
    assert "default/first" in done.stderr
    missing = await cluster.kubectl("get", "vm", "second")
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr


async def test_a_copy_of_a_vm_with_its_mac_annotation_gets_new_macs_and_a_warning(cluster: Cluster) -> None:
    applied = await cluster.apply(vm_manifest("source", run_strategy="Halted"))
    assert applied.returncode == 0, applied.stderr
    source = await cluster.get_vm("source")
    recorded = macs_of(source)["nic-1"]
    assert recorded is not None
    copy = vm_manifest("copy", run_strategy="Halted")  # MACs taken out, the annotation left in
    copy["metadata"]["annotations"] = {"harvesterhci.io/mac-address": json.dumps({"nic-1": recorded})}

    done = await cluster.apply(copy)

    assert done.returncode == 0, done.stderr
    assert (f"Warning: VM default/copy interface nic-1: the MAC its annotation harvesterhci.io/mac-address "
            f"records, {recorded}, is used by default/source interface nic-1") in done.stderr
    assert macs_of(await cluster.get_vm("copy"))["nic-1"] not in (None, recorded)


async def test_json_patch_unplugging_the_masquerade_interface_is_refused(cluster: Cluster) -> None:
    await start_running(cluster, "runner")

    done = await cluster.kubectl(
        "patch", "vm", "runner", "--type=json",
        "-p", '[{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/0/state", "value": "absent"}]')

    assert done.returncode != 0
    assert DENIED in done.stderr, done.stderr
    assert "interface default of VM default/runner uses masquerade binding" in done.stderr


async def test_a_mac_changed_to_a_multicast_one_is_refused_while_a_start_goes_through(cluster: Cluster) -> None:
    """The validating webhook sees the MAC edit (its match conditions send interface changes) and not
    the start, which nothing judges; both through the same configurations on both servers."""
    applied = await cluster.apply(vm_manifest("cold", run_strategy="Halted"))
    assert applied.returncode == 0, applied.stderr

    refused = await cluster.kubectl(
        "patch", "vm", "cold", "--type=json", "-p",
        '[{"op": "replace", "path": "/spec/template/spec/domain/devices/interfaces/1/macAddress",'
        ' "value": "03:00:00:00:00:01"}]')
    started = await cluster.kubectl("patch", "vm", "cold", "--type=merge", "-p", '{"spec": {"runStrategy": "Always"}}')

    assert refused.returncode != 0
    assert DENIED + "VM default/cold interface nic-1: 03:00:00:00:00:01 is a multicast MAC address" in refused.stderr
    assert started.returncode == 0, started.stderr
    assert (await cluster.get_vm("cold"))["spec"]["runStrategy"] == "Always"


async def test_an_observed_mac_annotation_edit_is_judged(cluster: Cluster) -> None:
    applied = await cluster.apply(vm_manifest("noted", run_strategy="Halted"))
    assert applied.returncode == 0, applied.stderr

    done = await cluster.kubectl("annotate", "vm", "noted", "harvesterhci.io/mac-address={broken")

    assert done.returncode == 0, done.stderr
    assert "Warning: VM default/noted: annotation harvesterhci.io/mac-address is not valid JSON" in done.stderr


# -- issue 14: a NIC whose network is gone stays removable (harvester#8293) -------------------------

GONE_NETWORK = {
    "deleted": [("delete", "network-attachment-definitions", "vlan1")],
    "being-deleted": [("patch", "network-attachment-definitions", "vlan1", "--type=merge",
                       "-p", '{"metadata": {"finalizers": ["example.com/hold"]}}'),
                      ("delete", "network-attachment-definitions", "vlan1", "--wait=false")],
    "no-longer-a-bridge": [("apply-kube-ovn",)],
}
UNPLUG_NIC1 = '[{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/state", "value": "absent"}]'
GONE_WARNING = ("Warning: interface nic-1 of VM default/runner is on network default/vlan1, which is gone or not a "
                "bridge")


@pytest.mark.parametrize("change", GONE_NETWORK.values(), ids=GONE_NETWORK.keys())
async def test_kubectl_edit_unplugs_a_nic_whose_network_is_gone_with_a_warning(
        cluster: Cluster, change: list[tuple[str, ...]]) -> None:
    await start_running(cluster, "runner")
    for step in change:
        done = await (cluster.apply(bridge_nad("vlan1", "kube-ovn")) if step == ("apply-kube-ovn",)
                      else cluster.kubectl(*step))
        assert done.returncode == 0, done.stderr
    for _ in range(50):  # the webhook hears of the NAD change through its watch
        probe = await cluster.kubectl("patch", "vm", "runner", "--dry-run=server", "--type=json", "-p", UNPLUG_NIC1)
        if GONE_WARNING in probe.stderr:
            break
        await asyncio.sleep(0.2)

    done = await cluster.unplug_by_edit("runner", "nic-1")

    assert done.returncode == 0, done.stderr
    assert GONE_WARNING in done.stderr
    interfaces = (await cluster.get_vm("runner"))["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
    assert [(item["name"], item.get("state")) for item in interfaces] == [("default", None), ("nic-1", "absent")]


async def test_kubectl_edit_lists_every_problem_of_a_refused_hotplug_at_once(cluster: Cluster) -> None:
    await start_running(cluster, "runner")

    done = await cluster.edit_vm("runner", {"name": "extra", "model": "e1000", "masquerade": {}},
                                 {"name": "extra", "multus": {"networkName": "default/overlay"}})

    assert done.returncode != 0
    assert DENIED in done.stderr, done.stderr
    for problem in ("its model is e1000", "it uses masquerade binding", "default/overlay is a kube-ovn network"):
        assert problem in done.stderr


# -- issue 14: the backfill meets a MAC another VM holds ---------------------------------------------

CLASH_MAC = "02:12:34:56:78:9c"


def stopped_in_ns(name: str, macs: dict[str, str], annotation: str | None = None) -> dict[str, Any]:
    manifest = vm_manifest(name, macs=macs, run_strategy="Halted")
    manifest["metadata"]["namespace"] = "ns"
    manifest["spec"]["template"]["spec"]["networks"][1]["multus"]["networkName"] = "ns/vlan1"
    if annotation is not None:
        manifest["metadata"]["annotations"] = {"harvesterhci.io/mac-address": annotation}
    return manifest


async def ns_vm_macs(cluster: Cluster, name: str) -> dict[str, str | None]:
    done = await cluster.kubectl("get", "vm", name, "-n", "ns", "-o", "json")
    assert done.returncode == 0, done.stderr
    return macs_of(json.loads(done.stdout))


async def test_a_mac_another_vm_holds_is_neither_backfilled_nor_written_by_anyone(
        any_apiserver: ApiServer | RealApiServer, tmp_path: Path) -> None:
    cluster = Cluster(any_apiserver, any_apiserver.write_kubeconfig(tmp_path / "kubeconfig"), tmp_path)
    created = await cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}})
    assert created.returncode == 0, created.stderr  # apply: the real server keeps namespaces between tests
    nad = bridge_nad("vlan1", "bridge")
    nad["metadata"]["namespace"] = "ns"
    for manifest in (nad, stopped_in_ns("old-owner", {"default": "52:54:00:00:02:01", "nic-1": CLASH_MAC}),
                     stopped_in_ns("old-clash", {}, f'{{"default": "52:54:00:00:03:01", "nic-1": "{CLASH_MAC}"}}')):
        applied = await cluster.apply(manifest)
        assert applied.returncode == 0, applied.stderr

    url, ca_file, process = await start_serve(cluster.kubeconfig, tmp_path, controller=True)
    try:
        for _ in range(150):  # nichotplug starts: the controller backfills what is free, webhooks not yet there
            if (await ns_vm_macs(cluster, "old-clash"))["default"]:
                break
            await asyncio.sleep(0.2)
        assert await ns_vm_macs(cluster, "old-clash") == {"default": "52:54:00:00:03:01", "nic-1": None}

        await register_webhooks(cluster.kubeconfig, tmp_path, url, ca_file)
        write_clash = ("patch", "vm", "old-clash", "-n", "ns", "--type=json", "-p", json.dumps(
            [{"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/1/macAddress", "value": CLASH_MAC}]))
        for _ in range(50):  # the API server picks the new webhook configuration up within moments
            refused = await cluster.kubectl(*write_clash)
            if refused.returncode != 0:
                break
            await asyncio.sleep(0.2)

        assert DENIED in refused.stderr, refused.stderr
        assert "Error from server (Forbidden)" in refused.stderr
        assert (f"VM ns/old-clash: mac address {CLASH_MAC} of interface nic-1 is already used by ns/old-owner "
                "interface nic-1 on cluster network mgmt") in refused.stderr
        # Never stuck (harvester#9788). The next write of the stopped VM (a label here) passes the mutating
        # webhook as a cold edit, which gives nic-1 a fresh MAC and says why; starting it is then plain.
        labelled = await cluster.kubectl("label", "vm", "old-clash", "-n", "ns", "team=blue")
        assert labelled.returncode == 0, labelled.stderr
        assert f"records, {CLASH_MAC}, is used by ns/old-owner interface nic-1" in labelled.stderr
        started = await cluster.kubectl("patch", "vm", "old-clash", "-n", "ns", "--type=merge",
                                        "-p", '{"spec": {"runStrategy": "Always"}}')
        assert started.returncode == 0, started.stderr
        macs = await ns_vm_macs(cluster, "old-clash")
        assert macs["default"] == "52:54:00:00:03:01"
        assert macs["nic-1"] not in (None, CLASH_MAC)
    finally:
        await stop_serve(process)
