"""Probes (/healthz, /readyz) on the TLS port and Prometheus metrics on their own plain-HTTP port."""

from __future__ import annotations

import asyncio
import json

import aiohttp
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nichotplug.rules.cluster import StaticCluster
from nichotplug.rules.decision import REASONS
from nichotplug.service import build_webhook_app
from nichotplug.serving import Readiness, metrics_app
from nichotplug.webhook.tls import CertReloader

from .webhook_support import ServeFn, admission_review, vm


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_readyz_waits_for_the_cluster_view_then_healthz_always_ok(
    serve_tls: ServeFn, reloader: CertReloader, session: aiohttp.ClientSession
) -> None:
    synced = asyncio.Event()
    server = await serve_tls(build_webhook_app(StaticCluster(), synced=synced, tls=reloader))
    base = f"https://127.0.0.1:{server.port}"
    assert await _get(session, base + "/healthz") == (200, "ok")
    assert await _get(session, base + "/readyz") == (503, "not ready: cluster view not synced yet")
    synced.set()
    assert await _get(session, base + "/readyz") == (200, "ok")
    assert await _get(session, base + "/healthz") == (200, "ok")


async def test_readyz_names_every_failing_check(
    serve_tls: ServeFn, reloader: CertReloader, session: aiohttp.ClientSession
) -> None:
    draining = True
    readiness = Readiness()
    readiness.add("shutting down", lambda: not draining)
    server = await serve_tls(
        build_webhook_app(StaticCluster(), synced=asyncio.Event(), tls=reloader, readiness=readiness)
    )
    status, text = await _get(session, f"https://127.0.0.1:{server.port}/readyz")
    assert status == 503
    assert text == "not ready: shutting down; cluster view not synced yet"


def _families(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def test_metrics_port_serves_seeded_series_that_count_requests(
    serve_tls: ServeFn, session: aiohttp.ClientSession
) -> None:
    webhook = await serve_tls(build_webhook_app(StaticCluster()))
    metrics_server = TestServer(metrics_app(), host="127.0.0.1")
    await metrics_server.start_server()
    try:
        metrics_url = f"http://127.0.0.1:{metrics_server.port}/metrics"  # plain HTTP, its own port
        async with aiohttp.ClientSession() as plain, plain.get(metrics_url) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=")
            before = _families(await response.text())

        # Pre-seeded: every rules reason exists (at 0 or more) before any request of that kind.
        decisions = before["nichotplug_admission_decisions_total"]
        seeded_reasons = {labels["reason"] for labels, _ in decisions}
        assert set(REASONS) <= seeded_reasons
        assert {"webhook", "operation", "result", "reason"} == set(decisions[0][0])
        for name in ("nichotplug_webhook_requests_total", "nichotplug_webhook_requests_in_flight",
                     "nichotplug_webhook_latency_seconds_count"):
            assert {labels["webhook"] for labels, _ in before[name]} == {"mutation", "validation"}, name
        assert {labels["code"] for labels, _ in before["nichotplug_webhook_requests_total"]} >= {"200", "400", "413"}

        body = json.dumps(admission_review(vm(macs=("02:00:00:00:00:01",)))).encode()
        url = f"https://127.0.0.1:{webhook.port}/v1/webhook/validation"
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200

        async with aiohttp.ClientSession() as plain, plain.get(metrics_url) as response:
            after = _families(await response.text())

        def value(families: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
            return next(v for found, v in families[name] if found == labels)

        allowed = {"webhook": "validation", "operation": "CREATE", "result": "allowed", "reason": "allowed"}
        assert value(after, "nichotplug_admission_decisions_total", **allowed) == value(
            before, "nichotplug_admission_decisions_total", **allowed) + 1
        ok = {"webhook": "validation", "code": "200"}
        assert value(after, "nichotplug_webhook_requests_total", **ok) == value(
            before, "nichotplug_webhook_requests_total", **ok) + 1
        count = {"webhook": "validation"}
        assert value(after, "nichotplug_webhook_latency_seconds_count", **count) == value(
            before, "nichotplug_webhook_latency_seconds_count", **count) + 1
        assert value(after, "nichotplug_webhook_requests_in_flight", **count) == 0
    finally:
        await metrics_server.close()


async def test_request_metrics_are_a_real_histogram_and_counters_by_code(
    serve_tls: ServeFn, session: aiohttp.ClientSession
) -> None:
    """The hot-path metrics (plain ints behind a collector) scrape as the types and series Prometheus expects."""
    webhook = await serve_tls(build_webhook_app(StaticCluster()))
    url = f"https://127.0.0.1:{webhook.port}/v1/webhook/validation"

    def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
        return _families(generate_latest(REGISTRY).decode())

    before = scrape()
    body = json.dumps(admission_review(vm(macs=("02:00:00:00:00:01",)))).encode()
    for _ in range(3):
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
            assert response.status == 200
    async with session.post(url, data=b"{", headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
    after = scrape()

    types = {family.name: family.type for family in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    assert types["nichotplug_webhook_latency_seconds"] == "histogram"
    assert types["nichotplug_webhook_requests"] == "counter"
    assert types["nichotplug_admission_decisions"] == "counter"
    assert types["nichotplug_webhook_requests_in_flight"] == "gauge"

    def validation(families: dict[str, list[tuple[dict[str, str], float]]], name: str,
                   **labels: str) -> list[tuple[dict[str, str], float]]:
        return [(found, v) for found, v in families[name] if found.get("webhook") == "validation"
                and all(found.get(key) == value for key, value in labels.items())]

    buckets = validation(after, "nichotplug_webhook_latency_seconds_bucket")
    counts = [value for _, value in buckets]
    assert [labels["le"] for labels, _ in buckets][-1] == "+Inf"
    assert counts == sorted(counts), "buckets are cumulative"
    count_before = validation(before, "nichotplug_webhook_latency_seconds_count")[0][1]
    count_after = validation(after, "nichotplug_webhook_latency_seconds_count")[0][1]
    assert count_after == count_before + 4 == counts[-1]  # the 400 is timed too
    assert validation(after, "nichotplug_webhook_latency_seconds_sum")[0][1] > \
        validation(before, "nichotplug_webhook_latency_seconds_sum")[0][1]
    for code, added in (("200", 3), ("400", 1), ("415", 0)):
        name = "nichotplug_webhook_requests_total"
        assert validation(after, name, code=code)[0][1] == validation(before, name, code=code)[0][1] + added, code
