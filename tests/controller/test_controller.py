"""The MAC controller against the in-process API server: record, backfill, races, faults, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import REGISTRY

from nichotplug.controller.reconciler import Outcome
from nichotplug.controller.scope import ControllerScope
from nichotplug.webhook.registration import VALIDATING_WEBHOOK

from .conftest import MAC_A, MAC_B, MAC_C, Cluster, kubectl, running_controller, vm_body, vmi_body, wait_for

# Cluster-level behaviour holds on the real kube-apiserver too (tests naming `apiserver` use its fault injection).
pytestmark = pytest.mark.both_servers


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def vm_patch_counter(apiserver: Any, name: str) -> Any:
    """A do-nothing fault that counts the PATCH requests for VM ``name`` the server receives."""
    return apiserver.faults.add(method="PATCH", path_regex=rf"/virtualmachines/{name}(\?|$)", status=0, times=None)


async def test_a_running_vmis_interfaces_are_recorded_then_backfilled_when_it_stops(
    api_client: ApiClient, cluster: Cluster, kubeconfig: Path,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None, "nic2": None}, run_strategy="Always"))
    await cluster.create_vmi(vmi_body("vm1", {"default": MAC_A.upper(), "nic2": MAC_B}))
    async with running_controller(api_client):
        recorded = await wait_for(lambda: cluster.annotation("vm1"))
        assert json.loads(recorded) == {"default": MAC_A, "nic2": MAC_B}
        assert recorded == json.dumps({"default": MAC_A, "nic2": MAC_B}, separators=(",", ":"))
        assert await cluster.spec_macs("vm1") == {"default": None, "nic2": None}  # running: spec untouched

        await kubectl(kubeconfig, "patch", "vm", "vm1", "--type=merge", "-p", '{"spec":{"runStrategy":"Halted"}}')
        await kubectl(kubeconfig, "delete", "vmi", "vm1")

        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A, "nic2": MAC_B}
        await wait_for(backfilled)
    shown = await kubectl(kubeconfig, "get", "vm", "vm1", "-o",
                          "jsonpath={.spec.template.spec.domain.devices.interfaces[*].macAddress}")
    assert shown.split() == [MAC_A, MAC_B]


async def test_an_unchanged_observation_is_not_written_again(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, run_strategy="Always",
                                    annotation={"default": MAC_A}))
    await cluster.create_vmi(vmi_body("vm1", {"default": MAC_A}))
    patches = vm_patch_counter(apiserver, "vm1")
    async with running_controller(api_client) as controller:
        async def reconciled() -> bool:
            return controller.reconciles > 0
        await wait_for(reconciled)
        await asyncio.sleep(1.2)  # a couple of resyncs
    assert patches.hits == 0


async def test_a_started_vm_is_not_backfilled(api_client: ApiClient, cluster: Cluster) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, run_strategy="Always",
                                    annotation={"default": MAC_A}))
    async with running_controller(api_client) as controller:
        assert await controller.reconciler.reconcile("default/vm1") is Outcome.SKIPPED
    assert await cluster.spec_macs("vm1") == {"default": None}


async def test_a_spec_mac_is_kept_and_an_event_says_so(api_client: ApiClient, cluster: Cluster) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": MAC_C, "nic2": None},
                                    annotation={"default": MAC_A, "nic2": MAC_B}))
    async with running_controller(api_client):
        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_C, "nic2": MAC_B}
        await wait_for(backfilled)
        events = await wait_for(lambda: cluster.events("vm1"))
        await asyncio.sleep(1.2)  # resyncs must not repeat the Event
    mismatch = [e for e in await cluster.events("vm1") if e[1] == "MacMismatch"]
    assert len(mismatch) == 1, events
    type_, _, message, count = mismatch[0]
    assert type_ == "Warning"
    assert count == 1
    assert MAC_C in message
    assert MAC_A in message
    assert "default" in message


async def test_names_never_observed_are_left_alone_with_an_event(api_client: ApiClient, cluster: Cluster) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None, "nic2": None}, annotation={"default": MAC_A}))
    async with running_controller(api_client):
        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A, "nic2": None}
        await wait_for(backfilled)
        reasons = await wait_for(lambda: _reasons(cluster, "vm1"))
    assert "MacNotObserved" in reasons


async def _reasons(cluster: Cluster, name: str) -> set[str]:
    return {event[1] for event in await cluster.events(name)}


async def test_an_unparsable_annotation_is_an_event_and_a_metric_not_a_crash_loop(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    await cluster.create_vm(vm_body("bad", macs={"default": None}, annotation='{"default": "zz"'))
    await cluster.create_vm(vm_body("good", macs={"default": None}, annotation={"default": MAC_A}))
    errors_before = metric("nichotplug_mac_annotation_errors_total")
    patches = vm_patch_counter(apiserver, "bad")
    async with running_controller(api_client):
        async def good_backfilled() -> bool:
            return await cluster.spec_macs("good") == {"default": MAC_A}
        await wait_for(good_backfilled)
        await wait_for(lambda: _reasons(cluster, "bad"))
        await asyncio.sleep(1.2)
    assert "InvalidMacAnnotation" in await _reasons(cluster, "bad")
    assert metric("nichotplug_mac_annotation_errors_total") > errors_before
    assert patches.hits == 0
    assert await cluster.spec_macs("bad") == {"default": None}


async def test_a_partly_bad_annotation_backfills_its_valid_entries_and_names_the_rest_in_an_event(
    api_client: ApiClient, cluster: Cluster,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None, "nic2": None},
                                    annotation={"default": MAC_A, "nic2": "zz:zz"}))
    async with running_controller(api_client):
        async def default_backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A, "nic2": None}
        await wait_for(default_backfilled)
        events = await wait_for(lambda: _reasons_of(cluster, "vm1", "InvalidMacAnnotation"))
    assert "no valid MAC for interface(s) nic2" in events[0]
    assert "only its valid entries are backfilled" in events[0]


async def test_a_user_edit_racing_the_backfill_is_not_lost(
    api_client: ApiClient, apiserver: Any, cluster: Cluster, kubeconfig: Path,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
    # Hold the controller's first PATCH at the server while the user edits the VM.
    held = apiserver.faults.add(method="PATCH", path_regex=r"/virtualmachines/vm1", status=0, times=1, delay=1.0)
    conflicts_before = metric("nichotplug_reconcile_total", controller="mac", result="conflict")
    async with running_controller(api_client):
        async def patch_held() -> bool:
            return bool(held.hits)
        await wait_for(patch_held)
        await kubectl(kubeconfig, "label", "vm", "vm1", "owner=alice")

        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A}
        await wait_for(backfilled)
    vm = await cluster.get_vm("vm1")
    assert vm["metadata"]["labels"]["owner"] == "alice"
    assert metric("nichotplug_reconcile_total", controller="mac", result="conflict") > conflicts_before


@pytest.mark.parametrize("status", [409, 422])
async def test_conflicts_are_retried_until_the_backfill_lands(
    api_client: ApiClient, apiserver: Any, cluster: Cluster, status: int,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
    failing = apiserver.faults.add(method="PATCH", path_regex=r"/virtualmachines/vm1", status=status, times=3,
                                   message="Operation cannot be fulfilled: the object has been modified")
    async with running_controller(api_client):
        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A}
        await wait_for(backfilled)
    assert failing.hits == 3


def webhook_answers_patches_of_vm1(apiserver: Any, status: int, message: str, times: int | None) -> Any:
    """A validating webhook's refusal of every PATCH of vm1, as the API server passes it on."""
    return apiserver.faults.add(method="PATCH", path_regex=r"/virtualmachines/vm1", status=status, times=times,
                                message=f'admission webhook "{VALIDATING_WEBHOOK.name}" denied the request: {message}')


