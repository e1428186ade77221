"""``nichotplug demo``: the hot-plug story, end to end, with no cluster.

Starts the in-process Kubernetes API server (with the real KubeVirt and
Multus CRDs), runs ``nichotplug serve`` against it in the same process
(webhooks, action API, controller), registers the webhooks, and walks a
newcomer through what nichotplug does: generated MACs, a hot-plug through the
action API, edits refused with their reasons, and observed MACs backfilled
into a stopped VM. Every step prints what it did and what came back.

KubeVirt itself does not run here, so the demo plays its part where the story
needs it (a running VM's VMI and status); those steps say so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import ssl
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from nichotplug.certs import make_bundle, write_bundle
from nichotplug.kube.patch import KubeError, create_custom_object, get_custom_object, json_patch, merge_patch

NAMESPACE = "default"
KUBEVIRT = ("kubevirt.io", "v1")
MULTUS = ("k8s.cni.cncf.io", "v1")
OBSERVED_MACS = "harvesterhci.io/mac-address"


class Story:
    """Prints numbered steps and what came back, so the terminal reads like a walkthrough."""

    def __init__(self, pause: float) -> None:
        self.step_number = 0
        self.pause = pause

    async def step(self, title: str) -> None:
        if self.step_number and self.pause:
            await asyncio.sleep(self.pause)
        self.step_number += 1
        print(f"\n== {self.step_number}. {title}")

    @staticmethod
    def say(text: str) -> None:
        print(f"   {text}")

    @staticmethod
    def result(label: str, value: Any) -> None:
        shown = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
        print(f"   -> {label}: {shown}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def vm_manifest(name: str, interfaces: list[dict[str, Any]], networks: list[dict[str, Any]],
                *, run_strategy: str = "Always") -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"harvesterhci.io/creator": "harvester"}},
        "spec": {
            "runStrategy": run_strategy,
            "template": {"spec": {
                "domain": {"devices": {"interfaces": interfaces}, "memory": {"guest": "1Gi"}},
                "networks": networks,
            }},
        },
    }


def bridge_nad(name: str, *, cni_type: str, cluster_network: str, network_type: str) -> dict[str, Any]:
    return {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {
            "network.harvesterhci.io/type": network_type,
            "network.harvesterhci.io/clusternetwork": cluster_network,
        }},
        "spec": {"config": json.dumps({"cniVersion": "0.3.1", "name": name, "type": cni_type,
                                       "bridge": f"{cluster_network}-br", "vlan": 100})},
    }


def running_vmi(vm: Mapping[str, Any], macs: Mapping[str, str]) -> dict[str, Any]:
    """What KubeVirt's VMI looks like for a running, live-migratable VM (KubeVirt plays no part here)."""
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": vm["metadata"]["name"], "namespace": NAMESPACE},
        "spec": {"domain": {"devices": {}}},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "LiveMigratable", "status": "True"}],
            "interfaces": [{"name": name, "mac": mac} for name, mac in macs.items()],
        },
    }


def interface_macs(vm: Mapping[str, Any]) -> dict[str, str | None]:
    interfaces = vm["spec"]["template"]["spec"]["domain"]["devices"].get("interfaces", [])
    return {iface["name"]: iface.get("macAddress") for iface in interfaces}


WAIT_SECONDS = 20.0


