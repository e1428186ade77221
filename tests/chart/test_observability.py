"""The chart's PrometheusRule and Grafana dashboard: off by default; every alert fires on sample data that
shows its problem and stays quiet on healthy data (evaluated by Prometheus's own ``promtool test
rules``); every series they read is one nichotplug exports; every runbook link lands on a section of
the chart README; the dashboard is the generator's output and valid by Grafana's own dashboard types;
and an API server accepts both objects in a server-side dry run.

``promtool`` comes from Debian's ``prometheus`` package (``apt-get install prometheus``; ``.ci/run``
installs it). Without it these tests skip locally and fail in CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from .conftest import CHART_DIR, NAMESPACE, RELEASE, Rendered, render_chart

ROOT = CHART_DIR.parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import grafana_dashboard  # noqa: E402  (a tool script, not a package)

ENABLED = {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}
SEL = f'job="{RELEASE}",namespace="{NAMESPACE}"'
ALERTS = ("NichotplugWebhookDown", "NichotplugWebhookErrors", "NichotplugAdmissionSlow",
          "NichotplugCertificateExpiring", "NichotplugClusterViewStale", "NichotplugDuplicateMacs",
          "NichotplugBackfillFailing", "NichotplugNoLeader")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: install Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def enabled() -> Rendered:
    return render_chart(ENABLED)


def rules_of(rendered: Rendered) -> dict[str, dict[str, Any]]:
    rule = rendered.one("PrometheusRule")
    return {item["alert"]: item for group in rule["spec"]["groups"] for item in group["rules"]}


def write_rules(rendered: Rendered, tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered.one("PrometheusRule")["spec"]))
    return path


# -- off by default, switches ------------------------------------------------------------------------------


def test_rule_and_dashboard_are_off_by_default(default_chart: Rendered) -> None:
    assert default_chart.all("PrometheusRule") == []
    assert [cm for cm in default_chart.all("ConfigMap") if "grafana_dashboard" in cm["metadata"]["labels"]] == []


def test_every_listed_alert_is_rendered(enabled: Rendered) -> None:
    assert sorted(rules_of(enabled)) == sorted(ALERTS)


def test_no_leader_and_backfill_alerts_only_with_the_controller() -> None:
    rendered = render_chart({**ENABLED, "controller": {"enabled": False}})
    assert sorted(rules_of(rendered)) == sorted(set(ALERTS) - {"NichotplugNoLeader", "NichotplugBackfillFailing"})


def test_thresholds_are_values() -> None:
    rendered = render_chart({"metrics": {"prometheusRule": {"enabled": True, "latencyP99Seconds": 0.25,
                                                            "viewStaleMinutes": 30, "labels": {"team": "sre"}}}})
    rules = rules_of(rendered)
    assert rules["NichotplugAdmissionSlow"]["expr"].endswith("> 0.25")
    assert rules["NichotplugClusterViewStale"]["expr"].endswith("> 30 * 60")
    assert rendered.one("PrometheusRule")["metadata"]["labels"]["team"] == "sre"


# -- the alerts, evaluated by promtool ------------------------------------------------------------------------


def test_promtool_accepts_the_rules(enabled: Rendered, tmp_path: Path) -> None:
    result = run_promtool("check", "rules", str(write_rules(enabled, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{SEL}{extra}}}", "values": values}


POD = {"pod": "nichotplug-0"}
# alert -> (series that show the problem, healthy series, when to look, the alert's own labels)
SCENARIOS: dict[str, tuple[list[dict[str, str]], list[dict[str, str]], str, dict[str, str]]] = {
    "NichotplugWebhookDown": (
        [series("up", "0x15", pod="a"), series("up", "0x15", pod="b")],
        [series("up", "1x15", pod="a"), series("up", "0x15", pod="b")], "10m", {}),
    "NichotplugWebhookErrors": (
        [series("nichotplug_webhook_requests_total", "0+100x40", webhook="validation", code="200", **POD),
         series("nichotplug_webhook_requests_total", "0+10x40", webhook="validation", code="500", **POD)],
        [series("nichotplug_webhook_requests_total", "0+100x40", webhook="validation", code="200", **POD),
         series("nichotplug_webhook_requests_total", "0+1x40", webhook="validation", code="500", **POD)],
        "30m", {}),
    "NichotplugAdmissionSlow": (
        [series("nichotplug_webhook_latency_seconds_bucket", f"0+{count}x40", webhook="validation", le=le, **POD)
         for le, count in (("0.5", 0), ("1.0", 0), ("2.5", 100), ("+Inf", 100))],
        [series("nichotplug_webhook_latency_seconds_bucket", "0+100x40", webhook="validation", le=le, **POD)
         for le in ("0.5", "1.0", "2.5", "+Inf")],
        "30m", {"webhook": "validation"}),
    "NichotplugCertificateExpiring": (
        [series("nichotplug_serving_certificate_expiry_timestamp_seconds", f"{13 * 86400}x200", **POD)],
        [series("nichotplug_serving_certificate_expiry_timestamp_seconds", f"{30 * 86400}x200", **POD),
         series("nichotplug_serving_certificate_expiry_timestamp_seconds", "0x200", pod="not-loaded-yet")],
        "2h", {"job": RELEASE, "namespace": NAMESPACE, **POD}),
    "NichotplugClusterViewStale": (
        [series("nichotplug_cluster_view_last_contact_timestamp_seconds", "0x40", resource="virtualmachines", **POD)],
        [series("nichotplug_cluster_view_last_contact_timestamp_seconds", "0+60x40", resource="virtualmachines",
                **POD)],
        "30m", {"job": RELEASE, "namespace": NAMESPACE, "resource": "virtualmachines", **POD}),
    "NichotplugDuplicateMacs": (
        [series("nichotplug_duplicate_macs", "2x30", **POD)], [series("nichotplug_duplicate_macs", "0x30", **POD)],
        "20m", {}),
    "NichotplugBackfillFailing": (
        [series("nichotplug_reconcile_total", "0+1x40", controller="mac", result="error", **POD)],
        [series("nichotplug_reconcile_total", "0x40", controller="mac", result="error", **POD),
         series("nichotplug_reconcile_total", "0+5x40", controller="mac", result="success", **POD)],
        "35m", {}),
    "NichotplugNoLeader": (
        [series("nichotplug_leader", "0x20", name="nichotplug-controller", pod="a"),
         series("nichotplug_leader", "0x20", name="nichotplug-controller", pod="b")],
        [series("nichotplug_leader", "1x20", name="nichotplug-controller", pod="a"),
         series("nichotplug_leader", "0x20", name="nichotplug-controller", pod="b")],
        "15m", {}),
}


def unit_tests(rules: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    tests = []
    for alert, (bad, good, at, labels) in SCENARIOS.items():
        rule = rules[alert]
        expected = {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": rule["annotations"]}
        tests.append({"name": f"{alert} fires", "interval": "1m", "input_series": bad,
                      "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": [expected]}]})
        tests.append({"name": f"{alert} stays quiet", "interval": "1m", "input_series": good,
                      "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}]})
    return tests


def test_each_alert_fires_on_its_problem_and_not_on_healthy_data(enabled: Rendered, tmp_path: Path) -> None:
    assert sorted(SCENARIOS) == sorted(ALERTS)
    write_rules(enabled, tmp_path)
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                         "tests": unit_tests(rules_of(enabled))}))
    result = run_promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_alert_expecting_the_wrong_thing_is_caught(enabled: Rendered, tmp_path: Path) -> None:
    """The harness itself can fail: a healthy scenario expected to fire makes promtool fail."""
    write_rules(enabled, tmp_path)
    rule = rules_of(enabled)["NichotplugDuplicateMacs"]
    wrong = [{"name": "quiet data expected to fire", "interval": "1m",
              "input_series": SCENARIOS["NichotplugDuplicateMacs"][1],
              "alert_rule_test": [{"eval_time": "20m", "alertname": "NichotplugDuplicateMacs",
                                   "exp_alerts": [{"exp_labels": rule["labels"]}]}]}]
    test_file = tmp_path / "wrong_test.yaml"
    test_file.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "tests": wrong}))
    assert run_promtool("test", "rules", str(test_file)).returncode != 0


# -- annotations and runbooks ---------------------------------------------------------------------------------


def readme_anchors() -> set[str]:
    """GitHub's anchors of the chart README's headings (lowercase, punctuation dropped, spaces to -)."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", (CHART_DIR / "README.md").read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_alert_has_a_summary_a_description_and_a_runbook_section(enabled: Rendered) -> None:
    anchors = readme_anchors()
    for alert, rule in rules_of(enabled).items():
        annotations = rule["annotations"]
        assert annotations["summary"], alert
        assert len(annotations["description"]) > len(annotations["summary"]), alert
        base, _, anchor = annotations["runbook_url"].partition("#")
        assert base.endswith("charts/nichotplug/README.md"), alert
        assert anchor in anchors, f"{alert}: no section #{anchor} in charts/nichotplug/README.md"


