"""Building kubernetes-asyncio ``ApiClient`` objects: the service's own, and one per caller.

``load_api_client`` picks the service's credentials the way controller-runtime does: an explicit
kubeconfig, ``$KUBECONFIG``, the pod's service account when running in a cluster, then
``~/.kube/config``. ``api_client_with_token`` derives a client that talks to the same server with the
same CA but authenticates as the caller (their bearer token, never our client certificate), so the
API server's RBAC judges the caller's action-API requests, not this service's account.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio.client import ApiClient, Configuration

# Where a pod finds its service account credentials (the same constants client-go uses).
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SERVICE_HOST_ENV = "KUBERNETES_SERVICE_HOST"
SERVICE_PORT_ENV = "KUBERNETES_SERVICE_PORT"


class KubeConfigError(RuntimeError):
    """No usable Kubernetes credentials were found; the message says where we looked."""


def running_in_cluster() -> bool:
    """True when the process runs in a pod with a mounted service account token."""
    return bool(os.environ.get(SERVICE_HOST_ENV)) and (SERVICE_ACCOUNT_DIR / "token").is_file()


def kubeconfig_candidates(explicit: str | os.PathLike[str] | None, *, home: bool = True) -> list[Path]:
    """The kubeconfig files to consider, in kubectl's order: the explicit one, else those of
    ``$KUBECONFIG``, then (with ``home``) ``~/.kube/config``. The first that exists is the one read."""
    if explicit:
        return [Path(explicit)]
    from_env = os.environ.get("KUBECONFIG", "")
    # $KUBECONFIG may list several files; the first existing one holds the context we use.
    candidates = [Path(p) for p in from_env.split(os.pathsep) if p]
    return [*candidates, Path.home() / ".kube" / "config"] if home else candidates


def find_kubeconfig(explicit: str | os.PathLike[str] | None, *, home: bool = True) -> Path | None:
    """The first existing file of :func:`kubeconfig_candidates`, or None."""
    return next((path for path in kubeconfig_candidates(explicit, home=home) if path.is_file()), None)


def bearer_credential(value: str) -> str | None:
    """The token of an ``Authorization`` value ``Bearer <token>`` (scheme in any case; "" when the token
    is missing), or None when the value names another scheme or none."""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


async def load_api_client(
    kubeconfig: str | os.PathLike[str] | None = None, context: str | None = None
) -> ApiClient:
    """An ``ApiClient`` with this service's own credentials.

    The order is controller-runtime's: an explicit ``kubeconfig``, then ``$KUBECONFIG``, then the
    in-cluster service account when running in a pod, then ``~/.kube/config``. Raises
    :class:`KubeConfigError` naming the places tried when none works. The caller owns the client and
    must ``await client.close()``.
    """
    found = find_kubeconfig(kubeconfig, home=False)
    configuration = Configuration()
    if found is None and kubeconfig is None and running_in_cluster():
        kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration, token_filename=str(SERVICE_ACCOUNT_DIR / "token"),
            cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
        return ApiClient(configuration=configuration)
    if found is None and kubeconfig is None:
        found = find_kubeconfig(None)
    if found is None:
        tried = ", ".join(str(path) for path in kubeconfig_candidates(kubeconfig))
        raise KubeConfigError(f"no Kubernetes credentials: not in a pod and no kubeconfig at {tried}")
    try:
        await kube_config.load_kube_config(
            config_file=str(found), context=context,
            client_configuration=configuration, persist_config=False,
        )
    except kube_config.ConfigException as exc:
        raise KubeConfigError(f"kubeconfig {found}: {exc}") from exc
    return ApiClient(configuration=configuration)


def api_client_with_token(base: ApiClient, token: str) -> ApiClient:
    """A client for the same API server and CA as ``base`` that authenticates with ``token`` only.

    Client certificates, basic auth and token-refresh hooks of ``base`` are dropped: the request
    must carry the caller's identity and nothing of ours. The caller must close the returned client.
    """
    credential = bearer_credential(token)  # a bare token is accepted too
    token = token.strip() if credential is None else credential
    if not token:
        raise ValueError("an empty bearer token cannot authenticate anyone")
    configuration: Configuration = copy.deepcopy(base.configuration)
    configuration.cert_file = None
    configuration.key_file = None
    configuration.username = None
    configuration.password = None
    configuration.refresh_api_key_hook = None
    configuration.api_key = {"BearerToken": token}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    return ApiClient(configuration=configuration)
