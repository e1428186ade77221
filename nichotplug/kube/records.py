"""Compact records of cached VMs and VMIs, and the MAC-owner index over them.

``kube.cache.ClusterView`` keeps 100,000 VMs with their VMIs in a process well under the 300 MB
the cluster view is held to (``benchmarks/cluster_view.py`` measures it; the chart's memory limit
leaves the rest to the webhook and controller). So it does not keep views: each object is read into
its rules view, then stored as a small record holding what is unique to the object (key, uid,
resourceVersion, MACs as 6 bytes each) plus a shared "shape" holding everything else, equal across
most VMs. ``MacOwners`` maps a 48-bit MAC number to the owning records and builds ``MacOwner``s when
asked (``rules.macindex`` semantics). ``VmRecord.view()`` / ``VmiRecord.view()`` rebuild views equal
to the ones stored.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, TypeAlias, TypeVar

from nichotplug.rules.mac import InvalidMac, mac_number, normalize_mac
from nichotplug.rules.macindex import MacOwner, claimed_mac
from nichotplug.rules.views import InterfaceView, NetworkView, VmiView, VmView
from nichotplug.rules.vm_object import OBSERVED_MACS_ANNOTATION

# (namespace, name): how every cached object is found; a VM and its VMI share one tuple.
Key: TypeAlias = tuple[str, str]
_Value = TypeVar("_Value")


class SharedValues:
    """Equal immutable values kept once: most VMs share their shape (labels, interfaces, networks...).

    When the table has doubled since it was last rebuilt, it is rebuilt from the values still in
    use (``live()``), so VMs that come and go with unique values do not leak; the rebuild costs one
    pass over the cache, amortised over as many insertions.
    """

    def __init__(self, live: Callable[[], Iterable[tuple[Hashable, Any]]]) -> None:
        self._table: dict[Hashable, Any] = {}
        self._live = live
        self._rebuild_at = 1024

    def __len__(self) -> int:
        return len(self._table)

    def share(self, key: Hashable, value: _Value) -> _Value:
        """The stored value equal to ``value`` (found by ``key``), storing ``value`` if new."""
        existing: _Value | None = self._table.get(key)
        if existing is not None:
            return existing
        if len(self._table) >= self._rebuild_at:
            self._table = dict(self._live())
            self._rebuild_at = max(1024, 2 * len(self._table))
        self._table[key] = value
        return value


def map_key(mapping: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """A hashable key for a string map, equal for equal maps."""
    return tuple(sorted(mapping.items()))


# -- compact storage ------------------------------------------------------------------------------
#
# A VmView of a 4-NIC VM is about 2 KiB of Python objects (17 fields, 4 InterfaceViews, their MAC
# strings, an annotation dict and string, an observed-MAC dict), and a MacOwner per MAC in the index
# doubled that: 222 MiB at 100,000 VMs (benchmarks/cluster_view.py). So the cache keeps, per VM, a
# record of what is unique to it (key, uid, resourceVersion, MACs) and a reference to a shared
# "shape" holding the rest; MACs are 6 bytes each in one bytes object (shared by a VM's spec, its
# annotation and its VMI when equal); the MAC index maps a MAC (a 48-bit int) to the owning record
# and makes the MacOwner when asked. Views are rebuilt from records on demand (``get_vm`` about
# 20 us, ``get_vmi`` 5 us, listeners of deletes), on paths that are not per-request hot. Records take
# 76 MiB for 100,000 VMs, 86 MiB with their VMIs; the MAC index (dict + int keys) is 32 MiB of it.

MAC_SIZE = 6
_EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def is_canonical_mac(text: str) -> bool:
    """Whether ``text`` is a MAC in the normalised spelling (the only one stored as 6 bytes)."""
    try:
        return normalize_mac(text) == text
    except InvalidMac:
        return False


def pack_macs(macs: Iterable[str]) -> bytes:
    """Canonical MACs as 6 bytes each, in order."""
    return b"".join([bytes.fromhex(mac.replace(":", "")) for mac in macs])


def unpack_macs(packed: bytes) -> list[str]:
    return [packed[start:start + MAC_SIZE].hex(":") for start in range(0, len(packed), MAC_SIZE)]


def _uid_text(number: int) -> str:
    """The canonical (lowercase, hyphenated) spelling of a UUID's 128-bit number."""
    digits = f"{number:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def compact_uid(uid: str) -> int | str:
    """A canonical UUID (what the API server assigns) as its number: 44 bytes instead of 85.

    Anything that does not spell back the same (other forms, not a UUID at all) is kept as written.
    """
    try:
        number = int(uid.replace("-", ""), 16)
    except ValueError:
        return uid
    return number if 0 <= number < 1 << 128 and _uid_text(number) == uid else uid


