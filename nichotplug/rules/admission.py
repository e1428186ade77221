"""The whole logic of both admission webhooks for VirtualMachine CREATE and UPDATE.

The webhook adapter decodes the AdmissionReview into an ``AdmissionInput``, calls ``mutate_vm`` or
``validate_vm`` with the cluster view, and encodes the returned ``Decision``. Neither function
raises, whatever the input; other operations (DELETE, CONNECT) are allowed untouched.

When does a VM *run*? When the cluster has a VMI of that namespace/name that has not finished
(phase Succeeded or Failed), or, with no VMI, when the old object's spec asks it to run (run
strategy Always, RerunOnFailure or Once, or ``running: true``). Otherwise the edit is *cold*: only
the MAC rules apply, and mutation treats it like a CREATE.

Mutation (SPEC "Mutating webhook"): on CREATE and cold UPDATE, every interface without a
``macAddress`` gets the MAC the observed-MAC annotation records for it, else a generated one (also
when another VM uses the recorded MAC on the same network, as with a copied annotation: validation
would refuse it; a warning says so); on an
UPDATE of a running VM only interfaces new in this update get one (a MAC written into the template
of a running VM whose VMI lacks it would make KubeVirt demand a restart). On any UPDATE, an
interface whose MAC the request drops (``kubectl apply`` of a manifest written without MACs) gets
its previous MAC back, so the guest keeps its address. Generated MACs are drawn
again while any VM uses them or another interface of the same request does. Patches are JSON Patch
``add`` ops as data. An object the views cannot read is left untouched: the API server's schema
check, which runs after mutation, rejects it with a precise message, and validation denies it if
it gets that far.

Validation (SPEC "Validating webhook"), first failure wins:

1. the object must be readable (403);
2. every spec MAC must be a valid unicast MAC (403);
3. two interfaces of the VM may not share a MAC (409);
4. a MAC may be used once per cluster network: every other VM's spec MACs and annotation MACs
   count (409, naming both VMs, the interfaces, the MAC and the scope);
5. an UPDATE of a running VM that adds interfaces or sets ``state: absent`` must follow the hot-plug
   rules: the VM is eligible, each added interface is virtio + bridge on a hot-pluggable NAD, each
   unplugged interface is hot-unpluggable (judged by the interface alone: its NAD may be gone). One
   403 lists every problem of the VM and of every added or unplugged interface, each naming the VM,
   the interface and what to do, so a user fixes them all in one go.

Rules 2 to 4 judge only the interfaces this request adds or whose MAC (rule 2: MAC as written) or
network it changes: an unusable MAC or a collision that predates the webhook must not block unrelated
writes of the VM (our own controller's annotation updates, a user's label edit, a start or stop, the
finalizer removal on delete), and the validating webhook's match conditions do not even send a write
that changes none of them (``webhook/registration.py``; ARCHITECTURE.md lists what each rule reads). For the
same reason, and because it is the most frequent write, an UPDATE that leaves ``spec`` exactly as
it was is judged on its metadata only (readable, annotation parses), without building the views.
Objects being deleted are allowed as they are. Warnings: more hot-plugged interfaces than KubeVirt v1.6's
hot-plug port budget, an unplugged interface whose network is gone or no longer a bridge, and an
observed-MAC annotation that does not parse.

Speed: both webhooks answer every VM write of the cluster, so each first tries a fast path over
``rules.facts`` (plain tuples of just what the MAC rules read, no views): validation when no hot-plug
rule applies, mutation when every interface already has a MAC. Whatever the facts cannot vouch for
goes the general path (``validate_vm_fully`` / ``mutate_vm_fully``, full views), which decides as
before; ``tests/rules/test_fast_path.py`` checks on generated VMs that both paths decide alike.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from nichotplug.rules.cluster import ClusterState, MacOwner, other_holder, owner_scope
from nichotplug.rules.decision import Decision
from nichotplug.rules.diff import InterfaceDiff, diff_interfaces
from nichotplug.rules.eligibility import (
    HOTPLUG_MODELS,
    Finding,
    active_interface_count,
    edit_eligibility_findings,
    unplug_findings,
    unplug_network_note,
)
from nichotplug.rules.facts import VmFacts, read_vm_facts
from nichotplug.rules.jsonpatch import JsonPatchOp
from nichotplug.rules.mac import (
    InvalidMac,
    MacGenerationError,
    check_unicast_mac,
    generate_mac,
    normalize_mac,
    plain_mac_numbers,
)
from nichotplug.rules.nad import nad_verdict
from nichotplug.rules.observed_macs import observed_macs_error
from nichotplug.rules.views import InterfaceView, InvalidObject, VmView, read_vm_metadata
from nichotplug.rules.vm_object import INTERFACES_POINTER, OBSERVED_MACS_ANNOTATION

__all__ = [
    "AdmissionInput",
    "hotplug_port_budget",
    "mutate_vm",
    "new_vm_plainly_allowed",
    "validate_vm",
]

_JUDGED_OPERATIONS = frozenset({"CREATE", "UPDATE"})
_TWO_GIB = 2 * 2**30


class AdmissionInput(NamedTuple):
    """The parts of an AdmissionReview request the rules read (immutable).

    ``obj`` / ``old_obj`` are the request's ``object`` / ``oldObject`` as decoded from JSON (None
    when absent); they may be anything, the rules check. A named tuple, not a frozen dataclass:
    one is built per webhook request, and a tuple is built several times faster.
    """

    operation: str
    namespace: str
    name: str
    obj: object
    old_obj: object = None
    username: str = ""
    dry_run: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _read_old(req: AdmissionInput) -> VmView | None:
    if req.operation != "UPDATE":
        return None
    try:
        return VmView.from_dict(req.old_obj, namespace=req.namespace)
    except InvalidObject:
        return None  # stored objects passed the schema; if one cannot be read, judge the new one alone


def _vm_runs(vm: VmView, old: VmView | None, cluster: ClusterState) -> bool:
    """Whether an UPDATE meets a running guest, so its interface edits are hot-plug edits.

    Yes with a VMI that has not finished; with none, when the spec asked to run before the edit
    (its VMI is on the way). A finished VMI (the guest shut itself down) is a stopped VM: the next
    start boots a new VMI from the spec, so edits are cold edits, as SPEC has them for a stopped VM.
    """
    vmi = cluster.get_vmi(vm.namespace, vm.name)
    if vmi is not None:
        return not vmi.finished
    return old is not None and old.running


# -- mutation -------------------------------------------------------------------------------------


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


_NO_CHANGE = Decision.allow(reason="no-change")


def _every_mac_written(req: AdmissionInput) -> bool:
    """Mutation's fast path: a readable VM (and old VM) whose interfaces all have a MAC gets no patch.

    ``rules.facts`` vouches for readability as for validation; when it cannot, the general path decides.
    """
    vm = read_vm_facts(req.obj, namespace=req.namespace)
    if vm is None or not all(iface.mac for iface in vm.interfaces):
        return False
    return req.operation == "CREATE" or read_vm_facts(req.old_obj, namespace=req.namespace) is not None


def mutate_vm(
    req: AdmissionInput, cluster: ClusterState, random_bytes: Callable[[int], bytes] = secrets.token_bytes
) -> Decision:
    """Which MACs to add to the VM in ``req`` (see the module docstring)."""
    if req.operation not in _JUDGED_OPERATIONS:
        return Decision.allow(reason="not-judged")
    if _every_mac_written(req):
        return _NO_CHANGE
    return mutate_vm_fully(req, cluster, random_bytes)


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
    old = _read_old(req)
    if req.operation == "UPDATE" and old is None:
        return Decision.allow(reason="unreadable-object")  # without the old object, "new" is unknowable
    targets = _interfaces_needing_mac(vm, old, req.operation == "UPDATE" and _vm_runs(vm, old, cluster))
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
    return _colliding_owner(vm, mac, owner_scope(vm.network_nads().get(interface), cluster), cluster)


# -- validation: MAC rules ------------------------------------------------------------------------


def _scope_text(scope: str) -> str:
    return f"on cluster network {scope}" if scope else "on the pod network or unlabelled networks"


class MacClaim(NamedTuple):
    """An interface's spec MAC (normalised) and the NAD it is on (None: pod or unknown network)."""

    interface: str
    mac: str
    nad: tuple[str, str] | None


