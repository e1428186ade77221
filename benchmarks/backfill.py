"""Benchmark: MAC backfill of 2,000 halted VMs by the controller, next to a plain client's raw rate.

Run: ``.venv/bin/python benchmarks/backfill.py [--vms 2000] [--workers 8]``

Everything runs in this process against the in-process API server, with our admission webhooks
registered (served from the same cluster view the controller reads, as ``nichotplug serve`` does)
when that part of nichotplug is present. Two namespaces get the same N halted VMs (two interfaces
without ``macAddress``, the observed-MAC annotation present), created before the webhooks are
registered, as VMs from before nichotplug would be:

1. raw: a plain kubernetes-asyncio client sends each ``raw`` VM its backfill JSON Patch (the same
   ops the controller sends), ``--workers`` at a time; this is what the server can take.
2. controller: a ``MacController`` with ``--workers`` workers starts on the already-synced cluster
   view (the view ``serve`` keeps for its webhooks); the clock runs from its start until every
   ``ctl`` VM is backfilled. PATCH requests are counted at the server, so writes per VM is exact.

Target (issue 4): one write per VM and at least half the raw rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client import ApiClient, CoreV1Api, CustomObjectsApi
from prometheus_client import REGISTRY

from nichotplug.certs import make_bundle
from nichotplug.controller import MacController
from nichotplug.kube.cache import ClusterView
from nichotplug.kube.patch import json_patch
from nichotplug.rules.backfill import MAC_ANNOTATION, plan_backfill
from nichotplug.service import build_webhook_app
from nichotplug.serving import start_tls_runner
from nichotplug.testing.server import ApiServer
from nichotplug.webhook.registration import webhook_configurations

GROUP, VERSION, PLURAL = "kubevirt.io", "v1", "virtualmachines"


def vm_body(namespace: str, index: int) -> dict[str, Any]:
    """A halted VM whose two interfaces lack a MAC that its annotation records."""
    macs = {"default": f"02:00:00:{index >> 16 & 0xff:02x}:{index >> 8 & 0xff:02x}:{index & 0xff:02x}",
            "nic-1": f"02:00:01:{index >> 16 & 0xff:02x}:{index >> 8 & 0xff:02x}:{index & 0xff:02x}"}
    if namespace != "ctl":  # different MACs per namespace: the webhook must not see collisions
        macs = {name: "06" + mac[2:] for name, mac in macs.items()}
    annotation = "{" + ",".join(f'"{name}":"{mac}"' for name, mac in macs.items()) + "}"
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
        "metadata": {"name": f"vm-{index:05d}", "namespace": namespace, "annotations": {MAC_ANNOTATION: annotation}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"cpu": {"cores": 1}, "memory": {"guest": "1Gi"}, "devices": {
                "disks": [{"name": "disk-0", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "default", "model": "virtio", "masquerade": {}},
                               {"name": "nic-1", "model": "virtio", "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}, {"name": "nic-1", "multus": {"networkName": "vlan1"}}],
            "volumes": [{"name": "disk-0", "containerDisk": {"image": "example/disk"}}],
        }}},
    }


async def bounded(concurrency: int, jobs: list[Any]) -> list[Any]:
    """Await the coroutines in ``jobs`` with at most ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> Any:
        async with gate:
            return await job
    return await asyncio.gather(*(one(job) for job in jobs))


async def api_client_for(server: ApiServer, folder: Path) -> ApiClient:
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(server.write_kubeconfig(folder / "kubeconfig")),
                                  client_configuration=configuration)
    configuration.connection_pool_maxsize = 64
    return ApiClient(configuration)


async def start_webhooks(api: ApiClient, view: ClusterView, folder: Path) -> web.AppRunner:
    """Serve our webhooks from ``view`` over TLS and register them with the API server."""
    bundle = make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    (folder / "tls.crt").write_bytes(bundle.cert_pem)
    (folder / "tls.key").write_bytes(bundle.key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "tls.crt", folder / "tls.key")
    runner, _door = await start_tls_runner(build_webhook_app(view, synced=view.synced), "127.0.0.1", 0, context)
    port = runner.addresses[0][1]
    mutating, validating = webhook_configurations("nichotplug", url=f"https://127.0.0.1:{port}",
                                                  ca_bundle=bundle.ca_cert_pem)
    admission = client.AdmissionregistrationV1Api(api)
    await admission.create_mutating_webhook_configuration(mutating)
    await admission.create_validating_webhook_configuration(validating)
    print(f"webhooks: mutating + validating registered at https://127.0.0.1:{port}")
    return runner


