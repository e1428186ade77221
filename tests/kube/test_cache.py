"""ClusterView against the in-process API server: list, watch, re-list, restarts, and what it indexes."""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from prometheus_client import REGISTRY

from nichotplug.controller.audit import duplicates_of_mac, find_duplicate_macs
from nichotplug.kube.cache import (
    NETWORK_ATTACHMENT_DEFINITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    ClusterView,
)
from nichotplug.kube.view_metrics import VIEW_METRICS
from nichotplug.rules.cluster import owner_scope
from nichotplug.rules.mac import mac_number
from nichotplug.rules.macindex import MacIndex, MacOwner
from nichotplug.rules.views import NadView, VmiView, VmView
from nichotplug.testing.server import ApiServer

from .kube_support import (
    FAST,
    OBSERVED_MACS,
    client_for,
    create,
    delete,
    eventually,
    merge,
    nad,
    vm,
    vmi,
)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"


def owners(view: ClusterView, mac: str) -> set[tuple[str, str, str]]:
    return {(owner.namespace, owner.vm, owner.interface) for owner in view.owners_of_mac(mac)}


async def test_first_list_fills_all_three_kinds_and_indexes_spec_and_annotation_macs(
    api_client: ApiClient,
) -> None:
    # Created before the view starts, so the first list (page size 2: several pages) finds them.
    await create(api_client, nad("vlan1", "mgmt"))
    await create(api_client, vm("pinned", [("nic-1", MAC_A.upper(), "default/vlan1")]))
    await create(api_client, vm("observed", [("nic-1", "", "vlan1"), ("default", "", None)],
                                annotations={OBSERVED_MACS: '{"nic-1":"02-00-00-00-00-0B"}'}))
    await create(api_client, vm("other-ns-1", [], namespace="kube-system"))
    await create(api_client, vmi("pinned", {"nic-1": MAC_A}))
    view = ClusterView(api_client, settings=FAST)
    await view.start()
    try:
        await view.synced.wait()
        check_first_list(view)
    finally:
        await view.stop()


def check_first_list(view: ClusterView) -> None:
    """What test_first_list... expects once synced: everything, with no waiting for watch events."""

    assert view.counts() == {VIRTUAL_MACHINE: 3, VIRTUAL_MACHINE_INSTANCE: 1, NETWORK_ATTACHMENT_DEFINITION: 1,
                             "macs": 2}
    assert view.owners_of_mac(MAC_A) == {MacOwner("default", "pinned", "nic-1", ("default", "vlan1"))}
    assert view.owners_of_mac(MAC_B) == {MacOwner("default", "observed", "nic-1", ("default", "vlan1"))}
    assert view.owners_of_mac("02:00:00:00:00:99") == frozenset()
    assert view.mac_numbers_in_use([mac_number("02:00:00:00:00:99"), mac_number(MAC_B)]) is True
    assert view.mac_numbers_in_use([mac_number("02:00:00:00:00:99"), 0, 2**48 - 1]) is False
    assert view.mac_numbers_in_use([]) is False
    nad_view = view.get_nad("default", "vlan1")
    assert isinstance(nad_view, NadView)
    assert nad_view.cluster_network == "mgmt"
    vmi_view = view.get_vmi("default", "pinned")
    assert isinstance(vmi_view, VmiView)
    assert vmi_view.phase == "Running"
    assert vmi_view.interface_macs == {"nic-1": MAC_A}
    assert view.get_vmi("default", "observed") is None
    assert sorted(view.vm_keys()) == [("default", "observed"), ("default", "pinned"), ("kube-system", "other-ns-1")]