async def test_a_webhook_refusing_the_write_is_not_retried_hot(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
    denied_before = metric("nichotplug_controller_writes_denied_total", write="backfill")
    refusals = webhook_answers_patches_of_vm1(
        apiserver, 409, "mac address be:40:c3:88:75:7c is already used by default/other", times=None)
    async with running_controller(api_client, denied_backoff=60.0) as controller:
        await wait_for(lambda: _reasons(cluster, "vm1"))
        await asyncio.sleep(1.5)  # three resyncs and an unrelated edit would each have retried a hot loop
        await cluster.relabel_vm("vm1", "touched", "yes")  # a PUT: the PATCH fault does not see it
        await asyncio.sleep(0.5)
        assert controller.reconciler.denied_retry_in("default/vm1") > 30
    assert refusals.hits == 1
    events = [e for e in await cluster.events("vm1") if e[1] == "MacWriteDenied"]
    assert len(events) == 1
    assert "already used by default/other" in events[0][2]
    assert metric("nichotplug_controller_writes_denied_total", write="backfill") == denied_before + 1
    assert await cluster.spec_macs("vm1") == {"default": None}


async def test_a_webhook_that_could_not_judge_yet_is_retried_soon_not_reported_as_a_refusal(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    # What our own validating webhook answers while a replica is still reading the cluster (503).
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
    denied_before = metric("nichotplug_controller_writes_denied_total", write="backfill")
    starting = webhook_answers_patches_of_vm1(
        apiserver, 503, "nichotplug is starting and has not finished reading the cluster's VMs, VMIs and networks",
        times=2)
    async with running_controller(api_client, denied_backoff=600.0):
        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A}
        await wait_for(backfilled)
    assert starting.hits == 2
    assert "MacWriteDenied" not in await _reasons(cluster, "vm1")
    assert metric("nichotplug_controller_writes_denied_total", write="backfill") == denied_before


async def test_it_survives_the_api_server_stopping_and_coming_back(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
    async with running_controller(api_client):
        async def first() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A}
        await wait_for(first)
        await apiserver.restart()
        await cluster.create_vm(vm_body("vm2", macs={"default": None}, annotation={"default": MAC_B}))

        async def second() -> bool:
            return await cluster.spec_macs("vm2") == {"default": MAC_B}
        await wait_for(second, within=30)


async def test_a_new_controller_converges_on_what_changed_while_none_ran(
    api_client: ApiClient, cluster: Cluster,
) -> None:
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, run_strategy="Always"))
    await cluster.create_vmi(vmi_body("vm1", {"default": MAC_A}))
    async with running_controller(api_client):
        await wait_for(lambda: cluster.annotation("vm1"))
    # Stopped while no controller runs: the next one must pick it up from its fresh list.
    await cluster.merge_vm("vm1", {"spec": {"runStrategy": "Halted"}})
    await cluster.delete_vmi("vm1")
    async with running_controller(api_client):
        async def backfilled() -> bool:
            return await cluster.spec_macs("vm1") == {"default": MAC_A}
        await wait_for(backfilled)


