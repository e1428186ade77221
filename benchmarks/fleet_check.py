"""Benchmark: ``kubectl nichotplug check -A`` over 10,000 VMs, next to a bare paged list of the same objects.

Run: ``.venv/bin/python benchmarks/fleet_check.py [--vms 10000] [--page-size 500]``

An in-process API server in a child process is preloaded with N Harvester-shaped VMs (4 bridge NICs,
managedFields, a last-applied annotation: ``cluster_view.py``'s objects) in 50 namespaces, a VMI for
each running one, and 4 NADs. The fleet is mixed: every 4th VM is halted (no VMI), every 10th has
an interface without a spec MAC, every 50th is a guest-cluster VM, and every 1,000th shares a MAC
with its neighbour.

Two commands then run, each in a fresh process, one after the other, against that server:

1. baseline: a bare paged list of the VMs, VMIs and NADs (``kube.listing.list_custom_objects``,
   the same requests the check makes), each page decoded and dropped, nothing kept;
2. check: ``kubectl-nichotplug check -A -o json`` (and then the table) as a user runs it.

Each gets its wall time, CPU time and peak RSS (``wait4``'s ``ru_maxrss`` of that process alone). The issue's
target for the check: under 10 s and under 300 MB. The server shares the machine's cores, so the
baseline is the yardstick: what the check costs beyond reading the objects.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster_view import NADS, api_server_child, mac_of, nad_object, vm_object, vmi_object

MB = 1_000_000
TARGET_SECONDS = 10.0
TARGET_BYTES = 300 * MB


def fleet_vm(index: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """VM ``index`` and its VMI (None for a halted VM), in the mix the module docstring describes."""
    vm = vm_object(index)
    template = vm["spec"]["template"]["spec"]
    if index % 10 == 3:
        del template["domain"]["devices"]["interfaces"][3]["macAddress"]
    if index % 50 == 7:
        vm["metadata"]["labels"]["harvesterhci.io/creator"] = "docker-machine-driver-harvester"
    if index % 1000 == 1:
        template["domain"]["devices"]["interfaces"][1]["macAddress"] = mac_of(index - 1, 1)
    vm["spec"]["runStrategy"] = "Halted" if index % 4 == 0 else vm["spec"]["runStrategy"]
    vm["spec"].pop("running", None)
    if index % 4 == 0:
        vm["status"] = {"printableStatus": "Stopped"}
        return vm, None
    return vm, vmi_object(index)


def objects(vm_count: int) -> list[dict[str, Any]]:
    found = [nad_object(name) for name in NADS]
    for index in range(vm_count):
        vm, vmi = fleet_vm(index)
        found.append(vm)
        if vmi is not None:
            found.append(vmi)
    for obj in found:  # the server assigns these, as on a create
        for key in ("uid", "resourceVersion", "generation", "creationTimestamp"):
            obj["metadata"].pop(key, None)
    return found


async def serve(vm_count: int) -> None:
    """The child process: an API server preloaded with the fleet; prints its kubeconfig, stops on EOF."""
    from nichotplug.testing.server import ApiServer

    server = ApiServer()
    server.preload(objects(vm_count))
    gc.collect()
    await server.start()
    print(server.write_kubeconfig(Path(tempfile.mkdtemp(prefix="fleet-check-")) / "kubeconfig"), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await server.stop()


async def bare_list(kubeconfig: str, page_size: int) -> None:
    """The baseline process: list the three resources, page by page, decoding each object and keeping
    nothing: the least any report of these objects must do."""
    from nichotplug.kube.client import load_api_client
    from nichotplug.kube.listing import list_custom_objects

    api = await load_api_client(kubeconfig)
    try:
        held = [await list_custom_objects(api, group, "v1", plural, read=lambda _obj: None, page_size=page_size)
                for group, plural in (("kubevirt.io", "virtualmachines"), ("kubevirt.io", "virtualmachineinstances"),
                                      ("k8s.cni.cncf.io", "network-attachment-definitions"))]
    finally:
        await api.close()
    print(f"listed {sum(len(items) for items in held)} objects", file=sys.stderr)


def measured(command: list[str]) -> tuple[float, float, int, int, bytes]:
    """Run ``command``: (wall seconds, CPU seconds, peak RSS bytes, exit code, stdout)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=out)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, child.returncode, out.read()


def report(label: str, wall: float, cpu: float, peak: int, *, target: bool) -> None:
    verdict = ""
    if target:
        met = wall < TARGET_SECONDS and peak < TARGET_BYTES
        verdict = f"   (target < {TARGET_SECONDS:.0f} s and < {TARGET_BYTES // MB} MB: {'met' if met else 'MISSED'})"
    print(f"  {label:<28} {wall:6.2f} s wall  {cpu:6.2f} s CPU  {peak / MB:6.1f} MB peak RSS{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-list", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.vms))
        return
    if args.bare_list:
        asyncio.run(bare_list(args.bare_list, args.page_size))
        return

    with api_server_child(__file__, f"--vms={args.vms}") as kubeconfig:
        print(f"fleet of {args.vms:,} VMs (page size {args.page_size}):")
        wall, cpu, peak, code, _ = measured([sys.executable, __file__, "--bare-list", kubeconfig,
                                             f"--page-size={args.page_size}"])
        report("baseline: bare paged list", wall, cpu, peak, target=False)
        plugin = [sys.executable, "-m", "nichotplug.plugin", "--kubeconfig", kubeconfig, "check", "-A"]
        wall, cpu, peak, code, out = measured([*plugin, "-o", "json"])
        report("check -A -o json", wall, cpu, peak, target=True)
        summary = json.loads(out)["summary"]
        print(f"    exit {code}; states {summary['states']}; duplicate MACs {len(summary['duplicateMacs'])}")
        wall, cpu, peak, code, _ = measured(plugin)
        report("check -A (table)", wall, cpu, peak, target=True)


if __name__ == "__main__":
    main()