async def test_readiness_waits_for_the_first_list_of_every_kind_and_5xx_on_list_is_retried(
    apiserver: ApiServer, api_client: ApiClient,
) -> None:
    await create(api_client, vm("vm1", [("nic-1", MAC_A, None)]))
    await create(api_client, nad("vlan1"))
    nad_lists = apiserver.faults.add(method="GET", path_regex=r"/network-attachment-definitions\?", status=503,
                                     times=None)
    view = ClusterView(api_client, settings=FAST)
    await view.start()
    try:
        await eventually(lambda: view.get_vm("default", "vm1") is not None and nad_lists.hits >= 3,
                         "VMs listed while NAD lists keep failing")
        assert not view.synced.is_set()
        assert view.get_nad("default", "vlan1") is None

        apiserver.faults.clear()
        await view.synced.wait()
        assert view.get_nad("default", "vlan1") is not None
    finally:
        await view.stop()
    assert not view.synced.is_set()


async def test_watch_follows_creates_updates_and_deletes_of_all_kinds_and_tells_listeners(
    api_client: ApiClient, view: ClusterView,
) -> None:
    heard: list[tuple[str, str, Any]] = []
    view.add_listener(lambda kind, event_type, obj: heard.append((kind, event_type, obj)))
    await view.synced.wait()

    vm_obj = await create(api_client, vm("vm1", [("nic-1", MAC_A, "vlan1")]))
    vmi_obj = await create(api_client, vmi("vm1", {"nic-1": MAC_A}, phase="Scheduling"))
    nad_obj = await create(api_client, nad("vlan1"))
    await eventually(lambda: view.get_nad("default", "vlan1") is not None, "NAD created")
    assert view.owners_of_mac(MAC_A)
    assert view.get_vmi("default", "vm1").phase == "Scheduling"  # type: ignore[union-attr]

    await merge(api_client, vm_obj, {"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [
        {"name": "nic-1", "model": "virtio", "bridge": {}, "macAddress": MAC_B}]}}}}}})
    await merge(api_client, vmi_obj, {"status": {"phase": "Running"}})
    await eventually(lambda: bool(view.owners_of_mac(MAC_B)), "VM update re-indexed")
    assert view.owners_of_mac(MAC_A) == frozenset()  # the old MAC is free again
    assert not view.mac_numbers_in_use([mac_number(MAC_A)])
    await eventually(lambda: view.get_vmi("default", "vm1").phase == "Running", "VMI update")  # type: ignore[union-attr]

    for obj in (vm_obj, vmi_obj, nad_obj):
        await delete(api_client, obj)
    await eventually(lambda: view.counts() == {VIRTUAL_MACHINE: 0, VIRTUAL_MACHINE_INSTANCE: 0,
                                               NETWORK_ATTACHMENT_DEFINITION: 0, "macs": 0}, "all deleted")

    kinds_and_types = [(kind, event_type) for kind, event_type, _ in heard]
    for kind in (VIRTUAL_MACHINE, VIRTUAL_MACHINE_INSTANCE, NETWORK_ATTACHMENT_DEFINITION):
        assert (kind, "ADDED") in kinds_and_types
        assert (kind, "DELETED") in kinds_and_types
    assert (VIRTUAL_MACHINE, "MODIFIED") in kinds_and_types
    assert all(isinstance(obj, VmView | VmiView | NadView) for _, _, obj in heard)
    deleted_vm = next(obj for kind, event_type, obj in heard if (kind, event_type) == (VIRTUAL_MACHINE, "DELETED"))
    assert deleted_vm.name == "vm1"


async def test_relabelled_nad_moves_its_owners_to_the_new_cluster_network_scope(
    api_client: ApiClient, view: ClusterView,
) -> None:
    nad_obj = await create(api_client, nad("vlan1", "mgmt"))
    await create(api_client, vm("vm1", [("nic-1", MAC_A, "vlan1")]))
    await view.synced.wait()
    await eventually(lambda: bool(view.owners_of_mac(MAC_A)), "VM indexed")
    (owner,) = view.owners_of_mac(MAC_A)
    assert owner_scope(owner.nad, view) == "mgmt"

    await merge(api_client, nad_obj, {"metadata": {"labels": {"network.harvesterhci.io/clusternetwork": "dmz"}}})
    await eventually(lambda: owner_scope(owner.nad, view) == "dmz", "scope follows the NAD label")


