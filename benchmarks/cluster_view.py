"""Benchmark: memory and speed of ClusterView at Harvester scale (numbers, not a timed test).

Two ways to fill the view with N VirtualMachines (4 interfaces each, Harvester-shaped objects with
managedFields and a kubectl last-applied annotation, as the API server sends them) and their N VMIs:

- default: objects are generated one by one and fed to ``ClusterView.apply_event`` (the code path
  the watches use) and dropped, so the RSS growth is what the view keeps;
- ``--list``: an in-process API server in a child process is preloaded with the objects and the
  view lists them for real (paged HTTP list over TLS, kubernetes-asyncio, orjson), as ``serve``
  does at startup; the peak then includes the pages being decoded.

It prints the process RSS at the end and its peak (VmHWM: what a pod's memory limit must allow),
the growth over the process before the view existed, build CPU per object, and, in the default
mode, ``owners_of_mac`` cost per lookup at 10 / 1,000 / N VMs (flat: one dict lookup). The issue's
budget is the whole process under 300 MB (286 MiB) with 100,000 VMs.

Run: ``.venv/bin/python benchmarks/cluster_view.py [--vms 100000] [--no-vmis] [--list [--page-size 500]]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nichotplug.kube.cache import (
    NETWORK_ATTACHMENT_DEFINITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    ClusterView,
    WatchSettings,
)

INTERFACES_PER_VM = 4
NAMESPACES = 50
NADS = ("mgmt-vlan1", "vlan100", "vlan200", "storage-vlan")
BUDGET_MIB = 300e6 / 2**20  # the "under 300 MB", for the whole process
MIB = 2**20


def rss_bytes() -> int:
    """Current resident set size (Linux), not the peak."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def mac_of(vm_index: int, interface: int) -> str:
    value = (0x02 << 40) | (vm_index << 8) | interface
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def vm_object(index: int) -> dict[str, Any]:
    """A VirtualMachine as a Harvester cluster stores it (4 bridge NICs on multus networks)."""
    namespace = f"tenant-{index % NAMESPACES}"
    name = f"vm-{index:06d}"
    interfaces = [{"name": f"nic-{i}", "model": "virtio", "bridge": {}, "macAddress": mac_of(index, i)}
                  for i in range(INTERFACES_PER_VM)]
    networks = [{"name": f"nic-{i}", "multus": {"networkName": f"default/{NADS[i]}"}}
                for i in range(INTERFACES_PER_VM)]
    spec = {
        "runStrategy": "RerunOnFailure",
        "template": {
            "metadata": {"labels": {"harvesterhci.io/vmName": name}},
            "spec": {
                "domain": {
                    "cpu": {"cores": 2, "sockets": 1, "threads": 1},
                    "memory": {"guest": "4Gi"},
                    "resources": {"limits": {"cpu": "2", "memory": "4Gi"}},
                    "devices": {
                        "disks": [{"name": "rootdisk", "bootOrder": 1, "disk": {"bus": "virtio"}},
                                  {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
                        "interfaces": interfaces,
                    },
                    "machine": {"type": "q35"},
                },
                "networks": networks,
                "evictionStrategy": "LiveMigrateIfPossible",
                "volumes": [
                    {"name": "rootdisk", "persistentVolumeClaim": {"claimName": f"{name}-rootdisk-x1y2z"}},
                    {"name": "cloudinitdisk",
                     "cloudInitNoCloud": {"userData": "#cloud-config\npackage_update: true\n"}},
                ],
            },
        },
    }
    observed = json.dumps({iface["name"]: iface["macAddress"] for iface in interfaces}, separators=(",", ":"))
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {
            "name": name, "namespace": namespace, "uid": f"5ff8d5af-b287-41d2-aec0-{index:012d}",
            "resourceVersion": str(1000 + index), "generation": 3,
            "creationTimestamp": "2026-11-28T00:49:09Z",
            "labels": {"harvesterhci.io/creator": "harvester", "harvesterhci.io/os": "linux"},
            "annotations": {
                "harvesterhci.io/mac-address": observed,
                "harvesterhci.io/volumeClaimTemplates": json.dumps([{
                    "metadata": {"name": f"{name}-rootdisk-x1y2z",
                                 "annotations": {"harvesterhci.io/imageId": "default/image-abc"}},
                    "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "40Gi"}},
                             "volumeMode": "Block", "storageClassName": "longhorn-image-abc"}}]),
                "kubectl.kubernetes.io/last-applied-configuration": json.dumps({"spec": spec}),
            },
            "managedFields": [{"apiVersion": "kubevirt.io/v1", "fieldsType": "FieldsV1", "manager": "harvester",
                               "operation": "Update", "time": "2026-11-28T00:49:09Z",
                               "fieldsV1": {"f:spec": {"f:runStrategy": {}, "f:template": {"f:spec": {}}}}}],
        },
        "spec": spec,
        "status": {"printableStatus": "Running", "ready": True, "created": True},
    }


