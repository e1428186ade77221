"""Which namespaces the MAC controller writes VMs in (``serve --controller-namespace``), and its Lease.

The webhooks always see every namespace: MAC uniqueness is cluster-wide, so the cluster view and
the duplicate audit's index stay cluster-wide too. Only the controller's writes (observed-MAC
annotation, MAC backfill, audit Events) are limited to the scope.

The Lease is named after the scope, so replicas agree on it only when they write the same VMs:
``nichotplug-controller`` for every namespace (the name releases before scopes existed used), else
``nichotplug-controller-<10 hex digits of the SHA-256 of the sorted, comma-joined namespaces>``.
Two installs in one namespace with different scopes then each lead their own scope instead of one
holding a shared Lease while the other's VMs go unreconciled. The chart computes the same name
(``nichotplug.leaseName``) for the Role that lets the pods hold it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

LEASE_PREFIX = "nichotplug-controller"


@dataclass(frozen=True, slots=True)
class ControllerScope:
    """The namespaces the controller writes in; empty means every namespace."""

    namespaces: frozenset[str] = frozenset()

    @classmethod
    def of(cls, namespaces: Iterable[str] | None) -> ControllerScope:
        return cls(frozenset(namespaces or ()))

    @property
    def everywhere(self) -> bool:
        return not self.namespaces

    def covers(self, namespace: str) -> bool:
        """Whether the controller may write VMs in ``namespace``."""
        return self.everywhere or namespace in self.namespaces

    def describe(self) -> str:
        """"all namespaces" or "ns1, ns2" (sorted), for the log and messages."""
        return "all namespaces" if self.everywhere else ", ".join(sorted(self.namespaces))

    @property
    def lease_name(self) -> str:
        if self.everywhere:
            return LEASE_PREFIX
        digest = hashlib.sha256(",".join(sorted(self.namespaces)).encode()).hexdigest()
        return f"{LEASE_PREFIX}-{digest[:10]}"


EVERYWHERE = ControllerScope()