# -- metric names ----------------------------------------------------------------------------------------------


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""),
            "gauge": ("",), "info": ("_info",), "unknown": ("",)}


def exported_series_names() -> set[str]:
    """Every series name nichotplug's metrics can have, from each family's name and type (a histogram
    is read through ``_bucket``, never by its bare name). Families come from the collectors' own
    descriptions, so a labelled family without a child yet, or a gauge the duplicate audit has not set
    yet, still counts. Importing ``service`` registers every collector, as ``serve`` does."""
    import nichotplug.service  # noqa: F401

    collectors = list(REGISTRY._collector_to_names)  # the registry has no public list of its collectors
    families = [family for collector in collectors
                for family in (collector.describe() if hasattr(collector, "describe") else collector.collect())]
    return {family.name + suffix for family in families if family.name.startswith("nichotplug_")
            for suffix in SUFFIXES[family.type]}


def test_alerts_and_dashboard_read_only_series_the_code_exports(enabled: Rendered) -> None:
    exported = exported_series_names()
    exprs = [rule["expr"] for rule in rules_of(enabled).values()]
    exprs += [target["expr"] for panel in grafana_dashboard.build()["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bnichotplug_[a-z_]+", expr)}
    assert len(used) >= 10
    assert used - exported == set()


# -- the dashboard ---------------------------------------------------------------------------------------------


