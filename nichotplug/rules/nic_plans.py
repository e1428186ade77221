"""Planning of the hot-plug actions (addNic, removeNic, findHotunpluggableNics): pure, no I/O.

The action API and the ``kubectl nichotplug`` plugin both fetch the VM, its VMI and the NADs it
needs into a :class:`VmState` (the views built once), then ask this module what to write. The
answer is either a :class:`NicPlan` — the JSON Patch to send (always starting with a ``test`` on
``metadata.resourceVersion``, so a concurrent edit fails the write instead of being overwritten)
and the interface it adds or unplugs, with its MAC and network — or an :class:`ActionRefusal`
carrying the HTTP status, a stable machine-readable code and a message a person can act on.

Status codes (SPEC "Action API"): 422 the request body is wrong (the caller must fix the request);
404 the VM, the NAD or the named interface does not exist; 409 the request is well formed but the
state of the cluster refuses it (name already used, MAC already used, VM not eligible, NAD not
hot-pluggable, interface not hot-unpluggable, last interface, concurrent change). A NAD that is not
hot-pluggable is a 409, not a 422: the body is valid, the network is what the user must change.

A stopped VM (SPEC "Action API": no VMI, or one that has finished) has nothing to hot-plug: addNic
adds the interface and its network to the spec and removeNic deletes both, without the eligibility
checks (the admission webhooks judge such a write as a cold edit: only the MAC rules apply). The
body, name, network and MAC checks are the same as for a running VM.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from nichotplug.rules.admission import hotplug_port_budget
from nichotplug.rules.cluster import ClusterState, StaticCluster, owner_scope
from nichotplug.rules.eligibility import (
    Finding,
    active_interface_count,
    eligibility_findings,
    eligibility_problems,
    hotunpluggable_interfaces,
    unplug_problem,
)
from nichotplug.rules.jsonpatch import JsonPatchOp, append_op, pointer, resource_version_test
from nichotplug.rules.mac import InvalidMac, check_unicast_mac, generate_mac
from nichotplug.rules.nad import nad_verdict
from nichotplug.rules.views import InvalidObject, VmiView, VmView
from nichotplug.rules.vm_object import INTERFACES_PATH, NETWORKS_PATH

ADD_NIC: Final = "addNic"
REMOVE_NIC: Final = "removeNic"
FIND_HOTUNPLUGGABLE_NICS: Final = "findHotunpluggableNics"
ACTIONS: Final = (ADD_NIC, REMOVE_NIC, FIND_HOTUNPLUGGABLE_NICS)

# Machine-readable refusal codes (the ``code`` of the error body), one per distinct thing to fix.
INVALID_BODY: Final = "InvalidBodyContent"  # 422: not JSON, or not a JSON object
MISSING_REQUIRED: Final = "MissingRequired"  # 422: a required field is absent or empty
INVALID_FORMAT: Final = "InvalidFormat"  # 422: a field is present but malformed
INVALID_ACTION: Final = "InvalidAction"  # 400: unknown ?action=
NOT_FOUND: Final = "NotFound"  # 404: VM, NAD or interface missing
NAME_IN_USE: Final = "InterfaceNameInUse"  # 409
MAC_IN_USE: Final = "MacAddressInUse"  # 409
NOT_ELIGIBLE: Final = "VmNotEligible"  # 409
NETWORK_NOT_HOTPLUGGABLE: Final = "NetworkNotHotpluggable"  # 409
NOT_HOTUNPLUGGABLE: Final = "InterfaceNotHotunpluggable"  # 409
CONCURRENT_CHANGE: Final = "ConcurrentChange"  # 409: the VM changed between our read and our write


@dataclass(frozen=True, slots=True)
class ActionRefusal:
    """Why an action is refused: HTTP ``status``, stable ``code`` and a message a person can act on."""

    status: int
    code: str
    message: str


_LABEL_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"  # Kubernetes' DNS-1123 label
_DNS1123_LABEL = re.compile(_LABEL_PATTERN)
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL_PATTERN}(\.{_LABEL_PATTERN})*")


def is_dns1123_label(text: str) -> bool:
    """True for a valid DNS-1123 label (what KubeVirt requires of interface and network names)."""
    return len(text) <= 63 and _DNS1123_LABEL.fullmatch(text) is not None


def _is_dns1123_subdomain(text: str) -> bool:
    return len(text) <= 253 and _DNS1123_SUBDOMAIN.fullmatch(text) is not None


def _dig(obj: Mapping[str, Any], path: Sequence[str]) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _raw_list(vm: Mapping[str, Any], path: Sequence[str]) -> list[Any]:
    found = _dig(vm, path)
    return list(found) if isinstance(found, list) else []


def _names(items: list[Any]) -> set[str]:
    return {item["name"] for item in items if isinstance(item, Mapping) and isinstance(item.get("name"), str)}


def used_names(vm: Mapping[str, Any]) -> set[str]:
    """Every name used by an interface or a network of the VM (a new interface may use none of them)."""
    return _names(_raw_list(vm, INTERFACES_PATH)) | _names(_raw_list(vm, NETWORKS_PATH))


def next_interface_name(vm: Mapping[str, Any]) -> str:
    """The first ``nic-<n>`` (n >= 1) that no interface or network of the VM uses."""
    taken = used_names(vm)
    number = 1
    while f"nic-{number}" in taken:
        number += 1
    return f"nic-{number}"


def _vm_label(vm: VmView) -> str:
    return f"VM {vm.namespace}/{vm.name}"


def is_stopped(vm: VmView, vmi: VmiView | None) -> bool:
    """No guest runs and none is on the way: no VMI and a spec that does not ask to run, or a VMI that
    has finished. Exactly when the admission webhooks judge a write to the VM as a cold edit."""
    return vmi.finished if vmi is not None else not vm.running


@dataclass(frozen=True, slots=True)
class VmState:
    """A VM as just read, for planning: the object (the ops' indexes point into it), its view, its
    VMI's view (None: no VMI) and the cluster around it (NADs, other VMs' MACs)."""

    vm: Mapping[str, Any]
    view: VmView
    vmi: VmiView | None
    cluster: ClusterState = field(default_factory=StaticCluster)

    @property
    def stopped(self) -> bool:
        return is_stopped(self.view, self.vmi)


def vm_state(vm: Mapping[str, Any], vmi: Mapping[str, Any] | None,
             cluster: ClusterState | None = None) -> VmState | ActionRefusal:
    """The :class:`VmState` of the objects as read, or a 409 when they cannot be read."""
    try:
        vm_view = VmView.from_dict(vm)
        vmi_view = VmiView.from_dict(vmi) if vmi is not None else None
    except InvalidObject as error:
        return ActionRefusal(409, NOT_ELIGIBLE, f"cannot read the VM or its VMI: {error}")
    return VmState(vm, vm_view, vmi_view, cluster if cluster is not None else StaticCluster())


@dataclass(frozen=True, slots=True)
class NicPlan:
    """What an addNic or removeNic writes, and the interface it adds or unplugs.

    ``mac`` is the interface's MAC ("" when its spec has none); ``network`` is its multus NAD as
    ``ns/name`` ("" for another kind of network).
    """

    ops: tuple[JsonPatchOp, ...]
    interface: str
    mac: str
    network: str


def _network_of(vm: VmView, interface: str) -> str:
    network = vm.network(interface)
    nad = network.nad if network is not None else None
    return f"{nad[0]}/{nad[1]}" if nad is not None else ""


def _eligibility_refusal(vm: VmView, vmi: VmiView | None) -> ActionRefusal | None:
    problems = eligibility_problems(vm, vmi)
    if not problems:
        return None
    return ActionRefusal(409, NOT_ELIGIBLE, "; ".join(problems))


def _required_string(body: Mapping[str, Any], field: str) -> str | ActionRefusal:
    value = body.get(field)
    if value is None or value == "":
        return ActionRefusal(422, MISSING_REQUIRED, f"field {field!r} is required")
    if not isinstance(value, str):
        return ActionRefusal(422, INVALID_FORMAT, f"field {field!r} must be a string, not {type(value).__name__}")
    return value


def _interface_name(body: Mapping[str, Any]) -> str | ActionRefusal:
    name = _required_string(body, "interfaceName")
    if isinstance(name, str) and not is_dns1123_label(name):
        return ActionRefusal(
            422, INVALID_FORMAT,
            f"interfaceName {name!r} is not a valid name: use at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit",
        )
    return name


def parse_network_name(text: str, vm_namespace: str) -> tuple[str, str] | ActionRefusal:
    """``ns/name`` or ``name`` (the VM's namespace, as KubeVirt and Multus read it) -> (namespace, name)."""
    namespace, slash, name = text.rpartition("/")
    if not slash:
        namespace = vm_namespace
    if not is_dns1123_label(namespace) or not _is_dns1123_subdomain(name) or "/" in namespace:
        return ActionRefusal(
            422, INVALID_FORMAT,
            f"networkName {text!r} is not valid: expected NAMESPACE/NAME or NAME of a NetworkAttachmentDefinition",
        )
    return namespace, name


def _requested_mac(body: Mapping[str, Any]) -> str | ActionRefusal | None:
    """The normalised MAC the caller asked for, None to generate one, or a refusal."""
    value = body.get("macAddress")
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return ActionRefusal(422, INVALID_FORMAT, f"field 'macAddress' must be a string, not {type(value).__name__}")
    try:
        return check_unicast_mac(value)
    except InvalidMac as error:
        return ActionRefusal(422, INVALID_FORMAT, f"macAddress {value!r}: {error}")


@dataclass(frozen=True, slots=True)
class AddNicRequest:
    """A validated addNic body: the NAD is already resolved to (namespace, name)."""

    interface_name: str
    nad_namespace: str
    nad_name: str
    mac: str | None  # None: generate one


def parse_add_nic(
    body: Mapping[str, Any], vm_namespace: str, *, name_optional: bool = False,
) -> AddNicRequest | ActionRefusal:
    """Validate an addNic body (unknown fields are ignored); every problem here is a 422.

    With ``name_optional`` (the plugin), a missing ``interfaceName`` gives ``interface_name == ""``:
    the planner then picks a free ``nic-<n>``.
    """
    if name_optional and body.get("interfaceName") in (None, ""):
        interface_name: str | ActionRefusal = ""
    else:
        interface_name = _interface_name(body)
    if isinstance(interface_name, ActionRefusal):
        return interface_name
    network_text = _required_string(body, "networkName")
    if isinstance(network_text, ActionRefusal):
        return network_text
    network = parse_network_name(network_text, vm_namespace)
    if isinstance(network, ActionRefusal):
        return network
    mac = _requested_mac(body)
    if isinstance(mac, ActionRefusal):
        return mac
    return AddNicRequest(interface_name, network[0], network[1], mac)


def _nad_refusal(request: AddNicRequest, cluster: ClusterState) -> ActionRefusal | None:
    nad = cluster.get_nad(request.nad_namespace, request.nad_name)
    where = f"{request.nad_namespace}/{request.nad_name}"
    if nad is None:
        return ActionRefusal(404, NOT_FOUND, f"network {where} not found: no NetworkAttachmentDefinition by that name")
    verdict = nad_verdict(nad)
    if not verdict.hotpluggable:
        return ActionRefusal(
            409, NETWORK_NOT_HOTPLUGGABLE, f"network {where} cannot be hot-plugged: {verdict.reason}",
        )
    return None


def _mac_refusal(mac: str, request: AddNicRequest, vm: VmView, cluster: ClusterState) -> ActionRefusal | None:
    """409 when ``mac`` is used by this VM (any network) or by another VM on the same cluster network."""
    scope = owner_scope((request.nad_namespace, request.nad_name), cluster)
    for owner in sorted(cluster.owners_of_mac(mac)):
        same_vm = (owner.namespace, owner.vm) == (vm.namespace, vm.name)
        if same_vm or owner_scope(owner.nad, cluster) == scope:
            where = f"interface {owner.interface} of this VM" if same_vm else (
                f"{owner.namespace}/{owner.vm} interface {owner.interface} on cluster network {scope or '(none)'}")
            return ActionRefusal(409, MAC_IN_USE, f"MAC {mac} is already used by {where}; pick another or leave "
                                                  "macAddress empty to generate one")
    return None


def _choose_mac(
    request: AddNicRequest, vm: VmView, cluster: ClusterState, random_bytes: Callable[[int], bytes],
) -> str | ActionRefusal:
    if request.mac is not None:
        refusal = _mac_refusal(request.mac, request, vm, cluster)
        return refusal if refusal is not None else request.mac
    # A generated MAC avoids every known MAC, whatever its scope: the cost is nil and it stays
    # unique if the NAD is later relabelled to another cluster network.
    return generate_mac(is_taken=lambda mac: bool(cluster.owners_of_mac(mac)), random_bytes=random_bytes)


def plan_add_nic(
    request: AddNicRequest, state: VmState, *, random_bytes: Callable[[int], bytes] = secrets.token_bytes,
) -> NicPlan | ActionRefusal:
    """The plan that hot-plugs the interface ``request`` (see :func:`parse_add_nic`) asks for, or why not.

    Checks, in order: the VM's eligibility (409, every reason; not for a stopped VM), the name (409),
    the NAD (404 missing, 409 not hot-pluggable), the MAC (409 if used in the same scope). A request
    without ``interface_name`` gets the first free ``nic-<n>``.
    """
    vm, vm_view, cluster = state.vm, state.view, state.cluster
    if not request.interface_name:
        request = replace(request, interface_name=next_interface_name(vm))
    refusal = None if state.stopped else _eligibility_refusal(vm_view, state.vmi)
    if refusal is None and request.interface_name in used_names(vm):
        refusal = ActionRefusal(
            409, NAME_IN_USE,
            f"{_vm_label(vm_view)} already has an interface or network named {request.interface_name!r}",
        )
    if refusal is None:
        refusal = _nad_refusal(request, cluster)
    if refusal is not None:
        return refusal
    mac = _choose_mac(request, vm_view, cluster, random_bytes)
    if isinstance(mac, ActionRefusal):
        return mac
    nad = f"{request.nad_namespace}/{request.nad_name}"
    interface = {"name": request.interface_name, "model": "virtio", "bridge": {}, "macAddress": mac}
    network = {"name": request.interface_name, "multus": {"networkName": nad}}
    ops = (resource_version_test(vm_view.resource_version),
           append_op(vm, INTERFACES_PATH, interface),
           append_op(vm, NETWORKS_PATH, network))
    return NicPlan(ops, request.interface_name, mac, nad)


def _interface_index(vm: Mapping[str, Any], name: str) -> int | None:
    for index, item in enumerate(_raw_list(vm, INTERFACES_PATH)):
        if isinstance(item, Mapping) and item.get("name") == name:
            return index
    return None


def interface_unplug_problem(vm: VmView, name: str) -> str | None:
    """Why the named interface cannot be hot-unplugged (VM eligibility aside), or None if it can.

    Unknown, already absent, the last interface, not bridge/virtio, not multus (every reason at
    once). Its NAD is not asked: a NIC whose network was deleted or changed stays removable.
    """
    return unplug_problem(vm, name)


def parse_remove_nic(body: Mapping[str, Any]) -> str | ActionRefusal:
    """The ``interfaceName`` of a removeNic body (unknown fields are ignored), or a 422."""
    return _interface_name(body)


def plan_remove_nic(name: str, state: VmState) -> NicPlan | ActionRefusal:
    """The plan that sets interface ``name`` to ``state: absent``, or why it is refused.

    Checks, in order: the VM's eligibility (409), the interface exists (404, naming those the VM
    has), it is not the VM's last interface and it is hot-unpluggable (409). A stopped VM skips
    eligibility and hot-unpluggability: see :func:`_cold_remove_ops`.
    """
    vm, vm_view = state.vm, state.view
    refusal = None if state.stopped else _eligibility_refusal(vm_view, state.vmi)
    if refusal is not None:
        return refusal
    index = _interface_index(vm, name)
    if index is None:
        return _unknown_interface(vm_view, name)
    ops = _cold_remove_ops(vm, vm_view, name, index) if state.stopped else _unplug_ops(vm, vm_view, name, index)
    if isinstance(ops, ActionRefusal):
        return ops
    found = vm_view.interface(name)
    return NicPlan(ops, name, found.mac if found is not None else "", _network_of(vm_view, name))


def _unplug_ops(vm: Mapping[str, Any], vm_view: VmView, name: str,
                index: int) -> tuple[JsonPatchOp, ...] | ActionRefusal:
    problem = interface_unplug_problem(vm_view, name)
    if problem is not None:
        return ActionRefusal(409, NOT_HOTUNPLUGGABLE, problem)
    state_path = pointer((*INTERFACES_PATH, index, "state"))
    has_state = "state" in _raw_list(vm, INTERFACES_PATH)[index]
    return (resource_version_test(vm_view.resource_version),
            {"op": "replace" if has_state else "add", "path": state_path, "value": "absent"})


def _unknown_interface(vm: VmView, name: str) -> ActionRefusal:
    names = ", ".join(interface.name for interface in vm.interfaces) or "none"
    return ActionRefusal(404, NOT_FOUND, f"{_vm_label(vm)} has no interface named {name!r}; its interfaces: {names}")


def _network_index(vm: Mapping[str, Any], name: str) -> int | None:
    for index, item in enumerate(_raw_list(vm, NETWORKS_PATH)):
        if isinstance(item, Mapping) and item.get("name") == name:
            return index
    return None


def _cold_remove_ops(
    vm: Mapping[str, Any], vm_view: VmView, name: str, index: int,
) -> tuple[JsonPatchOp, ...] | ActionRefusal:
    """Delete the interface and its network from a stopped VM's spec (its next start boots without them).

    Any interface may go but the last one: a VM left without interfaces gets KubeVirt's default pod
    interface at its next start, which is not what removing a NIC means.
    """
    if len(_raw_list(vm, INTERFACES_PATH)) == 1:
        return ActionRefusal(409, NOT_HOTUNPLUGGABLE,
                             f"{name!r} is the only interface of {_vm_label(vm_view)}; a VM keeps at least one")
    ops = [resource_version_test(vm_view.resource_version),
           {"op": "remove", "path": pointer((*INTERFACES_PATH, index))}]
    network_index = _network_index(vm, name)
    if network_index is not None:
        ops.append({"op": "remove", "path": pointer((*NETWORKS_PATH, network_index))})
    return tuple(ops)


def find_hotunpluggable(state: VmState) -> list[str]:
    """Names of the interfaces the UI may offer to unplug: [] when the VM is not eligible."""
    if eligibility_problems(state.view, state.vmi):
        return []
    return list(hotunpluggable_interfaces(state.view))


@dataclass(frozen=True, slots=True)
class HotplugCheck:
    """Whether the VM may have NICs hot-plugged now, every reason why not, and its hot-plug port room.

    ``ports_left`` is KubeVirt's hot-plug port budget for the VM's active interfaces (the figure the
    validating webhook warns against), so a caller can tell before it hot-plugs past it.
    """

    eligible: bool
    reasons: tuple[Finding, ...]
    ports_left: int


def hotplug_check(state: VmState) -> HotplugCheck:
    """The eligibility verdict of SPEC "VM eligibility" for one VM, as data."""
    vm_view = state.view
    findings = eligibility_findings(vm_view, state.vmi)
    ports_left = hotplug_port_budget(active_interface_count(vm_view), vm_view.guest_memory_bytes)
    return HotplugCheck(eligible=not findings, reasons=findings, ports_left=ports_left)
