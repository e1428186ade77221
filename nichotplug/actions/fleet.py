"""``kubectl nichotplug check -A | -n NS | -l SELECTOR``: the readiness of many VMs from one list per resource.

Reads VMs, VMIs and NADs with paged lists (:mod:`nichotplug.kube.listing`), never one request per
VM, judges each VM with :func:`nichotplug.rules.fleet.classify_vm` and audits duplicate MACs with
:func:`nichotplug.rules.fleet.duplicate_macs`.

Access is the caller's: with ``-A``, a cluster-wide list that RBAC forbids is retried namespace by
namespace, and a namespace whose VMs (or VMIs) the caller may not list gets an ``error`` row
naming the refusal, instead of failing the whole report. NADs only scope the duplicate audit, so a
NAD list that is refused is a warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

from kubernetes_asyncio.client import ApiClient

from nichotplug.kube.listing import list_custom_objects, list_namespace_names
from nichotplug.kube.patch import Forbidden
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.fleet import (
    HOTPLUG_STATES,
    DuplicateMac,
    VmReadiness,
    classify_vm,
    duplicate_macs,
    unreadable_vm,
)
from nichotplug.rules.views import InvalidObject, NadView, VmiView, VmView

__all__ = ["FleetReport", "FleetScope", "gather_fleet", "report_document", "report_lines", "single_vm_report"]

KUBEVIRT: Final = ("kubevirt.io", "v1")
NAD_API: Final = ("k8s.cni.cncf.io", "v1")
_CONCURRENT_NAMESPACE_LISTS: Final = 8
T = TypeVar("T")
Lister = Callable[[str | None], Awaitable[list[T]]]


@dataclass(frozen=True, slots=True)
class FleetScope:
    """Which VMs: every namespace, or one; optionally only those matching a label selector."""

    all_namespaces: bool
    namespace: str
    selector: str = ""


@dataclass(slots=True)
class FleetReport:
    rows: list[VmReadiness]
    duplicates: list[DuplicateMac]
    warnings: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Listed(Generic[T]):
    items: list[T]
    refused: dict[str, str]  # namespace -> why its list was refused
    cluster_wide: bool


async def _per_namespace(lister: Lister[T], namespaces: Iterable[str]) -> _Listed[T]:
    gate = asyncio.Semaphore(_CONCURRENT_NAMESPACE_LISTS)

    async def one(namespace: str) -> list[T] | str:
        async with gate:
            try:
                return await lister(namespace)
            except Forbidden as error:
                return error.message

    wanted = sorted(set(namespaces))
    answers = await asyncio.gather(*(one(namespace) for namespace in wanted))
    listed: _Listed[T] = _Listed([], {}, cluster_wide=False)
    for namespace, answer in zip(wanted, answers, strict=True):
        if isinstance(answer, str):
            listed.refused[namespace] = answer
        else:
            listed.items.extend(answer)
    return listed


async def _list(lister: Lister[T], cluster_wide: bool,
                namespaces: Callable[[], Awaitable[Iterable[str]]]) -> _Listed[T]:
    """One cluster-wide list when asked and allowed, else one list per namespace."""
    if cluster_wide:
        try:
            return _Listed(await lister(None), {}, cluster_wide=True)
        except Forbidden:
            pass  # the caller may still read some namespaces: ask each
    return await _per_namespace(lister, await namespaces())


def _read_vm(obj: dict[str, Any]) -> VmView | VmReadiness:
    """The VM's view, or its ``error`` row when it cannot be read."""
    try:
        return VmView.from_dict(obj)
    except InvalidObject as error:
        metadata = obj.get("metadata") or {}
        return unreadable_vm(str(metadata.get("namespace") or ""), str(metadata.get("name") or ""),
                             "invalid-object", f"the VM cannot be read: {error}")


def _read_vmi(obj: dict[str, Any]) -> VmiView | None:
    try:
        return VmiView.from_dict(obj)
    except InvalidObject:
        return None  # judged as no VMI: the row then says the VM is not running


def _read_nad(obj: dict[str, Any]) -> NadView | None:
    try:
        return NadView.from_dict(obj)
    except InvalidObject:
        return None  # its VMs' MACs are audited in the unlabelled scope


def _nad_namespaces(vms: Iterable[VmView]) -> set[str]:
    return {network.nad_namespace for vm in vms for network in vm.networks if network.nad is not None}


def _rows(vms: list[VmView], vmis: _Listed[VmiView | None]) -> list[VmReadiness]:
    by_key = {(vmi.namespace, vmi.name): vmi for vmi in vmis.items if vmi is not None}
    rows = []
    for vm in vms:
        refusal = vmis.refused.get(vm.namespace)
        if refusal is not None:
            rows.append(unreadable_vm(vm.namespace, vm.name, "Forbidden",
                                      f"cannot list VirtualMachineInstances in {vm.namespace}: {refusal}"))
        else:
            rows.append(classify_vm(vm, by_key.get((vm.namespace, vm.name))))
    return rows