def annotation_text(names: Iterable[str], macs: Iterable[str]) -> str:
    """The observed-MAC annotation in compact JSON, keys in the given order.

    What ``rules.backfill.encode_observed_macs`` (our controller) and Harvester's Go ``json.Marshal``
    write for names that need no escaping. Records keep an annotation packed only when this spells
    it back exactly, so a rebuilt view always holds the text the API server has.
    """
    return "{" + ",".join([f'"{name}":"{mac}"' for name, mac in zip(names, macs, strict=True)]) + "}"


def compact_resource_version(resource_version: str) -> int | str:
    """A decimal resourceVersion (what etcd-backed servers send) as an int; anything else as written."""
    if (len(resource_version) <= 40 and resource_version.isascii() and resource_version.isdigit()
            and str(int(resource_version)) == resource_version):  # the length bound keeps int() cheap and legal
        return int(resource_version)
    return resource_version


@dataclass(frozen=True, slots=True)
class VmShape:
    """Everything a VmView holds but its identity and MACs: equal across most VMs, stored once.

    ``interfaces`` are InterfaceViews with ``mac=""`` (the record has the MACs); ``nads`` is each
    interface's NAD as ``vm_mac_claims`` resolves it; ``observed_names`` are the keys of the
    observed-MAC map when the record stores its MACs packed.
    """

    namespace: str
    deleting: bool
    # the spec: interfaces, their networks and NADs, the names the observed-MAC map has
    interfaces: tuple[InterfaceView, ...]
    networks: tuple[NetworkView, ...]
    nads: tuple[tuple[str, str] | None, ...]
    observed_names: tuple[str, ...]
    labels: Mapping[str, str]
    run_strategy: str
    running: bool
    printable_status: str
    node_selector: Mapping[str, str]
    has_host_devices: bool
    guest_memory_bytes: int | None
    key: Hashable = dataclasses.field(compare=False)  # what the shared-values table finds it by


class ObservedAsWritten(NamedTuple):
    """The annotations and observed MACs of a VM whose annotation is not in the canonical spelling."""

    annotations: Mapping[str, str]
    macs: Mapping[str, str]
    error: str


