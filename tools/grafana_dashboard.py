"""nichotplug's Grafana dashboard, built with Grafana's own dashboard types (grafana-foundation-sdk).

This module is the one place the dashboard is defined. It writes
``charts/nichotplug/dashboards/nichotplug.json``, which the chart ships as a ConfigMap
(``metrics.grafanaDashboard.enabled``); ``tests/chart/test_observability.py`` fails when that file
differs from what this module builds. Regenerate after a change with::

    .venv/bin/python tools/grafana_dashboard.py

Every query filters on the dashboard's ``namespace`` variable (the namespace the chart runs in) and
reads only series nichotplug exports (the test checks the names against the code's registry).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh, VariableSort

OUTPUT = Path(__file__).resolve().parents[1] / "charts" / "nichotplug" / "dashboards" / "nichotplug.json"
UID = "nichotplug"
SEL = 'namespace="$namespace"'
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def query(expr: str, legend: str) -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)


def graph(title: str, description: str, unit: str, *queries: prometheus.Dataquery, width: int = 12) \
        -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .height(8).span(width))
    for index, item in enumerate(queries):
        panel = panel.with_target(item.ref_id(chr(ord("A") + index)))
    return panel


def single(title: str, description: str, unit: str, expr: str) -> stat.Panel:
    return (stat.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
            .height(4).span(6).with_target(query(expr, "").ref_id("A")))


def rate(metric: str, by: str, extra: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{SEL}{extra}}}[$__rate_interval]))"


def quantile(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{SEL}}}[$__rate_interval])))"


def admission_panels() -> list[Any]:
    return [
        graph("Admission decisions", "Decisions per second by webhook, result and the rule's reason.", "reqps",
              query(rate("nichotplug_admission_decisions_total", "webhook, result, reason"),
                    "{{webhook}} {{result}} {{reason}}")),
        graph("Admission answers by HTTP code", "Webhook HTTP answers per second; 5xx are refused VM writes.",
              "reqps", query(rate("nichotplug_webhook_requests_total", "webhook, code"), "{{webhook}} {{code}}")),
        graph("Admission latency", "Time to answer an admission request (p50, p90, p99).", "s",
              *(query(quantile(q, "nichotplug_webhook_latency_seconds", "webhook"), f"{{{{webhook}}}} p{int(q * 100)}")
                for q in (0.5, 0.9, 0.99))),
        graph("Admission requests in flight", "Requests being answered now, per replica.", "short",
              query(f"sum by (pod, webhook) (nichotplug_webhook_requests_in_flight{{{SEL}}})",
                    "{{pod}} {{webhook}}")),
    ]


def action_panels() -> list[Any]:
    return [
        graph("Hot-plug actions", "addNic / removeNic / findHotunpluggableNics per second by HTTP code.", "reqps",
              query(rate("nichotplug_actions_total", "action, code"), "{{action}} {{code}}")),
        graph("Hot-plug action latency", "p99 time to answer an action.", "s",
              query(quantile(0.99, "nichotplug_action_latency_seconds", "action"), "{{action}} p99")),
    ]


def controller_panels() -> list[Any]:
    return [
        graph("Reconciles", "MAC controller reconciles per second by result.", "ops",
              query(rate("nichotplug_reconcile_total", "result"), "{{result}}")),
        graph("Work queue depth", "Keys waiting in the controller's work queue, per replica.", "short",
              query(f"max by (pod) (nichotplug_workqueue_depth{{{SEL}}})", "{{pod}}")),
        single("Leader", "Replicas holding the controller Lease (should be 1).", "short",
               f"sum(nichotplug_leader{{{SEL}}})"),
        single("Duplicate MACs", "MACs used by more than one VM interface on one cluster network.", "short",
               f"max(nichotplug_duplicate_macs{{{SEL}}})"),
        single("MAC backfills (24 h)", "MACs written from the observed-MAC annotation into VM specs.", "short",
               f"sum(increase(nichotplug_mac_backfills_total{{{SEL}}}[24h]))"),
        single("Certificate expires in", "Soonest expiry of the serving certificate any replica serves.", "s",
               f"min((nichotplug_serving_certificate_expiry_timestamp_seconds{{{SEL}}} > 0) - time())"),
    ]


def health_panels() -> list[Any]:
    return [
        graph("Cluster view freshness", "Seconds since each replica last heard from the API server per resource "
              "(a live watch hears at least every 10 minutes).", "s",
              query(f"time() - nichotplug_cluster_view_last_contact_timestamp_seconds{{{SEL}}}",
                    "{{pod}} {{resource}}")),
        graph("Serving certificate expiry", "Seconds until the certificate each replica serves expires.", "s",
              query(f"(nichotplug_serving_certificate_expiry_timestamp_seconds{{{SEL}}} > 0) - time()", "{{pod}}")),
    ]


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    board = (dashboard.Dashboard("nichotplug").uid(UID).tags(["harvester", "nichotplug"])
             .description("Admission webhooks, hot-plug actions, MAC controller and cluster view of nichotplug.")
             .refresh("30s").time("now-6h", "now").timezone("browser")
             .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
             .with_variable(dashboard.QueryVariable("namespace").label("Namespace").datasource(DATASOURCE)
                            .query("label_values(nichotplug_webhook_requests_total, namespace)")
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)))
    panel_id = 0
    for title, panels in (("Admission", admission_panels()), ("Hot-plug actions", action_panels()),
                          ("Controller", controller_panels()), ("Health", health_panels())):
        panel_id += 1
        board = board.with_row(dashboard.Row(title).id(panel_id))
        for panel in panels:
            panel_id += 1
            board = board.with_panel(panel.id(panel_id))
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
