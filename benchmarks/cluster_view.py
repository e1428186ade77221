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

``--cold-start``: the fleet-scale cold start of ``nichotplug serve`` itself. A child process runs the
in-process API server preloaded with N VMs (4 NICs, observed-MAC annotations), ``--vmis`` VMIs and
``--nads`` NADs. Then, in interleaved rounds: a bare paginated list of the same three resources with
the same client (a fresh process: kubernetes-asyncio's ``list_cluster_custom_object``, ``limit`` =
the view's page size, each page parsed with orjson and dropped), and ``nichotplug serve
--no-controller`` started as a process and polled on /readyz every 20 ms. Printed per round and as
medians: seconds from process start to done (list) or to /readyz 200 (serve), their ratio (target
< 1.5x), the process's peak RSS (VmHWM, read at ready: the initial list's peak; target < 400 MB) and
its RSS 2 s after ready (target < 300 MB).

Run: ``.venv/bin/python benchmarks/cluster_view.py [--vms 100000] [--no-vmis] [--list [--page-size 500]]``;
``.venv/bin/python benchmarks/cluster_view.py --cold-start [--vms 100000 --vmis 100000 --nads 500 --rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def objects(vm_count: int, vmi_count: int, nad_count: int = 0) -> list[dict[str, Any]]:
    """Everything the API server holds for the --list and --cold-start modes."""
    found = [nad_object(name) for name in NADS] + [nad_object(f"extra-{i}") for i in range(nad_count - len(NADS))]
    found += [vm_object(index) for index in range(vm_count)]
    found += [vmi_object(index) for index in range(vmi_count)]
    return found


async def serve(vm_count: int, vmi_count: int, nad_count: int = 0) -> None:
    """The API server child process: preloaded with the cluster; prints its kubeconfig."""
    from nichotplug.testing.server import ApiServer

    server = ApiServer()
    cluster = objects(vm_count, vmi_count, nad_count)
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


def process_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes."""
    found = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                found[line.split(":")[0]] = int(line.split()[1]) * 1024
    return found["VmRSS"], found["VmHWM"]


BARE_LIST = """
import asyncio, sys, orjson
from kubernetes_asyncio.client import CustomObjectsApi
from nichotplug.kube.client import load_api_client
from nichotplug.kube.cache import RESOURCES

async def main():
    api = await load_api_client(sys.argv[1])
    objects = CustomObjectsApi(api)
    total = 0
    for resource in RESOURCES:
        token = None
        while True:
            params = {"limit": int(sys.argv[2])}
            if token:
                params["_continue"] = token
            response = await objects.list_cluster_custom_object(
                resource.group, resource.version, resource.plural, _preload_content=False, **params)
            page = orjson.loads(await response.read())
            response.release()
            total += len(page["items"])
            token = page["metadata"].get("continue")
            if not token:
                break
    await api.close()
    print(total, flush=True)
    sys.stdin.read()  # the parent reads our memory, then closes stdin

asyncio.run(main())
"""


def bare_list_round(kubeconfig: str, page_size: int) -> dict[str, float]:
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", BARE_LIST, kubeconfig, str(page_size)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdin is not None
    listed = child.stdout.readline()
    seconds = time.perf_counter() - started
    if not listed.strip():
        raise SystemExit("the bare list failed")
    rss, peak = process_memory(child.pid)
    child.stdin.close()
    child.wait()
    return {"seconds": seconds, "peak": peak, "synced": rss, "objects": int(listed)}


def serve_round(kubeconfig: str, cert_dir: Path) -> dict[str, float]:
    import socket
    import ssl
    import urllib.error
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = ssl.create_default_context(cafile=str(cert_dir / "ca.crt"))
    started = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", kubeconfig, "--host", "127.0.0.1",
         "--port", str(port), "--metrics-port", "0", "--tls-cert-file", str(cert_dir / "tls.crt"),
         "--tls-key-file", str(cert_dir / "tls.key"), "--namespace", "default", "--no-controller",
         "--shutdown-delay", "0", "--log-level", "WARNING"], stdout=subprocess.DEVNULL)
    try:
        while True:
            if child.poll() is not None:
                raise SystemExit(f"nichotplug serve exited ({child.returncode}) before it was ready")
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/readyz", context=context,
                                            timeout=5) as response:
                    if response.status == 200:
                        break
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        _, peak = process_memory(child.pid)
        time.sleep(2.0)  # synced: the list's pages are gone, the view stays
        rss, _ = process_memory(child.pid)
        return {"seconds": seconds, "peak": peak, "synced": rss}
    finally:
        child.terminate()
        child.wait(timeout=60)


@contextlib.contextmanager
def api_server_child(script: str, *flags: str) -> Iterator[str]:
    """``script --serve FLAGS`` in a child process (an in-process API server, preloaded) for the block;
    yields its kubeconfig. Closing its stdin stops it."""
    child = subprocess.Popen([sys.executable, script, "--serve", *flags],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        kubeconfig = child.stdout.readline().strip()
        if not kubeconfig:
            raise SystemExit("the API server child process failed (see above)")
        yield kubeconfig
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()


def cold_start(args: argparse.Namespace) -> None:
    from nichotplug.certs import make_bundle, write_bundle

    cert_dir = Path(tempfile.mkdtemp(prefix="cluster-view-certs-"))
    write_bundle(make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"]), cert_dir)
    started = time.perf_counter()
    with api_server_child(__file__, f"--vms={args.vms}", f"--vmis={args.vmis}", f"--nads={args.nads}") as kubeconfig:
        print(f"in-process API server: {args.vms:,} VMs ({INTERFACES_PER_VM} NICs, observed-MAC annotations), "
              f"{args.vmis:,} VMIs, {args.nads} NADs, preloaded in {time.perf_counter() - started:.0f} s; "
              f"page size {args.page_size}")
        rounds: list[tuple[dict[str, float], dict[str, float]]] = []
        for number in range(1, args.rounds + 1):
            bare = bare_list_round(kubeconfig, args.page_size)
            ours = serve_round(kubeconfig, cert_dir)
            rounds.append((bare, ours))
            print(f"round {number}: " + cold_line(bare, ours), flush=True)
        medians = [{key: statistics.median(pair[side][key] for pair in rounds) for key in ("seconds", "peak", "synced")}
                   for side in (0, 1)]
        print(f"median of {len(rounds)} interleaved rounds: " + cold_line(*medians))
        ratio = statistics.median(ours["seconds"] / bare["seconds"] for bare, ours in rounds)
        ours_m = medians[1]
        print(f"  targets: ready/list {ratio:.2f}x (< 1.5x: {'met' if ratio < 1.5 else 'MISSED'}), "
              f"peak {ours_m['peak'] / 1e6:.0f} MB (< 400 MB: {'met' if ours_m['peak'] < 400e6 else 'MISSED'}), "
              f"synced {ours_m['synced'] / 1e6:.0f} MB (< 300 MB: {'met' if ours_m['synced'] < 300e6 else 'MISSED'})")


def cold_line(bare: dict[str, float], ours: dict[str, float]) -> str:
    return (f"bare paginated list {bare['seconds']:.1f} s (peak {bare['peak'] / MIB:.0f} MiB); "
            f"nichotplug serve ready {ours['seconds']:.1f} s = {ours['seconds'] / bare['seconds']:.2f}x, "
            f"peak RSS {ours['peak'] / MIB:.0f} MiB, synced RSS {ours['synced'] / MIB:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--no-vmis", action="store_true", help="VMs only (every VM stopped)")
    parser.add_argument("--list", action="store_true", help="list from an API server in a child process")
    parser.add_argument("--page-size", type=int, default=WatchSettings().page_size, help="list page size (--list)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the API server child
    parser.add_argument("--cold-start", action="store_true", help="time nichotplug serve to /readyz (see above)")
    parser.add_argument("--vmis", type=int, default=None, help="VMIs (--cold-start; default: one per VM)")
    parser.add_argument("--nads", type=int, default=500, help="NADs (--cold-start)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (--cold-start)")
    args = parser.parse_args()
    with_vmis = not args.no_vmis
    events = args.vms * (2 if with_vmis else 1)
    if args.vmis is None:
        args.vmis = args.vms if with_vmis else 0

    if args.serve:
        asyncio.run(serve(args.vms, args.vmis, args.nads))
        return
    if args.cold_start:
        cold_start(args)
        return
    gc.collect()
    baseline = rss_bytes()
    if args.list:
        with api_server_child(__file__, f"--vms={args.vms}", f"--vmis={args.vmis}", "--nads=0") as kubeconfig:
            view, baseline, seconds, wall = asyncio.run(list_from_server(kubeconfig, args.page_size))
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
