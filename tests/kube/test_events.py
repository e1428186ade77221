"""EventRecorder against the in-process API server: Events written, aggregated, never raising."""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client import ApiClient, CoreV1Api

from nichotplug.kube.events import EventRecorder, ObjectRef
from nichotplug.testing.server import ApiServer

from .kube_support import create, vm


async def events_in(api: ApiClient, namespace: str = "default") -> list[dict[str, Any]]:
    listed = await CoreV1Api(api).list_namespaced_event(namespace)
    return [api.sanitize_for_serialization(item) for item in listed.items]


async def test_event_names_the_object_and_repeats_are_aggregated(api_client: ApiClient) -> None:
    target = await create(api_client, vm("vm1", []))
    recorder = EventRecorder(api_client, component="nichotplug-test")

    assert await recorder.emit(target, "Warning", "MacMismatch", "spec MAC kept for nic-1")
    assert await recorder.emit(target, "Warning", "MacMismatch", "spec MAC kept for nic-1")
    assert await recorder.emit(target, "Warning", "MacMismatch", "spec MAC kept for nic-1")
    assert await recorder.emit(target, "Normal", "Backfilled", "wrote MACs of nic-1")

    events = await events_in(api_client)
    assert len(events) == 2
    mismatch = next(event for event in events if event["reason"] == "MacMismatch")
    assert mismatch["count"] == 3
    assert mismatch["type"] == "Warning"
    assert mismatch["message"] == "spec MAC kept for nic-1"
    assert mismatch["source"]["component"] == "nichotplug-test"
    assert mismatch["involvedObject"] == {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "namespace": "default", "name": "vm1",
        "uid": target["metadata"]["uid"], "resourceVersion": target["metadata"]["resourceVersion"]}
    assert mismatch["firstTimestamp"]
    assert mismatch["lastTimestamp"]
    backfilled = next(event for event in events if event["reason"] == "Backfilled")
    assert backfilled["count"] == 1
    assert backfilled["type"] == "Normal"


async def test_an_object_ref_works_like_the_object(api_client: ApiClient) -> None:
    recorder = EventRecorder(api_client)
    ref = ObjectRef(api_version="kubevirt.io/v1", kind="VirtualMachine", namespace="kube-system", name="vm9",
                    uid="u-9")
    assert await recorder.emit(ref, "Normal", "Recorded", "observed MACs recorded")
    (event,) = await events_in(api_client, "kube-system")
    assert event["involvedObject"]["name"] == "vm9"
    assert event["involvedObject"]["uid"] == "u-9"
    assert event["source"]["component"] == "nichotplug"


async def test_bad_input_is_logged_not_raised_and_writes_nothing(api_client: ApiClient) -> None:
    target = await create(api_client, vm("vm1", []))
    recorder = EventRecorder(api_client)
    assert not await recorder.emit(target, "Error", "Oops", "not a valid event type")
    assert not await recorder.emit(target, "Normal", "", "no reason")
    assert not await recorder.emit({"metadata": {"name": "x"}}, "Normal", "NoKind", "object without kind")
    assert await events_in(api_client) == []


async def test_an_unreachable_api_server_is_logged_not_raised(apiserver: ApiServer, api_client: ApiClient) -> None:
    target = await create(api_client, vm("vm1", []))
    recorder = EventRecorder(api_client)
    await apiserver.stop()
    assert not await recorder.emit(target, "Warning", "MacMismatch", "lost")
    await apiserver.start()
    assert await recorder.emit(target, "Warning", "MacMismatch", "kept")
    assert [event["message"] for event in await events_in(api_client)] == ["kept"]


async def test_an_aggregated_event_that_expired_is_written_again(api_client: ApiClient) -> None:
    target = await create(api_client, vm("vm1", []))
    recorder = EventRecorder(api_client)
    assert await recorder.emit(target, "Warning", "NotObserved", "nic-2 not observed yet")
    (first,) = await events_in(api_client)
    await CoreV1Api(api_client).delete_namespaced_event(first["metadata"]["name"], "default")  # as the TTL does

    assert await recorder.emit(target, "Warning", "NotObserved", "nic-2 not observed yet")
    (again,) = await events_in(api_client)
    assert again["count"] == 1
    assert again["metadata"]["name"] != first["metadata"]["name"]