class VmRecord:
    """One cached VM: what is unique to it, and its shared shape.

    ``spec_macs`` is 6 bytes per interface when every spec MAC is written canonically (the usual
    case: the mutating webhook writes them so), else the spec texts ("" = none). ``observed`` is
    None (no annotation), packed MACs under ``shape.observed_names`` (the annotation is exactly what
    ``encode_observed_macs`` writes, so it is rebuilt from them), or the annotation as written.
    """

    __slots__ = ("key", "observed", "resource_version", "shape", "spec_macs", "uid")

    def __init__(self, key: Key, uid: int | str, resource_version: int | str, shape: VmShape,
                 spec_macs: bytes | tuple[str, ...], observed: bytes | ObservedAsWritten | None) -> None:
        self.key = key
        self.uid = uid
        self.resource_version = resource_version
        self.shape = shape
        self.spec_macs = spec_macs
        self.observed = observed

    def same_as(self, other: VmRecord) -> bool:
        return (self.key == other.key and self.uid == other.uid and self.resource_version == other.resource_version
                and (self.shape is other.shape or self.shape == other.shape)
                and self.spec_macs == other.spec_macs and self.observed == other.observed)

    def observed_parts(self) -> tuple[Mapping[str, str], Mapping[str, str], str]:
        """(annotations, observed MACs, observed-MAC error) as the VmView had them."""
        observed = self.observed
        if observed is None:
            return _EMPTY_MAP, _EMPTY_MAP, ""
        if isinstance(observed, ObservedAsWritten):
            return observed.annotations, observed.macs, observed.error
        names, texts = self.shape.observed_names, unpack_macs(observed)
        return ({OBSERVED_MACS_ANNOTATION: annotation_text(names, texts)},
                dict(zip(names, texts, strict=True)), "")

    def spec_mac_texts(self) -> list[str]:
        spec = self.spec_macs
        return unpack_macs(spec) if isinstance(spec, bytes) else list(spec)

    def claims(self) -> list[tuple[int, int]]:
        """(MAC number, interface index) of every MAC the VM uses: ``rules.vm_mac_claims`` semantics."""
        spec = self.spec_macs
        if isinstance(spec, bytes):  # every interface has a valid spec MAC: the annotation plays no part
            return [(int.from_bytes(spec[start:start + MAC_SIZE], "big"), start // MAC_SIZE)
                    for start in range(0, len(spec), MAC_SIZE)]
        observed = self.observed_parts()[1]
        claims: list[tuple[int, int]] = []
        for index, (template, text) in enumerate(zip(self.shape.interfaces, spec, strict=True)):
            mac = claimed_mac(text, observed, template.name)
            if mac:
                claims.append((mac_number(mac), index))
        return claims

    def interfaces_using(self, number: int) -> list[int]:
        """The indexes of the interfaces whose claimed MAC is ``number``."""
        spec = self.spec_macs
        if not isinstance(spec, bytes):
            return [index for claimed, index in self.claims() if claimed == number]
        needle = number.to_bytes(MAC_SIZE, "big")
        found: list[int] = []
        start = spec.find(needle)
        while start != -1:
            if start % MAC_SIZE == 0:  # a match across two MACs is no match
                found.append(start // MAC_SIZE)
            start = spec.find(needle, start + 1)
        return found

    def owner(self, interface_index: int) -> MacOwner:
        shape = self.shape
        return MacOwner(shape.namespace, self.key[1], shape.interfaces[interface_index].name,
                        shape.nads[interface_index])

    def view(self) -> VmView:
        """The VmView this record was made from (equal to it, field by field)."""
        shape = self.shape
        annotations, observed, error = self.observed_parts()
        uid = self.uid
        return VmView(
            namespace=shape.namespace, name=self.key[1],
            uid=_uid_text(uid) if isinstance(uid, int) else uid,
            resource_version=str(self.resource_version), labels=shape.labels, annotations=annotations,
            deleting=shape.deleting, running=shape.running, run_strategy=shape.run_strategy,
            printable_status=shape.printable_status,
            interfaces=tuple([InterfaceView(template.name, template.model, mac, template.binding, template.state)
                              for template, mac in zip(shape.interfaces, self.spec_mac_texts(), strict=True)]),
            networks=shape.networks, observed_macs=observed, observed_macs_error=error,
            node_selector=shape.node_selector, has_host_devices=shape.has_host_devices,
            guest_memory_bytes=shape.guest_memory_bytes)


@dataclass(frozen=True, slots=True)
class VmiShape:
    """Everything a VmiView holds but its name and MACs; a running, healthy VMI looks like thousands."""

    namespace: str
    deleting: bool
    mac_names: tuple[str, ...]  # the interfaces of ``interface_macs``, in order
    phase: str
    ready: bool
    live_migratable: bool | None
    live_migratable_reason: str
    migration_in_flight: bool


class VmiRecord:
    """One cached VMI: its key (shared with its VM's), its shape and its MACs, 6 bytes each."""

    __slots__ = ("key", "macs", "shape")

    def __init__(self, key: Key, shape: VmiShape, macs: bytes) -> None:
        self.key = key
        self.shape = shape
        self.macs = macs

    def same_as(self, other: VmiRecord) -> bool:
        return self.key == other.key and self.shape == other.shape and self.macs == other.macs

    def view(self) -> VmiView:
        shape = self.shape
        return VmiView(
            namespace=shape.namespace, name=self.key[1], deleting=shape.deleting, phase=shape.phase,
            ready=shape.ready, live_migratable=shape.live_migratable,
            live_migratable_reason=shape.live_migratable_reason, migration_in_flight=shape.migration_in_flight,
            interface_macs=dict(zip(shape.mac_names, unpack_macs(self.macs), strict=True)))


def _owner_records(entry: VmRecord | tuple[VmRecord, ...]) -> tuple[VmRecord, ...]:
    return (entry,) if isinstance(entry, VmRecord) else entry


_NO_OWNERS: frozenset[MacOwner] = frozenset()


class MacOwners:
    """MAC -> the VM records using it: ``rules.macindex.MacIndex`` answers, stored for 100,000 VMs.

    Which MACs a VM claims follows ``rules.vm_mac_claims`` (``VmRecord.claims``). Keys are 48-bit
    ints; a value is the owning record, or a tuple holding a record once per claim when a MAC is
    claimed more than once (by several VMs, or by two interfaces of one). ``MacOwner``s are made
    when asked, from the record: no object per MAC besides its key. The MACs claimed more than once
    are also kept in a set, so the duplicate audit needs no pass over every VM.
    """

    __slots__ = ("_by_mac", "_claimed_twice")

    def __init__(self) -> None:
        self._by_mac: dict[int, VmRecord | tuple[VmRecord, ...]] = {}
        self._claimed_twice: set[int] = set()

    def __len__(self) -> int:
        return len(self._by_mac)

    def owners(self, mac: str) -> frozenset[MacOwner]:
        try:
            number = mac_number(mac)
        except ValueError:
            return _NO_OWNERS
        entry = self._by_mac.get(number)  # nearly always a miss: answered with a shared empty set
        if entry is None:
            return _NO_OWNERS
        return frozenset([record.owner(index) for record in _owner_records(entry)
                          for index in record.interfaces_using(number)])

    def numbers_used(self, numbers: Collection[int]) -> bool:
        """Whether a MAC of one of ``numbers`` (``mac_number``) has an owner: one C call."""
        return not self._by_mac.keys().isdisjoint(numbers)

    def claimed_more_than_once(self) -> list[int]:
        return list(self._claimed_twice)

    def replace_vm(self, old: VmRecord | None, new: VmRecord | None) -> None:
        """Move the index from ``old``'s claims to ``new``'s (either may be None)."""
        old_macs = [number for number, _index in old.claims()] if old is not None else []
        new_macs = [number for number, _index in new.claims()] if new is not None else []
        if old is not None and new is not None and old_macs == new_macs:
            for number in set(new_macs):  # most updates keep the MACs: point them at the new record
                self._put(number, tuple([new if owner is old else owner for owner in self._records(number)]))
            return
        for number in set(old_macs):
            self._put(number, tuple([owner for owner in self._records(number) if owner is not old]))
        for number in new_macs:  # once per claim
            assert new is not None
            self._put(number, (*self._records(number), new))

    def _records(self, number: int) -> tuple[VmRecord, ...]:
        entry = self._by_mac.get(number)
        return () if entry is None else _owner_records(entry)

    def _put(self, number: int, records: tuple[VmRecord, ...]) -> None:
        """Store ``records`` as the claims of ``number`` in their smallest form."""
        if len(records) > 1:
            self._by_mac[number] = records
            self._claimed_twice.add(number)
            return
        self._claimed_twice.discard(number)
        if records:
            self._by_mac[number] = records[0]
        else:
            self._by_mac.pop(number, None)


def object_key(obj: Mapping[str, Any]) -> Key | None:
    """The (namespace, name) of an API object, namespace interned; None when either is missing."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, Mapping):
        return None
    namespace, name = metadata.get("namespace"), metadata.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not name:
        return None
    return sys.intern(namespace), name