async def test_vm_is_kept_slim_only_the_annotations_nichotplug_reads(
    api_client: ApiClient, view: ClusterView,
) -> None:
    annotations = {OBSERVED_MACS: '{"nic-1":"02:00:00:00:00:0a"}',
                   "kubectl.kubernetes.io/last-applied-configuration": "{" + '"x": 1,' * 2000 + '"y": 2}'}
    await create(api_client, vm("vm1", [("nic-1", "", "vlan1")], annotations=annotations))
    await view.synced.wait()
    await eventually(lambda: view.get_vm("default", "vm1") is not None, "VM listed")
    cached = view.get_vm("default", "vm1")
    assert cached is not None
    assert dict(cached.annotations) == {OBSERVED_MACS: annotations[OBSERVED_MACS]}
    assert cached.observed_macs == {"nic-1": MAC_A}
    assert cached.resource_version
    assert cached.uid


async def test_expired_watch_relists_and_forgets_what_was_deleted_meanwhile(
    small_history_server: ApiServer, tmp_path: Path,
) -> None:
    server = small_history_server
    api = await client_for(server, tmp_path)
    try:
        gone = await create(api, vm("gone", [("nic-1", MAC_A, None)]))
        await create(api, vm("stays", [("nic-1", MAC_B, None)]))
        view = ClusterView(api, settings=FAST)
        deleted: list[str] = []
        view.add_listener(lambda kind, event_type, obj: deleted.append(obj.name) if event_type == "DELETED" else None)
        await view.start()
        try:
            await view.synced.wait()
            await eventually(lambda: view.get_vm("default", "gone") is not None, "listed")
            # Cut the view off: its watch ends and every new watch fails, while more changes than
            # the server's history (3 events) happen.
            watches = server.faults.add(method="GET", path_regex=r"watch=(?i:true|1)", status=503, times=None)
            await server.restart()
            await delete(api, gone)
            for index in range(5):
                await create(api, vm(f"new-{index}", []))
            await eventually(lambda: watches.hits >= 2, "watches refused while cut off")
            relists_before = view.relists

            server.faults.clear()  # the resumed watch is too old: ERROR 410 Expired, then a re-list
            await eventually(lambda: view.get_vm("default", "new-4") is not None, "re-listed")
            assert view.get_vm("default", "gone") is None
            assert view.owners_of_mac(MAC_A) == frozenset()
            assert owners(view, MAC_B) == {("default", "stays", "nic-1")}
            assert "gone" in deleted
            assert view.relists > relists_before
        finally:
            await view.stop()
    finally:
        await api.close()


async def test_http_410_on_watch_relists(apiserver: ApiServer, api_client: ApiClient, view: ClusterView) -> None:
    await view.synced.wait()
    expired = apiserver.faults.add(method="GET", path_regex=r"virtualmachines\?.*watch=(?i:true|1)", status=410)
    relists_before = view.relists
    await apiserver.restart()  # ends the open watches; the next VM watch gets HTTP 410
    await create(api_client, vm("after", [("nic-1", MAC_A, None)]))
    await eventually(lambda: view.get_vm("default", "after") is not None, "VM created after the 410 is seen")
    assert expired.hits == 1
    assert view.relists > relists_before


async def test_restarted_api_server_is_survived_and_later_changes_are_seen(
    apiserver: ApiServer, api_client: ApiClient, view: ClusterView,
) -> None:
    await create(api_client, nad("vlan1"))
    await view.synced.wait()
    await eventually(lambda: view.get_nad("default", "vlan1") is not None, "listed")

    await apiserver.restart()
    await create(api_client, vm("after-restart", [("nic-1", MAC_A, "vlan1")]))
    await create(api_client, vmi("after-restart", {"nic-1": MAC_A}))
    await eventually(lambda: view.get_vmi("default", "after-restart") is not None
                     and bool(view.owners_of_mac(MAC_A)), "changes after the restart")
    assert view.synced.is_set()


