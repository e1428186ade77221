"""Benchmark: the latency a user feels on a VM write through a real kube-apiserver (numbers, not a test).

A real control plane (etcd + kube-apiserver from ``KUBEBUILDER_ASSETS``, as the test tier starts it)
holds ``--vms`` halted VMs. One client writes one VM sequentially over one keep-alive HTTPS
connection, alternating two kinds of write a user makes:

- **label**: a merge patch of a label (metadata only);
- **spec**: a merge patch of the VM's interfaces (the model of ``nic-1`` toggled), a cold edit the
  validating webhook judges.

Three configurations, interleaved round by round (order rotated every round, because the machine is
shared): **none** (no webhooks registered), **bare** (an aiohttp server in its own process that parses
the AdmissionReview and allows, registered as mutating and validating webhook for VMs without match
conditions: the floor of any Python webhook called on every write), **nichotplug** (``nichotplug
serve`` in its own process, registered with the configurations ``webhook.registration`` declares —
the chart's, match conditions included). Printed
per configuration and kind: p50 and p99 in milliseconds (medians over rounds), and what each adds
over **none**.

Run: ``KUBEBUILDER_ASSETS=$(../shared/envtest/unpack) .venv/bin/python benchmarks/write_latency.py
[--vms 10] [--writes 200] [--rounds 5] [--then-vms 10000]``. With ``--then-vms`` the same run
grows the cluster (same servers) and measures again, then prints what the webhooks add at p50 with
the few VMs and with the many side by side (issue 18's target: nichotplug's within 10%).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nichotplug import certs
from nichotplug.testing.envtest import RealApiServer, assets_dir
from nichotplug.webhook.registration import webhook_configurations

NAMESPACE = "bench"
TARGET = "target"
KINDS = ("label", "spec")
CONFIGS = ("none", "bare", "nichotplug")
ADMISSION = "/apis/admissionregistration.k8s.io/v1"
VMS_PATH = f"/apis/kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachines"

BARE_WEBHOOK = textwrap.dedent("""
    import json, ssl, sys
    from aiohttp import web

    async def allow(request):
        review = json.loads(await request.read())
        return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                  "response": {"uid": review["request"]["uid"], "allowed": True,
                                               "warnings": ["bare webhook"]}})

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    app = web.Application()
    app.router.add_post("/v1/webhook/mutation", allow)
    app.router.add_post("/v1/webhook/validation", allow)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_context=context, print=None)
