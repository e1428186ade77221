"""The Helm chart, rendered by the real Helm engine, agrees with the code it deploys."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from nichotplug.actions.apidocs import APISERVICE, GROUP, SUBRESOURCES, VERSION
from nichotplug.cli import build_parser
from nichotplug.controller.scope import ControllerScope
from nichotplug.kube.certificates import parse_duration, settings_from_args
from nichotplug.rules.cluster import StaticCluster
from nichotplug.service import build_webhook_app
from nichotplug.webhook.registration import (
    MUTATING_WEBHOOK,
    VALIDATING_WEBHOOK,
    Scope,
    ServiceRef,
    required_permissions,
    webhook_configurations,
)

from .conftest import CHART_DIR, NAMESPACE, RELEASE, Rendered, render_chart

OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "cert-manager": {"certificates": {"mode": "cert-manager"}},
    "cert-manager-own-issuer": {"certificates": {"mode": "cert-manager",
                                                 "certManager": {"issuerRef": {"kind": "ClusterIssuer",
                                                                               "name": "corp-ca"}}}},
    "service-monitor": {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "rancher-monitoring"}}}},
    "failure-policies": {"webhook": {"mutating": {"failurePolicy": "Fail"},
                                     "validating": {"failurePolicy": "Ignore"}, "timeoutSeconds": 10}},
    "one-replica": {"replicaCount": 1},
    "three-replicas-hard": {"replicaCount": 3, "podAntiAffinity": "hard"},
    "no-controller": {"controller": {"enabled": False}, "actions": {"migrate": False}},
    "no-subresources": {"subresources": {"enabled": False}},
    "not-aggregated": {"subresources": {"aggregateToAdmin": False, "aggregateToEdit": False}},
    "alerts-and-dashboard": {"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                                         "grafanaDashboard": {"enabled": True}}},
}
NIC_OPERATOR = f"{RELEASE}-nic-operator"
AUTH_READER = f"{RELEASE}-auth-reader"


def container(rendered: Rendered) -> dict[str, Any]:
    containers = rendered.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def serve_args(rendered: Rendered) -> Any:
    """The container's args parsed by the real `nichotplug serve` parser ($(POD_NAMESPACE) expanded)."""
    args = [arg.replace("$(POD_NAMESPACE)", NAMESPACE) for arg in container(rendered)["args"]]
    return build_parser().parse_args(["serve", *args])