async def test_api_server_down_for_a_while_then_back(apiserver: ApiServer, api_client: ApiClient,
                                                     view: ClusterView) -> None:
    await view.synced.wait()
    failures_before = view.request_failures
    await apiserver.stop()
    await eventually(lambda: view.request_failures >= failures_before + 3, "the view notices the server is gone")
    await apiserver.start()
    await create(api_client, vm("back", [("nic-1", MAC_A, None)]))
    await eventually(lambda: view.get_vm("default", "back") is not None, "VM created once the server is back")


# -- apply_event: the one way in (watches and benchmarks use it) ---------------------------------


def test_apply_event_rejects_unknown_kinds_and_event_types_and_changes_nothing() -> None:
    view = ClusterView()
    with pytest.raises(ValueError, match="does not cache"):
        view.apply_event("Pod", "ADDED", vm("x", []))
    with pytest.raises(ValueError, match="unknown watch event type"):
        view.apply_event(VIRTUAL_MACHINE, "BOOKMARK", vm("x", []))
    assert view.counts() == {VIRTUAL_MACHINE: 0, VIRTUAL_MACHINE_INSTANCE: 0,
                             NETWORK_ATTACHMENT_DEFINITION: 0, "macs": 0}


def test_an_unreadable_object_is_dropped_and_counted_without_touching_the_others() -> None:
    view = ClusterView()
    view.apply_event(VIRTUAL_MACHINE, "ADDED", vm("good", [("nic-1", MAC_A, None)]))
    view.apply_event(VIRTUAL_MACHINE, "ADDED", vm("bad", [("nic-1", MAC_B, None)]))
    broken = vm("bad", [("nic-1", MAC_B, None)])
    broken["spec"]["template"]["spec"]["networks"] = "not a list"
    view.apply_event(VIRTUAL_MACHINE, "MODIFIED", broken)
    view.apply_event(VIRTUAL_MACHINE, "ADDED", {"metadata": {"name": ""}})

    assert view.get_vm("default", "bad") is None
    assert view.owners_of_mac(MAC_B) == frozenset()
    assert owners(view, MAC_A) == {("default", "good", "nic-1")}
    assert view.invalid_objects == 2


def test_a_vm_whose_annotation_is_nested_too_deep_keeps_its_spec_macs_indexed() -> None:
    view = ClusterView()
    deep = '{"nic-2": ' + "[" * 100_000 + "]" * 100_000 + "}"
    view.apply_event(VIRTUAL_MACHINE, "ADDED", vm("vm1", [("nic-1", MAC_A, None)],
                                                   annotations={"harvesterhci.io/mac-address": deep}))
    assert owners(view, MAC_A) == {("default", "vm1", "nic-1")}
    assert view.invalid_objects == 0


def test_a_failing_listener_does_not_stop_the_others_or_the_cache() -> None:
    view = ClusterView()
    heard: list[str] = []

    def broken(kind: str, event_type: str, obj: Any) -> None:
        raise RuntimeError("listener bug")

    view.add_listener(broken)
    view.add_listener(lambda kind, event_type, obj: heard.append(event_type))
    view.apply_event(VIRTUAL_MACHINE, "ADDED", vm("vm1", [("nic-1", MAC_A, None)]))
    assert heard == ["ADDED"]
    assert view.get_vm("default", "vm1") is not None


def test_a_completed_list_forgets_what_it_did_not_hold_and_the_view_syncs_once_every_kind_is_listed() -> None:
    # What a reflector tells the view (kube.reflector.ViewFeed), without a server in between.
    view = ClusterView()
    heard: list[tuple[str, str, str]] = []
    view.add_listener(lambda kind, event_type, obj: heard.append((kind, event_type, obj.name)))
    for name, mac in (("kept", MAC_A), ("gone", MAC_B)):
        view.apply_event(VIRTUAL_MACHINE, "ADDED", vm(name, [("nic-1", mac, None)]))

    view.list_completed(VIRTUAL_MACHINE, {("default", "kept")})
    assert view.get_vm("default", "gone") is None
    assert owners(view, MAC_B) == set()
    assert owners(view, MAC_A) == {("default", "kept", "nic-1")}
    assert heard[-1] == (VIRTUAL_MACHINE, "DELETED", "gone")
    assert not view.synced.is_set()  # VMIs and NADs are not listed yet

    view.list_completed(VIRTUAL_MACHINE_INSTANCE, set())
    view.list_completed(NETWORK_ATTACHMENT_DEFINITION, set())
    assert view.synced.is_set()
    assert view.relists == 0
    view.list_completed(VIRTUAL_MACHINE, {("default", "kept")})
    assert view.relists == 1
    assert view.get_vm("default", "kept") is not None


