"""Validation rules 2-4 (see ``rules.admission``): MAC formats, duplicates within a VM, and collisions
with other VMs on the same cluster network. They read a full ``VmView`` or the fast path's
``VmFacts`` alike (:class:`MacClaimant`), and mutation asks :func:`colliding_owner` before it reuses a
recorded MAC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from nichotplug.rules.cluster import ClusterState, MacOwner, other_holder, owner_scope
from nichotplug.rules.decision import Decision
from nichotplug.rules.mac import InvalidMac, check_unicast_mac, normalize_mac

__all__ = ["MacClaim", "MacClaimant", "annotation_warning", "check_macs", "colliding_owner"]


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


def colliding_owner(vm: MacClaimant, mac: str, scope: str, cluster: ClusterState) -> MacOwner | None:
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
        owner = colliding_owner(vm, claim.mac, scope, cluster)
        if owner is not None:
            return Decision.deny(
                409,
                f"VM {vm.ref}: mac address {claim.mac} of interface {claim.interface} is already used by "
                f"{owner.namespace}/{owner.vm} interface {owner.interface} {_scope_text(scope)}",
                "mac-collision",
            )
    return None


def check_macs(vm: MacClaimant, old: MacClaimant | None, cluster: ClusterState) -> Decision | None:
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


def annotation_warning(ref: str, error: str) -> str:
    return f"VM {ref}: {error}; the MACs it records are not protected from reuse"
