"""The process's ports: the TLS port (front door, probes, drain) and the plain-HTTP metrics port.

The TLS port serves one aiohttp app: the admission webhooks (``webhook.http``), the action API and
the probes. :class:`FrontDoor` is its server's request handler: it hands the two admission paths
straight to their handlers, skipping the application's router and middleware chain, and counts
every request in flight, so :func:`drain` can let them finish. ``GET /healthz`` is the liveness
probe, ``GET /readyz`` the readiness probe (see :class:`Readiness`). ``GET /metrics`` is served by
:func:`metrics_app` on its own port, never on the TLS one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import REGISTRY
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from nichotplug.webhook.http import ADMISSION_HANDLERS, Handler

log = logging.getLogger(__name__)

# The API server gives a webhook 10 s by default; in-flight requests never need longer to finish.
DRAIN_SECONDS = 15.0


# -- the TLS port ----------------------------------------------------------------------------------


class FrontDoor:
    """The request handler of an app's server: admission reviews first, anything else to the app.

    The API server calls the admission paths on every VM write of the cluster. Through the
    application each call would be resolved by the router, get its match info and pass the
    middleware chain: about a tenth of the whole answer's cost on these machines, for nothing
    those handlers use. A ``POST`` to one of ``admission`` paths goes straight to its handler;
    every other request (probes, the action API, a wrong method) goes to ``app_handler`` and is
    answered as the application answers it (404, 405 included).

    It also counts the requests in flight, webhook or not, so a shutdown can wait for them:
    aiohttp's own graceful shutdown stops reading open connections, cutting off a request whose
    body is still arriving (``tests/webhook/test_serve.py`` shows it).
    """

    def __init__(self, app_handler: Handler, admission: Mapping[str, Handler]) -> None:
        self._app_handler = app_handler
        self._admission = dict(admission)
        self.in_flight = 0
        self._idle: asyncio.Event | None = None  # made by wait_idle: no Event traffic per request until then

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        self.in_flight += 1
        try:
            # The raw target without its query (the API server adds ?timeout=...): no URL decoding.
            # A path spelled otherwise (percent-encoded) misses here and the app's router answers it.
            handler = (self._admission.get(request.raw_path.partition("?")[0])
                       if request.method == hdrs.METH_POST else None)
            return await (handler or self._app_handler)(request)
        finally:
            self.in_flight -= 1
            if not self.in_flight and self._idle is not None:
                self._idle.set()

    async def wait_idle(self, grace_seconds: float) -> bool:
        """True once no request is in flight; False if ``grace_seconds`` passed first."""
        if not self.in_flight:
            return True
        if self._idle is None:
            self._idle = asyncio.Event()
        self._idle.clear()  # set when the count last reached zero: wait for it to get there again
        try:
            async with asyncio.timeout(grace_seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


def open_front_door(runner: web.AppRunner) -> FrontDoor:
    """Put a :class:`FrontDoor` before the app of ``runner`` (after ``setup()``, before a site starts).

    Connections take the server's handler when they open, so every connection of the sites
    started afterwards goes through the door.
    """
    server = runner.server
    if server is None:
        raise RuntimeError("open_front_door: call runner.setup() first")
    admission: dict[str, Handler] = runner.app.get(ADMISSION_HANDLERS, {})
    door = FrontDoor(server.request_handler, admission)
    server.request_handler = door
    return door


async def start_tls_runner(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext,
                           **runner_kwargs: Any) -> tuple[web.AppRunner, FrontDoor]:
    """Serve ``app`` (from ``service.build_webhook_app``) over TLS, its admission webhooks through a
    ``FrontDoor``; returns the runner and the door, which :func:`drain` needs."""
    runner = web.AppRunner(app, access_log=None, **runner_kwargs)
    await runner.setup()
    door = open_front_door(runner)
    await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
    return runner, door


async def drain(runner: web.AppRunner, door: FrontDoor, grace_seconds: float = DRAIN_SECONDS) -> None:
    """Stop accepting connections, let the requests in flight finish (bodies still arriving included), close."""
    for site in list(runner.sites):
        await site.stop()
    if not await door.wait_idle(grace_seconds):
        log.warning("%d request(s) still in flight after %.0f s; closing anyway", door.in_flight, grace_seconds)
    await runner.cleanup()


def listening_on(runner: web.AppRunner) -> list[str]:
    """``host:port`` of every socket ``runner`` listens on, as bound (an IPv6 host in brackets)."""
    found: list[str] = []
    for address in runner.addresses:
        host, port = address[0], address[1]
        found.append(f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}")
    return found


# -- probes ----------------------------------------------------------------------------------------


class Readiness:
    """Named readiness checks; ``/readyz`` is 200 only while every one of them holds."""

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self._checks[name] = check

    def failing(self) -> list[str]:
        return [name for name, check in self._checks.items() if not check()]


async def _healthz(_: web.Request) -> web.Response:
    # Answering at all proves the event loop runs, which is all liveness should claim.
    return web.Response(text="ok")


def _readyz_handler(readiness: Readiness) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def readyz(_: web.Request) -> web.Response:
        failing = readiness.failing()
        if failing:
            return web.Response(status=503, text="not ready: " + "; ".join(failing))
        return web.Response(text="ok")

    return readyz


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    """Mount ``/healthz`` and ``/readyz``."""
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz_handler(readiness))


# -- the metrics port ------------------------------------------------------------------------------


async def _metrics(_: web.Request) -> web.Response:
    # generate_latest walks every series; with a few hundred it takes well under a millisecond.
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app() -> web.Application:
    """The plain-HTTP app serving ``GET /metrics`` (on its own port, never on the TLS one)."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    return app


async def start_metrics_runner(host: str, port: int) -> web.AppRunner:
    """Serve :func:`metrics_app` over plain HTTP on ``host:port``; the caller cleans the runner up."""
    runner = web.AppRunner(metrics_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
