"""The commands of ``kubectl nichotplug`` (see :mod:`nichotplug.plugin`): load the user's kubeconfig,
call the subresource API when kube-apiserver serves it (:mod:`nichotplug.actions.remote`) or else run
the shared action flow directly, and print results and refusals a person can act on.

Kept apart from the argument parser so that ``--help`` and usage errors answer without importing
the Kubernetes client.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import ConfigException, list_kube_config_contexts

from nichotplug.actions import remote
from nichotplug.actions.apidocs import GROUP_VERSION
from nichotplug.actions.flow import (
    KUBEVIRT,
    VMS,
    ActionFailed,
    HotplugFlow,
    admission_probe,
    is_missing_vm,
    read_vm_state,
)
from nichotplug.actions.report import print_written
from nichotplug.actions.reports import report_usage_problem, report_wanted, run_report_command
from nichotplug.kube.client import KubeConfigError, find_kubeconfig, load_api_client
from nichotplug.kube.events import EventRecorder
from nichotplug.kube.lookup import namespace_exists, namespaces_holding
from nichotplug.rules import nic_plans as plan
from nichotplug.rules.eligibility import eligibility_problems, unplug_network_note
from nichotplug.rules.nic_plans import VmState
from nichotplug.rules.views import VmView

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

# What a person can do about each refusal, printed under the message; {check} and {list} become those
# commands, written out for this VM, namespace and kubeconfig so they can be pasted.
_HINTS = {
    plan.CONCURRENT_CHANGE: "someone changed the VM at the same time; run the command again",
    plan.NOT_ELIGIBLE: "run '{check}' to see every reason",
    plan.NETWORK_NOT_HOTPLUGGABLE: "pick a bridge network (untagged, VLAN or VLAN trunk) outside harvester-system",
    plan.NOT_HOTUNPLUGGABLE: "run '{list}' to see which interfaces can be unplugged",
    "Forbidden": "ask your cluster administrator for permission, or use another --context",
    "Unauthorized": "your credentials were not accepted: log in again or use another --context",
}


class UsageError(Exception):
    """The kubeconfig or context cannot be used; exit code 2."""


def _kubeconfig_file(explicit: str | None) -> str | None:
    """The kubeconfig file kubectl would read first, or None when there is none."""
    if explicit and not Path(explicit).is_file():
        raise UsageError(f"kubeconfig {explicit} does not exist")
    found = find_kubeconfig(explicit)
    return str(found) if found is not None else None


def default_namespace(kubeconfig: str | None, context: str | None) -> str:
    """The namespace of the chosen (or current) kubeconfig context, else ``default``."""
    path = _kubeconfig_file(kubeconfig)
    if path is None:
        return "default"
    try:
        contexts, current = list_kube_config_contexts(path)
    except (ConfigException, OSError, ValueError) as error:
        raise UsageError(f"cannot read kubeconfig {path}: {error}") from error
    chosen = current
    if context is not None:
        chosen = next((item for item in contexts if item.get("name") == context), None)
        if chosen is None:
            raise UsageError(f"context {context!r} not found in kubeconfig {path}")
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else "default"


def command_line(args: argparse.Namespace, namespace: str, command: str | None = None) -> str:
    """The plugin command a person can paste: ``command`` (default: the one given) on the same VM, in
    ``namespace``, with the same kubeconfig and context; the same command keeps its own flags too."""
    parts = ["kubectl", "nichotplug", command or args.command, args.vm]
    if command is None or command == args.command:
        for flag, attribute in (("--network", "network"), ("--interface", "interface"), ("--mac", "mac")):
            value = getattr(args, attribute, None)
            if value:
                parts += [flag, value]
        if getattr(args, "no_migrate", False):
            parts.append("--no-migrate")
    parts += ["-n", namespace]
    for flag, value in (("--context", args.context), ("--kubeconfig", args.kubeconfig)):
        if value:
            parts += [flag, value]
    return shlex.join(parts)


def _print_refusal(failure: ActionFailed, args: argparse.Namespace, namespace: str, err: TextIO) -> None:
    refusal = failure.refusal
    print(f"error: {refusal.message}", file=err)
    hint = _HINTS.get(refusal.code)
    if hint:
        commands = {name: command_line(args, namespace, name) for name in ("check", "list")}
        print(f"hint: {hint.format_map(commands)}", file=err)


async def _explain_missing_vm(api: ApiClient, args: argparse.Namespace, namespace: str, err: TextIO) -> None:
    """Under "VM NS/NAME not found": whether NS exists, and where else a VM of that name is (as far as
    the user's RBAC lets us tell)."""
    if await namespace_exists(api, namespace) is False:
        print(f"error: namespace {namespace} does not exist", file=err)
    elsewhere = [found for found in await namespaces_holding(api, *KUBEVIRT, VMS, args.vm) or () if found != namespace]
    if elsewhere:
        where = f"namespace {elsewhere[0]}" if len(elsewhere) == 1 else f"namespaces {', '.join(elsewhere)}"
        print(f"hint: a VM named {args.vm} is in {where}: run '{command_line(args, elsewhere[0])}'", file=err)


def _network_text(vm: VmView, name: str) -> str:
    network = vm.network(name)
    if network is None:
        return "(none)"
    if network.kind == "multus":
        return f"{network.nad_namespace}/{network.nad_name}"
    return network.kind or "(other)"


def _unplug_text(vm: VmView, name: str, state: VmState, ineligible: bool) -> str:
    if ineligible:
        return "no: the VM is not eligible (see 'check')"
    problem = plan.interface_unplug_problem(vm, name)
    if problem is not None:
        return f"no: {problem}"
    note = unplug_network_note(vm, name, state.cluster)
    return "yes" if note is None else f"yes ({note})"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return ["   ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
            for row in rows]


def print_interfaces(state: VmState, out: TextIO) -> None:
    """The ``list`` output: one row per interface, then why hot-plug is unavailable (if it is)."""
    vm, vmi = state.view, state.vmi
    problems = eligibility_problems(vm, vmi)
    rows: list[tuple[str, ...]] = [("NAME", "BINDING", "MODEL", "NETWORK", "MAC", "STATE", "HOT-UNPLUG")]
    for interface in vm.interfaces:
        observed = vmi.interface_macs.get(interface.name, "") if vmi is not None else ""
        rows.append((
            interface.name, interface.binding or "(none)", interface.model or "(default)",
            _network_text(vm, interface.name), interface.mac or (f"({observed})" if observed else "(none)"),
            interface.state or "up", _unplug_text(vm, interface.name, state, bool(problems)),
        ))
    for line in _table(rows):
        print(line, file=out)
    if problems:
        print(f"\nVM {vm.ref} is not eligible for NIC hot-plug:", file=out)
        for problem in problems:
            print(f"  - {problem}", file=out)


def print_check(state: VmState, out: TextIO) -> bool:
    """The ``check`` output; True when the VM is eligible."""
    vm = state.view
    problems = eligibility_problems(vm, state.vmi)
    if not problems:
        print(f"VM {vm.ref} is eligible for NIC hot-plug and hot-unplug", file=out)
        return True
    print(f"VM {vm.ref} is not eligible for NIC hot-plug:", file=out)
    for problem in problems:
        print(f"  - {problem}", file=out)
    return False


async def _check(api: ApiClient, namespace: str, name: str, out: TextIO, err: TextIO) -> int:
    """``check``: eligibility, and whether a write would get through our webhook at all right now."""
    state = await read_vm_state(api, namespace, name)
    eligible = print_check(state, out)
    if not eligible and state.stopped:
        print("  (it is stopped: add-nic and remove-nic edit its spec instead, nothing to hot-plug)", file=out)
    unavailable = await admission_probe(api, state.vm)
    if unavailable is not None:
        print(f"error: {unavailable.message}", file=err)
        return EXIT_REFUSED
    return EXIT_OK if eligible else EXIT_REFUSED


async def _subresources_unavailable(args: argparse.Namespace, api: ApiClient) -> str | None:
    """None when the command goes through the subresource API, else why it goes directly (for ``-v``)."""
    if getattr(args, "no_migrate", False):
        return "--no-migrate is only possible with the user's own rights on the VM"
    why_not = await remote.availability(api)
    return None if why_not is None else f"the subresource API {GROUP_VERSION} is not available ({why_not})"


async def _run_command(args: argparse.Namespace, api: ApiClient, namespace: str, out: TextIO, err: TextIO) -> int:
    verbose = getattr(args, "verbose", False)
    direct_because = await _subresources_unavailable(args, api)
    if direct_because is None:
        if verbose:
            print(f"using the subresource API {GROUP_VERSION} through kube-apiserver", file=err)
        done = await remote.run_remote(args.command, api, namespace, args.vm, vars(args), out, err)
        return EXIT_OK if done else EXIT_REFUSED
    if verbose:
        print(f"using the Kubernetes API directly: {direct_because}", file=err)
    return await _run_directly(args, api, namespace, out, err)


async def _run_directly(args: argparse.Namespace, api: ApiClient, namespace: str, out: TextIO, err: TextIO) -> int:
    vm_ref = f"{namespace}/{args.vm}"
    if args.command == "guest-config" or (args.command == "check" and report_wanted(args)):
        return await run_report_command(args, api, namespace, out, err)
    if args.command == "list":
        print_interfaces(await read_vm_state(api, namespace, args.vm), out)
        return EXIT_OK
    if args.command == "check":
        return await _check(api, namespace, args.vm, out, err)
    flow = HotplugFlow(api, migrate=not args.no_migrate, events=EventRecorder(api, component="kubectl-nichotplug"))
    if args.command == "add-nic":
        body = {"interfaceName": args.interface or "", "networkName": args.network, "macAddress": args.mac or ""}
        result = await flow.add_nic(namespace, args.vm, body, name_optional=not args.interface)
    else:
        result = await flow.remove_nic(namespace, args.vm, {"interfaceName": args.interface})
    print_written(result, vm_ref, out, err, added=args.command == "add-nic")
    return EXIT_OK


async def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run one parsed command; returns the exit code."""
    try:
        problem = report_usage_problem(args)
        if problem:
            raise UsageError(problem)
        namespace = args.namespace or default_namespace(args.kubeconfig, args.context)
        api = await load_api_client(args.kubeconfig, args.context)
    except (UsageError, KubeConfigError) as error:
        print(f"error: {error}", file=err)
        return EXIT_USAGE
    try:
        return await _run_command(args, api, namespace, out, err)
    except ActionFailed as failure:
        _print_refusal(failure, args, namespace, err)
        if is_missing_vm(failure.refusal, namespace, args.vm):
            await _explain_missing_vm(api, args, namespace, err)
        return EXIT_REFUSED
    finally:
        await api.close()