async def test_it_converges_after_its_watch_expires(tmp_path: Path) -> None:
    from kubernetes_asyncio import client, config

    from nichotplug.testing.server import ApiServer

    # A server that keeps only 5 events of history: a watch that falls further behind gets 410.
    async with ApiServer(watch_history=5) as server:
        configuration = client.Configuration()
        await config.load_kube_config(config_file=str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                                      client_configuration=configuration)
        async with client.ApiClient(configuration) as api:
            cluster = Cluster(api)
            await cluster.create_vm(vm_body("vm1", macs={"default": None}, run_strategy="Always"))
            await cluster.create_vmi(vmi_body("vm1", {"default": MAC_A}))
            async with running_controller(api, resync_period=60.0) as controller:
                await wait_for(lambda: cluster.annotation("vm1"))
                # Cut the watches and keep them from coming back while the VM stops and more than
                # five other changes happen; then let them resume from their old resourceVersion.
                server.faults.add(method="GET", path_regex=r"watch=", status=503, times=None)
                await server.restart()
                await cluster.merge_vm("vm1", {"spec": {"runStrategy": "Halted"}})
                await cluster.delete_vmi("vm1")
                for index in range(6):
                    await cluster.create_vm(vm_body(f"filler{index}", macs={"default": MAC_B[:-2] + f"{index:02x}"}))
                server.faults.clear()

                async def backfilled() -> bool:
                    return await cluster.spec_macs("vm1") == {"default": MAC_A}
                await wait_for(backfilled, within=30)
                view: Any = controller.cache
                assert view.relists > 0


