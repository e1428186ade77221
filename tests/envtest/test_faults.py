"""Faults on a real control plane: what users live through, not what our test double imitates.

Each test breaks the real kube-apiserver, etcd, or one of our processes while work is under way, and
asserts what an operator would check afterwards: every VM converged, no write lost or doubled, no user
edit overwritten, no write admitted unchecked.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from controller.conftest import Cluster, running_controller, started_view, vm_body, wait_for
from e2e.test_kubectl_e2e import register_webhooks, start_serve
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, CustomObjectsApi
from kubernetes_asyncio.client.exceptions import ApiException

from nichotplug.kube.client import load_api_client
from nichotplug.testing.envtest import RealApiServer

pytestmark = [pytest.mark.real, pytest.mark.slow]

HALTED_VMS = 200
LEASE_SECONDS = 2.0


def mac(index: int, nic: int) -> str:
    return f"02:fa:{nic:02x}:00:{index // 256:02x}:{index % 256:02x}"


@pytest_asyncio.fixture
async def real_api(real_apiserver: RealApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    api = await load_api_client(real_apiserver.write_kubeconfig(tmp_path / "kubeconfig"))
    try:
        yield api
    finally:
        await api.close()
        await asyncio.to_thread(real_apiserver.reset)


async def test_an_api_server_restart_during_the_backfill_loses_and_doubles_nothing(
        real_apiserver: RealApiServer, real_api: ApiClient) -> None:
    cluster = Cluster(real_api)
    for index in range(HALTED_VMS):
        await cluster.create_vm(vm_body(f"halted-{index}", macs={"default": None, "nic-1": None},
                                        annotation={"default": mac(index, 0), "nic-1": mac(index, 1)}))
    edited = [f"halted-{index}" for index in range(0, HALTED_VMS, 20)]

    async def backfilled(name: str) -> bool:
        return None not in (await cluster.spec_macs(name)).values()

    async def count_backfilled() -> int:
        return sum([await backfilled(f"halted-{index}") for index in range(HALTED_VMS)])

    async with running_controller(real_api, resync_period=1.0):
        await wait_for(lambda: _at_least(count_backfilled, 10), within=60)
        restart = asyncio.create_task(asyncio.to_thread(real_apiserver.restart_apiserver))
        # Users keep editing while the server goes away and comes back (their writes retry like kubectl's).
        for name in edited:
            await _retrying(lambda name=name: cluster.merge_vm(  # type: ignore[misc]
                name, {"metadata": {"labels": {"edited-by": "user"}}}))
        await restart
        await wait_for(lambda: _at_least(count_backfilled, HALTED_VMS), within=120, interval=0.5)

    listed = await _retrying(lambda: CustomObjectsApi(real_api).list_namespaced_custom_object(
        "kubevirt.io", "v1", "default", "virtualmachines"))
    by_name = {vm["metadata"]["name"]: vm for vm in listed["items"]}
    for index in range(HALTED_VMS):
        vm = by_name[f"halted-{index}"]
        interfaces = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        assert [i["macAddress"] for i in interfaces] == [mac(index, 0), mac(index, 1)]
        assert vm["metadata"]["generation"] == 2, f"{vm['metadata']['name']}: one spec write, not more"
    for name in edited:
        assert by_name[name]["metadata"]["labels"]["edited-by"] == "user"
        assert by_name[name]["metadata"]["labels"]["app"] == "test"


async def _at_least(count: Any, wanted: int) -> bool:
    return bool(await count() >= wanted)


async def _retrying(call: Any, within: float = 90.0) -> Any:
    """``call()`` again while the API server is away (connection errors, 5xx), as kubectl users retry.

    A restart on a busy two-core machine can take tens of seconds before /readyz; the bound is generous.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: BaseException | None = None
    while loop.time() < deadline:
        try:
            return await call()
        except ApiException as error:
            if error.status not in (0, 500, 503, 504):
                raise
            last = error
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            last = error  # a kept-alive connection to the server that went away, or the server not back yet
        await asyncio.sleep(0.2)
    raise AssertionError(f"the call never went through within {within:.0f} s; last error: {last!r}")


async def test_a_watch_cut_by_a_restart_over_a_compacted_etcd_relists_and_converges(
        real_apiserver: RealApiServer, real_api: ApiClient) -> None:
    cluster = Cluster(real_api)
    await cluster.create_vm(vm_body("kept", macs={"default": mac(1, 0)}))
    await cluster.create_vm(vm_body("dropped", macs={"default": mac(2, 0)}))
    async with started_view(real_api) as view:
        await wait_for(lambda: _has_vms(view, {"kept", "dropped"}))
        relists_before = view.relists

        # The server goes away and its store is compacted meanwhile: the view's resourceVersion is
        # older than anything the new server can replay, so it must list again (410 Expired).
        await asyncio.to_thread(real_apiserver.restart_apiserver, kill=True)
        await asyncio.to_thread(real_apiserver.compact_etcd)
        await _retrying(lambda: cluster.create_vm(vm_body("added", macs={"default": mac(3, 0)})))
        await _retrying(lambda: CustomObjectsApi(real_api).delete_namespaced_custom_object(
            "kubevirt.io", "v1", "default", "virtualmachines", "dropped"))

        await wait_for(lambda: _has_vms(view, {"kept", "added"}, exactly=True), within=60, interval=0.2)
        assert view.owners_of_mac(mac(2, 0)) == frozenset()
        assert {owner.vm for owner in view.owners_of_mac(mac(3, 0))} == {"added"}
    assert view.relists > relists_before  # the 410 was met by a fresh list, not a resumed watch