def test_failed_requests_and_answers_are_counted_per_view() -> None:
    view = ClusterView()
    view.request_failed(VIRTUAL_MACHINE)
    view.request_failed(NETWORK_ATTACHMENT_DEFINITION)
    before = time.time()
    view.heard_from(VIRTUAL_MACHINE_INSTANCE)
    assert view.request_failures == 2
    assert set(view.last_contact) == {VIRTUAL_MACHINE_INSTANCE}
    assert view.last_contact[VIRTUAL_MACHINE_INSTANCE] >= before


def test_an_update_that_changes_nothing_the_rules_read_wakes_nobody() -> None:
    view = ClusterView()
    heard: list[str] = []
    view.add_listener(lambda kind, event_type, obj: heard.append(event_type))
    running = vmi("vm1", {"nic-1": MAC_A})
    view.apply_event(VIRTUAL_MACHINE_INSTANCE, "ADDED", running)
    heartbeat = vmi("vm1", {"nic-1": MAC_A})
    heartbeat["status"]["nodeName"] = "node-2"  # not something the rules read
    view.apply_event(VIRTUAL_MACHINE_INSTANCE, "MODIFIED", heartbeat)
    assert heard == ["ADDED"]


def _vm_variants() -> list[dict[str, Any]]:
    """VMs in every spelling the compact storage tells apart, each with its own rebuild path."""
    canonical = vm("canonical", [("nic-1", MAC_A, "vlan1"), ("nic-0", MAC_B, None)],
                   annotations={OBSERVED_MACS: json.dumps({"nic-0": MAC_B, "nic-1": MAC_A}, separators=(",", ":"))})
    canonical["metadata"].update(uid="5ff8d5af-b287-41d2-aec0-000000000001", resourceVersion="12345",
                                 labels={"app": "web"})
    odd = vm("odd", [("nic-1", MAC_A.upper(), "other/vlan2"), ("nic-2", "", "vlan1"), ("nic-3", "not-a-mac", None)],
             annotations={OBSERVED_MACS: '{"nic-2": "02-00-00-00-00-0C", "nic-9": "garbage"}'})
    odd["metadata"].update(uid="not-a-uuid", resourceVersion="007", deletionTimestamp="2026-11-28T00:00:00Z")
    odd["spec"]["template"]["spec"]["nodeSelector"] = {"zone": "a"}
    return [
        canonical, odd,
        vm("unsorted-annotation", [("nic-1", "", "vlan1"), ("nic-0", "", None)],
           annotations={OBSERVED_MACS: '{"nic-1":"' + MAC_A + '","nic-0":"' + MAC_B + '"}'}),
        vm("escaped-name", [("nic-1", "", None)], annotations={OBSERVED_MACS: '{"nic\\"1":"' + MAC_A + '"}'}),
        vm("upper-uid", [("nic-1", MAC_A, None)]),
        vm("no-annotation", [("nic-1", "", None)]),
        vm("spaced-annotation", [("nic-1", MAC_A, None)], annotations={OBSERVED_MACS: '{"nic-1": "' + MAC_A + '"}'}),
        vm("no-interfaces", []),
    ]


