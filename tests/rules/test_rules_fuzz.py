"""Neither webhook function raises, whatever JSON or VM-shaped object it is given."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nichotplug.rules.admission import AdmissionInput, mutate_vm, validate_vm
from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.decision import REASONS

from .rules_support import nad, vm, vmi

CLUSTER = StaticCluster(vms=[vm("other")], vmis=[vmi()], nads=[nad()])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
field_values = json_values | st.sampled_from(["02:00:00:00:00:02", "AA-BB-CC-DD-EE-FF", "bridge", "absent",
                                              "default/vlan1", "vlan1", "Running", "True", "{}"])
interface_like = st.fixed_dictionaries(
    {"name": st.sampled_from(["default", "nic-1", "nic-2"]) | field_values},
    optional={"macAddress": field_values, "model": field_values, "bridge": field_values,
              "masquerade": field_values, "state": field_values},
)
network_like = st.fixed_dictionaries(
    {"name": st.sampled_from(["default", "nic-1", "nic-2"]) | field_values},
    optional={"pod": field_values, "multus": st.fixed_dictionaries({"networkName": field_values}) | field_values},
)


@st.composite
def vm_shaped(draw: st.DrawFn) -> Any:
    obj = vm(interfaces=draw(st.lists(interface_like, max_size=4)), networks=draw(st.lists(network_like, max_size=4)),
             run_strategy=draw(st.sampled_from(["Always", "Halted", None])))
    if draw(st.booleans()):
        obj["metadata"]["annotations"] = {"harvesterhci.io/mac-address": draw(st.text(max_size=30))}
    if draw(st.booleans()):
        obj["spec"]["running"] = draw(field_values)
    return obj


objects = json_values | vm_shaped()


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["CREATE", "UPDATE", "DELETE", "bogus"]), objects, objects)
def test_rules_never_raise_and_always_give_a_known_reason(operation: str, obj: Any, old: Any) -> None:
    req = AdmissionInput(operation, "default", "vm1", obj, old)
    decisions = (mutate_vm(req, CLUSTER), validate_vm(req, CLUSTER))
    assert all(decision.reason in REASONS and (decision.allowed or decision.code in (403, 409, 500))
               for decision in decisions)


@settings(max_examples=40, deadline=None)
@given(vm_shaped(), json_values)
def test_metadata_only_writes_never_raise(obj: Any, metadata: Any) -> None:
    new = {**obj, "metadata": metadata}
    req = AdmissionInput("UPDATE", "default", "vm1", new, obj)
    decision = validate_vm(req, CLUSTER)
    assert (decision.reason in REASONS, decision.allowed or decision.code == 403) == (True, True)
