"""MacIndex and StaticCluster: owners of a MAC, with updates and removals."""

from __future__ import annotations

from nichotplug.rules.cluster import StaticCluster, owner_scope
from nichotplug.rules.mac import mac_number
from nichotplug.rules.macindex import MacIndex, MacOwner

from .rules_support import iface, multus_net, nad, pod_net, vm, vmi


def test_spec_macs_are_indexed_normalised() -> None:
    index = MacIndex()
    index.update_vm(vm(interfaces=[iface("nic-1", mac="02-00-00-00-00-AB")], networks=[multus_net("nic-1", "vlan1")]))
    assert index.owners("02:00:00:00:00:ab") == {MacOwner("default", "vm1", "nic-1", ("default", "vlan1"))}


def test_pod_network_owner_has_no_nad() -> None:
    index = MacIndex()
    index.update_vm(vm(interfaces=[iface("default", binding="masquerade", mac="02:00:00:00:00:01")],
                       networks=[pod_net()]))
    assert index.owners("02:00:00:00:00:01") == {MacOwner("default", "vm1", "default", None)}


def test_annotation_macs_count_for_interfaces_without_a_spec_mac() -> None:
    index = MacIndex()
    index.update_vm(vm(interfaces=[iface("default", binding="masquerade")], networks=[pod_net()],
                       annotations={"harvesterhci.io/mac-address": '{"default":"be:40:c3:88:75:7c"}'}))
    assert index.owners("be:40:c3:88:75:7c") == {MacOwner("default", "vm1", "default", None)}


def test_annotation_mac_is_ignored_when_the_spec_has_one() -> None:
    index = MacIndex()
    index.update_vm(vm(annotations={"harvesterhci.io/mac-address": '{"default":"be:40:c3:88:75:7c"}'}))
    assert index.owners("be:40:c3:88:75:7c") == frozenset()


def test_invalid_spec_macs_are_not_indexed() -> None:
    index = MacIndex()
    index.update_vm(vm(interfaces=[iface("nic-1", mac="zz")], networks=[pod_net("nic-1")]))
    assert len(index) == 0


def test_update_replaces_the_vm_entries() -> None:
    index = MacIndex()
    index.update_vm(vm())
    index.update_vm(vm(interfaces=[iface("nic-1", mac="02:00:00:00:00:99")]))
    assert (index.owners("02:00:00:00:00:01"), len(index)) == (frozenset(), 1)


def test_shared_mac_lists_every_owner() -> None:
    index = MacIndex()
    index.update_vm(vm("a"))
    index.update_vm(vm("b"))
    assert {owner.vm for owner in index.owners("02:00:00:00:00:02")} == {"a", "b"}


def test_remove_of_one_sharer_keeps_the_other() -> None:
    index = MacIndex()
    for name in ("a", "b", "c"):
        index.update_vm(vm(name))
    index.remove_vm("default", "a")
    index.remove_vm("default", "b")
    assert {owner.vm for owner in index.owners("02:00:00:00:00:02")} == {"c"}


def test_remove_vm_forgets_its_macs() -> None:
    index = MacIndex()
    index.update_vm(vm())
    index.remove_vm("default", "vm1")
    assert len(index) == 0


def test_remove_of_an_unknown_vm_changes_nothing() -> None:
    index = MacIndex()
    index.update_vm(vm())
    index.remove_vm("default", "other")
    assert len(index) == 2


def test_static_cluster_answers_vmi_and_nad_lookups() -> None:
    cluster = StaticCluster(vms=[vm()], vmis=[vmi()], nads=[nad()])
    assert (cluster.get_vmi("default", "vm1") is not None, cluster.get_nad("default", "vlan1") is not None,
            cluster.get_vmi("default", "nope")) == (True, True, None)


def test_scope_is_the_nad_cluster_network_label() -> None:
    cluster = StaticCluster(nads=[nad(cluster_network="data")])
    assert owner_scope(("default", "vlan1"), cluster) == "data"


def test_scope_of_a_missing_nad_or_the_pod_network_is_empty() -> None:
    cluster = StaticCluster()
    assert (owner_scope(("default", "gone"), cluster), owner_scope(None, cluster)) == ("", "")


def test_owners_of_text_that_is_not_a_normalised_mac_is_empty() -> None:
    index = MacIndex()
    index.update_vm(vm())
    assert (index.owners("02-00-00-00-00-02"), index.owners("nonsense")) == (frozenset(), frozenset())


def test_an_unchanged_vm_update_keeps_the_same_owners() -> None:
    index = MacIndex()
    index.update_vm(vm())
    before = index.owners("02:00:00:00:00:02")
    index.update_vm(vm(annotations={"note": "status-only change"}))
    assert index.owners("02:00:00:00:00:02") == before


def test_mac_numbers_in_use_is_any_owner() -> None:
    cluster = StaticCluster(vms=[vm("a", interfaces=[iface("nic-1", mac="02:AA:00:00:00:01")])])
    assert cluster.mac_numbers_in_use([0x02_00_00_00_00_09, 0x02_AA_00_00_00_01]) is True
    assert cluster.mac_numbers_in_use((mac_number("02:aa:00:00:00:01"),)) is True
    assert cluster.mac_numbers_in_use([0x02_00_00_00_00_09]) is False
    assert cluster.mac_numbers_in_use([]) is False
