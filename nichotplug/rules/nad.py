"""Whether a NetworkAttachmentDefinition can carry a hot-plugged NIC.

Decided from what the NAD *is*, never from its Harvester labels (labels only feed the MAC scope):
not being deleted, not in ``harvester-system`` (migration and storage networks live there), and a
CNI config whose plugin type is ``bridge``. A conflist (``{"plugins": [...]}``) is judged by its
first plugin, the one that creates the interface. An unreadable config is a "no" carrying the parse
error, never an exception.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

from nichotplug.rules.views import NadView

__all__ = ["HOTPLUG_CNI_TYPE", "RESERVED_NAMESPACE", "NadVerdict", "cni_type", "nad_verdict"]

HOTPLUG_CNI_TYPE = "bridge"
RESERVED_NAMESPACE = "harvester-system"


@dataclass(frozen=True, slots=True)
class NadVerdict:
    """``hotpluggable`` and, either way, a short human reason (used inside longer messages)."""

    hotpluggable: bool
    reason: str


@lru_cache(maxsize=4096)
def cni_type(config: str) -> tuple[str, str]:
    """(CNI plugin type, "") for a CNI config or conflist, or ("", why it cannot be read).

    Cached: the cluster has few distinct NAD configs and every hot-plug check reads one.
    """
    if not config.strip():
        return "", "its spec.config is empty"
    try:
        decoded = json.loads(config)
    except (ValueError, RecursionError) as error:  # RecursionError: nested deeper than Python's stack
        return "", f"its CNI config is not valid JSON ({error})"
    if not isinstance(decoded, dict):
        return "", "its CNI config is not a JSON object"
    plugin = decoded
    if "type" not in decoded and "plugins" in decoded:
        plugins = decoded["plugins"]
        if not isinstance(plugins, list) or not plugins or not isinstance(plugins[0], dict):
            return "", "its CNI conflist has no plugins"
        plugin = plugins[0]
    plugin_type = plugin.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        return "", "its CNI config has no plugin type"
    return plugin_type, ""


def nad_verdict(nad: NadView | None) -> NadVerdict:
    """Can a NIC be hot-plugged onto this NAD? ``None`` means the NAD does not exist."""
    if nad is None:
        return NadVerdict(False, "the network attachment definition does not exist")
    if nad.deleting:
        return NadVerdict(False, f"network attachment definition {nad.ref} is being deleted")
    if nad.namespace == RESERVED_NAMESPACE:
        return NadVerdict(False, f"network attachment definition {nad.ref} is in {RESERVED_NAMESPACE}, "
                                 "which holds Harvester's own migration and storage networks")
    plugin_type, error = cni_type(nad.config)
    if error:
        return NadVerdict(False, f"network attachment definition {nad.ref} cannot be read: {error}")
    if plugin_type != HOTPLUG_CNI_TYPE:
        return NadVerdict(False, f"network attachment definition {nad.ref} is a {plugin_type} network; "
                                 f"only {HOTPLUG_CNI_TYPE} networks (untagged, VLAN, VLAN trunk) can be hot-plugged")
    return NadVerdict(True, f"network attachment definition {nad.ref} is a {HOTPLUG_CNI_TYPE} network")
