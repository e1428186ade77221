"""A real Kubernetes control plane for tests: etcd and kube-apiserver from ``KUBEBUILDER_ASSETS``.

controller-runtime's envtest pattern in Python. :class:`RealApiServer` starts etcd and kube-apiserver
on free loopback ports with throwaway certificates, static bearer tokens (an admin in
``system:masters``, a viewer, a user without rights), RBAC authorisation, the admission-webhook
plugins and the aggregation layer (front-proxy client certificate and request-header flags), installs
the bundled CRDs and waits until they are served. It offers the surface the tests use on the
in-process :class:`~nichotplug.testing.server.ApiServer` (``url``, ``ca_file``, ``admin_token``,
``write_kubeconfig``, ``service_account_token``), so one test runs against either.

There is no controller-manager: namespaces never finish terminating and nothing collects garbage.
A session shares one server, so :meth:`RealApiServer.reset` deletes what a test created (webhook
configurations first, so nothing refuses the cleanup) and never deletes a namespace.

Everything here is synchronous (subprocesses and blocking HTTPS to another process), so it may be
called from a fixture before the event loop runs, or through ``asyncio.to_thread`` inside a test.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from nichotplug import certs

ASSETS_VARIABLE = "KUBEBUILDER_ASSETS"
ENABLE_HINT = f"set {ASSETS_VARIABLE}=$(../shared/envtest/unpack) to run it"
CRD_DIR = Path(__file__).with_name("crds")
FRONT_PROXY_CLIENT = "front-proxy-client"
SERVICE_CIDR = "10.96.0.0/24"
START_SECONDS = 60.0
LOG_TAIL_LINES = 25

ADMIN_USER = "envtest-admin"
VIEWER_USER = "viewer"
NOBODY_USER = "nobody"
# The groups kube-apiserver's bootstrap RBAC policy marks: objects carrying this label are its own.
BOOTSTRAP_LABEL = "kubernetes.io/bootstrapping"
# ConfigMaps kube-apiserver keeps for itself; a reset must leave them.
KEPT_CONFIGMAPS = frozenset({("kube-system", "extension-apiserver-authentication"),
                             ("kube-system", "kube-apiserver-legacy-service-account-token-tracking")})

# Namespaced resources a test may create, as (API path prefix, plural); reset deletes them.
NAMESPACED_LEFTOVERS: tuple[tuple[str, str], ...] = (
    ("/apis/kubevirt.io/v1", "virtualmachineinstancemigrations"),
    ("/apis/kubevirt.io/v1", "virtualmachineinstances"),
    ("/apis/kubevirt.io/v1", "virtualmachines"),
    ("/apis/k8s.cni.cncf.io/v1", "network-attachment-definitions"),
    ("/apis/coordination.k8s.io/v1", "leases"),
    ("/api/v1", "events"),
    ("/api/v1", "secrets"),
    ("/api/v1", "configmaps"),
    ("/api/v1", "services"),
    ("/api/v1", "serviceaccounts"),
    ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    ("/apis/apps/v1", "deployments"),
    ("/apis/policy/v1", "poddisruptionbudgets"),
)
CLUSTER_LEFTOVERS: tuple[tuple[str, str], ...] = (
    ("/apis/rbac.authorization.k8s.io/v1", "clusterroles"),
    ("/apis/rbac.authorization.k8s.io/v1", "clusterrolebindings"),
)
WEBHOOK_CONFIGURATIONS: tuple[tuple[str, str], ...] = (
    ("/apis/admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations"),
    ("/apis/admissionregistration.k8s.io/v1", "validatingwebhookconfigurations"),
)
API_SERVICES = ("/apis/apiregistration.k8s.io/v1", "apiservices")


class EnvtestError(RuntimeError):
    """The control plane could not start or answered what a test setup cannot go on with."""


@dataclass(frozen=True)
class Answer:
    """One HTTP answer of the real API server."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def assets_dir() -> Path | None:
    """The folder ``KUBEBUILDER_ASSETS`` names, or None when it is unset or empty."""
    value = os.environ.get(ASSETS_VARIABLE, "").strip()
    return Path(value) if value else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: a SIGKILL when the test process dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class _Process:
    """A control-plane binary started with its own log file."""

    binary: Path
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            # The kernel's parent-death signal follows the *thread* that forked: set it only from the
            # main thread, or a restart from a worker thread (asyncio.to_thread) would die with that thread.
            on_parent_death = _die_with_parent if threading.current_thread() is threading.main_thread() else None
            self.popen = subprocess.Popen(
                [str(self.binary), *self.argv], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=on_parent_death, start_new_session=True,
            )
        finally:
            log.close()

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, *, kill: bool = False) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self.popen = None

    def failure(self, what: str) -> EnvtestError:
        """An error naming the binary, the flag its log complains about and the log's last lines."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        tail = "\n".join(lines[-LOG_TAIL_LINES:])
        flag = next((line for line in reversed(lines) if "flag" in line.lower()), "")
        code = self.popen.poll() if self.popen is not None else None
        said = f"\nthe line about a flag: {flag}" if flag else ""
        return EnvtestError(
            f"{self.binary.name} {what} (exit code {code}); started as:\n  {self.binary} {' '.join(self.argv)}"
            f"{said}\nlast lines of {self.log_path}:\n{tail}"
        )


class RealApiServer:
    """etcd + kube-apiserver on loopback, with tokens, RBAC, webhooks, aggregation and the CRDs."""

    kind = "real"

    def __init__(self, assets: Path, *, workdir: Path | None = None, crd_dir: Path = CRD_DIR) -> None:
        self.assets = assets
        self._own_tmp = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="nichotplug-envtest-"))
        self.crd_dir = crd_dir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.etcd_port = free_port()
        self.admin_token = secrets.token_urlsafe(24)
        self.viewer_token = secrets.token_urlsafe(24)
        self.nobody_token = secrets.token_urlsafe(24)
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._connection: http.client.HTTPSConnection | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- what tests read ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "pki" / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def write_kubeconfig(self, path: Path | str, token: str | None = None, namespace: str = "default") -> Path:
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            # The in-process server's names, so a test that edits a kubeconfig works on both.
            "clusters": [{"name": "nichotplug-test",
                          "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)}}],
            "users": [{"name": "nichotplug-test-user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "nichotplug-test", "context": {
                "cluster": "nichotplug-test", "user": "nichotplug-test-user", "namespace": namespace}}],
            "current-context": "nichotplug-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bound token of ``system:serviceaccount:<namespace>:<name>`` (the account is made if missing)."""
        self.ensure_namespace(namespace)
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
        self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", account, expect=(201, 409))
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                  "spec": {"expirationSeconds": 3600}}
        answer = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", review,
                              expect=(201,))
        token: str = answer.json()["status"]["token"]
        return token

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start etcd and kube-apiserver, install the CRDs; everything is stopped again on failure."""
        atexit.register(self.stop)
        try:
            self._write_pki()
            self._start_etcd()
            self._start_apiserver()
            self._install_crds()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop both processes and remove the throwaway folder (idempotent)."""
        self._close_connection()
        for process in (self._apiserver, self._etcd):
            if process is not None:
                process.stop()
        self._apiserver = self._etcd = None
        if self._own_tmp:
            shutil.rmtree(self.workdir, ignore_errors=True)
        atexit.unregister(self.stop)

    def restart_apiserver(self, *, kill: bool = False, down_seconds: float = 0.0) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL) and start it again on the same port; etcd keeps the data."""
        if self._apiserver is None:
            raise EnvtestError("kube-apiserver is not running")
        self._close_connection()
        self._apiserver.stop(kill=kill)
        time.sleep(down_seconds)
        self._apiserver.start()
        self._wait_ready(self._apiserver)

    def compact_etcd(self) -> int:
        """Compact etcd at its current revision: watches from older resourceVersions then get 410 Gone."""
        revision = self._etcd_post("/v3/kv/range", {"key": "AA==", "limit": 1})["header"]["revision"]
        self._etcd_post("/v3/kv/compaction", {"revision": revision, "physical": True})
        return int(revision)

    # -- HTTP -----------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                content_type: str = "application/json", expect: Sequence[int] = ()) -> Answer:
        """One request as the admin (or ``token``); ``expect`` turns any other status into an error."""
        data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
        headers = {"Authorization": f"Bearer {token or self.admin_token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        answer = self._send(method, path, data, headers)
        if expect and answer.status not in expect:
            raise EnvtestError(f"{method} {path}: HTTP {answer.status}: {answer.body[:500]!r}")
        return answer

    def ensure_namespace(self, name: str) -> None:
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        self.request("POST", "/api/v1/namespaces", namespace, expect=(201, 409))

    def _send(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> Answer:
        for attempt in range(2):
            connection = self._open_connection()
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                return Answer(response.status, response.read(), dict(response.getheaders()))
            except (http.client.HTTPException, ConnectionError, OSError):
                self._close_connection()  # a kept-alive connection the server closed: open a new one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _open_connection(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            if self._ssl is None:
                self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
            self._connection = http.client.HTTPSConnection(self.host, self.port, context=self._ssl, timeout=30)
        return self._connection

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _etcd_post(self, path: str, body: Mapping[str, Any]) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.etcd_port, timeout=10)
        try:
            connection.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200:
                raise EnvtestError(f"etcd {path}: HTTP {response.status}: {answer[:300]!r}")
            return json.loads(answer)
        finally:
            connection.close()

    # -- start-up steps -------------------------------------------------------------------------
    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = certs.make_ca("envtest-ca")
        serving_cert, serving_key = certs.make_serving_cert(
            ca_cert, ca_key, dns_names=["localhost", "kubernetes", "kubernetes.default.svc"],
            ip_addresses=[self.host])
        proxy_ca_cert, proxy_ca_key = certs.make_ca("envtest-front-proxy-ca")
        proxy_cert, proxy_key = certs.make_client_cert(proxy_ca_cert, proxy_ca_key, common_name=FRONT_PROXY_CLIENT)
        # The service-account signing key; its certificate carries the public key the verifier reads.
        account_cert, account_key = certs.make_ca("envtest-service-accounts")
        files = {
            "ca.crt": ca_cert, "ca.key": ca_key, "apiserver.crt": serving_cert, "apiserver.key": serving_key,
            "front-proxy-ca.crt": proxy_ca_cert, "front-proxy-ca.key": proxy_ca_key,
            "front-proxy-client.crt": proxy_cert, "front-proxy-client.key": proxy_key,
            "sa.key": account_key, "sa.crt": account_cert,
        }
        for name, content in files.items():
            certs.atomic_write(pki / name, content, mode=0o600)
        tokens = [(self.admin_token, ADMIN_USER, "system:masters"), (self.viewer_token, VIEWER_USER, ""),
                  (self.nobody_token, NOBODY_USER, "")]
        (pki / "tokens.csv").write_text(
            "".join(f'{token},{user},{user}-uid,"{groups}"\n' for token, user, groups in tokens))

    def _binary(self, name: str) -> Path:
        path = self.assets / name
        if not os.access(path, os.X_OK):
            raise EnvtestError(f"{name} not found or not executable in {ASSETS_VARIABLE}={self.assets}; "
                               "run ../shared/envtest/unpack or point it at setup-envtest's folder")
        return path

    def _start_etcd(self) -> None:
        data_dir = self.workdir / "etcd"
        peer_port = free_port()
        argv = [
            "--data-dir", str(data_dir), "--name", "envtest",
            "--listen-client-urls", self.etcd_url, "--advertise-client-urls", self.etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"envtest=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",  # a throwaway store: durability buys nothing, fsyncs cost seconds
            "--log-level", "warn",
        ]
        self._etcd = _Process(self._binary("etcd"), argv, self.workdir / "etcd.log")
        self._etcd.start()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if not self._etcd.running():
                raise self._etcd.failure("exited during start")
            with contextlib.suppress(OSError, EnvtestError, http.client.HTTPException, ValueError):
                self._etcd_post("/v3/kv/range", {"key": "AA==", "limit": 1})
                return
            time.sleep(0.1)
        raise self._etcd.failure(f"did not answer within {START_SECONDS:.0f} s")

    def _apiserver_argv(self) -> list[str]:
        pki = self.workdir / "pki"
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={self.host}", f"--advertise-address={self.host}", f"--secure-port={self.port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            f"--service-account-key-file={pki / 'sa.crt'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=NamespaceLifecycle,ServiceAccount,"
            "MutatingAdmissionWebhook,ValidatingAdmissionWebhook",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
        ]

    def _start_apiserver(self) -> None:
        self._apiserver = _Process(self._binary("kube-apiserver"), self._apiserver_argv(),
                                   self.workdir / "kube-apiserver.log")
        self._apiserver.start()
        self._wait_ready(self._apiserver)
        self._grant_viewer()

    def _wait_ready(self, process: _Process) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if not process.running():
                raise process.failure("exited during start")
            with contextlib.suppress(OSError, http.client.HTTPException, ssl.SSLError):
                if self.request("GET", "/readyz").status == 200:
                    return
            time.sleep(0.2)
        raise process.failure(f"was not ready (/readyz) within {START_SECONDS:.0f} s")

    def _grant_viewer(self) -> None:
        """The viewer may read everything, as the in-process server's default viewer may."""
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "envtest-viewer", "labels": {BOOTSTRAP_LABEL: "envtest"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "envtest-read-all"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": VIEWER_USER}],
        }
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "envtest-read-all", "labels": {BOOTSTRAP_LABEL: "envtest"}},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}],
        }
        base = "/apis/rbac.authorization.k8s.io/v1"
        self.request("POST", f"{base}/clusterroles", role, expect=(201, 409))
        self.request("POST", f"{base}/clusterrolebindings", binding, expect=(201, 409))

    def install_crd_file(self, path: Path) -> list[str]:
        """Create every CRD in a YAML file (kept when it exists); return their names once Established."""
        names = []
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            self.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd, expect=(201, 409))
            names.append(crd["metadata"]["name"])
        for name in names:
            self._wait_established(name)
        return names

    def _install_crds(self) -> None:
        for path in sorted(self.crd_dir.glob("*.yaml")):
            self.install_crd_file(path)

    def _wait_established(self, name: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        while time.monotonic() < deadline:
            crd = self.request("GET", path, expect=(200,)).json()
            conditions = {c["type"]: c["status"] for c in (crd.get("status") or {}).get("conditions") or []}
            if conditions.get("Established") == "True":
                group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
                plural = crd["spec"]["names"]["plural"]
                listed = self.request("GET", f"/apis/{group}/{version}/{plural}?limit=1")
                if listed.status == 200:
                    return
            time.sleep(0.1)
        raise EnvtestError(f"CRD {name} was not Established and served within {START_SECONDS:.0f} s")

    # -- between tests --------------------------------------------------------------------------
    def reset(self) -> None:
        """Delete what tests create: webhook configurations and APIServices first, then objects."""
        for prefix, plural in WEBHOOK_CONFIGURATIONS:
            self._delete_all(f"{prefix}/{plural}", keep=lambda _obj: False)
        self._delete_all(f"{API_SERVICES[0]}/{API_SERVICES[1]}",
                         keep=lambda obj: obj.get("spec", {}).get("service") is None)
        for prefix, plural in NAMESPACED_LEFTOVERS:
            self._delete_namespaced(prefix, plural)
        for prefix, plural in CLUSTER_LEFTOVERS:
            self._delete_all(f"{prefix}/{plural}", keep=_is_bootstrap)

    def _delete_namespaced(self, prefix: str, plural: str) -> None:
        for obj in self._list(f"{prefix}/{plural}"):
            metadata = obj["metadata"]
            namespace, name = metadata["namespace"], metadata["name"]
            if _kept_namespaced(plural, namespace, name, metadata):
                continue
            self._delete_object(f"{prefix}/namespaces/{namespace}/{plural}/{quote(name)}", metadata)

    def _delete_all(self, path: str, *, keep: Any) -> None:
        for obj in self._list(path):
            if not keep(obj):
                self._delete_object(f"{path}/{quote(obj['metadata']['name'])}", obj["metadata"])

    def _delete_object(self, path: str, metadata: Mapping[str, Any]) -> None:
        if metadata.get("finalizers"):
            # Nothing here would ever remove them (no controllers): drop them so the object goes.
            self.request("PATCH", path, {"metadata": {"finalizers": None}},
                         content_type="application/merge-patch+json", expect=(200, 404))
        self.request("DELETE", path, {"propagationPolicy": "Background", "gracePeriodSeconds": 0},
                     expect=(200, 202, 404))

    def _list(self, path: str) -> Iterator[dict[str, Any]]:
        answer = self.request("GET", path, expect=(200, 404))
        if answer.status == 404:
            return iter(())
        items: list[dict[str, Any]] = answer.json().get("items", [])
        return iter(items)


def _is_bootstrap(obj: Mapping[str, Any]) -> bool:
    metadata = obj.get("metadata", {})
    return BOOTSTRAP_LABEL in metadata.get("labels", {}) or str(metadata.get("name", "")).startswith("system:")


def _kept_namespaced(plural: str, namespace: str, name: str, metadata: Mapping[str, Any]) -> bool:
    """Objects kube-apiserver made for itself (the kubernetes Service, its auth ConfigMaps, bootstrap RBAC)."""
    if (namespace, name) in KEPT_CONFIGMAPS and plural == "configmaps":
        return True
    if plural == "services" and (namespace, name) == ("default", "kubernetes"):
        return True
    if plural in ("roles", "rolebindings") and _is_bootstrap({"metadata": metadata}):
        return True
    return plural == "leases" and namespace == "kube-system" and name.startswith(("apiserver-", "kube-"))