async def gather_fleet(api: ApiClient, scope: FleetScope) -> FleetReport:
    """List and judge every VM in ``scope``. Raises KubeError for what no row can carry (401, 5xx...)."""
    def lister(group: tuple[str, str], plural: str, read: Callable[[dict[str, Any]], T],
               selector: str = "") -> Lister[T]:
        return lambda namespace: list_custom_objects(api, *group, plural, read=read, namespace=namespace,
                                                     label_selector=selector)

    async def all_namespaces() -> list[str]:
        return await list_namespace_names(api) if scope.all_namespaces else [scope.namespace]

    listed_vms = await _list(lister(KUBEVIRT, "virtualmachines", _read_vm, scope.selector), scope.all_namespaces,
                             all_namespaces)
    vms = [item for item in listed_vms.items if isinstance(item, VmView)]
    unreadable = [item for item in listed_vms.items if isinstance(item, VmReadiness)]

    async def vm_namespaces() -> set[str]:
        return {vm.namespace for vm in vms}

    async def nad_namespaces() -> set[str]:
        return _nad_namespaces(vms)

    listed_vmis = await _list(lister(KUBEVIRT, "virtualmachineinstances", _read_vmi), listed_vms.cluster_wide,
                              vm_namespaces)
    listed_nads = await _list(lister(NAD_API, "network-attachment-definitions", _read_nad), listed_vms.cluster_wide,
                              nad_namespaces)
    rows = [*unreadable, *_rows(vms, listed_vmis)]
    rows += [unreadable_vm(namespace, "", "Forbidden", f"cannot list VirtualMachines in {namespace}: {message}")
             for namespace, message in listed_vms.refused.items()]
    rows.sort(key=lambda row: (row.namespace, row.name))
    warnings = [f"cannot list NetworkAttachmentDefinitions in {namespace} ({message}); MACs on its networks "
                "are audited as if those networks had no cluster-network label"
                for namespace, message in sorted(listed_nads.refused.items())]
    nads = StaticCluster(nads=[nad for nad in listed_nads.items if nad is not None])
    return FleetReport(rows, duplicate_macs(vms, nads), warnings)


def single_vm_report(vm: VmView, vmi: VmiView | None) -> FleetReport:
    """The report of one VM already read (``check VM -o ...``)."""
    return FleetReport([classify_vm(vm, vmi)], [])


# -- rendering ------------------------------------------------------------------------------------------

def state_counts(rows: Iterable[VmReadiness]) -> dict[str, int]:
    counts = dict.fromkeys(HOTPLUG_STATES, 0)
    for row in rows:
        counts[row.hotplug] += 1
    return counts


def report_document(report: FleetReport) -> dict[str, Any]:
    """The ``-o json`` / ``-o yaml`` document: every verdict, the counts and the duplicate MACs."""
    return {
        "items": [row.to_dict() for row in report.rows],
        "summary": {"total": len(report.rows), "states": state_counts(report.rows),
                    "duplicateMacs": [duplicate.to_dict() for duplicate in report.duplicates]},
        "warnings": list(report.warnings),
    }


def _ports_text(row: VmReadiness) -> str:
    return "-" if row.ports_left is None else str(row.ports_left)


def _reason_text(row: VmReadiness, wide: bool) -> str:
    if not row.findings:
        return "-"
    if wide:
        return " | ".join(finding.message for finding in row.findings)
    return row.findings[0].message


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    return ["   ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]).rstrip()
            for row in rows]


def _scope_text(cluster_network: str) -> str:
    return f"cluster network {cluster_network}" if cluster_network else "the pod network / unlabelled networks"


def summary_lines(report: FleetReport) -> list[str]:
    """The summary under the table: counts per state, then each duplicate MAC with all its owners."""
    counts = state_counts(report.rows)
    states = ", ".join(f"{count} {state}" for state, count in counts.items() if count or state != "error")
    lines = [f"{len(report.rows)} VMs: {states}; duplicate MACs: {len(report.duplicates)}"]
    for duplicate in report.duplicates:
        owners = ", ".join(f"{owner.namespace}/{owner.vm} ({owner.interface})" for owner in duplicate.owners)
        lines.append(f"  MAC {duplicate.mac} on {_scope_text(duplicate.cluster_network)}: {owners}")
    return lines


def report_lines(report: FleetReport, *, wide: bool) -> list[str]:
    """The table (``-o wide``: every reason) followed by the summary."""
    table: list[tuple[str, ...]] = [("NAMESPACE", "NAME", "HOTPLUG", "NEXT-STEP", "PORTS-LEFT", "REASON")]
    table += [(row.namespace, row.name or "*", row.hotplug, row.next_step, _ports_text(row), _reason_text(row, wide))
              for row in report.rows]
    lines = _columns(table) if report.rows else ["No VirtualMachines found."]
    return [*lines, "", *summary_lines(report)]
