"""NAD hot-pluggability for every NAD shape SPEC names."""

from __future__ import annotations

import json

import pytest

from nichotplug.rules.nad import cni_type, nad_verdict
from nichotplug.rules.views import NadView

from .rules_support import BRIDGE_CONFIG, KUBE_OVN_CONFIG, nad

UNTAGGED = json.dumps({"cniVersion": "0.3.1", "name": "untagged", "type": "bridge", "bridge": "mgmt-br",
                       "promiscMode": True, "ipam": {}})
TRUNK = json.dumps({"cniVersion": "0.3.1", "name": "trunk", "type": "bridge", "bridge": "data-br",
                    "promiscMode": True, "vlanTrunk": [{"minID": 100, "maxID": 200}], "ipam": {}})
CONFLIST_BRIDGE = json.dumps({"cniVersion": "0.4.0", "name": "list",
                              "plugins": [{"type": "bridge", "bridge": "br0"}, {"type": "tuning"}]})
CONFLIST_MACVLAN = json.dumps({"cniVersion": "0.4.0", "name": "list", "plugins": [{"type": "macvlan"}]})


def verdict_for(**kwargs: object) -> tuple[bool, str]:
    result = nad_verdict(NadView.from_dict(nad(**kwargs)))  # type: ignore[arg-type]
    return result.hotpluggable, result.reason


@pytest.mark.parametrize(
    ("config", "network_type"),
    [(UNTAGGED, "UntaggedNetwork"), (BRIDGE_CONFIG, "L2VlanNetwork"), (TRUNK, "L2VlanTrunkNetwork"),
     (CONFLIST_BRIDGE, None)],
)
def test_bridge_networks_are_hotpluggable(config: str, network_type: str | None) -> None:
    assert verdict_for(config=config, network_type=network_type)[0] is True


def test_kube_ovn_overlay_is_not_hotpluggable() -> None:
    assert verdict_for(config=KUBE_OVN_CONFIG, network_type="OverlayNetwork") == (
        False, "network attachment definition default/vlan1 is a kube-ovn network; only bridge networks "
               "(untagged, VLAN, VLAN trunk) can be hot-plugged")


def test_labels_do_not_decide_a_bridge_labelled_overlay_is_refused() -> None:
    assert verdict_for(config=KUBE_OVN_CONFIG, network_type="L2VlanNetwork")[0] is False


def test_conflist_is_judged_by_its_first_plugin() -> None:
    assert verdict_for(config=CONFLIST_MACVLAN)[1].endswith("is a macvlan network; only bridge networks "
                                                             "(untagged, VLAN, VLAN trunk) can be hot-plugged")


def test_harvester_system_is_not_hotpluggable() -> None:
    hotpluggable, reason = verdict_for(namespace="harvester-system")
    assert (hotpluggable, "migration and storage networks" in reason) == (False, True)


def test_deleting_nad_is_not_hotpluggable() -> None:
    assert verdict_for(deleting=True) == (False, "network attachment definition default/vlan1 is being deleted")


def test_missing_nad_is_not_hotpluggable() -> None:
    assert nad_verdict(None).hotpluggable is False


def test_a_config_nested_too_deep_to_parse_is_refused_not_a_crash() -> None:
    deep = '{"type": "bridge", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    hotpluggable, reason = verdict_for(config=deep)
    assert hotpluggable is False
    assert reason.endswith("its CNI config is not valid JSON (maximum recursion depth exceeded while decoding a JSON "
                           "array from a unicode string)")


def test_unparsable_config_is_refused_with_the_parse_error() -> None:
    hotpluggable, reason = verdict_for(config='{"type": "bridge",')
    assert (hotpluggable, "is not valid JSON (Expecting property name" in reason) == (False, True)


@pytest.mark.parametrize(
    ("config", "error"),
    [("", "its spec.config is empty"), ("[1, 2]", "its CNI config is not a JSON object"),
     ('{"cniVersion": "0.3.1"}', "its CNI config has no plugin type"),
     ('{"type": 7}', "its CNI config has no plugin type"),
     ('{"plugins": []}', "its CNI conflist has no plugins"),
     ('{"plugins": "bridge"}', "its CNI conflist has no plugins")],
)
def test_unreadable_configs_say_why(config: str, error: str) -> None:
    assert cni_type(config) == ("", error)


def test_nad_with_config_of_wrong_type_is_an_invalid_object() -> None:
    bad = nad()
    bad["spec"]["config"] = {"type": "bridge"}
    with pytest.raises(ValueError, match=r"spec.config must be a string, found an object"):
        NadView.from_dict(bad)
