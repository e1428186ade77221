"""Object builders and helpers for the nichotplug.kube tests (a uniquely named module: every test
directory has a ``conftest``, so ``from conftest import`` would be ambiguous when the whole suite runs)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio.client import ApiClient, CustomObjectsApi

from nichotplug.certs import make_bundle, server_ssl_context
from nichotplug.kube.cache import WatchSettings
from nichotplug.kube.client import load_api_client
from nichotplug.testing.server import ApiServer

CLUSTER_NETWORK = "network.harvesterhci.io/clusternetwork"
OBSERVED_MACS = "harvesterhci.io/mac-address"

# Short back-offs and watches so recovery happens within a test; everything else as in production.
FAST = WatchSettings(page_size=2, watch_timeout=30.0, backoff_initial=0.02, backoff_cap=0.2)


def vm(name: str, interfaces: list[tuple[str, str, str | None]], *, namespace: str = "default",
       annotations: dict[str, str] | None = None, run_strategy: str = "Halted") -> dict[str, Any]:
    """A VirtualMachine; ``interfaces`` are (name, MAC or "", network) with network None = pod."""
    ifaces, networks = [], []
    for iface_name, mac, network in interfaces:
        iface: dict[str, Any] = {"name": iface_name, "model": "virtio"}
        iface["masquerade" if network is None else "bridge"] = {}
        if mac:
            iface["macAddress"] = mac
        ifaces.append(iface)
        networks.append({"name": iface_name, "pod": {}} if network is None
                        else {"name": iface_name, "multus": {"networkName": network}})
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": metadata,
        "spec": {"runStrategy": run_strategy, "template": {"spec": {
            "domain": {"devices": {"interfaces": ifaces}, "memory": {"guest": "1Gi"}},
            "networks": networks,
        }}},
    }


def vmi(name: str, macs: dict[str, str], *, namespace: str = "default", phase: str = "Running") -> dict[str, Any]:
    """A VirtualMachineInstance whose status reports ``macs`` (interface -> MAC)."""
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "1Gi"}}},
        "status": {"phase": phase,
                   "conditions": [{"type": "Ready", "status": "True"}],
                   "interfaces": [{"name": iface, "mac": mac} for iface, mac in macs.items()]},
    }


def nad(name: str, cluster_network: str = "", *, namespace: str = "default") -> dict[str, Any]:
    """A bridge NetworkAttachmentDefinition, labelled with its cluster network when given."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if cluster_network:
        metadata["labels"] = {CLUSTER_NETWORK: cluster_network}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": metadata,
            "spec": {"config": f'{{"cniVersion":"0.3.1","name":"{name}","type":"bridge","bridge":"br0"}}'}}


PLURALS = {"VirtualMachine": "virtualmachines", "VirtualMachineInstance": "virtualmachineinstances",
           "NetworkAttachmentDefinition": "network-attachment-definitions"}


def _coordinates(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    group, version = obj["apiVersion"].split("/")
    return group, version, obj["metadata"].get("namespace", "default"), PLURALS[obj["kind"]]


async def create(api: ApiClient, obj: dict[str, Any]) -> dict[str, Any]:
    group, version, namespace, plural = _coordinates(obj)
    created: dict[str, Any] = await CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, namespace, plural, obj)
    return created


async def delete(api: ApiClient, obj: dict[str, Any]) -> None:
    group, version, namespace, plural = _coordinates(obj)
    await CustomObjectsApi(api).delete_namespaced_custom_object(
        group, version, namespace, plural, obj["metadata"]["name"])


async def merge(api: ApiClient, obj: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    group, version, namespace, plural = _coordinates(obj)
    options: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
    patched: dict[str, Any] = await CustomObjectsApi(api).patch_namespaced_custom_object(
        group, version, namespace, plural, obj["metadata"]["name"], patch, **options)
    return patched


async def eventually(check: Callable[[], bool], what: str, within: float = 10.0) -> None:
    """Wait until ``check()`` holds (the view converges asynchronously); fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.02)


async def client_for(server: ApiServer, tmp_path: Path) -> ApiClient:
    return await load_api_client(server.write_kubeconfig(tmp_path / "kubeconfig"))


class DenyingWebhook:
    """A real HTTPS validating webhook that refuses every request with a chosen code and message."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        self.bundle = make_bundle(dns_names=[], ip_addresses=["127.0.0.1"])
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        context = server_ssl_context(self.bundle)
        app = web.Application()
        app.router.add_post("/validate", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.url = f"https://127.0.0.1:{self._runner.addresses[0][1]}/validate"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
            "uid": review["request"]["uid"], "allowed": False,
            "status": {"code": self.code, "message": self.message}}})

    def configuration(self) -> dict[str, Any]:
        """A ValidatingWebhookConfiguration sending VM updates here."""
        return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "deny-vm-updates"},
                "webhooks": [{"name": "deny.nichotplug.test", "sideEffects": "None",
                              "admissionReviewVersions": ["v1"], "failurePolicy": "Fail",
                              "clientConfig": {"url": self.url,
                                               "caBundle": base64.b64encode(self.bundle.ca_cert_pem).decode()},
                              "rules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"],
                                         "operations": ["UPDATE"], "resources": ["virtualmachines"]}]}]}
