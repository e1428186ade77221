"""MacIndex: which VM interfaces use a MAC, answered with one dict lookup at any cluster size.

Keyed by normalised MAC only. The scope (cluster network) of an owner is not stored: it is read at
query time from the owner's NAD, so relabelling a NAD can never leave a stale index.

Per VM, the index holds its valid spec MACs and, for interfaces without a spec MAC, the MAC the
observed-MAC annotation records for them (KubeVirt keeps giving the guest that MAC until the spec
says otherwise). Interfaces set ``state: absent`` still count: they keep their MAC until unplugged.

Memory matters (the webhook keeps an index of every VM in the cluster): MACs are keyed as 48-bit
integers (half the size of their text), a MAC with one owner, the usual case, stores the bare
``MacOwner`` and only shared MACs store a frozenset.
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterator, Mapping
from typing import Any, NamedTuple

from nichotplug.rules.mac import InvalidMac, mac_number, normalize_mac
from nichotplug.rules.views import VmView

__all__ = ["MacIndex", "MacOwner", "claimed_mac", "vm_mac_claims"]


class MacOwner(NamedTuple):
    """One interface using a MAC. ``nad`` is the (namespace, name) of its NAD; None = pod network."""

    namespace: str
    vm: str
    interface: str
    nad: tuple[str, str] | None


def claimed_mac(spec_mac: str, recorded: Mapping[str, str], interface: str) -> str:
    """The normalised MAC an interface uses: its spec MAC, else the one recorded for it; "" for none.

    An unreadable spec MAC claims nothing: validation refuses it on the next write, so nothing can
    collide with it.
    """
    if not spec_mac:
        return recorded.get(interface, "")
    try:
        return normalize_mac(spec_mac)
    except InvalidMac:
        return ""


def vm_mac_claims(vm: VmView) -> Iterator[tuple[str, MacOwner]]:
    """(normalised MAC, owner) for every MAC the VM uses; unreadable spec MACs are skipped.

    Names are interned: an index of 100,000 VMs holds each namespace, interface name and NAD
    reference once instead of once per VM.
    """
    namespace = sys.intern(vm.namespace)
    name = vm.name
    for interface in vm.interfaces:
        mac = claimed_mac(interface.mac, vm.observed_macs, interface.name)
        if not mac:
            continue
        network = vm.network(interface.name)
        nad = _shared_nad(network.nad) if network is not None and network.nad is not None else None
        yield mac, MacOwner(namespace, name, sys.intern(interface.name), nad)


_NAD_REFS: dict[tuple[str, str], tuple[str, str]] = {}


def _shared_nad(nad: tuple[str, str]) -> tuple[str, str]:
    """One tuple object per NAD reference (there are few NADs and many interfaces on them)."""
    shared = _NAD_REFS.get(nad)
    if shared is None:
        if len(_NAD_REFS) > 65536:
            _NAD_REFS.clear()  # a bound against a pathological number of distinct references
        shared = _NAD_REFS.setdefault(nad, (sys.intern(nad[0]), sys.intern(nad[1])))
    return shared


class MacIndex:
    """MAC -> owners over every VM given to ``update_vm``; ``len()`` is the number of distinct MACs."""

    __slots__ = ("_by_mac", "_by_vm")

    def __init__(self) -> None:
        self._by_mac: dict[int, MacOwner | frozenset[MacOwner]] = {}
        # (namespace, name) -> the owners it indexed; their MACs are the _by_mac keys they sit under
        self._by_vm: dict[tuple[str, str], tuple[tuple[int, ...], tuple[MacOwner, ...]]] = {}

    def __len__(self) -> int:
        return len(self._by_mac)

    def update_vm(self, vm: VmView | Mapping[str, Any]) -> None:
        """Index (or re-index) a VM from its view or its dict; raises InvalidObject for a garbage dict."""
        view = vm if isinstance(vm, VmView) else VmView.from_dict(vm)
        pairs = list(vm_mac_claims(view))
        macs = tuple(mac_number(mac) for mac, _owner in pairs)
        owners = tuple(owner for _mac, owner in pairs)
        key = (view.namespace, view.name)
        if self._by_vm.get(key) == (macs, owners):
            return  # most watch events (status, annotations) do not change the MACs
        self.remove_vm(*key)
        if not pairs:
            return
        self._by_vm[key] = (macs, owners)
        for mac_key, owner in zip(macs, owners, strict=True):
            self._add(mac_key, owner)

    def remove_vm(self, namespace: str, name: str) -> None:
        macs, owners = self._by_vm.pop((namespace, name), ((), ()))
        for mac, owner in zip(macs, owners, strict=True):
            self._discard(mac, owner)

    def owners(self, mac: str) -> frozenset[MacOwner]:
        """Every interface using ``mac`` (normalised form expected; any other text has no owners)."""
        try:
            entry = self._by_mac.get(mac_number(mac))
        except ValueError:
            return frozenset()
        if entry is None:
            return frozenset()
        if isinstance(entry, MacOwner):
            return frozenset((entry,))
        return entry

    def numbers_used(self, numbers: Collection[int]) -> bool:
        """Whether a MAC of one of ``numbers`` (``mac_number``) has an owner."""
        return not self._by_mac.keys().isdisjoint(numbers)

    def _add(self, mac: int, owner: MacOwner) -> None:
        entry = self._by_mac.get(mac)
        if entry is None:
            self._by_mac[mac] = owner
        elif isinstance(entry, MacOwner):
            self._by_mac[mac] = frozenset((entry, owner))
        else:
            self._by_mac[mac] = entry | {owner}

    def _discard(self, mac: int, owner: MacOwner) -> None:
        entry = self._by_mac.get(mac)
        if entry is None:
            return
        if isinstance(entry, MacOwner):
            if entry == owner:
                del self._by_mac[mac]
            return
        rest = entry - {owner}
        if len(rest) == 1:
            (self._by_mac[mac],) = rest
        elif rest:
            self._by_mac[mac] = rest
        else:
            del self._by_mac[mac]
