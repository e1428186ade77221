"""The KubeVirt VirtualMachine as nichotplug reads and writes it: its annotation and label names, and
the paths of the fields the rules touch, each spelled once (as key paths, JSON Pointers, and field
paths for messages)."""

from __future__ import annotations

from typing import Final

from nichotplug.rules.jsonpatch import pointer

__all__ = [
    "BINDING_KEYS",
    "CLUSTER_NETWORK_LABEL",
    "GUEST_CLUSTER_CREATOR",
    "GUEST_CLUSTER_LABEL",
    "INTERFACES_FIELD",
    "INTERFACES_PATH",
    "INTERFACES_POINTER",
    "NETWORKS_FIELD",
    "NETWORKS_PATH",
    "OBSERVED_MACS_ANNOTATION",
    "OBSERVED_MACS_POINTER",
    "RUNNING_STRATEGIES",
]

# The MACs the controller saw a running VMI report, interface name -> MAC (see rules.observed_macs).
OBSERVED_MACS_ANNOTATION: Final = "harvesterhci.io/mac-address"
CLUSTER_NETWORK_LABEL: Final = "network.harvesterhci.io/clusternetwork"
GUEST_CLUSTER_LABEL: Final = "harvesterhci.io/creator"
GUEST_CLUSTER_CREATOR: Final = "docker-machine-driver-harvester"

# KubeVirt's interface binding methods; an interface names exactly one of them as a key.
BINDING_KEYS: Final = ("bridge", "masquerade", "sriov", "slirp", "passt", "macvtap", "binding")

# Run strategies under which the VM controller keeps (or starts) a VMI.
RUNNING_STRATEGIES: Final = frozenset({"Always", "RerunOnFailure", "Once"})

INTERFACES_PATH: Final = ("spec", "template", "spec", "domain", "devices", "interfaces")
NETWORKS_PATH: Final = ("spec", "template", "spec", "networks")
INTERFACES_POINTER: Final = pointer(INTERFACES_PATH)
OBSERVED_MACS_POINTER: Final = pointer(("metadata", "annotations", OBSERVED_MACS_ANNOTATION))
INTERFACES_FIELD: Final = ".".join(INTERFACES_PATH)
NETWORKS_FIELD: Final = ".".join(NETWORKS_PATH)