async def _has_vms(view: Any, names: set[str], *, exactly: bool = False) -> bool:
    present = {name for namespace, name in view.vm_keys() if namespace == "default"}
    return present == names if exactly else names <= present


REPLICA = textwrap.dedent("""
    import asyncio, sys
    from nichotplug.controller import run_controller
    from nichotplug.kube.cache import ClusterView
    from nichotplug.kube.client import load_api_client

    async def main(kubeconfig, identity, lease):
        api = await load_api_client(kubeconfig)
        view = ClusterView(api)
        await view.start()
        await view.synced.wait()
        print("synced", flush=True)
        await run_controller(api, view, namespace="default", identity=identity, lease_duration=lease,
                             renew_deadline=lease * 0.75, retry_period=0.2, resync_period=0.5)

    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
""")


async def _start_replica(kubeconfig: Path, identity: str, log: Path) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", REPLICA, str(kubeconfig), identity, str(LEASE_SECONDS), stdout=out, stderr=out)


async def test_a_killed_leader_is_replaced_within_the_lease_and_the_work_is_finished(
        real_apiserver: RealApiServer, real_api: ApiClient, tmp_path: Path) -> None:
    kubeconfig = real_apiserver.write_kubeconfig(tmp_path / "replica-kubeconfig")
    cluster = Cluster(real_api)
    leases = CoordinationV1Api(real_api)
    replicas = {name: await _start_replica(kubeconfig, name, tmp_path / f"{name}.log") for name in ("a", "b")}
    try:
        await cluster.create_vm(vm_body("early", macs={"default": None}, annotation={"default": mac(10, 0)}))
        await wait_for(lambda: _spec_mac_is(cluster, "early", mac(10, 0)), within=60)
        lease = await leases.read_namespaced_lease("nichotplug-controller", "default")
        leader = lease.spec.holder_identity
        assert leader in replicas

        replicas[leader].send_signal(signal.SIGKILL)  # no chance to release the Lease
        await replicas[leader].wait()
        await cluster.create_vm(vm_body("late", macs={"default": None}, annotation={"default": mac(11, 0)}))

        # The follower must wait for the Lease to expire, then take it and finish the work.
        await wait_for(lambda: _spec_mac_is(cluster, "late", mac(11, 0)), within=4 * LEASE_SECONDS + 10)
        lease = await leases.read_namespaced_lease("nichotplug-controller", "default")
        assert lease.spec.holder_identity == ({"a", "b"} - {leader}).pop()
        assert lease.spec.lease_transitions >= 1
    finally:
        for process in replicas.values():
            if process.returncode is None:
                process.kill()
                await process.wait()


async def _spec_mac_is(cluster: Cluster, name: str, wanted: str) -> bool:
    return (await cluster.spec_macs(name)).get("default") == wanted


async def test_a_killed_webhook_admits_no_write_unchecked(
        real_apiserver: RealApiServer, real_api: ApiClient, tmp_path: Path) -> None:
    kubeconfig = real_apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    url, ca_file, serve = await start_serve(kubeconfig, tmp_path)
    cluster = Cluster(real_api)
    try:
        await register_webhooks(kubeconfig, tmp_path, url, ca_file)
        owner = await cluster.create_vm(vm_body("owner", macs={"default": None}))
        taken = owner["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"]

        outcomes: list[tuple[str, int]] = []

        async def writes() -> None:
            for index in range(60):
                for name, macs in ((f"dup-{index}", {"default": taken}), (f"new-{index}", {"default": None})):
                    try:
                        await cluster.create_vm(vm_body(name, macs=macs))
                        outcomes.append((name, 201))
                    except ApiException as refused:
                        outcomes.append((name, refused.status))
                await asyncio.sleep(0.02)

        writer = asyncio.create_task(writes())
        await wait_for(lambda: _async_len(outcomes, 20))
        serve.send_signal(signal.SIGKILL)
        await serve.wait()
        await writer
    finally:
        if serve.returncode is None:
            serve.kill()
            await serve.wait()

    created_after_kill = [name for name, status in outcomes[-20:] if status == 201]
    assert created_after_kill == [], "with the validating webhook gone, its failure policy must refuse writes"
    assert all(status != 201 for name, status in outcomes if name.startswith("dup-"))
    listed = await CustomObjectsApi(real_api).list_namespaced_custom_object("kubevirt.io", "v1", "default",
                                                                            "virtualmachines")
    for vm in listed["items"]:
        interfaces = vm["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"]
        assert all(i.get("macAddress") for i in interfaces), f"{vm['metadata']['name']} skipped the webhooks"
        assert not vm["metadata"]["name"].startswith("dup-")
    assert {status for name, status in outcomes[:20] if name.startswith("new-")} == {201}


async def _async_len(items: list[Any], wanted: int) -> bool:
    return len(items) >= wanted