def test_cached_vms_and_vmis_read_back_exactly_as_their_views() -> None:
    """Compact storage is invisible: get_vm / get_vmi / listeners give the views of the objects."""
    view = ClusterView(vm_annotations=(OBSERVED_MACS, "keep-me"))
    deleted: list[Any] = []
    view.add_listener(lambda kind, event_type, obj: deleted.append(obj) if event_type == "DELETED" else None)
    variants = _vm_variants()
    variants[2]["metadata"]["annotations"]["keep-me"] = "yes"
    variants[4]["metadata"].update(uid="5FF8D5AF-B287-41D2-AEC0-000000000001", resourceVersion="0")
    variants[5]["metadata"].update(uid="f" * 5000, resourceVersion="9" * 5000)  # too long for int(): kept as text
    for obj in variants:
        view.apply_event(VIRTUAL_MACHINE, "ADDED", obj)
        expected = VmView.from_dict(obj)
        kept = {key: value for key, value in expected.annotations.items() if key in (OBSERVED_MACS, "keep-me")}
        assert view.get_vm("default", expected.name) == replace(expected, annotations=kept), expected.name
    running = vmi("canonical", {"nic-0": MAC_B, "nic-1": MAC_A.upper()})
    running["status"]["conditions"].append({"type": "LiveMigratable", "status": "False", "reason": "Bridge"})
    running["status"]["migrationState"] = {"completed": False}
    for obj in (running, vmi("odd", {}, phase="Scheduling"), vmi("no-vm", {"eth0": MAC_A})):
        view.apply_event(VIRTUAL_MACHINE_INSTANCE, "ADDED", obj)
        assert view.get_vmi("default", obj["metadata"]["name"]) == VmiView.from_dict(obj)
    view.apply_event(VIRTUAL_MACHINE, "DELETED", vm("canonical", []))  # its VMI shared its key
    assert view.get_vmi("default", "canonical") == VmiView.from_dict(running)
    last = view.get_vm("default", "odd")
    view.apply_event(VIRTUAL_MACHINE, "DELETED", vm("odd", []))
    assert deleted[1:] == [last]
    assert view.get_vm("default", "odd") is None


def test_a_vm_and_its_vmi_cost_under_a_kilobyte_in_the_view() -> None:
    """Memory per VM, measured: 4 NICs, annotation, VMI; what makes 100,000 VMs fit in the budget."""
    view = ClusterView()
    count = 2000

    def add(index: int) -> None:
        macs = {f"nic-{i}": f"02:00:00:{index >> 8:02x}:{index & 0xFF:02x}:{i:02x}" for i in range(4)}
        obj = vm(f"vm-{index:06d}", [(name, mac, "vlan1") for name, mac in macs.items()],
                 annotations={OBSERVED_MACS: json.dumps(macs, separators=(",", ":"))})
        obj["metadata"].update(uid=f"5ff8d5af-b287-41d2-aec0-{index:012d}", resourceVersion=str(10**6 + index))
        view.apply_event(VIRTUAL_MACHINE, "ADDED", obj)
        view.apply_event(VIRTUAL_MACHINE_INSTANCE, "ADDED", vmi(f"vm-{index:06d}", macs))

    add(0)  # shapes, interned names, first dict allocations: not per-VM costs
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(1, count + 1):
            add(index)
        per_vm = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert view.counts()["macs"] == 4 * (count + 1)
    # About 700 bytes (2,300 when the cache held views and a MacOwner per MAC); the dicts' growth
    # steps move the figure by a hundred or so.
    assert per_vm < 1000, per_vm


async def test_start_without_a_client_is_refused() -> None:
    with pytest.raises(RuntimeError, match="without an ApiClient"):
        await ClusterView().start()


def test_mac_owners_match_the_rules_mac_index_through_random_updates_and_deletes() -> None:
    """The view's compact MAC index answers exactly what rules.macindex.MacIndex answers."""


    rng = random.Random(3)
    macs = [f"02:00:00:00:00:{i:02x}" for i in range(12)]
    networks = [None, "vlan1", "other/vlan2"]
    view, reference = ClusterView(), MacIndex()
    for _step in range(400):
        name = f"vm{rng.randrange(8)}"
        if rng.random() < 0.2:
            view.apply_event(VIRTUAL_MACHINE, "DELETED", vm(name, []))
            reference.remove_vm("default", name)
            continue
        interfaces = []
        for index in range(rng.randrange(4)):
            mac = rng.choice([*macs, ""])
            interfaces.append((f"nic-{index}", mac.upper() if rng.random() < 0.2 else mac, rng.choice(networks)))
        observed = {f"nic-{index}": rng.choice(macs) for index in range(rng.randrange(3))}
        obj = vm(name, interfaces, annotations={OBSERVED_MACS: json.dumps(observed)} if observed else None)
        view.apply_event(VIRTUAL_MACHINE, "MODIFIED", obj)
        reference.update_vm(obj)
        for mac in macs:
            assert view.owners_of_mac(mac) == reference.owners(mac), mac
        assert view.macs_claimed_more_than_once() == [mac for mac in macs if len(reference.owners(mac)) > 1]
    assert view.counts()["macs"] == len(reference)


