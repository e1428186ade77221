"""Who is calling and what they may do: bearer-token authentication and authorisation.

Authentication is a token table (``token -> UserInfo``). Authorisation allows, in this order:
members of ``system:masters``; a static rule table given at start (``username -> rules``); and
real RBAC evaluation of the Role / ClusterRole / RoleBinding / ClusterRoleBinding objects
stored in the server, so a test can apply a chart's RBAC and act as its service account.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ANONYMOUS = "system:anonymous"
MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"

# Non-resource URLs that every caller may read, as the default system:public-info-viewer and
# system:discovery roles allow (discovery needs an authenticated caller, /version does not).
PUBLIC_PATHS = ("/version", "/healthz", "/livez", "/readyz")
DISCOVERY_PREFIXES = ("/api", "/apis", "/openapi", "/version")


@dataclass(frozen=True)
class UserInfo:
    """The authenticated caller, as sent in AdmissionReview ``userInfo``."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One static authorisation rule; ``"*"`` matches anything, ``namespaces=()`` every namespace."""

    verbs: tuple[str, ...] = ("*",)
    api_groups: tuple[str, ...] = ("*",)
    resources: tuple[str, ...] = ("*",)
    namespaces: tuple[str, ...] = ()

    def allows(self, request: ResourceRequest) -> bool:
        return (
            _matches(self.verbs, request.verb)
            and _matches(self.api_groups, request.group)
            and _matches(self.resources, request.full_resource)  # "virtualmachines" does not grant ".../status"
            and (not self.namespaces or request.namespace in self.namespaces)
        )


@dataclass(frozen=True)
class ResourceRequest:
    """What an API call wants to do, in authorisation terms."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


VIEWER_TOKEN = "viewer-token"
NOBODY_TOKEN = "nobody-token"  # authenticated, no rights (made on first use)
DEFAULT_USERS: Mapping[str, UserInfo] = {
    VIEWER_TOKEN: UserInfo(username="viewer", uid="viewer-uid", groups=(AUTHENTICATED,)),
}
DEFAULT_RBAC: Mapping[str, Sequence[Rule]] = {
    "viewer": (Rule(verbs=("get", "list", "watch")),),
}

RbacObjects = Callable[[str], Iterable[Mapping[str, Any]]]  # plural -> stored rbac.authorization.k8s.io objects


def _matches(allowed: Iterable[str], value: str) -> bool:
    return any(item == "*" or item == value for item in allowed)


@dataclass
class Authenticator:
    """Bearer token table; the admin token is generated per server."""

    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    tokens: dict[str, UserInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tokens.setdefault(self.admin_token, UserInfo("admin", "admin-uid", (MASTERS, AUTHENTICATED)))

    def add(self, token: str, username: str, groups: Sequence[str] = (), uid: str = "") -> UserInfo:
        all_groups = tuple(groups) + ((AUTHENTICATED,) if AUTHENTICATED not in groups else ())
        user = UserInfo(username=username, uid=uid or f"{username}-uid", groups=all_groups)
        self.tokens[token] = user
        return user

    def authenticate(self, authorization: str | None) -> UserInfo | None:
        """The caller for an ``Authorization`` header; anonymous without one, None for a bad token."""
        if not authorization:
            return UserInfo(ANONYMOUS, "", (UNAUTHENTICATED,))
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return self.tokens.get(token.strip())


def service_account_user(namespace: str, name: str) -> tuple[str, tuple[str, ...]]:
    """Username and groups Kubernetes gives a service account token."""
    return (f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}"))


class Authorizer:
    """Static rules plus RBAC over the stored Role/Binding objects."""

    def __init__(self, static_rules: Mapping[str, Sequence[Rule]], rbac_objects: RbacObjects) -> None:
        self.static_rules = {user: list(rules) for user, rules in static_rules.items()}
        self._rbac_objects = rbac_objects

    def allowed(self, user: UserInfo, request: ResourceRequest) -> bool:
        if MASTERS in user.groups:
            return True
        if any(rule.allows(request) for rule in self.static_rules.get(user.username, ())):
            return True
        return any(_rbac_rule_allows(rule, request) for rule in self._rbac_rules_for(user, request.namespace))

    def allowed_path(self, user: UserInfo, path: str) -> bool:
        if MASTERS in user.groups or path in PUBLIC_PATHS:
            return True
        if user.username != ANONYMOUS and any(
            path == prefix or path.startswith(prefix + "/") for prefix in DISCOVERY_PREFIXES
        ):
            return True
        return any(
            _non_resource_rule_allows(rule, path) for rule in self._rbac_rules_for(user, namespace="")
        )

    def _rbac_rules_for(self, user: UserInfo, namespace: str) -> Iterable[Mapping[str, Any]]:
        bindings = list(self._rbac_objects("clusterrolebindings"))
        if namespace:
            bindings += [rb for rb in self._rbac_objects("rolebindings")
                         if rb.get("metadata", {}).get("namespace") == namespace]
        for binding in bindings:
            if not any(_subject_matches(subject, user, binding) for subject in binding.get("subjects") or ()):
                continue
            yield from self._role_rules(binding)

    def _role_rules(self, binding: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            roles = [r for r in self._rbac_objects("clusterroles") if r["metadata"]["name"] == ref.get("name")]
        else:
            namespace = binding.get("metadata", {}).get("namespace")
            roles = [r for r in self._rbac_objects("roles")
                     if r["metadata"]["name"] == ref.get("name") and r["metadata"].get("namespace") == namespace]
        for role in roles:
            yield from role.get("rules") or ()


def _subject_matches(subject: Mapping[str, Any], user: UserInfo, binding: Mapping[str, Any]) -> bool:
    kind = subject.get("kind")
    if kind == "User":
        return bool(subject.get("name") == user.username)
    if kind == "Group":
        return subject.get("name") in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding.get("metadata", {}).get("namespace", "")
        return user.username == f"system:serviceaccount:{namespace}:{subject.get('name')}"
    return False


def _rbac_rule_allows(rule: Mapping[str, Any], request: ResourceRequest) -> bool:
    if not _matches(rule.get("verbs") or (), request.verb):
        return False
    if not _matches(rule.get("apiGroups") or (), request.group):
        return False
    resources = rule.get("resources") or ()
    if not (_matches(resources, request.full_resource)
            or (not request.subresource and _matches(resources, request.resource))
            or (request.subresource and f"*/{request.subresource}" in resources)):
        return False
    names = rule.get("resourceNames") or ()
    return not names or request.name in names


def _non_resource_rule_allows(rule: Mapping[str, Any], path: str) -> bool:
    for pattern in rule.get("nonResourceURLs") or ():
        if pattern == "*" or pattern == path or (pattern.endswith("*") and path.startswith(pattern[:-1])):
            return _matches(rule.get("verbs") or (), "get")
    return False
