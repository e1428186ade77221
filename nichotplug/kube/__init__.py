"""nichotplug.kube: the only code that talks to the Kubernetes API.

- ``client``: ``load_api_client`` (in-cluster or kubeconfig) and ``api_client_with_token`` (the
  action API's per-caller client);
- ``cache``: ``ClusterView``, the list+watch picture of VMs, VMIs and NADs (``rules.ClusterState``), fed by
  ``reflector`` (list/watch, back-off) and stored as ``records`` (compact records, the MAC-owner index);
- ``patch``: JSON Patch / merge patch / create of custom objects, API errors as exceptions;
- ``events``: ``EventRecorder`` (core/v1 Events, aggregated);
- ``leader``: ``LeaderElector`` on a ``coordination.k8s.io/v1`` Lease.
"""

from nichotplug.kube.cache import (
    NETWORK_ATTACHMENT_DEFINITION,
    VIRTUAL_MACHINE,
    VIRTUAL_MACHINE_INSTANCE,
    ClusterView,
    WatchSettings,
)
from nichotplug.kube.client import KubeConfigError, api_client_with_token, load_api_client
from nichotplug.kube.events import EventRecorder, ObjectRef
from nichotplug.kube.leader import LeaderElector
from nichotplug.kube.patch import (
    AlreadyExists,
    Conflict,
    Denied,
    Forbidden,
    Invalid,
    KubeError,
    NotFound,
    Unauthorized,
    as_kube_error,
    create_custom_object,
    get_custom_object,
    json_patch,
    merge_patch,
    resource_version_test,
)

__all__ = [
    "NETWORK_ATTACHMENT_DEFINITION",
    "VIRTUAL_MACHINE",
    "VIRTUAL_MACHINE_INSTANCE",
    "AlreadyExists",
    "ClusterView",
    "Conflict",
    "Denied",
    "EventRecorder",
    "Forbidden",
    "Invalid",
    "KubeConfigError",
    "KubeError",
    "LeaderElector",
    "NotFound",
    "ObjectRef",
    "Unauthorized",
    "WatchSettings",
    "api_client_with_token",
    "as_kube_error",
    "create_custom_object",
    "get_custom_object",
    "json_patch",
    "load_api_client",
    "merge_patch",
    "resource_version_test",
]