""")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def vm(name: str, index: int) -> dict[str, Any]:
    """A halted VM with a pod and a bridge interface, both with MACs (nothing for the mutator to do)."""
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "bench"}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {
            "domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}, "model": "virtio",
                 "macAddress": f"02:be:00:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"},
                {"name": "nic-1", "bridge": {}, "model": "virtio",
                 "macAddress": f"02:be:01:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}"},
            ]}, "memory": {"guest": "1Gi"}},
            "networks": [{"name": "default", "pod": {}}, {"name": "nic-1", "multus": {"networkName": "vlan1"}}],
        }}},
    }


class Writer:
    """Sequential writes of one VM over one kept-alive HTTPS connection to the API server."""

    def __init__(self, server: RealApiServer) -> None:
        self.server = server
        context = ssl.create_default_context(cafile=str(server.ca_file))
        self.connection = http.client.HTTPSConnection(server.host, server.port, context=context, timeout=30)
        self.headers = {"Authorization": f"Bearer {server.admin_token}",
                        "Content-Type": "application/merge-patch+json", "Accept": "application/json"}
        self.count = 0
        self.last_warning = ""  # the API server's Warning header: proves which webhook answered

    def write(self, kind: str) -> float:
        """One write of that kind; its latency in seconds (it must succeed)."""
        self.count += 1
        if kind == "label":
            patch: dict[str, Any] = {"metadata": {"labels": {"round": str(self.count)}}}
        else:
            model = "e1000" if self.count % 4 < 2 else "virtio"
            patch = {"spec": {"template": {"spec": {"domain": {"devices": {"interfaces": [
                {"name": "default", "masquerade": {}, "model": "virtio", "macAddress": "02:be:ff:00:00:01"},
                {"name": "nic-1", "bridge": {}, "model": model, "macAddress": "02:be:ff:00:00:02"}]}}}}}}
        body = json.dumps(patch)
        started = time.perf_counter()
        self.connection.request("PATCH", f"{VMS_PATH}/{TARGET}", body=body, headers=self.headers)
        response = self.connection.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - started
        self.last_warning = response.getheader("Warning") or ""
        if response.status != 200:
            raise SystemExit(f"a {kind} write failed: HTTP {response.status}: {answer[:300]!r}")
        return elapsed


@contextmanager
def process(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        child = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT)
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_port(port: int, child: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        if child.poll() is not None:
            raise SystemExit(f"a webhook process exited: {log.read_text()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listened on {port} within 60 s: {log.read_text()[-2000:]}")


def register(server: RealApiServer, config: str, urls: dict[str, str], ca_pem: bytes) -> None:
    """Replace whatever webhook configurations are registered by those of ``config``."""
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        server.request("DELETE", f"{ADMISSION}/{plural}/nichotplug", expect=(200, 404))
    if config == "none":
        return
    for obj in webhook_configurations("nichotplug", url=urls[config], ca_bundle=ca_pem,
                                      excluded_namespaces=("kube-system",)):
        if config == "bare":
            # The floor of a webhook called on every VM write: no match conditions to skip any.
            for webhook in obj["webhooks"]:
                webhook.pop("matchConditions", None)
        plural = obj["kind"].lower() + "s"
        server.request("POST", f"{ADMISSION}/{plural}", obj, expect=(201,))


def measure(writer: Writer, writes: int, config: str) -> dict[str, list[float]]:
    for index in range(20):  # the API server's webhook configuration watch catches up; connections warm
        writer.write(KINDS[index % 2])
    if ("bare webhook" in writer.last_warning) != (config == "bare"):
        raise SystemExit(f"configuration {config}: the webhooks answering are not the ones registered")
    samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for index in range(writes):
        kind = KINDS[index % 2]
        samples[kind].append(writer.write(kind))
    return samples


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def populate(server: RealApiServer, count: int) -> None:
    server.ensure_namespace(NAMESPACE)
    nad = {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "vlan1", "namespace": NAMESPACE},
           "spec": {"config": json.dumps({"cniVersion": "0.3.1", "type": "bridge", "bridge": "mgmt-br"})}}
    server.request("POST", f"/apis/k8s.cni.cncf.io/v1/namespaces/{NAMESPACE}/network-attachment-definitions",
                   nad, expect=(201,))
    server.request("POST", VMS_PATH, vm(TARGET, 0), expect=(201,))
    for index in range(1, count):
        server.request("POST", VMS_PATH, vm(f"vm-{index}", index), expect=(201,))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10, help="VMs in the cluster (default 10)")
    parser.add_argument("--writes", type=int, default=200, help="measured writes per configuration and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--then-vms", type=int, default=0,
                        help="then grow the cluster to this many VMs and measure again (same run)")
    args = parser.parse_args(argv)
    assets = assets_dir()
    if assets is None:
        print("set KUBEBUILDER_ASSETS=$(../shared/envtest/unpack): this benchmark needs a real kube-apiserver",
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="nichotplug-write-latency-"))
    server = RealApiServer(assets)
    try:
        server.start()
        return run(server, args, workdir)
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(server: RealApiServer, args: argparse.Namespace, workdir: Path) -> int:
    started = time.perf_counter()
    populate(server, max(1, args.vms))
    print(f"{args.vms} VMs created in {time.perf_counter() - started:.1f} s")
    bundle = certs.make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    paths = certs.write_bundle(bundle, workdir)
    kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
    bare_port, ours_port = free_port(), free_port()
    urls = {"bare": f"https://127.0.0.1:{bare_port}", "nichotplug": f"https://127.0.0.1:{ours_port}"}
    bare_argv = [sys.executable, "-c", BARE_WEBHOOK, str(bare_port), str(paths[certs.CERT_FILE]),
                 str(paths[certs.KEY_FILE])]
    ours_argv = [sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", str(kubeconfig), "--host", "127.0.0.1",
                 "--port", str(ours_port), "--metrics-port", "0", "--tls-cert-file", str(paths[certs.CERT_FILE]),
                 "--tls-key-file", str(paths[certs.KEY_FILE]), "--namespace", "default", "--no-controller",
                 "--log-level", "WARNING"]
    with process(bare_argv, workdir / "bare.log") as bare, process(ours_argv, workdir / "serve.log") as ours:
        wait_port(bare_port, bare, workdir / "bare.log")
        wait_port(ours_port, ours, workdir / "serve.log")
        wait_ready(urls["nichotplug"], paths[certs.CA_FILE])
        results = interleaved_rounds(server, args, urls, bundle.ca_cert_pem)
        report(results, args)
        if args.then_vms > args.vms:
            started = time.perf_counter()
            grow(server, max(1, args.vms), args.then_vms)
            print(f"\ngrown to {args.then_vms} VMs in {time.perf_counter() - started:.1f} s "
                  "(the same API server, webhooks and nichotplug serve process)")
            time.sleep(5.0)  # serve's watch takes the new VMs into its view
            grown = interleaved_rounds(server, args, urls, bundle.ca_cert_pem)
            report(grown, argparse.Namespace(**{**vars(args), "vms": args.then_vms}))
            compare(results, grown, args)
    return 0


def grow(server: RealApiServer, current: int, target: int) -> None:
    for index in range(current, target):
        server.request("POST", VMS_PATH, vm(f"vm-{index}", index), expect=(201,))


def added_p50(results: dict[str, dict[str, list[tuple[float, float]]]], config: str, kind: str) -> float:
    """What ``config`` adds over no webhooks at p50, in ms (medians over rounds)."""
    def median(name: str) -> float:
        return statistics.median(pair[0] for pair in results[name][kind]) * 1000
    return median(config) - median("none")


def compare(small: dict[str, dict[str, list[tuple[float, float]]]],
            large: dict[str, dict[str, list[tuple[float, float]]]], args: argparse.Namespace) -> None:
    print(f"\nadded p50 latency, {args.vms} VMs vs {args.then_vms} VMs (target: nichotplug's within 10%):")
    for kind in KINDS:
        for config in ("bare", "nichotplug"):
            before, after = added_p50(small, config, kind), added_p50(large, config, kind)
            change = (after - before) / before * 100 if before > 0 else float("nan")
            print(f"  {kind:<6} {config:<11} {before:+.2f} ms -> {after:+.2f} ms ({change:+.0f}%)")
        # The bare webhook does nothing that depends on the cluster's size: what nichotplug adds over
        # it is the cost of its own rules, and the API server's drift between the phases cancels.
        before = added_p50(small, "nichotplug", kind) - added_p50(small, "bare", kind)
        after = added_p50(large, "nichotplug", kind) - added_p50(large, "bare", kind)
        print(f"  {kind:<6} nichotplug over bare: {before:+.2f} ms -> {after:+.2f} ms")


def wait_ready(url: str, ca_file: Path) -> None:
    context = ssl.create_default_context(cafile=str(ca_file))
    host, port = url.removeprefix("https://").split(":")
    for _ in range(600):
        connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
        try:
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise SystemExit("nichotplug serve was not ready within 60 s")


def interleaved_rounds(server: RealApiServer, args: argparse.Namespace, urls: dict[str, str],
                       ca_pem: bytes) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """config -> kind -> [(p50, p99) per round]."""
    results: dict[str, dict[str, list[tuple[float, float]]]] = {c: {k: [] for k in KINDS} for c in CONFIGS}
    writer = Writer(server)
    for round_index in range(args.rounds):
        order = CONFIGS[round_index % len(CONFIGS):] + CONFIGS[:round_index % len(CONFIGS)]
        for config in order:
            register(server, config, urls, ca_pem)
            samples = measure(writer, args.writes, config)
            for kind in KINDS:
                results[config][kind].append((percentile(samples[kind], 0.5), percentile(samples[kind], 0.99)))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    register(server, "none", urls, ca_pem)
    return results


def report(results: dict[str, dict[str, list[tuple[float, float]]]], args: argparse.Namespace) -> None:
    def median(config: str, kind: str, which: int) -> float:
        return statistics.median(pair[which] for pair in results[config][kind]) * 1000

    print(f"\nVM write latency through kube-apiserver, {args.vms} VMs, {args.writes} writes x {args.rounds} rounds "
          f"per configuration (medians over rounds), {os.cpu_count()} CPUs")
    print(f"{'configuration':<12} {'write':<6} {'p50 ms':>8} {'p99 ms':>8} {'adds p50':>9} {'adds p99':>9}")
    for config in CONFIGS:
        for kind in KINDS:
            p50, p99 = median(config, kind, 0), median(config, kind, 1)
            base50, base99 = median("none", kind, 0), median("none", kind, 1)
            print(f"{config:<12} {kind:<6} {p50:8.2f} {p99:8.2f} {p50 - base50:+9.2f} {p99 - base99:+9.2f}")
    for kind in KINDS:
        ours, bare = median("nichotplug", kind, 0) - median("none", kind, 0), \
            median("bare", kind, 0) - median("none", kind, 0)
        print(f"{kind}: nichotplug adds {ours:.2f} ms at p50, the bare aiohttp webhook {bare:.2f} ms; "
              f"{kind} p50 with nichotplug / none = "
              f"{median('nichotplug', kind, 0) / median('none', kind, 0):.3f}")


if __name__ == "__main__":
    sys.exit(main())