class _NamedMac(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def mac(self) -> str: ...


class MacClaimant(Protocol):
    """What the MAC rules read of a VM: a full ``VmView`` or the fast path's ``VmFacts``."""

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def ref(self) -> str: ...

    @property
    def interfaces(self) -> Sequence[_NamedMac]: ...

    def network_nads(self) -> Mapping[str, tuple[str, str] | None]: ...


def _claims(vm: MacClaimant, *, strict: bool,
            kept: frozenset[tuple[str, str]] = frozenset()) -> list[MacClaim] | Decision:
    """The VM's spec MAC claims; with ``strict`` a MAC that is not valid unicast is a 403 denial,
    without it (the old object) such an interface is skipped. An interface whose MAC the request
    keeps as it was (``kept``: (name, MAC as written) of the old object) is read without ``strict``."""
    claims: list[MacClaim] = []
    nads: Mapping[str, tuple[str, str] | None] | None = None  # read only if some interface has a MAC
    for iface in vm.interfaces:
        if not iface.mac:
            continue
        judged = strict and (iface.name, iface.mac) not in kept
        try:
            mac = check_unicast_mac(iface.mac) if judged else normalize_mac(iface.mac)
        except InvalidMac as error:
            if judged:
                return Decision.deny(403, f"VM {vm.ref} interface {iface.name}: {error}", "invalid-mac")
            continue
        if nads is None:
            nads = vm.network_nads()
        claims.append(MacClaim(iface.name, mac, nads.get(iface.name)))
    return claims


def _check_duplicates(vm: MacClaimant, claims: list[MacClaim], changed: set[str]) -> Decision | None:
    first_user: dict[str, str] = {}
    for claim in claims:
        other = first_user.setdefault(claim.mac, claim.interface)
        if other != claim.interface and (claim.interface in changed or other in changed):
            return Decision.deny(409, f"VM {vm.ref}: interfaces {other} and {claim.interface} both use mac address "
                                      f"{claim.mac}; give each interface its own MAC", "duplicate-mac")
    return None


def _colliding_owner(vm: MacClaimant, mac: str, scope: str, cluster: ClusterState) -> MacOwner | None:
    return other_holder(vm.namespace, vm.name, mac, scope, cluster)


def _check_collisions(vm: MacClaimant, claims: list[MacClaim], changed: set[str],
                      cluster: ClusterState) -> Decision | None:
    for claim in claims:
        if claim.interface not in changed:
            continue
        owners = cluster.owners_of_mac(claim.mac)
        if not owners:
            continue  # the common case: nobody else uses it, whatever the scope
        scope = owner_scope(claim.nad, cluster)
        owner = _colliding_owner(vm, claim.mac, scope, cluster)
        if owner is not None:
            return Decision.deny(
                409,
                f"VM {vm.ref}: mac address {claim.mac} of interface {claim.interface} is already used by "
                f"{owner.namespace}/{owner.vm} interface {owner.interface} {_scope_text(scope)}",
                "mac-collision",
            )
    return None


def _check_macs(vm: MacClaimant, old: MacClaimant | None, cluster: ClusterState) -> Decision | None:
    """Rules 2-4: MAC formats, duplicates within the VM, collisions with other VMs in scope.

    Formats are judged for the MACs this request writes (a new interface or a new MAC), duplicates
    and collisions for the claims it makes (new interface, new MAC or new network); on CREATE that
    is every MAC and every claim.
    """
    kept = frozenset((iface.name, iface.mac) for iface in old.interfaces if iface.mac) if old is not None \
        else frozenset()
    claims = _claims(vm, strict=True, kept=kept)
    if isinstance(claims, Decision):
        return claims
    if not claims:
        return None
    previous = _claims(old, strict=False) if old is not None else []
    assert not isinstance(previous, Decision)  # only strict reading denies
    changed = {claim.interface for claim in claims} if not previous else \
        {claim.interface for claim in set(claims).difference(previous)}
    if not changed:
        return None
    return _check_duplicates(vm, claims, changed) or _check_collisions(vm, claims, changed, cluster)


# -- validation: hot-plug rules -------------------------------------------------------------------


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


# -- validation -----------------------------------------------------------------------------------


def _spec_unchanged(req: AdmissionInput) -> bool:
    obj, old = req.obj, req.old_obj
    return (req.operation == "UPDATE" and type(obj) is dict and type(old) is dict
            and obj.get("spec") == old.get("spec"))


def _validate_metadata_write(req: AdmissionInput) -> Decision:
    """A write that leaves the spec as it was (labels, annotations, finalizers): nothing to check but
    that the object reads and its observed-MAC annotation parses."""
    try:
        meta = read_vm_metadata(req.obj, namespace=req.namespace)
    except InvalidObject as error:
        return Decision.deny(403, f"VirtualMachine {req.ref} cannot be read: {error}", "invalid-object")
    if meta.deleting:
        return Decision.allow(reason="deleting")
    if meta.observed_macs_error:
        return Decision.allow(warnings=[_annotation_warning(meta.ref, meta.observed_macs_error)])
    return Decision.allow()


def _annotation_warning(ref: str, error: str) -> str:
    return f"VM {ref}: {error}; the MACs it records are not protected from reuse"


_ALLOWED = Decision.allow()  # frozen: the one answer most requests get, built once


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


def _validate_fast(req: AdmissionInput, cluster: ClusterState) -> Decision | None:
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
    denial = _check_macs(vm, old, cluster)
    if denial is not None:
        return denial
    if vm.observed_macs_error:
        return Decision.allow(warnings=[_annotation_warning(vm.ref, vm.observed_macs_error)])
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


def validate_vm(req: AdmissionInput, cluster: ClusterState) -> Decision:
    """Allow or deny the VM write in ``req`` (see the module docstring for the rules and their order)."""
    if req.operation not in _JUDGED_OPERATIONS:
        return Decision.allow(reason="not-judged")
    if _spec_unchanged(req):
        return _validate_metadata_write(req)
    return _validate_fast(req, cluster) or validate_vm_fully(req, cluster)


def validate_vm_fully(req: AdmissionInput, cluster: ClusterState) -> Decision:
    """``validate_vm`` of a judged write through the full views (the general path; tests compare)."""
    try:
        vm = VmView.from_dict(req.obj, namespace=req.namespace)
    except InvalidObject as error:
        return Decision.deny(403, f"VirtualMachine {req.ref} cannot be read: {error}", "invalid-object")
    if vm.deleting:
        return Decision.allow(reason="deleting")
    old = _read_old(req)
    denial = _check_macs(vm, old, cluster)
    if denial is not None:
        return denial
    warnings: list[str] = []
    reason = "allowed"
    if old is not None and _vm_runs(vm, old, cluster):
        diff = diff_interfaces(old, vm)
        if diff.is_hotplug:
            denial = _check_hotplug(vm, old, diff, cluster)
            if denial is not None:
                return denial
            reason = "hotplug-allowed"
            warnings += _unplug_warnings(old, diff, cluster)
            budget_warning = _port_budget_warning(vm, old, diff)
            if budget_warning:
                warnings.append(budget_warning)
    if vm.observed_macs_error:
        warnings.append(_annotation_warning(vm.ref, vm.observed_macs_error))
    return Decision.allow(reason=reason, warnings=warnings)
