"""The validating webhook's general path (SPEC "Validating webhook"; the rules and their order are in
``rules.admission``): the MAC rules over the full views, then, for an UPDATE of a running VM that
plugs or unplugs interfaces, the hot-plug rules; and the metadata-only write, judged without views."""

from __future__ import annotations

from nichotplug.rules.admission_input import AdmissionInput, read_old, vm_runs
from nichotplug.rules.cluster import ClusterState
from nichotplug.rules.decision import Decision, Reason
from nichotplug.rules.diff import InterfaceDiff, diff_interfaces
from nichotplug.rules.eligibility import (
    HOTPLUG_MODELS,
    Finding,
    active_interface_count,
    edit_eligibility_findings,
    unplug_findings,
    unplug_network_note,
)
from nichotplug.rules.mac_rules import annotation_warning, check_macs
from nichotplug.rules.nad import nad_verdict
from nichotplug.rules.views import InterfaceView, InvalidObject, VmView, read_vm_metadata

__all__ = ["hotplug_port_budget", "spec_unchanged", "validate_metadata_write", "validate_vm_fully"]

_TWO_GIB = 2 * 2**30


def _hotplug_findings(vm: VmView, iface: InterfaceView, cluster: ClusterState) -> list[Finding]:
    """Every reason ``iface`` cannot be hot-plugged into ``vm``: its model, its binding and its network
    are judged apart, so one denial names all that must change."""
    where = f"cannot hot-plug interface {iface.name} into running VM {vm.ref}"
    found: list[Finding] = []
    if iface.model not in HOTPLUG_MODELS:
        found.append(Finding("hotplug-not-virtio", f"{where}: its model is {iface.model}; hot-plugged interfaces "
                                                   "must use model virtio (or leave model unset)"))
    if iface.binding != "bridge":
        found.append(Finding("hotplug-not-bridge", f"{where}: it uses {iface.binding or 'no'} binding; hot-plugged "
                                                   "interfaces must use bridge binding (bridge: {})"))
    network_finding = _hotplug_network_finding(vm, iface, cluster, where)
    if network_finding is not None:
        found.append(network_finding)
    return found


def _hotplug_network_finding(vm: VmView, iface: InterfaceView, cluster: ClusterState, where: str) -> Finding | None:
    network = vm.network(iface.name)
    if network is None:
        return Finding("hotplug-missing-network", f"{where}: spec.template.spec.networks has no entry named "
                                                  f"{iface.name}; add a multus network with that name")
    if network.nad is None:
        return Finding("hotplug-pod-network", f"{where}: its network is not multus; hot-plugged interfaces must "
                                              "use a multus network pointing at a bridge NetworkAttachmentDefinition")
    nad = cluster.get_nad(*network.nad)
    nad_ref = f"{network.nad_namespace}/{network.nad_name}"
    if nad is None:
        return Finding("hotplug-nad-missing", f"{where}: network attachment definition {nad_ref} does not exist; "
                                              "create it first or fix multus.networkName")
    verdict = nad_verdict(nad)
    if not verdict.hotpluggable:
        return Finding("hotplug-network-not-hotpluggable", f"{where}: {verdict.reason}")
    return None


def hotplug_port_budget(ports_in_use: int, guest_memory_bytes: int | None) -> int:
    """KubeVirt v1.6's hot-plug PCI port budget for a VM with ``ports_in_use`` interfaces."""
    if guest_memory_bytes is not None and guest_memory_bytes > _TWO_GIB:
        return max(16 - ports_in_use, 6)
    return max(8 - ports_in_use, 3)


def _port_budget_warning(vm: VmView, old: VmView, diff: InterfaceDiff) -> str | None:
    in_use = active_interface_count(old)
    budget = hotplug_port_budget(in_use, vm.guest_memory_bytes)
    if len(diff.added) <= budget:
        return None
    return (f"VM {vm.ref}: {len(diff.added)} interfaces hot-plugged at once, but KubeVirt reserves {budget} "
            f"hot-plug ports for a VM with {in_use} interfaces; the others may not attach until the VM restarts")


