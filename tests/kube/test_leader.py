"""LeaderElector against the in-process API server's coordination.k8s.io/v1 Leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api

from nichotplug.kube.leader import LeaderElector
from nichotplug.testing.server import ApiServer

from .kube_support import client_for, eventually

# Short terms so take-overs happen within a test: a lease of 2 s, renewed every 0.2 s.
TERMS = {"lease_duration": 2.0, "renew_deadline": 1.5, "retry_period": 0.2}


class Candidate:
    """An elector running in a task, recording what its callbacks saw."""

    def __init__(self, elector: LeaderElector) -> None:
        self.elector = elector
        self.started = 0
        self.stopped = 0
        self.work_cancelled = 0
        self.task: asyncio.Task[None] | None = None

    async def _lead(self) -> None:
        self.started += 1
        try:
            await asyncio.Event().wait()  # the controller's work: runs until leadership ends
        except asyncio.CancelledError:
            self.work_cancelled += 1
            raise

    def _stop(self) -> None:
        self.stopped += 1

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self._lead, self._stop))

    async def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest_asyncio.fixture
async def second_client(apiserver: ApiServer, tmp_path: Path) -> AsyncIterator[ApiClient]:
    """Another replica's own connection to the same API server."""
    api = await client_for(apiserver, tmp_path)
    try:
        yield api
    finally:
        await api.close()


async def holder(api: ApiClient) -> str:
    lease = await CoordinationV1Api(api).read_namespaced_lease("nichotplug", "default")
    return str(lease.spec.holder_identity or "")


async def transitions(api: ApiClient) -> int:
    lease = await CoordinationV1Api(api).read_namespaced_lease("nichotplug", "default")
    return int(lease.spec.lease_transitions or 0)


def leader_logs(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(record.levelname, record.getMessage()) for record in caplog.records
            if record.name == "nichotplug.kube.leader" and "stopped leading" in record.getMessage()]


async def leader_then_follower(leader_api: ApiClient, follower_api: ApiClient) -> tuple[Candidate, Candidate]:
    """replica-a started and leading, then replica-b started (both with the short test terms)."""
    leader = Candidate(LeaderElector(leader_api, "nichotplug", "default", "replica-a", **TERMS))
    follower = Candidate(LeaderElector(follower_api, "nichotplug", "default", "replica-b", **TERMS))
    leader.start()
    await eventually(lambda: leader.elector.is_leader, "replica-a leads")
    follower.start()
    return leader, follower


async def test_two_candidates_one_leader_then_a_clean_hand_over(api_client: ApiClient, second_client: ApiClient,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    first, second = await leader_then_follower(api_client, second_client)
    try:
        await eventually(lambda: second.task is not None and second.elector._observed is not None,
                         "replica-b has looked at the lease")
        assert (first.elector.is_leader, second.elector.is_leader) == (True, False)
        assert await holder(api_client) == "replica-a"
        assert (first.started, second.started) == (1, 0)
        assert await transitions(api_client) == 0  # renewals are no transitions

        caplog.set_level(logging.INFO, logger="nichotplug.kube.leader")
        await first.cancel()  # a clean shutdown releases the lease
        assert (first.stopped, first.work_cancelled) == (1, 1)
        # Nothing went wrong, so nothing to warn about.
        assert leader_logs(caplog) == [("INFO", "replica-a released lease default/nichotplug and stopped leading")]
        await eventually(lambda: second.elector.is_leader, "replica-b takes over", within=TERMS["lease_duration"])
        assert await holder(api_client) == "replica-b"
        assert await transitions(api_client) == 1  # taking a released Lease is a transition, as in client-go
        await eventually(lambda: second.started == 1, "replica-b's work starts")
    finally:
        await first.cancel()
        await second.cancel()


async def test_a_leader_that_dies_is_replaced_once_its_lease_expires(apiserver: ApiServer, tmp_path: Path,
                                                                     second_client: ApiClient) -> None:
    doomed_api = await client_for(apiserver, tmp_path / "doomed")
    doomed, survivor = await leader_then_follower(doomed_api, second_client)
    try:
        await doomed_api.close()  # replica-a can no longer reach the API server: it cannot renew
        await eventually(lambda: not doomed.elector.is_leader, "replica-a gives up after its renew deadline")
        assert doomed.stopped == 1
        assert doomed.work_cancelled == 1
        await eventually(lambda: survivor.elector.is_leader, "replica-b takes over",
                         within=2 * TERMS["lease_duration"])
        assert await holder(second_client) == "replica-b"
    finally:
        await doomed.cancel()
        await survivor.cancel()


async def test_a_lease_taken_by_someone_else_stops_leading_at_once(api_client: ApiClient,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    leader = Candidate(LeaderElector(api_client, "nichotplug", "default", "replica-a",
                                     lease_duration=30.0, renew_deadline=20.0, retry_period=0.2))
    leader.start()
    try:
        await eventually(lambda: leader.elector.is_leader, "replica-a leads")
        leases = CoordinationV1Api(api_client)
        lease = await leases.read_namespaced_lease("nichotplug", "default")
        lease.spec.holder_identity = "intruder"
        await leases.replace_namespaced_lease("nichotplug", "default", lease)

        # Far sooner than the 20 s renew deadline: seeing another holder ends leadership.
        await eventually(lambda: leader.stopped == 1, "on_stopped_leading called", within=5.0)
        assert not leader.elector.is_leader
        assert leader.work_cancelled == 1
        assert await holder(api_client) == "intruder"
        assert leader_logs(caplog) == [("WARNING", "replica-a lost lease default/nichotplug and stopped leading")]
    finally:
        await leader.cancel()


@pytest.mark.parametrize(("lease", "renew", "retry"), [(10, 10, 2), (15, 10, 0), (15, 10, 12), (5, 10, 2)])
def test_inconsistent_durations_are_refused(api_client: ApiClient, lease: float, renew: float,
                                            retry: float) -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        LeaderElector(api_client, "nichotplug", "default", "a", lease, renew, retry)


def test_identity_and_namespace_come_from_the_pod(api_client: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "nichotplug-7d9f-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "harvester-system")
    elector = LeaderElector(api_client, "nichotplug")
    assert (elector.identity, elector.namespace) == ("nichotplug-7d9f-abcde", "harvester-system")
    with pytest.raises(ValueError, match="name"):
        LeaderElector(api_client, "")


async def test_api_server_outage_stops_leading_and_the_election_resumes_after(apiserver: ApiServer,
                                                                               api_client: ApiClient) -> None:
    leader = Candidate(LeaderElector(api_client, "nichotplug", "default", "replica-a", **TERMS))
    leader.start()
    try:
        await eventually(lambda: leader.elector.is_leader, "replica-a leads")
        await apiserver.stop()
        await eventually(lambda: leader.stopped == 1, "leadership ends when the lease cannot be renewed")
        assert leader.work_cancelled == 1
        assert leader.task is not None
        assert not leader.task.done()  # still campaigning, not crashed

        await apiserver.start()
        await eventually(lambda: leader.elector.is_leader, "leads again once the server is back",
                         within=3 * TERMS["lease_duration"])
        await eventually(lambda: leader.started == 2, "the work starts again")  # a task: runs just after
    finally:
        await leader.cancel()
