"""May this VM have NICs hot-plugged or hot-unplugged now, and may this interface be unplugged?

``eligibility_findings`` checks SPEC "VM eligibility" in its order (guest cluster, running and
stable, live-migratable, MACs in the spec) and reports every failed condition as a ``Finding``:
a metric slug plus a message naming the VM and saying what to do. ``unplug_findings`` does the same
for one interface (judged by the interface alone: its network may be gone). The ``*_problems`` /
``*_problem`` functions are the message-only forms the ARCHITECTURE contract names.
"""

from __future__ import annotations

from dataclasses import dataclass

from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.nad import nad_verdict
from nichotplug.rules.views import InterfaceView, VmiView, VmView
from nichotplug.rules.vm_object import GUEST_CLUSTER_CREATOR, GUEST_CLUSTER_LABEL

__all__ = [
    "ELIGIBILITY_REASONS",
    "HOSTNAME_LABEL",
    "HOTPLUG_MODELS",
    "UNPLUG_REASONS",
    "Finding",
    "active_interface_count",
    "edit_eligibility_findings",
    "eligibility_findings",
    "eligibility_problems",
    "hotunpluggable_interfaces",
    "unplug_finding",
    "unplug_findings",
    "unplug_network_note",
    "unplug_problem",
]

HOSTNAME_LABEL = "kubernetes.io/hostname"
HOTPLUG_MODELS = ("", "virtio")  # model unset means virtio