def vmi_object(index: int) -> dict[str, Any]:
    """The VMI of VM ``index``: running, ready, migratable, reporting its MACs."""
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": f"vm-{index:06d}", "namespace": f"tenant-{index % NAMESPACES}",
                     "resourceVersion": str(500000 + index), "uid": f"aaaa-{index}"},
        "status": {
            "phase": "Running", "nodeName": f"node-{index % 20}",
            "conditions": [{"type": "Ready", "status": "True"},
                           {"type": "LiveMigratable", "status": "True"}],
            "interfaces": [{"name": f"nic-{i}", "mac": mac_of(index, i), "ipAddress": f"10.0.{i}.{index % 250}"}
                           for i in range(INTERFACES_PER_VM)],
        },
    }


def nad_object(name: str) -> dict[str, Any]:
    config = json.dumps({"cniVersion": "0.3.1", "name": name, "type": "bridge", "bridge": "mgmt-br",
                         "promiscMode": True, "vlan": 100, "ipam": {}})
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"network.harvesterhci.io/clusternetwork": "mgmt",
                                    "network.harvesterhci.io/type": "L2VlanNetwork"}},
            "spec": {"config": config}}


def build(vm_count: int, with_vmis: bool = True) -> tuple[ClusterView, float]:
    """A view fed vm_count VMs (and their VMIs); returns it and the CPU seconds spent in apply_event.

    CPU time (not wall time) because the machine is shared; generating the objects is not counted.
    """
    view = ClusterView()
    spent = 0.0
    for name in NADS:
        view.apply_event(NETWORK_ATTACHMENT_DEFINITION, "ADDED", nad_object(name))
    for index in range(vm_count):
        vm, vmi = vm_object(index), vmi_object(index)
        started = time.process_time()
        view.apply_event(VIRTUAL_MACHINE, "ADDED", vm)
        if with_vmis:
            view.apply_event(VIRTUAL_MACHINE_INSTANCE, "ADDED", vmi)
        spent += time.process_time() - started
    return view, spent


def lookup_cost_ns(view: ClusterView, vm_count: int, lookups: int = 100_000, repeats: int = 7) -> float:
    """Nanoseconds per owners_of_mac over random existing MACs (and some absent ones), best of repeats."""
    rng = random.Random(7)
    macs = [mac_of(rng.randrange(vm_count), rng.randrange(INTERFACES_PER_VM)) for _ in range(1000)]
    macs += [mac_of(vm_count + 10 + i, 0) for i in range(100)]  # not in the view
    queries = [macs[i % len(macs)] for i in range(lookups)]
    owners_of_mac = view.owners_of_mac
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter_ns()
        found = sum(len(owners_of_mac(mac)) for mac in queries)
        best = min(best, (time.perf_counter_ns() - started) / lookups)
        assert found > 0
    return best


