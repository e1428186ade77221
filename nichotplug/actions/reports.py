"""The read-only reports of ``kubectl nichotplug``: ``check`` of many VMs (or of one with ``-o``) and
``guest-config``. Run by :mod:`nichotplug.actions.commands`, which owns the kubeconfig and exit codes.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

import aiohttp
import yaml
from kubernetes_asyncio.client import ApiClient

from nichotplug.actions.fleet import (
    FleetReport,
    FleetScope,
    gather_fleet,
    report_document,
    report_lines,
    single_vm_report,
)
from nichotplug.actions.flow import CLUSTER_UNAVAILABLE, ActionFailed, read_vm_state, refusal_from_kube_error
from nichotplug.kube.patch import KubeError
from nichotplug.rules.fleet import fleet_exit_ok
from nichotplug.rules.guestconfig import guest_nics, netplan_config
from nichotplug.rules.nic_plans import ActionRefusal

__all__ = ["report_usage_problem", "report_wanted", "run_report_command"]

EXIT_OK = 0
EXIT_NOT_ALL_READY = 1


def report_usage_problem(args: argparse.Namespace) -> str | None:
    """Why the arguments of ``check`` make no sense together (exit code 2), or None."""
    if args.command != "check":
        return None
    if args.vm and (args.all_namespaces or args.selector):
        return "check takes a VM name, or -A / -l to check many VMs, not both"
    return None


def report_wanted(args: argparse.Namespace) -> bool:
    """``check`` of many VMs, or of one with an output format: the readiness report, not the old text."""
    return not args.vm or args.output is not None


async def _gather(api: ApiClient, args: argparse.Namespace, namespace: str) -> FleetReport:
    if args.vm:
        state = await read_vm_state(api, namespace, args.vm)
        return single_vm_report(state.view, state.vmi)
    scope = FleetScope(all_namespaces=args.all_namespaces, namespace=namespace, selector=args.selector)
    what = "the VMs of every namespace" if args.all_namespaces else f"the VMs of namespace {namespace}"
    try:
        return await gather_fleet(api, scope)
    except KubeError as error:
        raise ActionFailed(refusal_from_kube_error(error, what)) from error
    except (TimeoutError, aiohttp.ClientError) as error:
        reason = str(error) or type(error).__name__
        refusal = ActionRefusal(503, CLUSTER_UNAVAILABLE, f"the Kubernetes API server could not be reached: {reason}")
        raise ActionFailed(refusal) from error


def _print_report(report: FleetReport, output: str | None, out: TextIO, err: TextIO) -> None:
    for warning in report.warnings:
        print(f"warning: {warning}", file=err)
    if output == "json":
        print(json.dumps(report_document(report), indent=2), file=out)
    elif output == "yaml":
        print(yaml.safe_dump(report_document(report), sort_keys=False), end="", file=out)
    else:
        for line in report_lines(report, wide=output == "wide"):
            print(line, file=out)


async def _guest_config(api: ApiClient, namespace: str, name: str, out: TextIO, err: TextIO) -> int:
    state = await read_vm_state(api, namespace, name)
    nics = guest_nics(state.view, state.vmi)
    rows = [("INTERFACE", "MAC", "NETWORK", "GUEST-NAME")]
    rows += [(nic.interface, nic.mac or "(unknown)", nic.network, nic.guest_name) for nic in nics]
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print("   ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[3]]), file=out)
    unknown = [nic.interface for nic in nics if not nic.mac]
    if unknown:
        print(f"warning: no MAC known for {', '.join(unknown)} (not in the spec, and the VM has not reported one); "
              "they are left out of the netplan config", file=err)
    print("\n# cloud-init network-config (netplan version 2): each NIC matched by MAC and named", file=out)
    print(yaml.safe_dump(netplan_config(nics), sort_keys=False), end="", file=out)
    return EXIT_OK


async def run_report_command(args: argparse.Namespace, api: ApiClient, namespace: str, out: TextIO,
                             err: TextIO) -> int:
    """``guest-config VM``, or ``check`` as a report; exit 0 when every VM is ready or stopped, else 1."""
    if args.command == "guest-config":
        return await _guest_config(api, namespace, args.vm, out, err)
    report = await _gather(api, args, namespace)
    _print_report(report, args.output, out, err)
    return EXIT_OK if fleet_exit_ok(report.rows) else EXIT_NOT_ALL_READY
