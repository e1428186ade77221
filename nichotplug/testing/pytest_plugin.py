"""Pytest fixtures for the in-process API server and the real one (loaded by ``tests/conftest.py``).

- ``apiserver``: a started in-process :class:`ApiServer` with the bundled CRDs installed (function scope).
- ``kubeconfig``: an admin kubeconfig in ``tmp_path`` for ``cluster_server``: the in-process server, or
  for tests marked ``both_servers`` (and not asking for ``apiserver`` itself) each server in turn.
- ``api_client``: a kubernetes-asyncio ``ApiClient`` configured from that kubeconfig, closed after.
- ``real_apiserver``: etcd + kube-apiserver from ``KUBEBUILDER_ASSETS`` (:mod:`nichotplug.testing.envtest`),
  one per session; skipped, with one line saying how to enable it, when the variable is unset.
- ``any_apiserver``: the same test on both servers (parametrised ``inprocess`` / ``real``); on the real
  one, what the test created is deleted afterwards (:meth:`RealApiServer.reset`).

The real tier's tests carry the ``real`` marker. With ``NICHOTPLUG_REQUIRE_REAL_TIER=1`` (CI) a
session in which the real tier was skipped or ran no test fails, and the count is printed.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from nichotplug.testing.envtest import ENABLE_HINT, RealApiServer, assets_dir
from nichotplug.testing.server import ApiServer

REQUIRE_REAL_TIER = "NICHOTPLUG_REQUIRE_REAL_TIER"
REAL_MARKER = "real"
BOTH_MARKER = "both_servers"
SKIP_REASON = f"real kube-apiserver tier skipped: {ENABLE_HINT}"


class _RealTierTally:
    """How the real tier's tests ended in this session (setup, call and teardown reports)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0


_TALLY = _RealTierTally()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{REAL_MARKER}: runs against a real kube-apiserver (KUBEBUILDER_ASSETS)")
    config.addinivalue_line("markers", f"{BOTH_MARKER}: kubeconfig/api_client tests run on the in-process and the "
                                       "real API server (unless they ask for the in-process apiserver itself)")
    _TALLY.reset()  # a fresh tally per session (pytester runs several)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs the real server; without one, set them aside in one go.

    Setting them aside at collection (rather than a skip per test) keeps the report to one line
    that says how to enable the tier.
    """
    for item in items:
        if "real_apiserver" in getattr(item, "fixturenames", ()):
            item.add_marker(REAL_MARKER)
    if assets_dir() is not None:
        return
    real = [item for item in items if REAL_MARKER in item.keywords]
    if real:
        items[:] = [item for item in items if REAL_MARKER not in item.keywords]
        config.hook.pytest_deselected(items=real)
        _TALLY.skipped += len(real)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if REAL_MARKER not in report.keywords:
        return
    if report.skipped:
        _TALLY.skipped += 1
    elif report.failed:
        _TALLY.failed += 1
    elif report.when == "call" and report.passed:
        _TALLY.passed += 1


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if assets_dir() is None and _TALLY.skipped:
        terminalreporter.write_line(f"real kube-apiserver tier: {_TALLY.skipped} tests not run: {ENABLE_HINT}")
        return
    terminalreporter.write_line(
        f"real kube-apiserver tier: {_TALLY.passed} passed, {_TALLY.failed} failed, {_TALLY.skipped} skipped")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get(REQUIRE_REAL_TIER) != "1" or exitstatus != 0:
        return
    if _TALLY.passed == 0 or _TALLY.skipped:
        # CI must prove the real tier: a skipped or empty tier is a failed run, not a green one.
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest_asyncio.fixture
async def apiserver() -> AsyncIterator[ApiServer]:
    server = ApiServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def server_kind() -> str:
    """Which API server ``kubeconfig`` points at; ``both_servers`` tests are parametrised over both."""
    return "inprocess"


def _server_of_kind(request: pytest.FixtureRequest, kind: str) -> Iterator[ApiServer | RealApiServer]:
    """The in-process ``apiserver`` of this test, or the session's real one (reset after the test).

    Used by plain fixtures on purpose: they ask for the asynchronous ``apiserver`` by name, which
    pytest-asyncio can only start from outside a running event loop.
    """
    if kind != "real":
        yield request.getfixturevalue("apiserver")
        return
    real: RealApiServer = request.getfixturevalue("real_apiserver")
    try:
        yield real
    finally:
        real.reset()


@pytest.fixture
def cluster_server(request: pytest.FixtureRequest, server_kind: str) -> Iterator[ApiServer | RealApiServer]:
    """The API server of ``kubeconfig``: the in-process one, or (``server_kind`` "real") the real one."""
    yield from _server_of_kind(request, server_kind)


@pytest.fixture
def kubeconfig(cluster_server: ApiServer | RealApiServer, tmp_path: Path) -> Path:
    return cluster_server.write_kubeconfig(tmp_path / "kubeconfig")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run ``both_servers`` tests on both servers, except those that ask for the in-process ``apiserver``.

    A test that names ``apiserver`` uses what only the in-process server has (fault injection,
    restart in place, preloading), so it stays on that one.
    """
    if "server_kind" not in metafunc.fixturenames or metafunc.definition.get_closest_marker(BOTH_MARKER) is None:
        return
    if "apiserver" in inspect.signature(metafunc.function).parameters:
        return
    metafunc.parametrize("server_kind", ["inprocess", pytest.param("real", marks=pytest.mark.real)])


@pytest_asyncio.fixture
async def api_client(kubeconfig: Path) -> AsyncIterator[Any]:
    from kubernetes_asyncio import client, config

    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    api = client.ApiClient(configuration)
    try:
        yield api
    finally:
        await api.close()


@pytest.fixture(scope="session")
def real_apiserver() -> Iterator[RealApiServer]:
    assets = assets_dir()
    if assets is None:
        pytest.skip(SKIP_REASON)
    server = RealApiServer(assets)
    server.start()  # a failed start stops what it started and raises with the binary's log
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["inprocess", pytest.param("real", marks=pytest.mark.real)])
def any_apiserver(request: pytest.FixtureRequest) -> Iterator[ApiServer | RealApiServer]:
    """The test on each server in turn."""
    yield from _server_of_kind(request, request.param)