def test_the_audit_from_shared_macs_finds_what_a_pass_over_every_vm_finds() -> None:
    """The duplicate audit reads only MACs the index says are shared; it must miss nothing."""
    rng = random.Random(5)
    macs = [f"02:00:00:00:01:{i:02x}" for i in range(10)]
    view = ClusterView()
    for name, cluster_network in (("vlan1", "mgmt"), ("vlan2", "mgmt"), ("vlan3", "dmz")):
        view.apply_event(NETWORK_ATTACHMENT_DEFINITION, "ADDED", nad(name, cluster_network))
    for index in range(60):
        interfaces = [(f"nic-{i}", rng.choice(macs), rng.choice([None, "vlan1", "vlan2", "vlan3"]))
                      for i in range(rng.randrange(1, 4))]
        view.apply_event(VIRTUAL_MACHINE, "ADDED", vm(f"vm{index}", interfaces))
    every_vm = [view.get_vm(*key) for key in view.vm_keys()]
    expected = find_duplicate_macs([vm for vm in every_vm if vm is not None], view)
    from_index = [found for mac in view.macs_claimed_more_than_once() for found in duplicates_of_mac(mac, view)]
    assert expected  # the random cluster has duplicates
    assert sorted(from_index, key=repr) == sorted(expected, key=repr)


async def test_an_expired_continue_token_restarts_the_paged_list(apiserver: ApiServer, api_client: ApiClient) -> None:
    for index in range(5):  # three pages of two
        await create(api_client, vm(f"vm{index}", [("nic-1", f"02:00:00:00:01:{index:02x}", None)]))
    expired_page = apiserver.faults.add(method="GET", path_regex=r"virtualmachines\?.*continue=", status=410)
    refused_first_page = apiserver.faults.add(method="GET", path_regex=r"virtualmachines\?limit=2$", status=410)
    view = ClusterView(api_client, settings=FAST)
    await view.start()
    try:
        await view.synced.wait()
        assert (expired_page.hits, refused_first_page.hits) == (1, 1)
        assert len(view.vm_keys()) == 5
        assert view.counts()["macs"] == 5
    finally:
        await view.stop()


async def test_the_first_watch_starts_from_the_resource_version_the_paged_list_ended_at(
    apiserver: ApiServer, api_client: ApiClient,
) -> None:
    # In-process only: the faults (delay-only here) count the requests by their query.
    for index in range(5):  # three pages of two
        created = await create(api_client, vm(f"vm{index}", [("nic-1", f"02:00:00:00:02:{index:02x}", None)]))
    listed_at = created["metadata"]["resourceVersion"]  # nothing is written after the last VM
    from_the_list = apiserver.faults.add(
        method="GET", path_regex=rf"virtualmachines\?(?=.*watch=)(?=.*resourceVersion={listed_at}(&|$))",
        status=0, times=None)
    any_other_watch = apiserver.faults.add(method="GET", path_regex=r"virtualmachines\?.*watch=", status=0,
                                           times=None)
    view = ClusterView(api_client, settings=FAST)
    await view.start()
    try:
        await view.synced.wait()
        await eventually(lambda: from_the_list.hits >= 1, "the VM watch started")
        assert any_other_watch.hits == 0
        await create(api_client, vm("late", [("nic-1", MAC_A, None)]))
        await eventually(lambda: view.get_vm("default", "late") is not None, "a change after the list")
    finally:
        await view.stop()