async def _wait_for(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while not await predicate():  # noqa: ASYNC110 - polling the API server, there is no local event
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise TimeoutError(f"gave up waiting for {what} after {WAIT_SECONDS:.0f} s") from None


class Demo:
    """The scripted story against one in-process API server and one nichotplug service."""

    def __init__(self, story: Story, workdir: Path) -> None:
        self.story = story
        self.workdir = workdir

    async def run(self) -> None:
        from kubernetes_asyncio import client, config

        from nichotplug.testing.server import ApiServer

        async with ApiServer() as server:
            self.server = server
            configuration = client.Configuration()
            kubeconfig = server.write_kubeconfig(self.workdir / "kubeconfig")
            await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
            async with client.ApiClient(configuration) as api:
                self.api = api
                self.objects = client.CustomObjectsApi(api)
                await self._story(kubeconfig)

    async def _story(self, kubeconfig: Path) -> None:
        story = self.story
        await story.step("Start an in-process Kubernetes API server with the KubeVirt and Multus CRDs")
        story.result("API server", self.server.url)
        story.say(f"kubeconfig for kubectl while the demo runs: {kubeconfig}")

        await story.step("Before nichotplug: a VM whose interfaces have no MAC in its spec (as old VMs do)")
        legacy = vm_manifest("legacy-vm", [{"name": "default", "masquerade": {}, "model": "virtio"}],
                             [{"name": "default", "pod": {}}])
        await self._create_vm(legacy)
        await self._create(KUBEVIRT, "virtualmachineinstances",
                           running_vmi(legacy, {"default": "52:54:00:6b:3c:58"}))
        story.say("KubeVirt (played by the demo) runs it with MAC 52:54:00:6b:3c:58 chosen at boot")

        stop = asyncio.Event()
        serve_args = self._serve_args(kubeconfig)
        service = asyncio.create_task(self._serve(serve_args, stop), name="nichotplug-serve")
        try:
            await self._register_webhooks(story)
            await self._networks_and_vm(story)
            await self._hotplug(story)
            await self._refusals(story)
            await self._backfill(story)
            await story.step("Done")
            story.say("nichotplug kept every MAC unique, allowed only safe hot-plug edits and backfilled MACs.")
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await service

    # ------------------------------------------------------------------ the service

    def _serve_args(self, kubeconfig: Path) -> argparse.Namespace:
        """Certificates, a port and the ``nichotplug serve`` arguments, ready before the service starts."""
        from nichotplug.cli import build_parser

        bundle = make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
        paths = write_bundle(bundle, self.workdir / "certs")
        self.ca_pem = bundle.ca_cert_pem
        self.port = _free_port()
        return build_parser().parse_args([
            "serve", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1", "--port", str(self.port),
            "--metrics-port", "0", "--tls-cert-file", str(paths["tls.crt"]),
            "--tls-key-file", str(paths["tls.key"]), "--namespace", NAMESPACE, "--shutdown-delay", "0",
        ])

    @staticmethod
    async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
        from nichotplug.service import serve

        await serve(args, stop)

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    async def _ready(self) -> bool:
        try:
            async with aiohttp.ClientSession() as session, session.get(
                f"https://127.0.0.1:{self.port}/readyz", ssl=self._ssl()
            ) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def _register_webhooks(self, story: Story) -> None:
        from nichotplug.webhook.registration import webhook_configurations

        await story.step("Install nichotplug: serve the webhooks, the action API and the controller")
        await _wait_for(self._ready, "nichotplug to become ready")
        story.result("nichotplug ready", f"https://127.0.0.1:{self.port}/readyz answered 200")
        mutating, validating = webhook_configurations(
            "nichotplug", url=f"https://127.0.0.1:{self.port}", ca_bundle=self.ca_pem,
        )
        for plural, obj in (("mutatingwebhookconfigurations", mutating),
                            ("validatingwebhookconfigurations", validating)):
            await self.objects.create_cluster_custom_object("admissionregistration.k8s.io", "v1", plural, obj)
            story.result(f"registered {obj['kind']}", obj["webhooks"][0]["name"])

    # ------------------------------------------------------------------ chapters

    async def _networks_and_vm(self, story: Story) -> None:
        await story.step("Create two VM networks: a VLAN bridge network and a kube-ovn overlay network")
        await self._create(MULTUS, "network-attachment-definitions",
                           bridge_nad("vlan100", cni_type="bridge", cluster_network="mgmt",
                                      network_type="L2VlanNetwork"))
        await self._create(MULTUS, "network-attachment-definitions",
                           bridge_nad("overlay", cni_type="kube-ovn", cluster_network="",
                                      network_type="OverlayNetwork"))
        story.result("created", "default/vlan100 (bridge, cluster network mgmt), default/overlay (kube-ovn)")

        await story.step("Create VM web-1 without MACs: the mutating webhook generates them")
        vm = vm_manifest("web-1",
                         [{"name": "default", "masquerade": {}, "model": "virtio"},
                          {"name": "nic-1", "bridge": {}, "model": "virtio"}],
                         [{"name": "default", "pod": {}},
                          {"name": "nic-1", "multus": {"networkName": "default/vlan100"}}])
        created = await self._create_vm(vm)
        macs = interface_macs(created)
        story.result("MACs in the stored spec", macs)
        story.say("each is random, locally administered (bit 0x02 set) and unicast (bit 0x01 clear)")
        self.web_macs = macs

        await story.step("web-1 starts (KubeVirt, played by the demo, creates a running, migratable VMI)")
        await self._create(KUBEVIRT, "virtualmachineinstances",
                           running_vmi(created, {k: v for k, v in macs.items() if v}))
        merge: dict[str, Any] = {"_content_type": "application/merge-patch+json"}  # the client's stubs omit it
        await self.objects.patch_namespaced_custom_object_status(
            *KUBEVIRT, NAMESPACE, "virtualmachines", "web-1", {"status": {"printableStatus": "Running"}}, **merge)
        story.result("VMI web-1", "phase Running, Ready, LiveMigratable")
        # The controller records the running VMI's MACs on the VM; waiting for it keeps the next step's
        # optimistic-concurrency check from racing that write (a race would be a clean 409, not a loss).
        story.result(f"the controller recorded {OBSERVED_MACS}", await self._wait_annotation("web-1"))

    async def _hotplug(self, story: Story) -> None:
        await story.step("Hot-plug a NIC into the running VM through the action API (what the UI calls)")
        status, body = await self._action("web-1", "findHotunpluggableNics")
        story.result(f"findHotunpluggableNics before ({status})", body)
        status, body = await self._action("web-1", "addNic",
                                          {"interfaceName": "dynif1", "networkName": "default/vlan100"})
        story.result(f"addNic dynif1 on default/vlan100 ({status})", body or "no content")
        vm = await self._get_vm("web-1")
        story.result("interfaces now", interface_macs(vm))
        migrations = await self.objects.list_namespaced_custom_object(
            *KUBEVIRT, NAMESPACE, "virtualmachineinstancemigrations")
        names = [item["metadata"]["name"] for item in migrations["items"]]
        story.result("live migration requested so the change applies now", names)
        status, body = await self._action("web-1", "findHotunpluggableNics")
        story.result(f"findHotunpluggableNics after ({status})", body)

        await story.step("Hot-unplug dynif1 again through the action API")
        status, body = await self._action("web-1", "removeNic", {"interfaceName": "dynif1"})
        story.result(f"removeNic dynif1 ({status})", body or "no content")
        interfaces = (await self._get_vm("web-1"))["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        states = {iface["name"]: iface.get("state", "present") for iface in interfaces}
        story.result("interface states (KubeVirt detaches 'absent' ones on the next migration)", states)

    async def _refusals(self, story: Story) -> None:
        await story.step("A hand edit (as with kubectl edit) adding an e1000 masquerade NIC to the running VM")
        vm = await self._get_vm("web-1")
        patch = [
            {"op": "test", "path": "/metadata/resourceVersion", "value": vm["metadata"]["resourceVersion"]},
            {"op": "add", "path": "/spec/template/spec/domain/devices/interfaces/-",
             "value": {"name": "bad", "model": "e1000", "masquerade": {}}},
            {"op": "add", "path": "/spec/template/spec/networks/-",
             "value": {"name": "bad", "multus": {"networkName": "default/vlan100"}}},
        ]
        await self._expect_refusal(json_patch(self.api, *KUBEVIRT, "virtualmachines", NAMESPACE, "web-1", patch))

        await story.step("addNic onto the kube-ovn overlay network, which cannot be hot-plugged")
        status, body = await self._action("web-1", "addNic",
                                          {"interfaceName": "dynif2", "networkName": "default/overlay"})
        story.result(f"refused ({status})", body)

        await story.step("Create VM web-2 reusing web-1's MAC on the same cluster network")
        taken = self.web_macs["nic-1"]
        vm = vm_manifest("web-2", [{"name": "nic-1", "bridge": {}, "model": "virtio", "macAddress": taken}],
                         [{"name": "nic-1", "multus": {"networkName": "default/vlan100"}}], run_strategy="Halted")
        await self._expect_refusal(self._create(KUBEVIRT, "virtualmachines", vm))

    async def _backfill(self, story: Story) -> None:
        await story.step("The controller records legacy-vm's observed MACs in an annotation")
        annotation = await self._wait_annotation("legacy-vm")
        story.result(f"annotation {OBSERVED_MACS}", annotation)

        await story.step("Stop legacy-vm (runStrategy Halted; KubeVirt deletes its VMI)")
        await merge_patch(self.api, *KUBEVIRT, "virtualmachines", NAMESPACE, "legacy-vm",
                          {"spec": {"runStrategy": "Halted"}})
        await self.objects.delete_namespaced_custom_object(*KUBEVIRT, NAMESPACE, "virtualmachineinstances",
                                                           "legacy-vm")

        async def backfilled() -> bool:
            return all(interface_macs(await self._get_vm("legacy-vm")).values())

        await _wait_for(backfilled, "the controller to backfill legacy-vm")
        story.result("MACs now in legacy-vm's spec", interface_macs(await self._get_vm("legacy-vm")))
        story.say("it keeps its MAC across the restart and can be hot-plugged once running again")

    # ------------------------------------------------------------------ helpers

    async def _create(self, group_version: tuple[str, str], plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        return await create_custom_object(self.api, *group_version, plural, NAMESPACE, obj)

    async def _create_vm(self, vm: dict[str, Any]) -> dict[str, Any]:
        return await self._create(KUBEVIRT, "virtualmachines", vm)

    async def _get_vm(self, name: str) -> dict[str, Any]:
        return await get_custom_object(self.api, *KUBEVIRT, "virtualmachines", NAMESPACE, name)

    async def _expect_refusal(self, call: Awaitable[Any]) -> None:
        try:
            await call
        except KubeError as error:
            self.story.result(f"refused by the API server (HTTP {error.status})", str(error))
        else:
            raise RuntimeError("the edit was accepted, but nichotplug should have refused it")

    async def _action(self, vm: str, action: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        url = f"https://127.0.0.1:{self.port}/v1/harvester/kubevirt.io.virtualmachines/{NAMESPACE}/{vm}"
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        async with aiohttp.ClientSession() as session, session.post(
            url, params={"action": action}, json=body or {}, headers=headers, ssl=self._ssl()
        ) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def _wait_annotation(self, name: str) -> str:
        async def recorded() -> bool:
            annotations = (await self._get_vm(name))["metadata"].get("annotations") or {}
            return OBSERVED_MACS in annotations

        await _wait_for(recorded, f"the observed-MAC annotation on {name}")
        annotation: str = (await self._get_vm(name))["metadata"]["annotations"][OBSERVED_MACS]
        return annotation


TESTING_EXTRA_HINT = ("nichotplug demo runs an in-process Kubernetes API server, which is not installed here "
                      "(the runtime image leaves it out): pip install 'nichotplug[testing]'")


def _testing_missing() -> str | None:
    """Why the in-process API server cannot be imported (its code or the ``testing`` extra missing), or None."""
    try:
        import nichotplug.testing.server  # noqa: F401
    except ImportError as error:
        return f"{TESTING_EXTRA_HINT} ({error})"
    return None


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``nichotplug demo``."""
    import logging

    missing = _testing_missing()
    if missing:
        print(f"nichotplug demo: {missing}", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.WARNING, format="   (log) %(levelname)s %(name)s: %(message)s")
    print("nichotplug demo: safe NIC hot-plug for KubeVirt VMs in Harvester (no cluster needed)")
    with tempfile.TemporaryDirectory(prefix="nichotplug-demo-") as workdir:
        try:
            asyncio.run(Demo(Story(args.pause), Path(workdir)).run())
        except Exception as error:
            print(f"\nnichotplug demo failed: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
    return 0
