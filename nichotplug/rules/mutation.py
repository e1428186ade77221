"""The mutating webhook's rules (SPEC "Mutating webhook"; ``rules.admission`` says when a VM runs).

On CREATE and cold UPDATE, every interface without a ``macAddress`` gets the MAC the observed-MAC
annotation records for it, else a generated one (also when another VM uses the recorded MAC on the
same network, as with a copied annotation: validation would refuse it; a warning says so); on an
UPDATE of a running VM only interfaces new in this update get one (a MAC written into the template
of a running VM whose VMI lacks it would make KubeVirt demand a restart). On any UPDATE, an
interface whose MAC the request drops (``kubectl apply`` of a manifest written without MACs) gets
its previous MAC back, so the guest keeps its address. Generated MACs are drawn again while any VM
uses them or another interface of the same request does. Patches are JSON Patch ``add`` ops as
data. An object the views cannot read is left untouched: the API server's schema check, which runs
after mutation, rejects it with a precise message, and validation denies it if it gets that far.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from nichotplug.rules.admission_input import AdmissionInput, read_old, vm_runs
from nichotplug.rules.cluster import ClusterState, MacOwner, owner_scope
from nichotplug.rules.decision import Decision
from nichotplug.rules.jsonpatch import JsonPatchOp
from nichotplug.rules.mac import InvalidMac, MacGenerationError, generate_mac, normalize_mac
from nichotplug.rules.mac_rules import colliding_owner
from nichotplug.rules.views import InvalidObject, VmView
from nichotplug.rules.vm_object import INTERFACES_POINTER, OBSERVED_MACS_ANNOTATION

__all__ = ["mutate_vm_fully"]


def _valid_spec_macs(vm: VmView) -> set[str]:
    macs: set[str] = set()
    for iface in vm.interfaces:
        if iface.mac:
            try:
                macs.add(normalize_mac(iface.mac))
            except InvalidMac:
                continue  # validation refuses it; it takes no address from the pool
    return macs


def _interfaces_needing_mac(vm: VmView, old: VmView | None, runs: bool) -> list[int]:
    """Indexes of the interfaces to give a MAC: all without one, or on a running VM only new ones
    and those whose MAC this request drops (restoring it leaves the running VMI's MAC alone)."""
    if runs and old is not None:
        before = {iface.name: iface.mac for iface in old.interfaces}
        return [i for i, iface in enumerate(vm.interfaces)
                if not iface.mac and (iface.name not in before or before[iface.name])]
    return [i for i, iface in enumerate(vm.interfaces) if not iface.mac]


def _previous_macs(old: VmView | None) -> dict[str, str]:
    """Interface name -> valid spec MAC of the old object (what ``kubectl apply`` may have dropped)."""
    macs: dict[str, str] = {}
    for iface in old.interfaces if old is not None else ():
        if iface.mac:
            try:
                macs[iface.name] = normalize_mac(iface.mac)
            except InvalidMac:
                continue
    return macs


def mutate_vm_fully(
    req: AdmissionInput, cluster: ClusterState, random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> Decision:
    """``mutate_vm`` of a judged write through the full views (the general path; tests compare)."""
    try:
        vm = VmView.from_dict(req.obj, namespace=req.namespace)
    except InvalidObject:
        return Decision.allow(reason="unreadable-object")
    if vm.deleting:
        return Decision.allow(reason="deleting")
    old = read_old(req)
    if req.operation == "UPDATE" and old is None:
        return Decision.allow(reason="unreadable-object")  # without the old object, "new" is unknowable
    targets = _interfaces_needing_mac(vm, old, req.operation == "UPDATE" and vm_runs(vm, old, cluster))
    if not targets:
        return Decision.allow(reason="no-change")
    used = _valid_spec_macs(vm)

    def is_taken(mac: str) -> bool:
        return mac in used or bool(cluster.owners_of_mac(mac))

    previous = _previous_macs(old)
    ops: list[JsonPatchOp] = []
    warnings: list[str] = []
    for index in targets:
        iface = vm.interfaces[index]
        # The guest keeps its address: the MAC the old spec had, else the one the annotation records,
        # unless another interface of this request already has it, or (a recorded MAC) another VM
        # uses it on the same network: validation would refuse the write that mutation made.
        recorded = "" if iface.name in previous else vm.observed_macs.get(iface.name, "")
        known = previous.get(iface.name) or recorded
        owner = _recorded_mac_owner(vm, iface.name, recorded, cluster) if recorded else None
        try:
            mac = known if known and known not in used and owner is None else generate_mac(is_taken, random_bytes)
        except MacGenerationError as error:
            return Decision.deny(500, f"VM {vm.ref}: cannot generate a MAC for interface {iface.name}: {error}",
                                 "internal-error")
        if owner is not None:
            warnings.append(f"VM {vm.ref} interface {iface.name}: the MAC its annotation {OBSERVED_MACS_ANNOTATION} "
                            f"records, {known}, is used by {owner.namespace}/{owner.vm} interface {owner.interface} "
                            f"on the same network; the interface gets the new MAC {mac} instead")
        used.add(mac)
        ops.append({"op": "add", "path": f"{INTERFACES_POINTER}/{index}/macAddress", "value": mac})
    return Decision.patched(ops, warnings=warnings)


def _recorded_mac_owner(vm: VmView, interface: str, mac: str, cluster: ClusterState) -> MacOwner | None:
    """Another VM that uses ``mac`` in the scope of ``interface`` (a copied annotation, e.g. of a clone)."""
    if not cluster.owners_of_mac(mac):
        return None  # the usual case: nobody else has it
    return colliding_owner(vm, mac, owner_scope(vm.network_nads().get(interface), cluster), cluster)