async def test_a_recorded_mac_another_vm_holds_is_not_even_sent_to_our_webhook(
    api_client: ApiClient, apiserver: Any, cluster: Cluster, tmp_path: Path,
) -> None:
    from nichotplug.controller import MacController

    from .conftest import serving_webhooks, started_view

    # Both exist before nichotplug is installed: vm1's recorded MACs are other's spec MAC and a free one.
    await cluster.create_vm(vm_body("other", macs={"default": MAC_A}, run_strategy="Always"))
    await cluster.create_vm(vm_body("vm1", macs={"default": None, "nic2": None},
                                    annotation={"default": MAC_A, "nic2": MAC_B}))
    patches = vm_patch_counter(apiserver, "vm1")
    async with started_view(api_client) as view, serving_webhooks(api_client, view, tmp_path):
        controller = MacController(api_client, view, workers=2, resync_period=0.3, audit_period=60.0)
        task = asyncio.create_task(controller.run())
        try:
            events = await wait_for(lambda: _reasons_of(cluster, "vm1", "MacNotBackfilled"))
            await asyncio.sleep(1.2)  # four resyncs
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    # One write, of the free MAC only; no denial to report, no retries; the Event is not repeated. That
    # write passes our mutating webhook as a cold edit, which gives the withheld interface a fresh MAC.
    assert patches.hits == 1
    assert await _denials(cluster, "vm1") == []
    assert len(await _reasons_of(cluster, "vm1", "MacNotBackfilled")) == 1
    assert "VM default/other interface default" in events[0]
    macs = await cluster.spec_macs("vm1")
    assert macs["nic2"] == MAC_B
    assert macs["default"] not in (None, MAC_A)


async def _reasons_of(cluster: Cluster, name: str, reason: str) -> list[str]:
    return [event[2] for event in await cluster.events(name) if event[1] == reason]


async def _denials(cluster: Cluster, name: str) -> list[str]:
    return [event[2] for event in await cluster.events(name) if event[1] == "MacWriteDenied"]


async def test_recording_keeps_the_vms_other_annotations(api_client: ApiClient, cluster: Cluster) -> None:
    body = vm_body("vm1", macs={"default": None}, run_strategy="Always")
    body["metadata"]["annotations"] = {"harvesterhci.io/vmRunStrategy": "Always", "team": "blue"}
    await cluster.create_vm(body)
    await cluster.create_vmi(vmi_body("vm1", {"default": MAC_A}))
    async with running_controller(api_client):
        await wait_for(lambda: cluster.annotation("vm1"))
    annotations = (await cluster.get_vm("vm1"))["metadata"]["annotations"]
    assert annotations["team"] == "blue"
    assert annotations["harvesterhci.io/vmRunStrategy"] == "Always"


async def _create_in(api_client: ApiClient, namespace: str, body: dict[str, Any]) -> None:
    from kubernetes_asyncio.client import CoreV1Api, CustomObjectsApi

    with contextlib.suppress(ApiException):  # already there from an earlier step
        await CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    body = {**body, "metadata": {**body["metadata"], "namespace": namespace}}
    await CustomObjectsApi(api_client).create_namespaced_custom_object("kubevirt.io", "v1", namespace,
                                                                       "virtualmachines", body)