def test_the_shipped_dashboard_is_the_generators_output() -> None:
    shipped = (CHART_DIR / "dashboards" / "nichotplug.json").read_text()
    assert shipped == grafana_dashboard.render(), "run: .venv/bin/python tools/grafana_dashboard.py"


def test_the_dashboard_is_valid_by_grafanas_dashboard_types() -> None:
    """Decoded by grafana-foundation-sdk's models (generated from Grafana's dashboard schema) and encoded
    again, the dashboard loses nothing: every field is one the schema knows, at the place it knows it."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    shipped = json.loads((CHART_DIR / "dashboards" / "nichotplug.json").read_text())
    again = json.loads(json.dumps(Dashboard.from_json(shipped), cls=JSONEncoder))
    assert again == shipped
    assert shipped["uid"] == "nichotplug"
    assert shipped["schemaVersion"] >= 36
    panels = [panel for panel in shipped["panels"] if panel["type"] != "row"]
    assert len({panel["id"] for panel in shipped["panels"]}) == len(shipped["panels"])
    assert all(panel["targets"] and panel["datasource"]["uid"] == "${datasource}" for panel in panels)


def test_an_unknown_dashboard_field_would_be_caught() -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    broken = {**grafana_dashboard.build(), "panelz": []}
    assert json.loads(json.dumps(Dashboard.from_json(broken), cls=JSONEncoder)) != broken


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    exprs = [target["expr"] for panel in grafana_dashboard.build()["panels"] for target in panel.get("targets", [])]
    concrete = [expr.replace("$__rate_interval", "5m").replace("$namespace", NAMESPACE) for expr in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query{index}", "expr": expr}
                                                         for index, expr in enumerate(concrete)]}]}
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmap_is_labelled_for_grafana_in_its_namespace() -> None:
    rendered = render_chart({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}})
    (configmap,) = [cm for cm in rendered.all("ConfigMap") if cm["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert json.loads(configmap["data"]["nichotplug.json"]) == grafana_dashboard.build()


# -- accepted by an API server -----------------------------------------------------------------------------------

PROMETHEUS_RULE_CRD = Path(__file__).resolve().parent / "crds" / "monitoring.coreos.com_prometheusrules.yaml"


async def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", str(kubeconfig), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), timeout=60)
    return int(process.returncode or 0), out.decode()


async def served_kinds(kubeconfig: Path) -> set[str]:
    code, out = await kubectl(kubeconfig, "api-resources", "--no-headers")
    assert code == 0, out
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.fixture
def server_kubeconfig(any_apiserver: Any, tmp_path: Path) -> Path:
    return Path(any_apiserver.write_kubeconfig(tmp_path / "kubeconfig"))


@pytest.mark.kubectl
async def test_a_server_side_dry_run_accepts_the_rule_and_the_dashboard(server_kubeconfig: Path) -> None:
    # The real server takes the whole chart. The in-process one serves RBAC, ConfigMaps, Services and
    # the CRDs it is given, not Deployments: objects of kinds it does not serve are left out there.
    kubeconfig = server_kubeconfig
    code, out = await kubectl(kubeconfig, "apply", "-f", str(PROMETHEUS_RULE_CRD))
    assert code == 0, out
    code, out = await kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
                              "crd/prometheusrules.monitoring.coreos.com")
    assert code == 0, out
    for namespace in (NAMESPACE, "cattle-dashboards"):
        await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}))
    kinds = await served_kinds(kubeconfig)
    objects = [obj for obj in render_chart(ENABLED).objects if obj["kind"] in kinds]
    assert {"PrometheusRule", "ConfigMap"} <= {obj["kind"] for obj in objects}
    code, out = await kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(objects))
    assert code == 0, out
    assert "prometheusrule.monitoring.coreos.com/nichotplug created (server dry run)" in out


@pytest.mark.kubectl
async def test_a_server_side_dry_run_refuses_a_broken_rule(server_kubeconfig: Path) -> None:
    """The dry run judges by the CRD's schema: a rule whose ``for`` is no duration is refused."""
    kubeconfig = server_kubeconfig
    code, out = await kubectl(kubeconfig, "apply", "-f", str(PROMETHEUS_RULE_CRD))
    assert code == 0, out
    await kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
                  "crd/prometheusrules.monitoring.coreos.com")
    await kubectl(kubeconfig, "apply", "-f", "-", stdin=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    rule = render_chart(ENABLED).one("PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "two minutes"
    code, out = await kubectl(kubeconfig, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(rule))
    assert code != 0
    assert "for" in out
