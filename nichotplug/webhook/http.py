"""The aiohttp shell around the engine: routes, HTTP-level checks, metrics and the request log.

``POST /v1/webhook/mutation`` and ``POST /v1/webhook/validation`` answer every
usable call with HTTP 200 and a full AdmissionReview; an unusable call (wrong
content type, body too large, not an AdmissionReview) gets a 4xx with a
``metav1.Status`` naming the problem. ``GET /healthz`` is the liveness probe,
``GET /readyz`` the readiness probe (see :class:`Readiness`).

:class:`FrontDoor` is the request handler of the TLS port's server: it hands the
two admission paths straight to their handlers, skipping the application's
router and middleware chain, and counts every request in flight for the drain.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import hdrs, web

from nichotplug.rules.cluster import ClusterState
from nichotplug.webhook import metrics
from nichotplug.webhook.codec import (
    JSON_CONTENT_TYPE,
    MAX_BODY_BYTES,
    BadReview,
    decode_review,
    encode_allowed,
    encode_error,
    encode_review,
)
from nichotplug.webhook.engine import Verdict, is_judged, not_synced, review
from nichotplug.webhook.fastdecode import allowed_create
from nichotplug.webhook.registration import MUTATION_PATH, VALIDATION_PATH
from nichotplug.webhook.review import AdmissionRequest, WebhookName

log = logging.getLogger(__name__)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# path -> handler of each admission webhook mounted on an app, for the FrontDoor.
ADMISSION_HANDLERS = web.AppKey("nichotplug_admission_handlers", dict[str, Handler])

# The paths are declared with the webhook registrations, so the chart and the server cannot disagree.
WEBHOOK_PATHS: dict[WebhookName, str] = {"mutation": MUTATION_PATH, "validation": VALIDATION_PATH}

_KNOWN_REASONS = metrics.known_reasons()
REASON_HOTPLUG_ALLOWED = "hotplug-allowed"  # rules.decision.ALLOW_REASONS: logged at INFO

# Passed as headers rather than content_type=: aiohttp then skips re-assembling the media type.
_JSON_HEADERS = {hdrs.CONTENT_TYPE: JSON_CONTENT_TYPE}

# How long a request that arrives before the cluster view's first list may wait for it. Well inside
# the API server's timeout (the chart's default is 5 s), so a brief start-up window costs a short
# delay rather than a refusal.
SYNC_WAIT_SECONDS = 3.0

# The API server puts its deadline for the call in the URL (``?timeout=10s``, a Go duration) and
# never reads an answer that comes later: a request that waits for the sync stops waiting this long
# before it, so the user gets our 503 instead of the API server's "context deadline exceeded".
DEADLINE_MARGIN_SECONDS = 0.5
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")  # a number and its unit
_GO_DURATION = re.compile(f"(?:{_GO_DURATION_PART.pattern})+")
_GO_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float | None:
    """The seconds of a Go ``time.Duration`` string (``10s``, ``1m30s``, ``500ms``); None for other text."""
    if not _GO_DURATION.fullmatch(text):
        return None
    return sum(float(number) * _GO_UNIT_SECONDS[unit] for number, unit in _GO_DURATION_PART.findall(text))


class WebhookHandler:
    """One webhook endpoint (mutation or validation) bound to the cluster view it consults."""

    def __init__(self, webhook: WebhookName, cluster: ClusterState, synced: asyncio.Event | None = None,
                 sync_wait_seconds: float = SYNC_WAIT_SECONDS) -> None:
        self.webhook: WebhookName = webhook
        self.cluster = cluster
        self.synced = synced  # None: the cluster is complete from the start (a static view)
        self.sync_wait_seconds = sync_wait_seconds
        self._stats = metrics.STATS[webhook]  # plain-int bookkeeping: no lock per request

    async def handle(self, request: web.BaseRequest) -> web.Response:
        started = time.perf_counter()
        stats = self._stats
        stats.in_flight += 1
        try:
            try:
                body = await _read_body(request)
                fast = self._allowed_create(body)
                if fast is not None:
                    return fast
                admission = decode_review(body)
            except BadReview as error:
                return self._bad_request(request, error)
            if await self._cluster_is_read(request, admission):
                verdict = review(self.webhook, admission, self.cluster)
            else:
                verdict = not_synced(self.webhook, admission)
            body = encode_review(verdict.response)
            self._count(admission, verdict, time.perf_counter() - started)
            stats.count_code("200")
            return web.Response(body=body, headers=_JSON_HEADERS)
        except ConnectionResetError:
            # The caller went away mid-request (the API server timed out or restarted): nobody is left
            # to answer, and it is no bug of ours. The API server applies the failure policy itself.
            log.info("%s webhook: the caller closed the connection before the answer was ready", self.webhook)
            stats.count_code("499")
            return web.Response(status=499)
        except Exception:
            # A bug in this layer (the engine already contains the rules' own): answer a Status the API
            # server can show; it then applies the webhook's failurePolicy (validation fails closed).
            log.exception("%s webhook: internal error answering a request", self.webhook)
            stats.count_code("500")
            internal = BadReview(500, "internal-error", "nichotplug could not answer this review (internal error)")
            return web.Response(status=500, body=encode_error(internal), headers=_JSON_HEADERS)
        finally:
            stats.in_flight -= 1
            stats.observe_latency(time.perf_counter() - started)

    def _allowed_create(self, body: bytes) -> web.Response | None:
        """The answer of the validating webhook's fast route (see ``fastdecode``), or None.

        Only an allow is answered here, only once the cluster view is complete, and only when allows
        are not logged (at DEBUG the ordinary route logs each one); everything else, and any surprise
        in the route itself, goes the ordinary way, which decides and words it.
        """
        if (self.webhook != "validation" or not (self.synced is None or self.synced.is_set())
                or log.isEnabledFor(logging.DEBUG)):
            return None
        try:
            uid = allowed_create(body, self.cluster)
        except Exception:
            log.exception("validation fast route failed; the ordinary route decides")
            return None
        if uid is None:
            return None
        self._stats.fast_allows += 1  # a 200 and a FAST_ALLOWED_DECISION (see WebhookStats)
        return web.Response(body=encode_allowed(uid), headers=_JSON_HEADERS)

    async def _cluster_is_read(self, request: web.BaseRequest, admission: AdmissionRequest) -> bool:
        """Whether the cluster view is complete enough to judge this request (waiting a little for it)."""
        if self.synced is None or self.synced.is_set() or not is_judged(admission):
            return True
        wait = self._sync_wait(request)
        if wait <= 0:
            return False
        try:
            await asyncio.wait_for(self.synced.wait(), wait)
        except TimeoutError:
            return False
        return True

    def _sync_wait(self, request: web.BaseRequest) -> float:
        """``sync_wait_seconds``, cut short to end before the API server's deadline for this call."""
        deadline = go_duration_seconds(request.query.get("timeout", ""))
        if deadline is None:
            return self.sync_wait_seconds
        return min(self.sync_wait_seconds, deadline - DEADLINE_MARGIN_SECONDS)

    def _bad_request(self, request: web.BaseRequest, error: BadReview) -> web.Response:
        metrics.BAD_REQUESTS.labels(self.webhook, error.reason).inc()
        self._stats.count_code(str(error.http_status))
        log.warning(
            "%s webhook: unusable call from %s answered %d: %s",
            self.webhook, request.remote, error.http_status, error.message,
        )
        return web.Response(status=error.http_status, body=encode_error(error), headers=_JSON_HEADERS)

    def _count(self, admission: AdmissionRequest, verdict: Verdict, seconds: float) -> None:
        reason = verdict.reason if verdict.reason in _KNOWN_REASONS else metrics.REASON_OTHER
        # Bounded: operations, results and reasons are all closed sets.
        self._stats.count_decision((admission["operation"], verdict.result, reason))
        # Allowed-unchanged is the hot path: logged at DEBUG so a busy cluster's log is not all webhook.
        # An allowed hot-plug is rare and worth a line: it changes a running VM's NICs.
        quiet = verdict.result == metrics.RESULT_ALLOWED and verdict.reason != REASON_HOTPLUG_ALLOWED
        level = logging.DEBUG if quiet else logging.INFO
        if log.isEnabledFor(level):
            _log_verdict(level, self.webhook, admission, verdict, seconds)


