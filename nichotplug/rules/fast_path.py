"""The fast paths of both webhooks: they answer every VM write of the cluster, so each first tries
to decide from ``rules.facts`` (plain tuples of just what the MAC rules read, no views): validation
when no hot-plug rule applies, mutation when every interface already has a MAC. Whatever the facts
cannot vouch for goes the general path (``validation`` / ``mutation``), which decides it;
``tests/rules/test_fast_path.py`` checks on generated VMs that both paths decide alike."""

from __future__ import annotations

from collections.abc import Sequence

from nichotplug.rules.admission_input import AdmissionInput
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.decision import Decision
from nichotplug.rules.facts import VmFacts, read_vm_facts
from nichotplug.rules.mac import plain_mac_numbers
from nichotplug.rules.mac_rules import annotation_warning, check_macs
from nichotplug.rules.observed_macs import observed_macs_error

__all__ = ["every_mac_written", "new_vm_plainly_allowed", "validate_fast"]

_ALLOWED = Decision.allow()  # frozen: the one answer most requests get, built once


def every_mac_written(req: AdmissionInput) -> bool:
    """Mutation's fast path: a readable VM (and old VM) whose interfaces all have a MAC gets no patch.

    ``rules.facts`` vouches for readability as for validation; when it cannot, the general path decides.
    """
    vm = read_vm_facts(req.obj, namespace=req.namespace)
    if vm is None or not all(iface.mac for iface in vm.interfaces):
        return False
    return req.operation == "CREATE" or read_vm_facts(req.old_obj, namespace=req.namespace) is not None


def _plugs_or_unplugs(old: VmFacts, new: VmFacts) -> bool:
    """``diff_interfaces(old, new).is_hotplug`` from the facts alone."""
    before = {iface.name: iface.state for iface in old.interfaces}
    for iface in new.interfaces:
        previous = before.get(iface.name)
        if previous is None or (previous == "absent") != (iface.state == "absent"):
            return True
    return False


def _raw_interfaces(obj: object) -> object:
    return obj["spec"]["template"]["spec"]["domain"]["devices"].get("interfaces")  # type: ignore[index]


def _edits_interfaces(req: AdmissionInput) -> bool:
    """A cheap guess (a C-speed list comparison) that an UPDATE changes the interfaces; True when unsure.

    Only used to skip the fast path, which is always safe: the general path decides every request.
    """
    try:
        return bool(_raw_interfaces(req.obj) != _raw_interfaces(req.old_obj))
    except (TypeError, KeyError, AttributeError, RecursionError):
        return True


def validate_fast(req: AdmissionInput, cluster: ClusterState) -> Decision | None:
    """Validation from ``VmFacts`` when only the MAC rules apply; None: take the general path.

    The general path is needed for objects the facts cannot vouch for (see ``rules.facts``), and for
    an UPDATE that plugs or unplugs interfaces of a running VM (the hot-plug rules read everything).
    """
    if req.operation == "UPDATE" and _edits_interfaces(req) and cluster.get_vmi(req.namespace, req.name) is not None:
        return None  # most likely a hot-plug of a running VM: reading facts first would be wasted work
    vm = read_vm_facts(req.obj, namespace=req.namespace)
    if vm is None:
        return None
    old: VmFacts | None = None
    if req.operation == "UPDATE":
        old = read_vm_facts(req.old_obj, namespace=req.namespace)
        if old is None:
            return None
        if _plugs_or_unplugs(old, vm) and (old.running or cluster.get_vmi(vm.namespace, vm.name) is not None):
            return None
    return _validate_facts(vm, old, cluster)


def _validate_facts(vm: VmFacts, old: VmFacts | None, cluster: ClusterState) -> Decision:
    denial = check_macs(vm, old, cluster)
    if denial is not None:
        return denial
    if vm.observed_macs_error:
        return Decision.allow(warnings=[annotation_warning(vm.ref, vm.observed_macs_error)])
    return _ALLOWED


def new_vm_plainly_allowed(macs: Sequence[str], observed_macs: str, cluster: ClusterState) -> bool:
    """Whether validation allows a new VM outright, without a warning, judging by what the MAC rules
    read: its spec MACs (each a unicast MAC written in the normal form, no two alike, none used by
    any VM of the cluster) and its observed-MAC annotation (absent, empty, or it parses).

    The webhook's quickest route asks this of nearly every CREATE (see ``webhook.fastdecode``, which
    has already checked that the object reads as ``rules.facts`` reads it and is not being deleted).
    True promises what ``validate_vm`` decides for such a VM: rules 2-4 pass (no owner means no
    collision in any scope) and no warning. False only means "look closer": the full rules may still
    allow (another spelling, an owner in another scope, the VM's own earlier entry in the index).
    """
    if observed_macs and observed_macs_error(observed_macs):
        return False
    numbers = plain_mac_numbers(macs)
    return numbers is not None and not cluster.mac_numbers_in_use(numbers)
