"""The fleet readiness report: for each VM, can it take a NIC now, after a restart, after a start, or never?

``classify_vm`` turns the eligibility findings of :mod:`nichotplug.rules.eligibility` (the same
``code``s the webhook denies with) into one of the states ``kubectl nichotplug check -A`` shows:

- ``ready``: eligible now;
- ``after-restart``: running, but an interface has no MAC in the spec; the next stop backfills it
  (the controller), so hot-plug works after one stop and start;
- ``stopped``: not running and not asked to run; edits are cold edits, hot-plug after it starts;
- ``wait``: in transition (starting, stopping, migrating, not Ready, paused); nothing to change,
  try again once it is Running;
- ``never``: a guest-cluster VM, or one that cannot be live-migrated (host devices, pinned to a
  node, KubeVirt's ``LiveMigratable`` False): hot-plug needs a change of the VM itself.

``duplicate_macs`` is the duplicate audit: MACs claimed by more than one VM on one cluster network,
with every owner (the same claims and scopes the validating webhook counts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nichotplug.rules.admission import hotplug_port_budget
from nichotplug.rules.cluster import ClusterState, owner_scope
from nichotplug.rules.eligibility import Finding, active_interface_count, eligibility_findings
from nichotplug.rules.macindex import MacOwner, vm_mac_claims
from nichotplug.rules.views import VmiView, VmView

__all__ = [
    "ERROR",
    "HOTPLUG_STATES",
    "DuplicateMac",
    "VmReadiness",
    "classify_vm",
    "duplicate_macs",
    "fleet_exit_ok",
    "unreadable_vm",
]

READY = "ready"
AFTER_RESTART = "after-restart"
STOPPED = "stopped"
WAIT = "wait"
NEVER = "never"
ERROR = "error"  # the VM (or its namespace) could not be read: RBAC, an unreadable object
HOTPLUG_STATES = (READY, AFTER_RESTART, STOPPED, WAIT, NEVER, ERROR)
_FINE_STATES = frozenset({READY, STOPPED})  # exit code 0 when every VM listed is in one of these

_NEVER_CODES = frozenset({"vm-guest-cluster", "vm-not-migratable"})

_NEXT_STEP = {
    READY: "-",
    AFTER_RESTART: "stop and start the VM",
    STOPPED: "start the VM",
    WAIT: "wait until Running",
    ERROR: "check access",
}


@dataclass(frozen=True, slots=True)
class VmReadiness:
    """One row of the report: the state, what to do next, the reasons (codes and messages)."""

    namespace: str
    name: str
    hotplug: str
    next_step: str
    ports_left: int | None  # KubeVirt's hot-plug port budget; None when hot-plug is out of reach
    findings: tuple[Finding, ...]

    @property
    def eligible(self) -> bool:
        return self.hotplug == READY

    def to_dict(self) -> dict[str, Any]:
        """The structured verdict (``-o json``/``-o yaml``), shaped like the ``hotplugcheck`` answer."""
        return {
            "namespace": self.namespace, "name": self.name, "hotplug": self.hotplug, "nextStep": self.next_step,
            "eligible": self.eligible, "hotplugPortsLeft": self.ports_left,
            "reasons": [{"code": finding.reason, "message": finding.message} for finding in self.findings],
        }


def _state(vm: VmView, vmi: VmiView | None, codes: set[str]) -> str:
    if codes & _NEVER_CODES:
        return NEVER
    vmi_gone = vmi is None or vmi.finished or vmi.deleting
    if vmi_gone and not vm.running:
        return STOPPED
    if "vm-missing-macs" in codes:
        return AFTER_RESTART
    return WAIT if codes else READY


def _never_step(findings: tuple[Finding, ...]) -> str:
    if any(finding.reason == "vm-guest-cluster" for finding in findings):
        return "none (managed by its guest cluster)"
    return "make it live-migratable"


def classify_vm(vm: VmView, vmi: VmiView | None) -> VmReadiness:
    """The VM's row: its state derived from ``eligibility_findings``, and KubeVirt's port budget.

    A stopped VM's findings are only why it is stopped; they say nothing a start would not fix,
    except a missing MAC, which the backfill writes while it is stopped.
    """
    findings = eligibility_findings(vm, vmi)
    state = _state(vm, vmi, {finding.reason for finding in findings})
    next_step = _never_step(findings) if state == NEVER else _NEXT_STEP[state]
    ports_left = None if state == NEVER else hotplug_port_budget(active_interface_count(vm), vm.guest_memory_bytes)
    return VmReadiness(vm.namespace, vm.name, state, next_step, ports_left, findings)


def unreadable_vm(namespace: str, name: str, code: str, message: str) -> VmReadiness:
    """A row for a VM, or a whole namespace (``name`` ""), that could not be judged."""
    return VmReadiness(namespace, name, ERROR, _NEXT_STEP[ERROR], None, (Finding(code, message),))


def fleet_exit_ok(rows: Iterable[VmReadiness]) -> bool:
    """True when every row is ``ready`` or ``stopped`` (exit code 0)."""
    return all(row.hotplug in _FINE_STATES for row in rows)


@dataclass(frozen=True, slots=True)
class DuplicateMac:
    """A MAC claimed by more than one VM on one cluster network ("" = pod network / unlabelled NADs)."""

    mac: str
    cluster_network: str
    owners: tuple[MacOwner, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"mac": self.mac, "clusterNetwork": self.cluster_network,
                "owners": [{"namespace": owner.namespace, "name": owner.vm, "interface": owner.interface}
                           for owner in self.owners]}


def duplicate_macs(vms: Iterable[VmView], nads: ClusterState) -> list[DuplicateMac]:
    """MACs claimed by two or more VMs on one cluster network, sorted by MAC then network.

    Claims are those the webhook counts (spec MACs, and observed-MAC annotations of interfaces
    without one); the scope of each claim is its NAD's cluster-network label, read from ``nads``.
    """
    claims: defaultdict[tuple[str, str], list[MacOwner]] = defaultdict(list)
    for vm in vms:
        for mac, owner in vm_mac_claims(vm):
            claims[(mac, owner_scope(owner.nad, nads))].append(owner)
    found = []
    for (mac, scope), owners in claims.items():
        if len({(owner.namespace, owner.vm) for owner in owners}) > 1:
            found.append(DuplicateMac(mac, scope, tuple(sorted(owners))))
    return sorted(found, key=lambda duplicate: (duplicate.mac, duplicate.cluster_network))
