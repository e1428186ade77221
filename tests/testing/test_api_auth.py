"""Authentication by bearer token and authorisation by static rules and by stored RBAC objects."""

from __future__ import annotations

from typing import Any

from nichotplug.testing import VIEWER_TOKEN, ApiServer, Rule, UserInfo

from .api_support import MERGE, VMS, RawClient, vm

RBAC = "/apis/rbac.authorization.k8s.io/v1"



async def test_no_token_is_anonymous_and_forbidden(raw: RawClient) -> None:
    answer = await raw.call("GET", VMS, token=None)
    assert answer.status == 403
    assert answer.body["message"] == (
        'virtualmachines.kubevirt.io is forbidden: User "system:anonymous" cannot list '
        'resource "virtualmachines" in API group "kubevirt.io" in the namespace "default"')
    assert answer.body["details"] == {"group": "kubevirt.io", "kind": "virtualmachines"}


async def test_unknown_token_is_unauthorized(raw: RawClient) -> None:
    answer = await raw.call("GET", VMS, token="nope")
    assert (answer.status, answer.body["reason"], answer.body["message"]) == (401, "Unauthorized", "Unauthorized")


async def test_anonymous_may_read_version_but_not_discovery(raw: RawClient) -> None:
    assert (await raw.call("GET", "/version", token=None)).status == 200
    assert (await raw.call("GET", "/apis", token=None)).status == 403
    assert (await raw.call("GET", "/apis", token=VIEWER_TOKEN)).status == 200


async def test_viewer_reads_but_cannot_write(raw: RawClient) -> None:
    await raw.call("POST", VMS, vm("shape-vm"))
    listed = await raw.call("GET", VMS, token=VIEWER_TOKEN)
    assert listed.status == 200
    assert len(listed.body["items"]) == 1
    patched = await raw.call("PATCH", f"{VMS}/shape-vm", {"metadata": {"labels": {"v": "1"}}}, content_type=MERGE,
                             token=VIEWER_TOKEN)
    assert patched.status == 403
    assert patched.body["message"] == ('virtualmachines.kubevirt.io "shape-vm" is forbidden: User "viewer" cannot '
                                       'patch resource "virtualmachines" in API group "kubevirt.io" in the namespace '
                                       '"default"')
    assert "labels" not in (await raw.call("GET", f"{VMS}/shape-vm")).body["metadata"]


async def test_cluster_scope_message(raw: RawClient, apiserver: ApiServer) -> None:
    apiserver.add_user("nobody-token", "nobody")
    answer = await raw.call("GET", "/api/v1/namespaces", token="nobody-token")
    assert answer.status == 403
    assert answer.body["message"].endswith('cannot list resource "namespaces" in API group "" at the cluster scope')


async def test_static_rules_limit_verbs_resources_and_namespaces() -> None:
    users = {"t": UserInfo("editor", "u1", ("team",))}
    rbac = {"editor": [Rule(verbs=("get", "patch"), api_groups=("kubevirt.io",), resources=("virtualmachines",),
                            namespaces=("default",))]}
    async with ApiServer(users=users, rbac=rbac) as server:
        raw = RawClient(server)
        try:
            await raw.call("POST", VMS, vm("vm1"))
            assert (await raw.call("GET", f"{VMS}/vm1", token="t")).status == 200
            assert (await raw.call("PATCH", f"{VMS}/vm1", {"metadata": {"labels": {"a": "b"}}}, content_type=MERGE,
                                   token="t")).status == 200
            assert (await raw.call("DELETE", f"{VMS}/vm1", token="t")).status == 403
            status_patch = await raw.call("PATCH", f"{VMS}/vm1/status", {"status": {}}, content_type=MERGE, token="t")
            assert status_patch.status == 403
            assert 'cannot patch resource "virtualmachines/status"' in status_patch.body["message"]
            assert (await raw.call("GET", "/apis/kubevirt.io/v1/namespaces/kube-system/virtualmachines/vm1",
                                   token="t")).status == 403
        finally:
            await raw.close()


async def _apply_rbac(raw: RawClient, role_kind: str, binding_kind: str, namespace: str | None,
                      rules: list[dict[str, Any]], subject: dict[str, Any]) -> None:
    scope = f"/namespaces/{namespace}" if namespace else ""
    role_plural, binding_plural = role_kind.lower() + "s", binding_kind.lower() + "s"
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": role_kind, "metadata": {"name": "r"},
            "rules": rules}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": binding_kind, "metadata": {"name": "b"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "r"},
               "subjects": [subject]}
    assert (await raw.call("POST", f"{RBAC}{scope}/{role_plural}", role)).status == 201
    assert (await raw.call("POST", f"{RBAC}{scope}/{binding_plural}", binding)).status == 201


async def test_service_account_gets_what_its_role_binding_grants(raw: RawClient, apiserver: ApiServer) -> None:
    token = apiserver.service_account_token("default", "nichotplug")
    await raw.call("POST", VMS, vm("vm1"))
    assert (await raw.call("GET", VMS, token=token)).status == 403
    await _apply_rbac(raw, "Role", "RoleBinding", "default",
                      [{"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["get", "list"]}],
                      {"kind": "ServiceAccount", "name": "nichotplug", "namespace": "default"})
    assert (await raw.call("GET", VMS, token=token)).status == 200
    assert (await raw.call("DELETE", f"{VMS}/vm1", token=token)).status == 403
    other_namespace = "/apis/kubevirt.io/v1/namespaces/kube-system/virtualmachines"
    assert (await raw.call("GET", other_namespace, token=token)).status == 403


async def test_cluster_role_binding_to_a_group_grants_everywhere(raw: RawClient, apiserver: ApiServer) -> None:
    apiserver.add_user("ops-token", "olga", groups=("ops",))
    await _apply_rbac(raw, "ClusterRole", "ClusterRoleBinding", None,
                      [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
                      {"kind": "Group", "name": "ops", "apiGroup": "rbac.authorization.k8s.io"})
    assert (await raw.call("POST", VMS, vm("vm1"), token="ops-token")).status == 201
    assert (await raw.call("GET", "/api/v1/namespaces", token="ops-token")).status == 200


async def test_resource_names_restrict_a_rule(raw: RawClient, apiserver: ApiServer) -> None:
    apiserver.add_user("t", "tina")
    await raw.call("POST", VMS, vm("mine"))
    await raw.call("POST", VMS, vm("theirs"))
    await _apply_rbac(raw, "Role", "RoleBinding", "default",
                      [{"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines"], "verbs": ["get"],
                        "resourceNames": ["mine"]}],
                      {"kind": "User", "name": "tina", "apiGroup": "rbac.authorization.k8s.io"})
    assert (await raw.call("GET", f"{VMS}/mine", token="t")).status == 200
    assert (await raw.call("GET", f"{VMS}/theirs", token="t")).status == 403


async def test_token_request_issues_a_working_service_account_token(raw: RawClient) -> None:
    await raw.call("POST", "/api/v1/namespaces/default/serviceaccounts", {"metadata": {"name": "sa1"}})
    issued = await raw.call("POST", "/api/v1/namespaces/default/serviceaccounts/sa1/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}})
    assert issued.status == 201
    token = issued.body["status"]["token"]
    denied = await raw.call("GET", VMS, token=token)
    assert denied.status == 403
    assert 'User "system:serviceaccount:default:sa1"' in denied.body["message"]