def port_number(rendered: Rendered, port: int | str) -> int:
    """A container port given by number or by name, as the kubelet and the Service resolve it."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container(rendered)["ports"]}
    assert port in by_name, f"port {port!r} is not a container port ({sorted(by_name)})"
    return int(by_name[port])


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_lint_is_clean(option: str) -> None:
    report = helm.lint(CHART_DIR, OPTIONS[option], strict=True, namespace=NAMESPACE, kube_version="v1.32.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []
    assert report["errors"] == []


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_option_renders_args_that_serve_accepts(option: str) -> None:
    args = serve_args(render_chart(OPTIONS[option]))
    assert args.command == "serve"
    assert args.namespace == NAMESPACE
    assert args.service_name == RELEASE


def test_selectors_match_the_pod_labels(default_chart: Rendered) -> None:
    deployment = default_chart.one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": default_chart.one("Service")["spec"]["selector"],
        "PodDisruptionBudget": default_chart.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector, f"{kind} has an empty selector"
        assert selector.items() <= pod_labels.items(), f"{kind} selector {selector} misses pods {pod_labels}"


def test_service_ports_reach_the_container(default_chart: Rendered) -> None:
    args = serve_args(default_chart)
    ports = {p["name"]: p for p in default_chart.one("Service")["spec"]["ports"]}
    assert ports["https"]["port"] == 443
    assert port_number(default_chart, ports["https"]["targetPort"]) == args.port == 9443
    assert port_number(default_chart, ports["metrics"]["targetPort"]) == args.metrics_port


def test_probe_paths_are_routes_of_the_served_app(default_chart: Rendered) -> None:
    app = build_webhook_app(StaticCluster(vms=[], vmis=[], nads=[]))
    routes = {resource.canonical for resource in app.router.resources()}
    for name in ("readinessProbe", "livenessProbe"):
        assert container(default_chart)[name]["httpGet"]["path"] in routes
    for webhook in (MUTATING_WEBHOOK, VALIDATING_WEBHOOK):
        assert webhook.path in routes


def test_probes_use_https_on_the_serving_port(default_chart: Rendered) -> None:
    args = serve_args(default_chart)
    probes = {name: container(default_chart)[name]["httpGet"] for name in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["scheme"] == "HTTPS"
        assert port_number(default_chart, probe["port"]) == args.port


def test_pod_is_locked_down(default_chart: Rendered) -> None:
    pod = default_chart.one("Deployment")["spec"]["template"]["spec"]
    security = container(default_chart)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container(default_chart)["resources"]["requests"]


def test_pod_knows_its_name_and_namespace(default_chart: Rendered) -> None:
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container(default_chart)["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_default_is_two_spread_replicas_with_a_disruption_budget(default_chart: Rendered) -> None:
    deployment = default_chart.one("Deployment")
    assert deployment["spec"]["replicas"] == 2
    anti = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert default_chart.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_one_replica_gets_no_disruption_budget_that_would_block_drains() -> None:
    assert render_chart({"replicaCount": 1}).all("PodDisruptionBudget") == []


def test_disruption_budget_always_lets_one_pod_go() -> None:
    rendered = render_chart({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 5}})
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_hard_anti_affinity_is_required() -> None:
    rendered = render_chart(OPTIONS["three-replicas-hard"])
    anti = rendered.one("Deployment")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert list(anti) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    assert rendered.one("Deployment")["spec"]["replicas"] == 3


@pytest.mark.parametrize(("option", "rolling"), [
    ("default", {"maxUnavailable": 0, "maxSurge": 1}),
    # Three replicas on three nodes: a surge pod would stay Pending and the rollout would never move.
    ("three-replicas-hard", {"maxUnavailable": 1, "maxSurge": 0}),
])
def test_a_rolling_update_can_always_make_progress(option: str, rolling: dict[str, int]) -> None:
    deployment = render_chart(OPTIONS[option]).one("Deployment")
    assert deployment["spec"]["strategy"]["rollingUpdate"] == rolling


def test_a_stopping_pod_keeps_answering_until_it_has_left_the_endpoints(default_chart: Rendered) -> None:
    pod = default_chart.one("Deployment")["spec"]["template"]["spec"]
    assert "--shutdown-delay=5" in pod["containers"][0]["args"]
    assert pod["terminationGracePeriodSeconds"] >= 5 + 15  # the delay, then the drain of requests in flight


def test_a_grace_period_too_short_for_the_delay_and_the_drain_is_refused() -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmError) as caught:
        chart.render({"shutdownDelaySeconds": 20, "terminationGracePeriodSeconds": 30}, name=RELEASE,
                     namespace=NAMESPACE)
    assert "terminationGracePeriodSeconds (30) must be at least shutdownDelaySeconds (20) + 15 s" in str(caught.value)


# -- webhooks: the chart registers exactly what the code declares ------------------------------------


def _webhook_entries(rendered: Rendered) -> dict[str, list[dict[str, Any]]]:
    return {
        kind: rendered.named(kind, RELEASE)["webhooks"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    }


@pytest.mark.parametrize("option", ["default", "failure-policies", "cert-manager"])
def test_webhooks_equal_the_code_declarations(option: str) -> None:
    values = OPTIONS[option]
    webhook_values = values.get("webhook", {})
    policies = {kind: webhook_values[kind]["failurePolicy"] for kind in ("mutating", "validating")
                if kind in webhook_values}
    expected = webhook_configurations(
        RELEASE, service=ServiceRef(namespace=NAMESPACE, name=RELEASE),
        excluded_namespaces=("kube-system", "harvester-system"), failure_policies=policies,
        timeout_seconds=webhook_values.get("timeoutSeconds", 5),
    )
    rendered = _webhook_entries(render_chart(values))
    assert rendered["MutatingWebhookConfiguration"] == expected[0]["webhooks"]
    assert rendered["ValidatingWebhookConfiguration"] == expected[1]["webhooks"]


def test_webhook_rules_and_paths_come_from_registration(default_chart: Rendered) -> None:
    entries = _webhook_entries(default_chart)
    for kind, declaration in (("MutatingWebhookConfiguration", MUTATING_WEBHOOK),
                              ("ValidatingWebhookConfiguration", VALIDATING_WEBHOOK)):
        (entry,) = entries[kind]
        assert entry["name"] == declaration.name
        assert entry["rules"] == declaration.as_webhook_rules()
        assert entry["clientConfig"]["service"]["path"] == declaration.path
        assert entry["failurePolicy"] == declaration.default_failure_policy
        assert entry["timeoutSeconds"] == 5


@pytest.mark.parametrize(("values", "excluded"), [
    ({}, ["kube-system", "harvester-system"]),
    ({"webhook": {"excludeNamespaces": ["longhorn-system", "kube-system"]}}, ["kube-system", "longhorn-system"]),
])
def test_webhooks_skip_kube_system_and_the_listed_namespaces(values: dict[str, Any], excluded: list[str]) -> None:
    rendered = render_chart(values)
    for entries in _webhook_entries(rendered).values():
        (expression,) = entries[0]["namespaceSelector"]["matchExpressions"]
        assert expression["key"] == "kubernetes.io/metadata.name"
        assert expression["operator"] == "NotIn"
        assert expression["values"] == excluded
    assert f"every namespace except {', '.join(excluded)} now get MACs" in rendered.notes


def test_the_release_namespace_is_checked_like_any_other() -> None:
    # Installed into "default" by mistake, the chart must not leave the VMs there unchecked.
    rendered = render_chart(release=RELEASE, namespace="default")
    for entries in _webhook_entries(rendered).values():
        assert "default" not in entries[0]["namespaceSelector"]["matchExpressions"][0]["values"]


def test_webhooks_call_the_rendered_service(default_chart: Rendered) -> None:
    service = default_chart.one("Service")
    service_ports = {p["port"] for p in service["spec"]["ports"]}
    for entries in _webhook_entries(default_chart).values():
        ref = entries[0]["clientConfig"]["service"]
        assert (ref["namespace"], ref["name"]) == (service["metadata"]["namespace"], service["metadata"]["name"])
        assert ref["port"] in service_ports


# -- RBAC: exactly the verbs the code uses -------------------------------------------------------------


def _granted(rendered: Rendered) -> set[tuple[str, str, str, Scope, tuple[str, ...]]]:
    grants: set[tuple[str, str, str, Scope, tuple[str, ...]]] = set()
    for kind, scope in (("ClusterRole", Scope.CLUSTER), ("Role", Scope.OWN_NAMESPACE)):
        for rule in rendered.named(kind, RELEASE)["rules"]:
            names = tuple(sorted(rule.get("resourceNames", ())))
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants.update((group, resource, verb, scope, names) for verb in rule["verbs"])
    return grants


def _needed(rendered: Rendered, *, self_managed: bool) -> set[tuple[str, str, str, Scope, tuple[str, ...]]]:
    args = serve_args(rendered)
    lease = ControllerScope.of(args.controller_namespace).lease_name
    owned_names = {"leases": (lease,), "secrets": (args.tls_secret,),
                   "mutatingwebhookconfigurations": (args.mutating_webhook,),
                   "validatingwebhookconfigurations": (args.validating_webhook,),
                   "apiservices": (args.apiservice,)}
    return {
        (perm.api_group, perm.resource, verb, perm.scope, owned_names[perm.resource] if perm.by_name else ())
        for perm in required_permissions(self_managed_certs=self_managed, subresources=bool(args.apiservice))
        for verb in perm.verbs
    }


def test_rbac_grants_exactly_what_self_managed_mode_uses(default_chart: Rendered) -> None:
    assert _granted(default_chart) == _needed(default_chart, self_managed=True)


def test_rbac_without_the_subresource_api_has_no_apiservice_rights() -> None:
    rendered = render_chart(OPTIONS["no-subresources"])
    granted = _granted(rendered)
    assert granted == _needed(rendered, self_managed=True)
    assert not {g for g in granted if g[1] == "apiservices"}


def test_rbac_in_cert_manager_mode_has_no_secret_or_webhook_rights() -> None:
    rendered = render_chart(OPTIONS["cert-manager"])
    granted = _granted(rendered)
    assert granted == _needed(rendered, self_managed=False)
    assert not {g for g in granted if g[1] in ("secrets", "mutatingwebhookconfigurations")}


def test_rbac_binds_the_pods_service_account(default_chart: Rendered) -> None:
    account = default_chart.one("ServiceAccount")["metadata"]
    pod_account = default_chart.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    assert pod_account == account["name"]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = default_chart.named(kind, RELEASE)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                      "name": default_chart.named(role_kind, RELEASE)["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["name"],
                                        "namespace": account["namespace"]}]
    assert default_chart.one("Role")["metadata"]["namespace"] == NAMESPACE


# -- certificates ----------------------------------------------------------------------------------------


def test_self_managed_mode_writes_certificates_into_a_writable_memory_volume(default_chart: Rendered) -> None:
    args = serve_args(default_chart)
    settings = settings_from_args(args)
    assert args.self_managed_certs is True
    assert settings.validity == parse_duration("365d")
    pod = default_chart.one("Deployment")["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in container(default_chart)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert str(settings.cert_file).startswith(mounts["tls"]["mountPath"] + "/")
    assert mounts["tls"]["readOnly"] is False
    assert volumes["tls"]["emptyDir"]["medium"] == "Memory"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        obj = default_chart.named(kind, RELEASE)
        assert "caBundle" not in obj["webhooks"][0]["clientConfig"], "Helm must not reset the patched caBundle"
        assert "annotations" not in obj["metadata"]
    assert default_chart.all("Certificate") == []


def test_cert_manager_mode_mounts_the_certificates_secret_and_injects_its_ca() -> None:
    rendered = render_chart(OPTIONS["cert-manager"])
    args = serve_args(rendered)
    assert args.self_managed_certs is False
    serving = rendered.named("Certificate", f"{RELEASE}-serving")
    pod = rendered.one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container(rendered)["volumeMounts"]}
    assert volumes["tls"]["secret"]["secretName"] == serving["spec"]["secretName"]
    assert args.tls_cert_file == mounts["tls"]["mountPath"] + "/tls.crt"
    assert args.tls_key_file == mounts["tls"]["mountPath"] + "/tls.key"
    assert mounts["tls"]["readOnly"] is True
    assert f"{RELEASE}.{NAMESPACE}.svc" in serving["spec"]["dnsNames"]
    issuer = serving["spec"]["issuerRef"]
    assert rendered.named("Issuer", issuer["name"])["spec"]["ca"]["secretName"] == f"{RELEASE}-ca"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        annotations = rendered.named(kind, RELEASE)["metadata"]["annotations"]
        assert annotations["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{RELEASE}-serving"


def test_cert_manager_mode_uses_a_given_issuer_without_creating_one() -> None:
    rendered = render_chart(OPTIONS["cert-manager-own-issuer"])
    assert rendered.all("Issuer") == []
    assert rendered.one("Certificate")["spec"]["issuerRef"] == {"kind": "ClusterIssuer", "name": "corp-ca"}


def test_certificate_validity_value_reaches_serve() -> None:
    rendered = render_chart({"certificates": {"selfManaged": {"validity": "30d"}}})
    assert settings_from_args(serve_args(rendered)).validity == parse_duration("30d")


# -- options ---------------------------------------------------------------------------------------------


def test_service_monitor_scrapes_the_metrics_port() -> None:
    rendered = render_chart(OPTIONS["service-monitor"])
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["metadata"]["labels"]["release"] == "rancher-monitoring"


def test_service_monitor_is_off_by_default(default_chart: Rendered) -> None:
    assert default_chart.all("ServiceMonitor") == []


def test_controller_namespaces_reach_serve_and_the_lease_role_names_its_lease() -> None:
    rendered = render_chart({"controller": {"namespaces": ["team-b", "team-a"]}})
    args = serve_args(rendered)
    assert args.controller_namespace == ["team-b", "team-a"]
    lease = ControllerScope.of(args.controller_namespace).lease_name
    assert lease != "nichotplug-controller"
    lease_rules = [rule for rule in rendered.one("Role")["rules"] if "leases" in rule["resources"]]
    assert lease in {name for rule in lease_rules for name in rule.get("resourceNames", ())}
    assert _granted(rendered) == _needed(rendered, self_managed=True)


def test_controller_and_migration_switches_reach_serve() -> None:
    args = serve_args(render_chart(OPTIONS["no-controller"]))
    assert args.no_controller is True
    assert args.no_migrate is True


# -- the subresource API ---------------------------------------------------------------------------------


def test_the_apiservice_reaches_the_serving_port_through_the_service(default_chart: Rendered) -> None:
    service = default_chart.named("APIService", APISERVICE)
    assert serve_args(default_chart).apiservice == APISERVICE
    assert (service["spec"]["group"], service["spec"]["version"]) == (GROUP, VERSION)
    rendered_service = default_chart.one("Service")
    https = next(port for port in rendered_service["spec"]["ports"] if port["name"] == "https")
    assert service["spec"]["service"] == {"namespace": NAMESPACE, "name": rendered_service["metadata"]["name"],
                                          "port": https["port"]}
    assert port_number(default_chart, https["targetPort"]) == serve_args(default_chart).port
    # self-managed: nichotplug patches the caBundle at runtime, so the manifest must not hold one
    assert "caBundle" not in service["spec"]
    assert not service["spec"].get("insecureSkipTLSVerify")


def test_cert_manager_injects_the_apiservice_ca() -> None:
    rendered = render_chart(OPTIONS["cert-manager"])
    annotations = rendered.named("APIService", APISERVICE)["metadata"]["annotations"]
    certificate = rendered.named("Certificate", f"{RELEASE}-serving")
    assert certificate["spec"]["dnsNames"][2] == f"{RELEASE}.{NAMESPACE}.svc"  # the name the aggregator checks
    assert annotations == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/{RELEASE}-serving"}


def test_the_service_may_read_the_front_proxy_configmap(default_chart: Rendered) -> None:
    binding = default_chart.named("RoleBinding", AUTH_READER)
    assert binding["metadata"]["namespace"] == "kube-system"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "extension-apiserver-authentication-reader"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": default_chart.one("ServiceAccount")["metadata"]
                                    ["name"], "namespace": NAMESPACE}]


def test_the_nic_operator_role_grants_the_four_subresources_and_nothing_else(default_chart: Rendered) -> None:
    role = default_chart.named("ClusterRole", NIC_OPERATOR)
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {(GROUP, f"virtualmachines/{item.name}", item.verb) for item in SUBRESOURCES.values()}
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"


def test_aggregation_into_admin_and_edit_can_be_switched_off() -> None:
    labels = render_chart(OPTIONS["not-aggregated"]).named("ClusterRole", NIC_OPERATOR)["metadata"]["labels"]
    assert not {key for key in labels if key.startswith("rbac.authorization.k8s.io/aggregate-to-")}


def test_without_the_subresource_api_nothing_of_it_is_rendered() -> None:
    rendered = render_chart(OPTIONS["no-subresources"])
    assert rendered.all("APIService") == []
    assert [r["metadata"]["name"] for r in rendered.all("ClusterRole")] == [RELEASE]
    assert [r["metadata"]["name"] for r in rendered.all("RoleBinding")] == [RELEASE]
    assert serve_args(rendered).apiservice == ""


def test_log_format_reaches_serve_and_text_is_the_default(default_chart: Rendered) -> None:
    assert serve_args(default_chart).log_format == "text"
    assert serve_args(render_chart({"logFormat": "json"})).log_format == "json"


def test_pods_run_at_system_cluster_critical_priority_unless_cleared(default_chart: Rendered) -> None:
    pod = default_chart.one("Deployment")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    cleared = render_chart({"priorityClassName": ""}).one("Deployment")["spec"]["template"]["spec"]
    assert "priorityClassName" not in cleared


def test_release_name_and_namespace_flow_everywhere() -> None:
    rendered = render_chart(release="hotplug", namespace="nic-system")
    args = serve_args(rendered)
    assert rendered.one("Service")["metadata"]["name"] == args.service_name == "hotplug-nichotplug"
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        entry = rendered.named(kind, args.mutating_webhook)["webhooks"][0]
        assert entry["clientConfig"]["service"]["namespace"] == "nic-system"


def test_notes_tell_how_to_check_the_install(default_chart: Rendered) -> None:
    assert f"kubectl -n {NAMESPACE} rollout status deployment/{RELEASE}" in default_chart.notes


# -- values.schema.json refuses bad values -------------------------------------------------------------


@pytest.mark.parametrize(("values", "key"), [
    ({"replicaCount": "two"}, "/replicaCount"),
    ({"replicaCount": 0}, "/replicaCount"),
    ({"webhook": {"validating": {"failurePolicy": "Sometimes"}}}, "/webhook/validating/failurePolicy"),
    ({"webhook": {"mutating": {"failurePolicy": "fail"}}}, "/webhook/mutating/failurePolicy"),
    ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
    ({"certificates": {"mode": "manual"}}, "/certificates/mode"),
    ({"certificates": {"selfManaged": {"validity": "forever"}}}, "/certificates/selfManaged/validity"),
    ({"podAntiAffinity": "sometimes"}, "/podAntiAffinity"),
    ({"containerPorts": {"https": 443}}, "/containerPorts/https"),
    ({"replicas": 2}, "replicas"),
    ({"shutdownDelaySeconds": -1}, "/shutdownDelaySeconds"),
    ({"terminationGracePeriodSeconds": 5}, "/terminationGracePeriodSeconds"),
    ({"logFormat": "xml"}, "/logFormat"),
    ({"metrics": {"prometheusRule": {"errorRatio": 2}}}, "/metrics/prometheusRule/errorRatio"),
    ({"metrics": {"prometheusRule": {"runbookBaseUrl": "README.md#x"}}}, "/metrics/prometheusRule/runbookBaseUrl"),
    ({"metrics": {"grafanaDashboard": {"namespace": "Cattle Dashboards"}}}, "/metrics/grafanaDashboard/namespace"),
    ({"controller": {"namespaces": ["Team_A"]}}, "/controller/namespaces/0"),
    ({"controller": {"namespaces": ["a", "a"]}}, "/controller/namespaces"),
])
def test_schema_rejects_bad_values(values: dict[str, Any], key: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert key in str(caught.value)


def test_default_values_satisfy_the_schema() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.values)