def _log_verdict(level: int, webhook: WebhookName, admission: AdmissionRequest, verdict: Verdict,
                 seconds: float) -> None:
    kind = admission["kind"]["kind"]
    namespace, name = admission.get("namespace", ""), admission.get("name", "")
    user = admission.get("userInfo", {}).get("username", "")
    status = verdict.response.get("status")
    detail = f": {status['code']} {status['message']}" if status else ""
    log.log(
        level, "%s %s %s %s/%s by %s (uid %s): %s (%s)%s",
        webhook, admission["operation"], kind, namespace, name, user, admission["uid"],
        verdict.result, verdict.reason, detail,
        # For structured log handlers; prefixed because LogRecord already owns "name".
        extra={"admission_webhook": webhook, "admission_object": kind, "admission_namespace": namespace,
               "admission_name": name, "admission_user": user, "admission_uid": admission["uid"],
               "admission_operation": admission["operation"], "admission_decision": verdict.result,
               "admission_reason": verdict.reason, "admission_latency_seconds": seconds},
    )


async def _read_body(request: web.BaseRequest) -> bytes:
    """The body, after the checks that need no reading: content type, then size."""
    # The API server sends exactly "application/json": compare the raw header before paying for
    # aiohttp's full media-type parse (which also accepts parameters such as a charset).
    if request.headers.get(hdrs.CONTENT_TYPE) != JSON_CONTENT_TYPE and request.content_type != JSON_CONTENT_TYPE:
        raise BadReview(
            415, "content-type", f"Content-Type must be {JSON_CONTENT_TYPE}, got {request.content_type or 'none'!r}"
        )
    length = request.content_length  # parsed from the header at each access
    if length is not None and length > MAX_BODY_BYTES:
        raise _too_large()
    try:
        # The app's client_max_size is MAX_BODY_BYTES, so a chunked body without a length stops here too.
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large() from None


def _too_large() -> BadReview:
    return BadReview(
        413, "too-large", f"request body larger than {MAX_BODY_BYTES} bytes; an AdmissionReview is never that big"
    )


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


def add_webhook_routes(app: web.Application, cluster: ClusterState, synced: asyncio.Event | None = None,
                       *, sync_wait_seconds: float = SYNC_WAIT_SECONDS) -> None:
    """Mount both admission endpoints on ``app``; with ``synced``, nothing is judged before it is set.

    They are also recorded under ``ADMISSION_HANDLERS``, where a :class:`FrontDoor` finds them.
    """
    handlers: dict[str, Handler] = {}
    for webhook, path in WEBHOOK_PATHS.items():
        handlers[path] = WebhookHandler(webhook, cluster, synced, sync_wait_seconds).handle
        app.router.add_post(path, handlers[path])
    app[ADMISSION_HANDLERS] = handlers


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


def add_health_routes(app: web.Application, readiness: Readiness) -> None:
    """Mount ``/healthz`` and ``/readyz``."""
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz_handler(readiness))