def objects(vm_count: int, with_vmis: bool) -> list[dict[str, Any]]:
    """Everything the API server holds for the --list mode."""
    found = [nad_object(name) for name in NADS] + [vm_object(index) for index in range(vm_count)]
    if with_vmis:
        found += [vmi_object(index) for index in range(vm_count)]
    return found


async def serve(vm_count: int, with_vmis: bool) -> None:
    """The child process of --list: an API server preloaded with the cluster; prints its kubeconfig."""
    from nichotplug.testing.server import ApiServer

    server = ApiServer()
    cluster = objects(vm_count, with_vmis)
    for obj in cluster:  # the server assigns these, as on a create
        for field in ("uid", "resourceVersion", "generation", "creationTimestamp"):
            obj["metadata"].pop(field, None)
    server.preload(cluster)
    del cluster
    gc.collect()
    await server.start()
    print(server.write_kubeconfig(Path(tempfile.mkdtemp(prefix="cluster-view-")) / "kubeconfig"), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    finally:
        await server.stop()


async def list_from_server(kubeconfig: str, page_size: int) -> tuple[ClusterView, int, float, float]:
    """A view that listed everything from the server: (view, RSS before it, CPU and wall seconds to sync)."""
    from nichotplug.kube.client import load_api_client

    api = await load_api_client(kubeconfig)
    gc.collect()
    baseline = rss_bytes()  # the client, its TLS context and connection pool are not the view
    view = ClusterView(api, settings=WatchSettings(page_size=page_size))
    cpu, wall = time.process_time(), time.perf_counter()
    await view.start()
    await view.synced.wait()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await view.stop()
    await api.close()
    return view, baseline, cpu, wall


def report(view: ClusterView, vm_count: int, baseline: int, seconds: float, events: int) -> None:
    counts = view.counts()
    end, peak = rss_bytes(), peak_rss_bytes()
    print(f"cluster view of {vm_count:,} VMs ({INTERFACES_PER_VM} interfaces) + "
          f"{counts['VirtualMachineInstance']:,} VMIs: {counts['macs']:,} MACs indexed")
    print(f"  process RSS: {end / MIB:.1f} MiB at the end, {peak / MIB:.1f} MiB peak "
          f"(budget {BUDGET_MIB:.0f} MiB: {'met' if peak < BUDGET_MIB * MIB else 'MISSED'})")
    print(f"  view growth: {(end - baseline) / MIB:.1f} MiB over {baseline / MIB:.1f} MiB before the view")
    print(f"  build: {seconds:.2f} s CPU, {seconds / events * 1e6:.1f} us per object")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--no-vmis", action="store_true", help="VMs only (every VM stopped)")
    parser.add_argument("--list", action="store_true", help="list from an API server in a child process")
    parser.add_argument("--page-size", type=int, default=WatchSettings().page_size, help="list page size (--list)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the --list child
    args = parser.parse_args()
    with_vmis = not args.no_vmis
    events = args.vms * (2 if with_vmis else 1)

    if args.serve:
        asyncio.run(serve(args.vms, with_vmis))
        return
    gc.collect()
    baseline = rss_bytes()
    if args.list:
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", f"--vms={args.vms}", *(["--no-vmis"] if args.no_vmis else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            kubeconfig = child.stdout.readline().strip()
            if not kubeconfig:
                raise SystemExit("the API server child process failed (see above)")
            view, baseline, seconds, wall = asyncio.run(list_from_server(kubeconfig, args.page_size))
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait()
        gc.collect()
        report(view, args.vms, baseline, seconds, events)
        print(f"  listed in {wall:.1f} s wall (the server shares the machine)")
        return

    view, seconds = build(args.vms, with_vmis=with_vmis)
    gc.collect()
    report(view, args.vms, baseline, seconds, events)
    del view
    gc.collect()

    print("owners_of_mac per lookup:")
    for size in (10, 1_000, args.vms):
        sized, _ = build(size, with_vmis=False)
        print(f"  {size:>7,} VMs: {lookup_cost_ns(sized, size):.0f} ns")
        del sized
        gc.collect()


if __name__ == "__main__":
    main()