ELIGIBILITY_REASONS = ("vm-guest-cluster", "vm-not-running", "vm-migrating", "vm-not-migratable", "vm-missing-macs")
UNPLUG_REASONS = (
    "unplug-unknown-interface", "unplug-already-absent", "unplug-last-interface", "unplug-not-bridge",
    "unplug-not-virtio", "unplug-not-multus",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """A failed condition: ``reason`` is a metric slug, ``message`` is for the person."""

    reason: str
    message: str


def _running_findings(vm: VmView, vmi: VmiView | None) -> list[Finding]:
    ref = vm.ref
    found: list[Finding] = []
    if vmi is None:
        found.append(Finding("vm-not-running", f"VM {ref} is not running (it has no VirtualMachineInstance); "
                                               "start it and wait until it is Running"))
    else:
        if vmi.deleting:
            found.append(Finding("vm-not-running", f"VM {ref} is stopping (its VirtualMachineInstance is being "
                                                   "deleted)"))
        if vmi.finished:
            found.append(Finding("vm-not-running", f"VM {ref} is stopped: its VirtualMachineInstance is in phase "
                                                   f"{vmi.phase}; start the VM and wait until it is Running"))
        elif vmi.phase != "Running":
            found.append(Finding("vm-not-running", f"VM {ref} is not running: its VirtualMachineInstance is in "
                                                   f"phase {vmi.phase or 'unknown'}; wait until it is Running"))
        if not vmi.ready:
            found.append(Finding("vm-not-running", f"VM {ref} is not ready (VirtualMachineInstance condition Ready "
                                                   "is not True); wait until it is ready"))
        if vmi.migration_in_flight:
            found.append(Finding("vm-migrating", f"VM {ref} is being live-migrated; wait until the migration "
                                                 "completes"))
    if vm.printable_status != "Running":
        found.append(Finding("vm-not-running", f"VM {ref} status is {vm.printable_status or 'unknown'}, not "
                                               "Running"))
    return found


def _migratable_findings(vm: VmView, vmi: VmiView | None) -> list[Finding]:
    ref = vm.ref
    found: list[Finding] = []
    if vmi is not None and vmi.live_migratable is False:
        why = vmi.live_migratable_reason or "no reason given"
        found.append(Finding("vm-not-migratable", f"VM {ref} cannot be live-migrated ({why}); hot-plug applies "
                                                  "the change through a live migration"))
    if HOSTNAME_LABEL in vm.node_selector:
        found.append(Finding("vm-not-migratable", f"VM {ref} is pinned to node {vm.node_selector[HOSTNAME_LABEL]} "
                                                  f"by nodeSelector {HOSTNAME_LABEL}, so it cannot be live-migrated; "
                                                  "remove that selector first"))
    if vm.has_host_devices:
        found.append(Finding("vm-not-migratable", f"VM {ref} has host devices or GPUs, so it cannot be "
                                                  "live-migrated; hot-plug needs live migration"))
    return found


def _guest_cluster_findings(vm: VmView) -> list[Finding]:
    if vm.labels.get(GUEST_CLUSTER_LABEL) != GUEST_CLUSTER_CREATOR:
        return []
    return [Finding("vm-guest-cluster", f"VM {vm.ref} belongs to a guest cluster (label {GUEST_CLUSTER_LABEL}="
                                        f"{GUEST_CLUSTER_CREATOR}); its NICs are managed by that cluster's machine "
                                        "driver, not by hot-plug")]


def _missing_mac_findings(vm: VmView, names: list[str]) -> list[Finding]:
    if not names:
        return []
    return [Finding("vm-missing-macs", f"VM {vm.ref} interface(s) {', '.join(names)} have no macAddress in the "
                                       "spec; stop the VM once so its observed MACs are written into the spec, "
                                       "then start it again")]


def eligibility_findings(vm: VmView, vmi: VmiView | None) -> tuple[Finding, ...]:
    """Every failed eligibility condition, in SPEC order; empty means the VM is eligible."""
    without_mac = [iface.name for iface in vm.interfaces if not iface.mac]
    return (*_guest_cluster_findings(vm), *_running_findings(vm, vmi), *_migratable_findings(vm, vmi),
            *_missing_mac_findings(vm, without_mac))


def edit_eligibility_findings(old: VmView, new: VmView, vmi: VmiView | None) -> tuple[Finding, ...]:
    """``eligibility_findings`` of an UPDATE that hot-plugs or unplugs: the VM must be eligible both as
    it runs (``old``) and as the edit leaves it (``new``).

    An edit that drops the guest-cluster label, the hostname selector or the host devices changes
    nothing for the running VMI (those changes wait for a restart), so it cannot carry a hot-plug.
    An existing interface needs its MAC in the spec before and after. An interface the edit adds
    without one has its own message: the mutating webhook gives every new interface a MAC, so its
    absence means that webhook did not run (its failure policy lets writes through when it is down).
    """
    existing = {iface.name for iface in old.interfaces}
    old_without_mac = {iface.name for iface in old.interfaces if not iface.mac}
    without_mac = [iface.name for iface in new.interfaces
                   if iface.name in existing and (not iface.mac or iface.name in old_without_mac)]
    added_without_mac = [iface.name for iface in new.interfaces if iface.name not in existing and not iface.mac]
    found = [*(_guest_cluster_findings(new) or _guest_cluster_findings(old)), *_running_findings(new, vmi)]
    found += _distinct([*_migratable_findings(new, vmi), *_migratable_findings(old, vmi)])
    found += _missing_mac_findings(new, without_mac)
    if added_without_mac:
        found.append(Finding("vm-missing-macs", f"VM {new.ref} interface(s) {', '.join(added_without_mac)} are "
                                                "hot-plugged without a macAddress; nichotplug's mutating webhook "
                                                "gives every new interface one, so check that it is running, or "
                                                "write a macAddress yourself"))
    return tuple(found)


def _distinct(findings: list[Finding]) -> list[Finding]:
    """``findings`` without repeats, in order (old and new often fail a condition alike)."""
    return list(dict.fromkeys(findings))


def eligibility_problems(vm: VmView, vmi: VmiView | None) -> tuple[str, ...]:
    """The messages of ``eligibility_findings``."""
    return tuple(finding.message for finding in eligibility_findings(vm, vmi))


def active_interface_count(vm: VmView) -> int:
    """Interfaces that are not being unplugged (``state`` is not ``absent``)."""
    return sum(1 for iface in vm.interfaces if iface.state != "absent")


def _interface_shape_findings(vm: VmView, iface: InterfaceView) -> list[Finding]:
    where = f"interface {iface.name} of VM {vm.ref}"
    found: list[Finding] = []
    if iface.binding != "bridge":
        found.append(Finding("unplug-not-bridge", f"{where} uses {iface.binding or 'no'} binding; only bridge "
                                                  "interfaces can be hot-unplugged"))
    if iface.model not in HOTPLUG_MODELS:
        found.append(Finding("unplug-not-virtio", f"{where} has model {iface.model}; only virtio interfaces can be "
                                                  "hot-unplugged"))
    network = vm.network(iface.name)
    if network is None or network.nad is None:
        on = "has no entry in spec.template.spec.networks" if network is None else "is not on a multus network"
        found.append(Finding("unplug-not-multus", f"{where} {on}; only interfaces on multus networks can be "
                                                  "hot-unplugged"))
    return found


def unplug_findings(vm: VmView, interface_name: str) -> tuple[Finding, ...]:
    """Every reason the (still present) interface cannot be hot-unplugged from ``vm``; empty if it can.

    What KubeVirt requires of the interface itself (SPEC "VM eligibility"): not already absent, bridge
    binding, virtio or no model, a multus network. The NAD it points at is not judged: the migration
    target is built without the interface, so a NAD that is gone, being deleted or no longer a bridge
    must not keep a NIC in the VM (harvester#8293). ``unplug_network_note`` says when it is gone.
    """
    where = f"interface {interface_name} of VM {vm.ref}"
    iface = vm.interface(interface_name)
    if iface is None:
        return (Finding("unplug-unknown-interface", f"VM {vm.ref} has no interface named {interface_name}"),)
    if iface.state == "absent":
        return (Finding("unplug-already-absent", f"{where} is already being unplugged (state: absent)"),)
    found = _interface_shape_findings(vm, iface)
    if active_interface_count(vm) <= 1:
        found.insert(0, Finding("unplug-last-interface", f"{where} is the VM's only interface; a VM keeps at "
                                                         "least one"))
    return tuple(found)


def unplug_finding(vm: VmView, interface_name: str) -> Finding | None:
    """The first of ``unplug_findings``; None if the interface can be hot-unplugged."""
    found = unplug_findings(vm, interface_name)
    return found[0] if found else None


def unplug_problem(vm: VmView, interface_name: str) -> str | None:
    """Every message of ``unplug_findings`` in one; None if the interface can be hot-unplugged."""
    found = unplug_findings(vm, interface_name)
    return "; ".join(finding.message for finding in found) if found else None


def unplug_network_note(vm: VmView, interface_name: str, cluster: ClusterState) -> str | None:
    """Why the NAD of an interface being unplugged could not carry it any more (gone, being deleted, not
    a bridge...), for a warning; None when it still could, or the interface has no NAD."""
    network = vm.network(interface_name)
    if network is None or network.nad is None:
        return None
    verdict = nad_verdict(cluster.get_nad(*network.nad))
    if verdict.hotpluggable:
        return None
    return (f"interface {interface_name} of VM {vm.ref} is on network {network.nad_namespace}/{network.nad_name}, "
            f"which is gone or not a bridge network any more ({verdict.reason}); the interface can still be "
            "unplugged")


def hotunpluggable_interfaces(vm: VmView) -> list[str]:
    """Names of the interfaces the UI may offer to unplug (none unless the VM has more than one)."""
    if active_interface_count(vm) <= 1:
        return []
    return [iface.name for iface in vm.interfaces if not unplug_findings(vm, iface.name)]
