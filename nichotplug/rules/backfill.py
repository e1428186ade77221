"""Controller planning (pure): the observed-MAC annotation and the MAC backfill of a stopped VM.

KubeVirt gives an interface without ``macAddress`` a new random MAC on every start, so a VM created
before nichotplug cannot be hot-plugged until its MACs are pinned in its spec. The controller does
that in two steps, both planned here as JSON Patch ops (data, never text):

1. While a VMI runs, :func:`annotation_patch` records the MACs it reports (``status.interfaces``) in
   the VM's ``harvesterhci.io/mac-address`` annotation, a compact JSON object name -> MAC. Names the
   VMI reports are written with the MAC it reports; names recorded earlier that the VMI does not
   report (a guest that has not brought every NIC up yet) are kept while the VM spec still has that
   interface, so a partial status never erases what was learnt.
2. Once the VM is halted, :func:`plan_backfill` writes the recorded MAC into every interface that
   lacks one — unless another VM holds that MAC on the interface's cluster network (in its spec or
   its annotation: a clash that predates nichotplug, or a copied annotation). Such an interface is
   *withheld*: it stays empty, so the mutating webhook gives it a fresh MAC at the next start, and
   the other interfaces are still written. A MAC already in the spec is never overwritten; a
   different recorded MAC is reported as a mismatch, a name with no recorded MAC as "not observed".
   An annotation that is partly bad is read as ``rules.observed_macs`` reads it everywhere: its valid
   entries are backfilled and the rest is reported as an error — all data for the caller to log and
   turn into Events.

Every write starts with a ``test`` of ``/metadata/resourceVersion`` (so a concurrent edit makes the
write fail instead of being overwritten), and backfill ops also ``test`` the interface name at the
index they write, so an index can never land on the wrong interface.

The functions take a VM as a plain Kubernetes dict or as any view with the attributes of
:class:`VmLike` (``rules.views.VmView`` has them), and a VMI as a dict or a view with
``interface_macs``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nichotplug.rules.jsonpatch import JsonPatchOp, resource_version_test
from nichotplug.rules.mac import InvalidMac, normalize_mac
from nichotplug.rules.macindex import MacOwner
from nichotplug.rules.observed_macs import encode_observed_macs, parse_observed_macs
from nichotplug.rules.vm_object import INTERFACES_POINTER, OBSERVED_MACS_ANNOTATION, OBSERVED_MACS_POINTER

__all__ = [
    "MAC_ANNOTATION",
    "BackfillFacts",
    "BackfillPlan",
    "MacHolder",
    "MacMismatch",
    "WithheldMac",
    "annotation_patch",
    "backfill_facts",
    "is_halted",
    "observed_macs",
    "plan_backfill",
]

# The same constant under the name benchmarks/backfill.py imports (kept out of the benchmarks while
# they are being reworked; new code uses vm_object.OBSERVED_MACS_ANNOTATION).
MAC_ANNOTATION = OBSERVED_MACS_ANNOTATION


class InterfaceLike(Protocol):
    """What planning needs of an interface view."""

    @property
    def name(self) -> str: ...
    @property
    def mac(self) -> str | None: ...


class VmLike(Protocol):
    """What planning needs of a VM view (``rules.views.VmView`` provides these)."""

    @property
    def resource_version(self) -> str: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...
    @property
    def run_strategy(self) -> str: ...   # spec.runStrategy, or "Halted" derived from running: false
    @property
    def interfaces(self) -> Sequence[InterfaceLike]: ...


@dataclass(frozen=True, slots=True)
class BackfillFacts:
    """The few facts about a VM that MAC planning reads, in spec order."""

    resource_version: str
    annotation: str | None          # raw observed-MAC annotation text, None when absent
    # Whether metadata.annotations exists (decides the patch path); None = unknown, as for a cached
    # view that keeps only the annotations nichotplug reads.
    has_annotations: bool | None
    halted: bool
    interfaces: tuple[tuple[str, str | None], ...]  # (name, spec MAC or None), index = spec index


@dataclass(frozen=True, slots=True)
class MacMismatch:
    """A spec MAC that differs from the MAC the annotation recorded for the same interface."""

    interface: str
    spec_mac: str
    observed_mac: str


@dataclass(frozen=True, slots=True)
class WithheldMac:
    """A recorded MAC not written into the spec because another VM holds it on the same cluster network."""

    interface: str
    mac: str
    holder: MacOwner  # the other VM's interface that holds it


# (interface name, normalised MAC) -> the other VM's interface holding that MAC on the interface's
# cluster network (spec MAC or recorded MAC), or None when no other VM does.
MacHolder = Callable[[str, str], MacOwner | None]


def _nobody(_interface: str, _mac: str) -> MacOwner | None:
    return None


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """What backfilling one halted VM means: the ops to send and what to report."""

    ops: tuple[JsonPatchOp, ...]                 # empty: nothing to write
    backfilled: tuple[tuple[str, str], ...]      # (interface, MAC) the ops write
    kept_mismatches: tuple[MacMismatch, ...]     # spec MACs kept although the annotation differs
    not_observed: tuple[str, ...]                # interfaces lacking a MAC that the annotation lacks
    annotation_error: str | None                 # what of the annotation is not valid (those entries are unused)
    withheld: tuple[WithheldMac, ...] = ()       # recorded MACs another VM holds: left out of the ops


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _facts_from_dict(vm: Mapping[str, Any]) -> BackfillFacts:
    metadata = _mapping(vm.get("metadata"))
    annotations = _mapping(metadata.get("annotations"))
    spec = _mapping(vm.get("spec"))
    devices = _mapping(_mapping(_mapping(_mapping(spec.get("template")).get("spec")).get("domain")).get("devices"))
    raw_interfaces = devices.get("interfaces")
    interfaces: list[tuple[str, str | None]] = []
    for raw in raw_interfaces if isinstance(raw_interfaces, list) else ():
        entry = _mapping(raw)
        name, mac = entry.get("name"), entry.get("macAddress")
        interfaces.append((name if isinstance(name, str) else "", mac if isinstance(mac, str) and mac else None))
    annotation = annotations.get(OBSERVED_MACS_ANNOTATION)
    return BackfillFacts(
        resource_version=str(metadata.get("resourceVersion") or ""),
        annotation=annotation if isinstance(annotation, str) else None,
        has_annotations=bool(annotations),
        halted=spec.get("runStrategy") == "Halted" or spec.get("running") is False,
        interfaces=tuple(interfaces),
    )


def _facts_from_view(vm: VmLike) -> BackfillFacts:
    annotations = vm.annotations or {}
    annotation = annotations.get(OBSERVED_MACS_ANNOTATION)
    return BackfillFacts(
        resource_version=vm.resource_version or "",
        annotation=annotation if isinstance(annotation, str) else None,
        has_annotations=True if annotation is not None else None,
        halted=vm.run_strategy == "Halted",
        interfaces=tuple((iface.name or "", iface.mac or None) for iface in vm.interfaces),
    )


def backfill_facts(vm: Mapping[str, Any] | VmLike | BackfillFacts) -> BackfillFacts:
    """The planning facts of a VM dict or view."""
    if isinstance(vm, BackfillFacts):
        return vm
    if isinstance(vm, Mapping):
        return _facts_from_dict(vm)
    return _facts_from_view(vm)


def is_halted(vm: Mapping[str, Any] | VmLike | BackfillFacts) -> bool:
    """Whether the VM is asked to stay stopped: ``runStrategy: Halted`` or ``running: false``."""
    return backfill_facts(vm).halted


def _same_mac(left: str, right: str) -> bool:
    try:
        return normalize_mac(left) == normalize_mac(right)
    except InvalidMac:
        return left == right


def _pairs_from_vmi(vmi: Any) -> Iterable[tuple[Any, Any]]:
    if isinstance(vmi, Mapping):
        interfaces = _mapping(vmi.get("status")).get("interfaces")
        for raw in interfaces if isinstance(interfaces, list) else ():
            entry = _mapping(raw)
            yield entry.get("name"), entry.get("mac")
        return
    macs = getattr(vmi, "interface_macs", None)
    if isinstance(macs, Mapping):
        yield from macs.items()
    elif macs is not None:
        yield from macs


def observed_macs(vmi: Any) -> dict[str, str]:
    """name -> normalised MAC for every VMI interface reporting both; bad or empty MACs are skipped."""
    macs: dict[str, str] = {}
    for name, mac in _pairs_from_vmi(vmi):
        if not isinstance(name, str) or not name or not isinstance(mac, str) or not mac:
            continue
        try:
            macs[name] = normalize_mac(mac)
        except InvalidMac:
            continue  # a MAC KubeVirt would never report; recording it would only spread garbage
    return macs


def annotation_patch(
    vm: Mapping[str, Any] | VmLike | BackfillFacts, observed: Mapping[str, str],
) -> list[JsonPatchOp] | None:
    """The ops that make the VM's annotation record ``observed``, or None when nothing would change.

    Recorded names absent from ``observed`` are kept while the VM spec still has that interface;
    entries that are not valid MACs are dropped. ``observed`` empty never writes (nothing learnt).
    When it is unknown whether the VM has any annotations (a slim view without ours), the op adds
    our key under an ``/metadata/annotations`` assumed to exist: if it does not, the API server
    refuses the patch (422) and nothing is lost; plan from the full object then.
    """
    facts = backfill_facts(vm)
    if not observed or not facts.resource_version:
        return None
    current, error = parse_observed_macs(facts.annotation)
    spec_names = {name for name, _ in facts.interfaces}
    wanted = {name: mac for name, mac in current.items() if name in spec_names}
    for name, mac in observed.items():
        try:
            wanted[name] = normalize_mac(mac)
        except InvalidMac:
            continue
    if not wanted or (not error and wanted == current):
        return None
    text = encode_observed_macs(wanted)
    if facts.has_annotations is not False:
        write: JsonPatchOp = {"op": "add", "path": OBSERVED_MACS_POINTER, "value": text}
    else:
        write = {"op": "add", "path": "/metadata/annotations", "value": {OBSERVED_MACS_ANNOTATION: text}}
    return [resource_version_test(facts.resource_version), write]


def _empty_plan() -> BackfillPlan:
    return BackfillPlan(ops=(), backfilled=(), kept_mismatches=(), not_observed=(), annotation_error=None)


def plan_backfill(vm: Mapping[str, Any] | VmLike | BackfillFacts, holder: MacHolder = _nobody) -> BackfillPlan:
    """The backfill of a halted VM; an empty plan for a VM that is not halted.

    Only interfaces without a spec MAC are written, each with its recorded MAC unless ``holder``
    names another VM holding that MAC on the interface's cluster network (then it is withheld). An
    annotation entry that is not a valid MAC is unused and named in ``annotation_error``. The
    ops are ``test`` resourceVersion, then per written interface a ``test`` of its name and an
    ``add`` of its ``macAddress``.
    """
    facts = backfill_facts(vm)
    if not facts.halted:
        return _empty_plan()
    recorded, annotation_error = parse_observed_macs(facts.annotation)
    ops: list[JsonPatchOp] = []
    backfilled: list[tuple[str, str]] = []
    mismatches: list[MacMismatch] = []
    not_observed: list[str] = []
    withheld: list[WithheldMac] = []
    for index, (name, spec_mac) in enumerate(facts.interfaces):
        if not name:
            continue  # KubeVirt rejects nameless interfaces; nothing can be recorded for one
        observed = recorded.get(name)
        if spec_mac is not None:
            if observed is not None and not _same_mac(spec_mac, observed):
                mismatches.append(MacMismatch(name, spec_mac, observed))
            continue
        if observed is None:
            not_observed.append(name)
            continue
        other = holder(name, observed)
        if other is not None:
            withheld.append(WithheldMac(name, observed, other))
            continue
        pointer = f"{INTERFACES_POINTER}/{index}"
        ops.append({"op": "test", "path": f"{pointer}/name", "value": name})
        ops.append({"op": "add", "path": f"{pointer}/macAddress", "value": observed})
        backfilled.append((name, observed))
    if ops and facts.resource_version:
        ops.insert(0, resource_version_test(facts.resource_version))
    else:
        ops, backfilled = [], []  # no resourceVersion to guard the write with: write nothing
    return BackfillPlan(ops=tuple(ops), backfilled=tuple(backfilled), kept_mismatches=tuple(mismatches),
                        not_observed=tuple(not_observed), annotation_error=annotation_error or None,
                        withheld=tuple(withheld))