def test_shared_parts_of_deleted_vms_are_not_kept_forever() -> None:
    view = ClusterView()
    for index in range(5000):  # VMs come and go, each on its own NAD: nothing to share
        obj = vm(f"vm{index}", [("nic-1", f"02:00:00:00:{index >> 8:02x}:{index & 0xFF:02x}", f"net-{index}")])
        view.apply_event(VIRTUAL_MACHINE, "ADDED", obj)
        if index >= 10:
            view.apply_event(VIRTUAL_MACHINE, "DELETED", vm(f"vm{index - 10}", []))
    assert len(view.vm_keys()) == 10
    assert view.shared_values <= 2048 + 30  # rebuilt from the live VMs whenever it doubled
    # Equal parts are still shared after the rebuilds.
    view.apply_event(VIRTUAL_MACHINE, "ADDED", vm("twin-a", [("nic-1", "", "shared-net")]))
    view.apply_event(VIRTUAL_MACHINE, "ADDED", vm("twin-b", [("nic-1", "", "shared-net")]))
    twin_a, twin_b = view.get_vm("default", "twin-a"), view.get_vm("default", "twin-b")
    assert twin_a is not None
    assert twin_b is not None
    assert twin_a.networks is twin_b.networks


async def test_a_watch_the_server_ends_is_resumed_from_its_resource_version_without_a_relist(
    apiserver: ApiServer, api_client: ApiClient,
) -> None:
    apiserver.bookmark_interval = 0.1  # bookmarks keep the resourceVersion current between changes
    vm_watches = apiserver.faults.add(method="GET", path_regex=r"virtualmachines\?.*watch=(?i:true|1)", status=0,
                                      times=None)  # delay-only: it just counts the watch requests
    view = ClusterView(api_client, settings=replace(FAST, watch_timeout=1.0))  # the server ends watches after 1 s
    await view.start()
    try:
        await view.synced.wait()
        await eventually(lambda: vm_watches.hits >= 3, "the server ended the VM watch twice")
        await create(api_client, vm("late", [("nic-1", MAC_A, None)]))
        await eventually(lambda: view.get_vm("default", "late") is not None, "change after the resumes")
        assert view.relists == 0
        assert view.request_failures == 0
    finally:
        await view.stop()


async def test_metrics_show_how_current_the_view_is(apiserver: ApiServer, api_client: ApiClient) -> None:
    """A replica whose watches broke keeps judging against what it saw last: only the metrics tell."""
    def sample(name: str, resource: str | None = None) -> float | None:
        return REGISTRY.get_sample_value(name, {"resource": resource} if resource else {})

    await create(api_client, vm("vm1", [("nic-1", MAC_A, None)]))
    view = ClusterView(api_client, settings=FAST)
    VIEW_METRICS.view = view
    started = time.time()
    await view.start()
    try:
        await view.synced.wait()
        assert sample("nichotplug_cluster_view_synced") == 1
        assert sample("nichotplug_cluster_view_objects", "virtualmachines") == 1
        assert sample("nichotplug_cluster_view_macs") == 1
        contact = sample("nichotplug_cluster_view_last_contact_timestamp_seconds", "virtualmachines")
        assert contact is not None
        assert contact >= started

        def failures() -> float:
            return sample("nichotplug_cluster_view_request_failures_total") or 0.0

        await apiserver.stop()  # the watches break; the view goes on answering from what it has
        before = failures()
        await eventually(lambda: failures() > before, "the failed requests are counted")
        contact = sample("nichotplug_cluster_view_last_contact_timestamp_seconds", "virtualmachines")
        down = failures()
        await eventually(lambda: failures() >= down + 3, "more failed requests")
        # No answer while the server is down: the last contact stays where it was, and ages.
        assert sample("nichotplug_cluster_view_last_contact_timestamp_seconds", "virtualmachines") == contact
        assert sample("nichotplug_cluster_view_objects", "virtualmachines") == 1
    finally:
        await view.stop()
        VIEW_METRICS.view = None