async def raw_phase(api: ApiClient, count: int, concurrency: int) -> float:
    """Send every ``raw`` VM its backfill patch from a plain client; returns patches per second."""
    listed = await CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, "raw", PLURAL)
    plans = [(vm["metadata"]["name"], list(plan_backfill(vm).ops)) for vm in listed["items"]]
    if len(plans) != count or not all(ops for _, ops in plans):
        raise RuntimeError("the raw VMs are not all waiting for a backfill")
    started = time.perf_counter()
    await bounded(concurrency, [json_patch(api, GROUP, VERSION, PLURAL, "raw", name, ops) for name, ops in plans])
    return count / (time.perf_counter() - started)


def backfilled_macs() -> float:
    return REGISTRY.get_sample_value("nichotplug_mac_backfills_total") or 0.0


async def controller_phase(api: ApiClient, view: ClusterView, count: int, workers: int) -> float:
    """Run the controller until the ``count`` ``ctl`` VMs are backfilled; returns seconds taken."""
    before = backfilled_macs()
    wanted = before + 2 * count  # two interfaces per VM
    controller = MacController(api, view, workers=workers, resync_period=3600, audit_period=3600)
    started = time.perf_counter()
    task = asyncio.create_task(controller.run())
    try:
        while backfilled_macs() < wanted:
            if task.done():
                task.result()
                raise RuntimeError("the controller stopped before finishing")
            await asyncio.sleep(0.01)
        return time.perf_counter() - started
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def all_backfilled(api: ApiClient, namespace: str) -> int:
    listed = await CustomObjectsApi(api).list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    return sum(all(i.get("macAddress") for i in vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"])
               for vm in listed["items"])


async def main(count: int, workers: int, webhooks: bool) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server = ApiServer(watch_history=max(1000, 6 * count))
        await server.start()
        api = await api_client_for(server, folder)
        runner = None
        view = ClusterView(api)
        try:
            core = CoreV1Api(api)
            for namespace in ("raw", "ctl"):
                await core.create_namespace({"metadata": {"name": namespace}})
            custom = CustomObjectsApi(api)
            started = time.perf_counter()
            await bounded(16, [custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, vm_body(ns, i))
                               for ns in ("raw", "ctl") for i in range(count)])
            print(f"setup: {2 * count} halted VMs created in {time.perf_counter() - started:.1f}s")
            await view.start()
            await view.synced.wait()
            runner = await start_webhooks(api, view, folder) if webhooks else None
            if not webhooks:
                print("webhooks: not registered (--no-webhooks)")

            raw_rate = await raw_phase(api, count, workers)
            print(f"raw client: {count} backfill patches, {workers} in flight: {raw_rate:.0f} patches/s")

            patches = server.faults.add(method="PATCH", path_regex=r"/namespaces/ctl/virtualmachines/",
                                        status=0, times=None)
            seconds = await controller_phase(api, view, count, workers)
            done = await all_backfilled(api, "ctl")
            rate = count / seconds
            print(f"controller: {count} VMs backfilled in {seconds:.2f}s with {workers} workers: {rate:.0f} VMs/s")
            print(f"controller: {patches.hits} PATCH requests = {patches.hits / count:.2f} writes per VM; "
                  f"{done}/{count} VMs have every MAC in their spec")
            print(f"ratio: controller rate / raw rate = {rate / raw_rate:.2f} (target >= 0.5, 1 write per VM)")
        finally:
            await view.stop()
            if runner is not None:
                await runner.cleanup()
            await api.close()
            await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vms", type=int, default=2000, help="halted VMs per phase (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=8, help="controller workers = raw client concurrency")
    parser.add_argument("--no-webhooks", action="store_true", help="measure without our admission webhooks")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.vms, arguments.workers, not arguments.no_webhooks))
