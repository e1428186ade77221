"""Leader election around the controller: one replica reconciles; a dead or cut-off leader hands over."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from prometheus_client import REGISTRY

from nichotplug.controller import MacController, run_controller

from .conftest import MAC_A, MAC_B, Cluster, started_view, vm_body, wait_for

# Cluster-level behaviour holds on the real kube-apiserver too (tests naming `apiserver` use its fault injection).
pytestmark = pytest.mark.both_servers

LEASE = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.2}
LEASE_PATH = r"/apis/coordination\.k8s\.io/v1/namespaces/default/leases/nichotplug-controller"


@contextlib.asynccontextmanager
async def replica(api: ApiClient, identity: str) -> AsyncIterator[tuple[MacController, asyncio.Task[None]]]:
    """One controller replica (its own cluster view) campaigning for the Lease."""
    async with started_view(api) as view:
        controller = MacController(api, view, workers=2, resync_period=0.3, audit_period=5.0,
                                   retry_base_delay=0.02, retry_max_delay=0.3)
        task = asyncio.create_task(run_controller(api, view, namespace="default", identity=identity,
                                                  controller=controller, **LEASE))
        try:
            yield controller, task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def backfilled(cluster: Cluster, name: str, mac: str) -> bool:
    return await cluster.spec_macs(name) == {"default": mac}


async def test_two_replicas_exactly_one_reconciles_and_a_killed_leader_hands_over(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    # Each VM its own recorded MAC: a MAC recorded for two VMs on one network is not backfilled.
    recorded = [f"02:11:22:33:45:{index:02x}" for index in range(3)]
    for index in range(3):
        await cluster.create_vm(vm_body(f"vm{index}", macs={"default": None}, annotation={"default": recorded[index]}))
    async with replica(api_client, "replica-a") as (first, first_task), \
            replica(api_client, "replica-b") as (second, second_task):
        for index in range(3):
            await wait_for(lambda index=index: backfilled(cluster, f"vm{index}", recorded[index]))  # type: ignore[misc]
        await asyncio.sleep(0.5)  # resyncs: a follower that reconciled would show it now
        working = [c for c in (first, second) if c.reconciles]
        assert len(working) == 1
        assert [c for c in (first, second) if c.queue is not None] == working
        leader, leader_task = (first, first_task) if working[0] is first else (second, second_task)
        follower = second if leader is first else first

        # Kill the leader the hard way: it cannot release the Lease (its last write fails), so the
        # follower has to wait for the Lease to expire.
        apiserver.faults.add(method="PUT", path_regex=LEASE_PATH, status=500, times=1)
        leader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader_task
        await cluster.create_vm(vm_body("late", macs={"default": None}, annotation={"default": MAC_B}))
        await wait_for(lambda: backfilled(cluster, "late", MAC_B), within=3 * LEASE["lease_duration"] + 2)
        assert follower.reconciles > 0
        assert leader.queue is None


async def test_a_leader_that_cannot_renew_stops_reconciling_at_once(
    api_client: ApiClient, apiserver: Any, cluster: Cluster,
) -> None:
    async with replica(api_client, "only") as (controller, _task):
        async def leading() -> bool:
            return controller.queue is not None
        await wait_for(leading)
        assert REGISTRY.get_sample_value("nichotplug_leader", {"name": "nichotplug-controller"}) == 1
        apiserver.faults.add(method="PUT", path_regex=LEASE_PATH, status=500, times=None)

        async def stopped() -> bool:
            return controller.queue is None
        await wait_for(stopped, within=LEASE["renew_deadline"] + 2)
        assert REGISTRY.get_sample_value("nichotplug_leader", {"name": "nichotplug-controller"}) == 0
        await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
        await asyncio.sleep(0.6)  # two resync periods: a controller still reconciling would backfill
        assert await cluster.spec_macs("vm1") == {"default": None}

        apiserver.faults.clear()
        await wait_for(lambda: backfilled(cluster, "vm1", MAC_A), within=3 * LEASE["lease_duration"] + 2)


async def test_the_serve_seam_runs_the_controller_and_releases_the_lease_on_stop(
    api_client: ApiClient, cluster: Cluster, monkeypatch: Any,
) -> None:
    import argparse

    from kubernetes_asyncio.client import CoordinationV1Api

    from nichotplug.controller.run import start_controller

    monkeypatch.setenv("POD_NAME", "nichotplug-0")
    await cluster.create_vm(vm_body("vm1", macs={"default": None}, annotation={"default": MAC_A}))
    async with started_view(api_client) as view:
        stop = await start_controller(api_client=api_client, cluster=view, args=argparse.Namespace(namespace="default"))
        try:
            await wait_for(lambda: backfilled(cluster, "vm1", MAC_A))
            lease = await CoordinationV1Api(api_client).read_namespaced_lease("nichotplug-controller", "default")
            assert lease.spec.holder_identity == "nichotplug-0"
        finally:
            await stop()
    lease = await CoordinationV1Api(api_client).read_namespaced_lease("nichotplug-controller", "default")
    assert not lease.spec.holder_identity  # released: the next replica need not wait for it to expire
