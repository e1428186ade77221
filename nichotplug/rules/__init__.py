"""nichotplug.rules: the pure domain logic (no I/O, no asyncio) behind the webhooks, actions and controller.

Everything takes plain Kubernetes objects (as decoded from JSON) or the frozen views of
``views.py`` and returns frozen values; see ARCHITECTURE.md "nichotplug.rules" for the layout.
The names below are the public API the adapters use.
"""

from nichotplug.rules.admission import AdmissionInput, hotplug_port_budget, mutate_vm, validate_vm
from nichotplug.rules.cluster import ClusterState, MacOwner, StaticCluster, owner_scope
from nichotplug.rules.decision import REASONS, Decision
from nichotplug.rules.diff import InterfaceDiff, diff_interfaces
from nichotplug.rules.eligibility import (
    eligibility_findings,
    eligibility_problems,
    hotunpluggable_interfaces,
    unplug_finding,
    unplug_findings,
    unplug_network_note,
    unplug_problem,
)
from nichotplug.rules.jsonpatch import JsonPatchOp
from nichotplug.rules.mac import InvalidMac, check_unicast_mac, generate_mac, normalize_mac
from nichotplug.rules.macindex import MacIndex
from nichotplug.rules.nad import NadVerdict, nad_verdict
from nichotplug.rules.views import InterfaceView, InvalidObject, NadView, NetworkView, VmiView, VmView

__all__ = [
    "REASONS",
    "AdmissionInput",
    "ClusterState",
    "Decision",
    "InterfaceDiff",
    "InterfaceView",
    "InvalidMac",
    "InvalidObject",
    "JsonPatchOp",
    "MacIndex",
    "MacOwner",
    "NadVerdict",
    "NadView",
    "NetworkView",
    "StaticCluster",
    "VmView",
    "VmiView",
    "check_unicast_mac",
    "diff_interfaces",
    "eligibility_findings",
    "eligibility_problems",
    "generate_mac",
    "hotplug_port_budget",
    "hotunpluggable_interfaces",
    "mutate_vm",
    "nad_verdict",
    "normalize_mac",
    "owner_scope",
    "unplug_finding",
    "unplug_findings",
    "unplug_network_note",
    "unplug_problem",
    "validate_vm",
]