async def test_a_scoped_controller_writes_only_vms_in_its_namespaces(
    api_client: ApiClient, cluster: Cluster,
) -> None:
    from kubernetes_asyncio.client import CustomObjectsApi

    await cluster.create_vm(vm_body("outside", macs={"default": None}, annotation={"default": MAC_A}))
    await _create_in(api_client, "team-a", vm_body("inside", macs={"default": None}, annotation={"default": MAC_B}))
    async with running_controller(api_client, scope=ControllerScope.of(["team-a"])) as controller:
        async def inside_backfilled() -> bool:
            vm = await CustomObjectsApi(api_client).get_namespaced_custom_object(
                "kubevirt.io", "v1", "team-a", "virtualmachines", "inside")
            return bool(vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0].get("macAddress"))
        await wait_for(inside_backfilled)
        # Several resyncs later (each queues every VM it may write), the VM outside is still untouched.
        done = controller.reconciles
        await wait_for(lambda: _true_when(controller.reconciles >= done + 3))
        assert await cluster.spec_macs("outside") == {"default": None}
        assert await _reasons(cluster, "outside") == set()


async def _true_when(condition: bool) -> bool:
    return condition


async def test_an_outage_is_one_warning_and_one_recovery_line_not_one_per_vm(
    api_client: ApiClient, apiserver: Any, cluster: Cluster, caplog: pytest.LogCaptureFixture,
) -> None:
    names = [f"vm{number}" for number in range(6)]
    for number, name in enumerate(names):  # each its own recorded MAC: a shared one is not backfilled
        recorded = {"default": f"02:11:22:33:46:{number:02x}"}
        await cluster.create_vm(vm_body(name, macs={"default": None}, annotation=recorded))
    outage = apiserver.faults.add(method="PATCH", path_regex=r"/virtualmachines/", status=503, times=None,
                                  message="the API server is restarting")
    caplog.set_level(logging.DEBUG, logger="nichotplug.controller.reconciler")
    async with running_controller(api_client) as controller:
        await wait_for(lambda: _true_when(controller.reconciler.failures.failures >= 2 * len(names)))
        apiserver.faults.clear()

        async def all_backfilled() -> bool:
            return all([(await cluster.spec_macs(name))["default"] for name in names])
        await wait_for(all_backfilled)
    assert outage.hits >= 2 * len(names)
    records = [r for r in caplog.records if r.name == "nichotplug.controller.reconciler"]
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("the controller's API calls are failing (could not write the backfill of VM default/")
    assert "the API server is restarting" in warnings[0]
    [recovered] = [r.getMessage() for r in records if r.levelno == logging.INFO and "work again" in r.getMessage()]
    failed = int(recovered.split(": ", 1)[1].split()[0])
    assert failed >= 2 * len(names)
    details = [r for r in records if r.levelno == logging.DEBUG and "could not write the backfill" in r.getMessage()]
    assert len(details) == failed


async def test_a_scoped_audit_reports_a_duplicate_only_on_the_vms_in_its_namespaces(
    api_client: ApiClient, cluster: Cluster,
) -> None:
    from kubernetes_asyncio.client import CoreV1Api

    await cluster.create_vm(vm_body("outside", macs={"default": MAC_C}, run_strategy="Always"))
    await _create_in(api_client, "team-a", vm_body("inside", macs={"default": MAC_C}, run_strategy="Always"))
    async with running_controller(api_client, scope=ControllerScope.of(["team-a"])) as controller:
        async def inside_told() -> bool:
            events = (await CoreV1Api(api_client).list_namespaced_event("team-a")).items
            return any(e.reason == "DuplicateMac" and e.involved_object.name == "inside" for e in events)
        await wait_for(inside_told)
        [duplicate] = await controller.auditor.audit()
        assert {owner.vm for owner in duplicate.owners} == {"inside", "outside"}  # the view is cluster-wide
        assert metric("nichotplug_duplicate_macs") == 1
    assert "DuplicateMac" not in await _reasons(cluster, "outside")  # no write outside the scope
