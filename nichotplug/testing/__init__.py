"""An in-process Kubernetes API server for tests and the demo (see ARCHITECTURE.md)."""

from nichotplug.testing.auth import DEFAULT_RBAC, DEFAULT_USERS, VIEWER_TOKEN, Rule, UserInfo
from nichotplug.testing.errors import StatusError
from nichotplug.testing.server import ApiServer, bundled_crds

__all__ = ["DEFAULT_RBAC", "DEFAULT_USERS", "VIEWER_TOKEN", "ApiServer", "Rule", "StatusError", "UserInfo",
           "bundled_crds"]
