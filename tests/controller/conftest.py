"""Helpers for controller tests: VM/VMI objects, a started cluster view, kubectl, waiting for state."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi

from nichotplug.controller import MacController
from nichotplug.kube.cache import ClusterView, WatchSettings
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION

T = TypeVar("T")
GROUP, VERSION = "kubevirt.io", "v1"
NS = "default"
MAC_A = "be:40:c3:88:75:7c"
MAC_B = "02:11:22:33:44:0b"
MAC_C = "02:11:22:33:44:0c"
FAST_WATCH = WatchSettings(watch_timeout=5.0, backoff_initial=0.02, backoff_cap=0.3, connect_timeout=2.0)


def vm_body(name: str, *, macs: dict[str, str | None], run_strategy: str = "Halted",
            annotation: dict[str, str] | str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A VirtualMachine with one interface per entry of ``macs`` (None = no macAddress)."""
    interfaces: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for index, (iface, mac) in enumerate(macs.items()):
        entry: dict[str, Any] = {"name": iface, "model": "virtio"}
        if index == 0:
            entry["masquerade"] = {}
            networks.append({"name": iface, "pod": {}})
        else:
            entry["bridge"] = {}
            networks.append({"name": iface, "multus": {"networkName": f"{NS}/vlan1"}})
        if mac is not None:
            entry["macAddress"] = mac
        interfaces.append(entry)
    metadata: dict[str, Any] = {"name": name, "namespace": NS, "labels": labels or {"app": "test"}}
    if annotation is not None:
        text = annotation if isinstance(annotation, str) else json.dumps(annotation, separators=(",", ":"))
        metadata["annotations"] = {OBSERVED_MACS_ANNOTATION: text, "keep": "me"}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "metadata": metadata,
        "spec": {
            "runStrategy": run_strategy,
            "template": {"spec": {
                "domain": {"cpu": {"cores": 1}, "memory": {"guest": "1Gi"},
                           "devices": {"disks": [{"name": "disk-0", "disk": {"bus": "virtio"}}],
                                       "interfaces": interfaces}},
                "networks": networks,
                "volumes": [{"name": "disk-0", "containerDisk": {"image": "example/disk"}}],
            }},
        },
    }


def vmi_body(name: str, macs: dict[str, str]) -> dict[str, Any]:
    """A running VirtualMachineInstance reporting ``macs`` in status.interfaces."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"domain": {"devices": {}}},
        "status": {"phase": "Running", "interfaces": [{"name": n, "mac": m} for n, m in macs.items()]},
    }


class Cluster:
    """Reads and writes VMs, VMIs and Events through the API server, as a user would."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api
        self.custom = CustomObjectsApi(api)
        self.core = CoreV1Api(api)

    async def create_vm(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachines", body)
        return created

    async def create_vmi(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.custom.create_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachineinstances", body)
        return created

    async def delete_vmi(self, name: str) -> None:
        await self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "virtualmachineinstances", name)

    async def get_vm(self, name: str) -> dict[str, Any]:
        vm: dict[str, Any] = await self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "virtualmachines", name)
        return vm

    async def merge_vm(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = await self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachines", name, patch, _content_type="application/merge-patch+json")
        return patched

    async def relabel_vm(self, name: str, key: str, value: str) -> dict[str, Any]:
        """A user's edit sent as an update (PUT) carrying the resourceVersion it read."""
        vm = await self.get_vm(name)
        vm["metadata"].setdefault("labels", {})[key] = value
        replaced: dict[str, Any] = await self.custom.replace_namespaced_custom_object(
            GROUP, VERSION, NS, "virtualmachines", name, vm)
        return replaced

    async def spec_macs(self, name: str) -> dict[str, str | None]:
        vm = await self.get_vm(name)
        interfaces = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        return {i["name"]: i.get("macAddress") for i in interfaces}

    async def annotation(self, name: str) -> str | None:
        vm = await self.get_vm(name)
        value = (vm["metadata"].get("annotations") or {}).get(OBSERVED_MACS_ANNOTATION)
        return value if isinstance(value, str) else None

    async def events(self, name: str) -> list[tuple[str, str, str, int]]:
        """(type, reason, message, count) of every Event about VM ``name``."""
        listed = await self.core.list_namespaced_event(NS)
        return [(e.type, e.reason, e.message, e.count or 1) for e in listed.items
                if e.involved_object.name == name and e.involved_object.kind == "VirtualMachine"]


async def wait_for(check: Callable[[], Awaitable[T]], *, within: float = 15.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail the test after ``within`` seconds."""
    last: T | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    pytest.fail(f"condition not met within {within}s (last value: {last!r})")


async def kubectl(kubeconfig: Path, *args: str) -> str:
    """Run the real kubectl against the in-process API server; fail the test on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        "kubectl", f"--kubeconfig={kubeconfig}", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECACHEDIR": str(kubeconfig.parent / "kube-cache")})
    out, err = await process.communicate()
    assert process.returncode == 0, f"kubectl {' '.join(args)} failed: {err.decode()}"
    return out.decode()


@pytest.fixture
def cluster(api_client: ApiClient) -> Cluster:
    return Cluster(api_client)


@contextlib.asynccontextmanager
async def started_view(api: ApiClient) -> AsyncIterator[ClusterView]:
    view = ClusterView(api, settings=FAST_WATCH)
    await view.start()
    try:
        await asyncio.wait_for(view.synced.wait(), 15)
        yield view
    finally:
        await view.stop()


@contextlib.asynccontextmanager
async def serving_webhooks(api: ApiClient, view: ClusterView, folder: Path) -> AsyncIterator[str]:
    """Our real mutating and validating webhooks, served over TLS from ``view`` and registered."""
    from kubernetes_asyncio.client import AdmissionregistrationV1Api

    from nichotplug.certs import make_bundle
    from nichotplug.service import build_webhook_app
    from nichotplug.serving import start_tls_runner
    from nichotplug.webhook.registration import webhook_configurations

    bundle = make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    (folder / "tls.crt").write_bytes(bundle.cert_pem)
    (folder / "tls.key").write_bytes(bundle.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    runner, _door = await start_tls_runner(build_webhook_app(view, synced=view.synced), "127.0.0.1", 0, context)
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    mutating, validating = webhook_configurations("nichotplug", url=url, ca_bundle=bundle.ca_cert_pem)
    admission = AdmissionregistrationV1Api(api)
    await admission.create_mutating_webhook_configuration(mutating)
    await admission.create_validating_webhook_configuration(validating)
    try:
        yield url
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_controller(api: ApiClient, **options: Any) -> AsyncIterator[MacController]:
    """A cluster view and a MacController on it, running (no leader election) until the block ends."""
    settings = {"workers": 2, "resync_period": 0.5, "audit_period": 0.5, "retry_base_delay": 0.02,
                "retry_max_delay": 0.5, **options}
    async with started_view(api) as view:
        controller = MacController(api, view, **settings)
        task = asyncio.create_task(controller.run())
        try:
            yield controller
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
