"""What ``/metrics`` shows an operator: every series the README documents and no other, no
``_created`` series, no label combination that cannot occur, and no audit figure without an audit."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import nichotplug.service  # noqa: F401  (serve imports every module that registers metrics)
from nichotplug.controller.metrics import AuditGauge
from nichotplug.webhook.metrics import metrics_app

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
async def scrape() -> AsyncIterator[str]:
    server = TestServer(metrics_app(), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as plain, plain.get(f"http://127.0.0.1:{server.port}/metrics") as answer:
            assert answer.status == 200
            yield await answer.text()
    finally:
        await server.close()


def _exposed_names(text: str) -> set[str]:
    """Our metric names as a PromQL user types them (counters with ``_total``)."""
    return {family.name + ("_total" if family.type == "counter" else "")
            for family in text_string_to_metric_families(text) if family.name.startswith("nichotplug_")}


def _readme_metric_names() -> set[str]:
    section = README.read_text().split("### Metrics\n", 1)[1].split("\n### ", 1)[0]
    return {match.group(1) for match in re.finditer(r"^\| `(nichotplug_[a-z_]+)` \|", section, re.MULTILINE)}


def _samples(text: str, name: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name]


async def test_the_readme_table_lists_every_metric_served_and_no_other(scrape: str) -> None:
    documented = _readme_metric_names()
    assert len(documented) > 20, "the README's metrics table was not found"
    # The duplicate-MAC gauge is served once the controller's audit has run (see the last test).
    assert _exposed_names(scrape) | {"nichotplug_duplicate_macs"} == documented


async def test_no_created_series_are_served(scrape: str) -> None:
    assert "_created" not in scrape
    assert "nichotplug_admission_decisions_total{" in scrape  # the scrape did reach our series


async def test_only_decisions_that_can_happen_are_pre_created(scrape: str) -> None:
    decisions = {(s.labels["webhook"], s.labels["operation"], s.labels["result"], s.labels["reason"])
                 for s in _samples(scrape, "nichotplug_admission_decisions_total")}
    # A new VM is never a hot-plug edit; a mutation never patches a VM being deleted.
    assert not {d for d in decisions if d[1] == "CREATE" and d[3].startswith(("unplug-", "hotplug-", "vm-"))}
    assert ("mutation", "UPDATE", "patched", "deleting") not in decisions
    assert not {d for d in decisions if d[0] == "mutation" and d[2] == "patched" and d[3] != "macs-assigned"}
    assert not {d for d in decisions if d[3] == "other"}  # only a rule bug could produce it
    # What does happen is there from the start.
    for expected in (("validation", "UPDATE", "denied", "unplug-already-absent"),
                     ("validation", "UPDATE", "allowed", "hotplug-allowed"),
                     ("validation", "CREATE", "denied", "mac-collision"),
                     ("mutation", "CREATE", "patched", "macs-assigned"),
                     ("mutation", "DELETE", "allowed", "not-judged")):
        assert expected in decisions, expected


def test_the_audit_gauge_has_no_sample_until_an_audit_sets_it() -> None:
    registry = CollectorRegistry()
    gauge = AuditGauge("nichotplug_duplicate_macs", "help")
    registry.register(gauge)
    assert "nichotplug_duplicate_macs " not in generate_latest(registry).decode()
    gauge.set(0)
    assert "nichotplug_duplicate_macs 0.0" in generate_latest(registry).decode()