def _hotplug_edit_findings(vm: VmView, old: VmView, diff: InterfaceDiff, cluster: ClusterState) -> list[Finding]:
    """Every reason the hot-plug edit is refused: the VM's eligibility, then each added interface's
    problems, then each unplugged interface's, so one denial says all that must change."""
    found = list(edit_eligibility_findings(old, vm, cluster.get_vmi(vm.namespace, vm.name)))
    for iface in diff.added:
        found += _hotplug_findings(vm, iface, cluster)
    for iface in diff.unplugged:
        found += [Finding(finding.reason, f"cannot hot-unplug: {finding.message}")
                  for finding in unplug_findings(old, iface.name)]
    if diff.unplugged and active_interface_count(vm) == 0 and all(f.reason != "unplug-last-interface" for f in found):
        found.append(Finding("unplug-last-interface", f"cannot hot-unplug every interface of VM {vm.ref}; a VM "
                                                      "keeps at least one"))
    return found


def _check_hotplug(vm: VmView, old: VmView, diff: InterfaceDiff, cluster: ClusterState) -> Decision | None:
    findings = _distinct(_hotplug_edit_findings(vm, old, diff, cluster))
    if not findings:
        return None
    return Decision.deny(403, "NIC hot-plug refused: " + "; ".join(found.message for found in findings),
                         findings[0].reason)


def _distinct(findings: list[Finding]) -> list[Finding]:
    """``findings`` without repeats, in order."""
    return list(dict.fromkeys(findings))


def _unplug_warnings(old: VmView, diff: InterfaceDiff, cluster: ClusterState) -> list[str]:
    """A note for each unplugged interface whose network is gone or no longer a bridge (allowed)."""
    notes = (unplug_network_note(old, iface.name, cluster) for iface in diff.unplugged)
    return [note for note in notes if note]


def spec_unchanged(req: AdmissionInput) -> bool:
    obj, old = req.obj, req.old_obj
    return (req.operation == "UPDATE" and type(obj) is dict and type(old) is dict
            and obj.get("spec") == old.get("spec"))


def validate_metadata_write(req: AdmissionInput) -> Decision:
    """A write that leaves the spec as it was (labels, annotations, finalizers): nothing to check but
    that the object reads and its observed-MAC annotation parses."""
    try:
        meta = read_vm_metadata(req.obj, namespace=req.namespace)
    except InvalidObject as error:
        return Decision.deny(403, f"VirtualMachine {req.ref} cannot be read: {error}", "invalid-object")
    if meta.deleting:
        return Decision.allow(reason="deleting")
    if meta.observed_macs_error:
        return Decision.allow(warnings=[annotation_warning(meta.ref, meta.observed_macs_error)])
    return Decision.allow()


def validate_vm_fully(req: AdmissionInput, cluster: ClusterState) -> Decision:
    """``validate_vm`` of a judged write through the full views (the general path; tests compare)."""
    try:
        vm = VmView.from_dict(req.obj, namespace=req.namespace)
    except InvalidObject as error:
        return Decision.deny(403, f"VirtualMachine {req.ref} cannot be read: {error}", "invalid-object")
    if vm.deleting:
        return Decision.allow(reason="deleting")
    old = read_old(req)
    denial = check_macs(vm, old, cluster)
    if denial is not None:
        return denial
    warnings: list[str] = []
    reason = "allowed"
    if old is not None and vm_runs(vm, old, cluster):
        diff = diff_interfaces(old, vm)
        if diff.is_hotplug:
            denial = _check_hotplug(vm, old, diff, cluster)
            if denial is not None:
                return denial
            reason = Reason.HOTPLUG_ALLOWED
            warnings += _unplug_warnings(old, diff, cluster)
            budget_warning = _port_budget_warning(vm, old, diff)
            if budget_warning:
                warnings.append(budget_warning)
    if vm.observed_macs_error:
        warnings.append(annotation_warning(vm.ref, vm.observed_macs_error))
    return Decision.allow(reason=reason, warnings=warnings)
