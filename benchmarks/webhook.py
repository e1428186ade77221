"""Benchmark: the validating webhook over TLS against a bare aiohttp server (numbers, not a test).

Two servers, each in its own process: ours builds a ``ClusterView`` of N VirtualMachines (4 bridge
interfaces each, fed through ``ClusterView.apply_event``, the path the watches use), freezes it out
of the cyclic GC as ``serve`` does once synced, and serves ``/v1/webhook/validation`` over TLS the
way ``serve`` does (``serving.start_tls_runner``); the bare aiohttp server only parses the review
and answers allowed. A third process loads each in turn: ``wrk`` (C, one thread, C keep-alive TLS
connections, a Lua script POSTing the review as application/json and checking every answer says
allowed), or, when wrk is not installed, an aiohttp client (which saturates before either server,
so its requests/s flatter the slower one). Every request is a CREATE of a VM whose four MACs the
rules look up in the view. On a machine with two or more CPUs the servers run on one CPU and the
load generator on another, so they never share a core. Rounds are interleaved (bare, ours, bare,
ours...) because the machine is shared; the summary is the median over rounds. Printed: requests/s,
p50 and p99 latency seen by the load generator, server CPU per request (utime + stime deltas of the
server process from /proc, the figure that survives a busy machine), the ratios to the bare server,
and the RSS of our server's process. Variants: uvloop vs asyncio, orjson vs the standard json module.
Then the two side by side: loaded at the same instant, each by its own wrk on its own CPU (swapped
every round), so drift on a shared machine hits both alike. Last, a hot loop of ``engine.review``
(CPU time, no HTTP) for a CREATE, a hot-plug, a label edit and a cold edit, and the CREATE from body
bytes to answer bytes by the ordinary and the msgspec route: the least noisy figures here.

The default target (``--target serve``) is ``nichotplug serve`` itself: a real process started with
``taskset`` on the server CPU, its view synced from the in-process API server (a child process
preloaded with the bridge NADs, N VMs and running VMIs), loaded with two requests in interleaved
rounds (bare CREATE, ours CREATE, bare UPDATE, ours UPDATE): the CREATE above and the hot-plug
UPDATE of a running VM (old and new object, one NIC added on a bridge NAD, so the VMI and the NAD
are looked up). The ratios to the bare floor are printed with the targets (0.90 CREATE, 0.85
UPDATE). ``--target harness`` is the in-process harness described above, with its variants.

Run: ``.venv/bin/python benchmarks/webhook.py [--vms 10000] [--seconds 3] [--rounds 3]``
(``--target harness [--quick]`` for the harness; ``--loader aiohttp`` forces the Python load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

INTERFACES = 4
NAMESPACES = 50


# ---------------------------------------------------------------- shared helpers


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def mac_of(vm_index: int, interface: int) -> str:
    value = (0x02 << 40) | (vm_index << 8) | interface
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def vm_object(index: int, *, name: str | None = None) -> dict[str, Any]:
    """A Harvester VM: 4 virtio bridge NICs on multus networks, MACs in the spec and the annotation."""
    interfaces = [{"name": f"nic-{i}", "model": "virtio", "bridge": {}, "macAddress": mac_of(index, i)}
                  for i in range(INTERFACES)]
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name or f"vm-{index:06d}", "namespace": f"tenant-{index % NAMESPACES}",
            "uid": f"5ff8d5af-b287-41d2-aec0-{index:012d}", "resourceVersion": str(1000 + index),
            "labels": {"harvesterhci.io/creator": "harvester"},
            "annotations": {"harvesterhci.io/mac-address": json.dumps(
                {iface["name"]: iface["macAddress"] for iface in interfaces}, separators=(",", ":"))},
        },
        "spec": {
            "runStrategy": "RerunOnFailure",
            "template": {"spec": {
                "domain": {"devices": {"interfaces": interfaces}, "memory": {"guest": "4Gi"}},
                "networks": [{"name": f"nic-{i}", "multus": {"networkName": f"default/vlan{i}"}}
                             for i in range(INTERFACES)],
            }},
        },
        "status": {"printableStatus": "Running"},
    }


def review_body(vm_count: int) -> bytes:
    """A validating review the real API server would send: CREATE of a new VM, MACs not yet in use."""
    request = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
        "requestKind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachine"},
        "requestResource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachines"},
        "name": "new-vm", "namespace": "tenant-0", "operation": "CREATE",
        "userInfo": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
        "object": vm_object(vm_count + 1, name="new-vm"), "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "kubectl-create"},
    }
    return json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}).encode()


def server_context(cert_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return context


# ---------------------------------------------------------------- role: bare server


def run_bare(port: int, cert_dir: Path, loop: str, use_orjson: bool) -> None:
    """The baseline: parse the review, answer allowed with its uid. Nothing else."""
    pin_to_server_cpu()
    loads: Callable[[bytes], Any]
    dumps: Callable[[Any], bytes]
    if use_orjson:
        import orjson

        loads, dumps = orjson.loads, orjson.dumps
    else:
        loads, dumps = json.loads, lambda value: json.dumps(value).encode()

    async def validate(request: web.Request) -> web.Response:
        review = loads(await request.read())
        answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                  "response": {"uid": review["request"]["uid"], "allowed": True}}
        return web.Response(body=dumps(answer), content_type="application/json")

    async def serve_forever() -> None:  # until the orchestrator terminates this process
        app = web.Application()
        app.router.add_post("/v1/webhook/validation", validate)
        app_runner = web.AppRunner(app, access_log=None)
        await app_runner.setup()
        await web.TCPSite(app_runner, "127.0.0.1", port, ssl_context=server_context(cert_dir)).start()
        await asyncio.Event().wait()

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(serve_forever())


# ---------------------------------------------------------------- role: load generator


async def load(url: str, body: bytes, ca_file: Path, connections: int, warmup: float, seconds: float,
               rate: float = 0.0) -> dict[str, Any]:
    """Closed loop (each connection sends its next request when the answer is in) or, with ``rate``,
    paced: each connection sends every ``connections / rate`` seconds, as a not-saturated API server does."""
    context = ssl.create_default_context(cafile=str(ca_file))
    interval = connections / rate if rate > 0 else 0.0
    latencies: list[float] = []
    measuring = False
    stop = False
    total = 0
    headers = {"Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession, offset: float) -> None:
        next_send = time.perf_counter() + offset
        while not stop:
            if interval:
                next_send += interval
                await asyncio.sleep(max(0.0, next_send - time.perf_counter()))
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                answer = await response.read()
            if response.status != 200 or b'"allowed":true' not in answer.replace(b" ", b""):
                raise RuntimeError(f"unexpected answer {response.status}: {answer[:300]!r}")
            nonlocal total
            total += 1
            if measuring:
                latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(ssl=context, limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(worker(session, interval * i / connections)) for i in range(connections)]
        await asyncio.sleep(warmup)
        measuring = True
        cpu_before, started = time.process_time(), time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_before
        stop = True
        await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "requests": len(latencies), "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "client_cpu": cpu / elapsed, "total_requests": total,
    }


def run_load(args: argparse.Namespace) -> None:
    body = Path(args.body).read_bytes()
    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        result = runner.run(load(args.url, body, Path(args.ca), args.connections, args.warmup, args.seconds,
                                 args.rate))
    print(json.dumps(result))


# wrk's Lua side: POST the review with its content type, count answers that do not say allowed
# (any thread's), and print the figures as one JSON line. Runs in every wrk thread's Lua state.
WRK_SCRIPT = r"""
local file = assert(io.open(os.getenv("NICHOTPLUG_BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"allowed":%s*true') then bad = bad + 1 end
end
function done(summary, latency, requests)
  local not_allowed = 0
  for _, thread in ipairs(threads) do not_allowed = not_allowed + thread:get("bad") end
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"errors":%d,"not_allowed":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout, not_allowed))
end
"""


def wrk_binary(args: argparse.Namespace) -> str | None:
    """The wrk to load with, or None for the aiohttp client (``--loader``, else wrk when installed)."""
    if args.loader == "aiohttp":
        return None
    found = shutil.which("wrk")
    if found is None and args.loader == "wrk":
        raise SystemExit("--loader wrk: wrk is not installed (apt-get install wrk)")
    return found


def start_wrk(wrk: str, url: str, body_file: Path, connections: int, seconds: int,
              pin: Callable[[], None] = lambda: pin_to_loader_cpu()) -> subprocess.Popen[str]:
    """Start one bounded wrk run from a second process (``finish_wrk`` collects it)."""
    script = body_file.with_name("wrk.lua")
    script.write_text(WRK_SCRIPT)
    return subprocess.Popen(
        [wrk, "--threads", "1", "--connections", str(connections), "--duration", f"{seconds}s", "--timeout", "5s",
         "--script", str(script), url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NICHOTPLUG_BENCH_BODY": str(body_file)}, preexec_fn=pin,
    )


def finish_wrk(run: subprocess.Popen[str], seconds: int) -> dict[str, Any]:
    """The figures of a wrk run, raising if it failed or any answer was not an allow."""
    stdout, stderr = run.communicate(timeout=seconds + 30)
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if run.returncode != 0 or not summary.startswith("{"):
        raise RuntimeError(f"wrk failed ({run.returncode}):\n{stdout}\n{stderr}")
    figures: dict[str, Any] = json.loads(summary)
    if figures["errors"] or figures["not_allowed"]:
        raise RuntimeError(f"wrk saw {figures['errors']} errors and {figures['not_allowed']} answers not allowed")
    return figures


def run_wrk(wrk: str, url: str, body_file: Path, connections: int, seconds: int) -> dict[str, Any]:
    """One bounded wrk run from a second process; its figures."""
    return finish_wrk(start_wrk(wrk, url, body_file, connections, seconds), seconds)


def measure(url: str, body_file: Path, ca_file: Path, args: argparse.Namespace,
            cpu_seconds: Callable[[], float]) -> dict[str, Any]:
    """Load ``url`` after a warm-up; server CPU (``cpu_seconds``) is read around the measured part only."""
    wrk = wrk_binary(args) if not args.rate else None  # wrk cannot pace; the paced phase uses aiohttp
    if wrk is not None:
        run_wrk(wrk, url, body_file, args.connections, max(1, round(args.warmup)))
        cpu_before = cpu_seconds()
        figures = run_wrk(wrk, url, body_file, args.connections, max(1, round(args.seconds)))
        server_cpu = cpu_seconds() - cpu_before
        elapsed = figures["duration_us"] / 1e6
        return {"loader": "wrk", "requests": figures["requests"], "total_requests": figures["requests"],
                "rps": figures["requests"] / elapsed, "p50_ms": figures["p50_us"] / 1000,
                "p99_ms": figures["p99_us"] / 1000, "server_cpu_s": server_cpu}
    cpu_before = cpu_seconds()
    completed = subprocess.run(
        [sys.executable, __file__, "--role", "load", "--url", url, "--body", str(body_file), "--ca", str(ca_file),
         "--connections", str(args.connections), "--warmup", str(args.warmup), "--seconds", str(args.seconds),
         "--rate", str(args.rate)],
        capture_output=True, text=True, check=False, timeout=args.seconds + args.warmup + 60,
        preexec_fn=pin_to_loader_cpu,
    )
    server_cpu = cpu_seconds() - cpu_before  # warm-up included: total_requests counts its requests too
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{completed.stderr}")
    result: dict[str, Any] = json.loads(completed.stdout)
    result["loader"] = "aiohttp"
    result["server_cpu_s"] = server_cpu
    return result


# ---------------------------------------------------------------- role: orchestrator (holds the view)


def vmi_object(index: int) -> dict[str, Any]:
    """The running, ready, migratable VMI of VM ``index``, reporting its MACs."""
    return {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": f"vm-{index:06d}", "namespace": f"tenant-{index % NAMESPACES}",
                     "resourceVersion": str(500000 + index)},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "LiveMigratable", "status": "True"}],
            "interfaces": [{"name": f"nic-{i}", "mac": mac_of(index, i)} for i in range(INTERFACES)],
        },
    }


def build_view(vm_count: int, with_vmis: bool = False) -> Any:
    from nichotplug.kube.cache import (
        NETWORK_ATTACHMENT_DEFINITION,
        VIRTUAL_MACHINE,
        VIRTUAL_MACHINE_INSTANCE,
        ClusterView,
    )

    view = ClusterView()
    for i in range(INTERFACES):
        config = json.dumps({"cniVersion": "0.3.1", "name": f"vlan{i}", "type": "bridge", "bridge": "mgmt-br",
                             "vlan": 100 + i})
        view.apply_event(NETWORK_ATTACHMENT_DEFINITION, "ADDED", {
            "metadata": {"name": f"vlan{i}", "namespace": "default",
                         "labels": {"network.harvesterhci.io/clusternetwork": "mgmt"}},
            "spec": {"config": config}})
    for index in range(vm_count):
        if with_vmis:
            view.apply_event(VIRTUAL_MACHINE_INSTANCE, "ADDED", vmi_object(index))
        view.apply_event(VIRTUAL_MACHINE, "ADDED", vm_object(index))
    return view


@contextlib.contextmanager
def stdlib_json_codec() -> Any:
    """Run our webhook with the standard json module instead of orjson (the codec's only JSON calls)."""
    from nichotplug.webhook import codec

    class StdlibJson:
        JSONDecodeError = json.JSONDecodeError

        @staticmethod
        def loads(data: bytes) -> Any:
            return json.loads(data)

        @staticmethod
        def dumps(value: Any) -> bytes:
            return json.dumps(value, separators=(",", ":")).encode()

    namespace = vars(codec)  # the module's globals: decode_review/encode_review look orjson up there
    original = namespace["orjson"]
    namespace["orjson"] = StdlibJson
    try:
        yield
    finally:
        namespace["orjson"] = original


def run_ours(args: argparse.Namespace) -> None:
    """Our server: build the view, freeze it as ``serve`` does, serve it as ``serve`` does."""
    from nichotplug.service import build_webhook_app
    from nichotplug.serving import start_tls_runner

    pin_to_server_cpu()
    gc.collect()
    rss_before = rss_mib()
    started = time.perf_counter()
    view = build_view(args.vms, with_vmis=args.vmis)
    build_seconds = time.perf_counter() - started
    gc.collect()
    if not args.no_freeze:
        gc.freeze()  # what serve does once the view has synced: full GCs stop walking the view

    async def serve_forever() -> None:  # until the orchestrator terminates this process
        await start_tls_runner(build_webhook_app(view), "127.0.0.1", args.port, server_context(args.certs))
        print(json.dumps({"build_seconds": build_seconds, "macs": view.counts()["macs"],
                          "rss_before_mib": rss_before, "rss_view_mib": rss_mib()}), flush=True)
        await asyncio.Event().wait()

    codec = contextlib.nullcontext() if not args.stdlib_json else stdlib_json_codec()
    with codec, asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(serve_forever())


def bridge_nad(index: int) -> dict[str, Any]:
    config = json.dumps({"cniVersion": "0.3.1", "name": f"vlan{index}", "type": "bridge", "bridge": "mgmt-br",
                         "vlan": 100 + index})
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": f"vlan{index}", "namespace": "default",
                         "labels": {"network.harvesterhci.io/clusternetwork": "mgmt"}},
            "spec": {"config": config}}


def run_apiserver(args: argparse.Namespace) -> None:
    """The in-process API server preloaded with the bridge NADs, N VMs and the running VMIs (VM 1 and
    every tenth VM); prints its kubeconfig and serves until stdin closes."""
    from nichotplug.testing.server import ApiServer

    async def serve_until_stdin_closes() -> None:
        server = ApiServer()
        running = {1, *range(0, args.vms, 10)}
        cluster = [bridge_nad(i) for i in range(INTERFACES)] + [vm_object(i) for i in range(args.vms)]
        cluster += [vmi_object(i) for i in sorted(running)]
        for obj in cluster:  # the server assigns these, as on a create
            for field in ("uid", "resourceVersion"):
                obj["metadata"].pop(field, None)
        server.preload(cluster)
        del cluster
        gc.collect()
        await server.start()
        print(server.write_kubeconfig(args.certs / "kubeconfig"), flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await server.stop()

    pin_to_loader_cpu()  # idle once ours has synced; never on the server's core
    asyncio.run(serve_until_stdin_closes())


class ServerProcess:
    """A server under load in its own process: its CPU time and RSS from /proc, wrk against its URL."""

    process: subprocess.Popen[Any]
    url: str

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

    def measure(self, body_file: Path, ca_file: Path, args: argparse.Namespace) -> dict[str, Any]:
        return measure(self.url, body_file, ca_file, args, self.cpu_seconds)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class ServeProcess(ServerProcess):
    """``nichotplug serve`` itself, pinned to the server CPU with taskset, its view synced from the
    in-process API server (``run_apiserver``); ready once /readyz answers 200."""

    def __init__(self, kubeconfig: str, cert_dir: Path) -> None:
        self.port = free_port()
        cpus = sorted(os.sched_getaffinity(0))
        pin = ["taskset", "-c", str(cpus[-1])] if len(cpus) >= 2 and shutil.which("taskset") else []
        started = time.perf_counter()
        self.process = subprocess.Popen(
            [*pin, sys.executable, "-m", "nichotplug", "serve", "--kubeconfig", kubeconfig,
             "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "0",
             "--tls-cert-file", str(cert_dir / "tls.crt"), "--tls-key-file", str(cert_dir / "tls.key"),
             "--namespace", "default", "--no-controller", "--shutdown-delay", "0", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL)
        wait_ready(f"https://127.0.0.1:{self.port}/readyz", cert_dir / "ca.crt", self.process)
        self.url = f"https://127.0.0.1:{self.port}/v1/webhook/validation"
        self.facts = {"ready_seconds": time.perf_counter() - started}


def wait_ready(url: str, ca_file: Path, process: subprocess.Popen[Any]) -> None:
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nichotplug serve exited ({process.returncode}) before it was ready")
        with contextlib.suppress(OSError, urllib.error.URLError), \
                urllib.request.urlopen(url, context=context, timeout=5) as response:
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError("nichotplug serve was not ready in 600 s")


class Server(ServerProcess):
    """A server role in its own process, listening on its own port until stopped."""

    def __init__(self, role: str, cert_dir: Path, args: argparse.Namespace, *, loop: str = "uvloop",
                 use_orjson: bool = True, prefix: Sequence[str] = ()) -> None:
        self.port = free_port()
        # ``prefix``: a command that runs the server in its own process, e.g. valgrind.
        command = [*prefix, sys.executable, __file__, "--role", role, "--port", str(self.port),
                   "--certs", str(cert_dir), "--loop", loop, "--vms", str(args.vms)]
        command += ([] if use_orjson else ["--stdlib-json"]) + (["--vmis"] if args.vmis else [])
        command += ["--no-freeze"] if args.no_freeze else []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.url = f"https://127.0.0.1:{self.port}/v1/webhook/validation"
        self.facts: dict[str, Any] = {}
        if role == "ours":  # it says when it listens (after building its view), with figures
            line = self.process.stdout.readline() if self.process.stdout else ""
            if not line:
                raise RuntimeError("our server died before listening")
            self.facts = json.loads(line)
        else:
            wait_listening(self.port, cert_dir)


def wait_listening(port: int, cert_dir: Path) -> None:
    import socket

    deadline = time.monotonic() + 180  # a server under valgrind starts slowly
    while True:
        try:
            with ssl.create_default_context(cafile=str(cert_dir / "ca.crt")).wrap_socket(
                socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1"
            ):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# The servers run on the last CPU, the load generator on the first: never on one core together.
def pin_to_server_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[-1]})


def pin_to_loader_cpu() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[0]})


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def cpu_us_per_request(result: dict[str, Any]) -> float:
    return float(result["server_cpu_s"] / result["total_requests"] * 1e6)


def line(label: str, result: dict[str, Any], bare: dict[str, Any] | None = None) -> str:
    """Wall-clock figures, and server CPU per request (the figure that survives a busy machine)."""
    cpu_us = cpu_us_per_request(result)
    text = (f"  {label:<31} {result['rps']:7.0f} req/s  p50 {result['p50_ms']:6.2f} ms  "
            f"p99 {result['p99_ms']:6.2f} ms  server CPU {cpu_us:5.0f} us/req "
            f"(= {1e6 / cpu_us:5.0f} req/s per core)")
    if bare is not None:
        text += (f"\n  {'':<31} vs bare: throughput {result['rps'] / bare['rps']:.2f}x, "
                 f"p50 {result['p50_ms'] / bare['p50_ms']:.2f}x, "
                 f"per-core capacity {cpu_us_per_request(bare) / cpu_us:.2f}x")
    return text


def median_figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (CPU per request expressed so ``line`` can print it)."""
    cpu_us = statistics.median(cpu_us_per_request(result) for result in results)
    return {"rps": statistics.median(result["rps"] for result in results),
            "p50_ms": statistics.median(result["p50_ms"] for result in results),
            "p99_ms": statistics.median(result["p99_ms"] for result in results),
            "server_cpu_s": cpu_us / 1e6, "total_requests": 1}


def summarize(rounds: list[tuple[dict[str, Any], dict[str, Any]]], *, title: str = "",
              ours_label: str = "nichotplug (uvloop, orjson)", target: float = 0.90) -> None:
    """The medians over the interleaved rounds, and the median of each round's own ratio."""
    bare, ours = median_figures([pair[0] for pair in rounds]), median_figures([pair[1] for pair in rounds])
    print(f"median of {len(rounds)} interleaved rounds{title}:")
    print(line("bare aiohttp (uvloop, orjson)", bare))
    print(line(ours_label, ours, bare))
    throughput = statistics.median(o["rps"] / b["rps"] for b, o in rounds)
    p50 = statistics.median(o["p50_ms"] / b["p50_ms"] for b, o in rounds)
    capacity = statistics.median(cpu_us_per_request(b) / cpu_us_per_request(o) for b, o in rounds)
    met = "met" if throughput >= target else "MISSED"
    print(f"  per-round ratios, median: throughput {throughput:.2f}x (target >= {target:.2f}: {met}), "
          f"p50 {p50:.2f}x, per-core capacity {capacity:.2f}x")


def hot_loop_reviews(vm_count: int) -> dict[str, bytes]:
    """Review bodies for the hot loop: the CREATE, a hot-plug and a cold edit of VM 1, a label edit."""
    create = json.loads(review_body(vm_count))

    def update(old: dict[str, Any], new: dict[str, Any]) -> bytes:
        request = {**create["request"], "operation": "UPDATE", "name": old["metadata"]["name"],
                   "namespace": old["metadata"]["namespace"], "object": new, "oldObject": old}
        return json.dumps({**create, "request": request}).encode()

    running = vm_object(1)
    plugged = json.loads(json.dumps(running))
    plugged["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].append(
        {"name": "nic-9", "model": "virtio", "bridge": {}, "macAddress": "02:aa:bb:cc:dd:ee"})
    plugged["spec"]["template"]["spec"]["networks"].append(
        {"name": "nic-9", "multus": {"networkName": "default/vlan1"}})
    labelled = json.loads(json.dumps(running))
    labelled["metadata"]["labels"]["team"] = "blue"
    halted = {**running, "spec": {**running["spec"], "runStrategy": "Halted"}}
    resized = json.loads(json.dumps(halted))
    resized["spec"]["template"]["spec"]["domain"]["memory"]["guest"] = "8Gi"
    return {"CREATE (benchmark body)": review_body(vm_count),
            "UPDATE hot-plug of a running VM": update(running, plugged),
            "UPDATE labels only": update(running, labelled),
            "UPDATE cold edit of a halted VM": update(halted, resized)}


def hot_loop(view: Any, vm_count: int) -> None:
    """engine.review in a loop (CPU time, best of 5): the figure a busy shared machine disturbs least."""
    from nichotplug.kube.cache import VIRTUAL_MACHINE_INSTANCE
    from nichotplug.webhook.codec import decode_review
    from nichotplug.webhook.engine import review

    view.apply_event(VIRTUAL_MACHINE_INSTANCE, "ADDED", vmi_object(1))  # VM 1 runs: its UPDATE is a hot-plug
    print("hot loop, engine.review per request (decoded; no HTTP, no codec):")
    for label, body in hot_loop_reviews(vm_count).items():
        request = decode_review(body)
        figures = []
        for webhook in ("validation", "mutation"):
            def once(webhook: Any = webhook, request: Any = request) -> None:
                review(webhook, request, view)
            best = min(timeit.repeat(once, number=2000, repeat=5, timer=time.process_time)) / 2000
            figures.append(f"{webhook} {best * 1e6:6.1f} us ({review(webhook, request, view).reason})")
        print(f"  {label:<33} " + ", ".join(figures))
    served_route(view, review_body(vm_count))


def served_route(view: Any, body: bytes) -> None:
    """Body bytes to answer bytes for the benchmark's CREATE: the ordinary route (orjson, codec,
    engine.review) and the validating webhook's msgspec route (``webhook.fastdecode``), CPU time."""
    from nichotplug.webhook.codec import decode_review, encode_review
    from nichotplug.webhook.engine import review
    from nichotplug.webhook.fastdecode import allowed_create

    def ordinary() -> bytes:
        return encode_review(review("validation", decode_review(body), view).response)

    def fast() -> bytes:
        uid = allowed_create(body, view)
        assert uid is not None, "the benchmark's CREATE must take the fast route"
        return encode_review({"uid": uid, "allowed": True})

    assert ordinary() == fast()
    print("validation, CREATE body bytes -> answer bytes (no HTTP):")
    for label, route in (("ordinary route (orjson + codec)", ordinary), ("fast route (msgspec)", fast)):
        best = min(timeit.repeat(route, number=2000, repeat=5, timer=time.process_time)) / 2000
        print(f"  {label:<33} {best * 1e6:6.1f} us")


def side_by_side(bare: Server, ours: Server, body_file: Path, args: argparse.Namespace) -> None:
    """Both servers loaded at the same instant, each by its own wrk on its own CPU (the server's),
    the CPUs swapped every round: whatever the shared machine does hits both alike."""
    wrk = wrk_binary(args)
    cpus = sorted(os.sched_getaffinity(0))
    if wrk is None or len(cpus) < 2:
        print("side by side: skipped (needs wrk and two CPUs)")
        return
    seconds = max(1, round(args.seconds))
    print(f"side by side ({args.rounds} rounds; each server shares its CPU with its own wrk):")
    ratios: list[tuple[float, float]] = []
    for round_number in range(args.rounds):
        first, second = (cpus[0], cpus[-1]) if round_number % 2 == 0 else (cpus[-1], cpus[0])
        runs = []
        for server, cpu in ((bare, first), (ours, second)):
            os.sched_setaffinity(server.process.pid, {cpu})
            runs.append((server, server.cpu_seconds(),
                         start_wrk(wrk, server.url, body_file, args.connections, seconds,
                                   pin=lambda cpu=cpu: os.sched_setaffinity(0, {cpu}))))
        figures = [(finish_wrk(run, seconds), server.cpu_seconds() - cpu_before) for server, cpu_before, run in runs]
        (bare_figures, bare_cpu), (ours_figures, ours_cpu) = figures
        ratios.append((ours_figures["requests"] / bare_figures["requests"],
                       (bare_cpu / bare_figures["requests"]) / (ours_cpu / ours_figures["requests"])))
    throughput = statistics.median(ratio for ratio, _ in ratios)
    capacity = statistics.median(capacity for _, capacity in ratios)
    print(f"  per-round ratios: throughput {', '.join(f'{ratio:.2f}' for ratio, _ in ratios)}")
    print(f"  median: throughput {throughput:.2f}x (target >= 0.90), per-core capacity {capacity:.2f}x")
    for server in (bare, ours):  # back where the interleaved phases keep them
        os.sched_setaffinity(server.process.pid, {cpus[-1]})


def orchestrate_serve(args: argparse.Namespace) -> None:
    """``nichotplug serve`` (its view synced from the in-process API server) against the bare
    aiohttp floor, both pinned to one CPU, for the CREATE and the hot-plug UPDATE, rounds interleaved
    (bare CREATE, ours CREATE, bare UPDATE, ours UPDATE, ...)."""
    from nichotplug.certs import make_bundle, write_bundle

    reviews = hot_loop_reviews(args.vms)
    requests = {"CREATE": reviews["CREATE (benchmark body)"],
                "UPDATE hot-plug": reviews["UPDATE hot-plug of a running VM"]}
    targets = {"CREATE": 0.90, "UPDATE hot-plug": 0.85}
    with tempfile.TemporaryDirectory(prefix="nichotplug-bench-") as folder:
        cert_dir = Path(folder)
        write_bundle(make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"]), cert_dir)
        ca_file = cert_dir / "ca.crt"
        body_files = {}
        for label, body in requests.items():
            body_files[label] = cert_dir / f"{label.split()[0].lower()}" / "review.json"
            body_files[label].parent.mkdir()
            body_files[label].write_bytes(body)
        apiserver = subprocess.Popen(
            [sys.executable, __file__, "--role", "apiserver", "--vms", str(args.vms), "--certs", str(cert_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stoppable: list[Any] = []
        try:
            assert apiserver.stdout is not None
            kubeconfig = apiserver.stdout.readline().strip()
            if not kubeconfig:
                raise RuntimeError("the in-process API server failed to start")
            bare = Server("bare", cert_dir, args)
            stoppable.append(bare)
            ours = ServeProcess(kubeconfig, cert_dir)
            stoppable.append(ours)
            print(f"nichotplug serve: ready {ours.facts['ready_seconds']:.1f} s after start, its view synced from "
                  f"the in-process API server ({args.vms:,} VMs x {INTERFACES} NICs, bridge NADs, running VMIs); "
                  f"RSS {ours.rss_mib():.0f} MiB")
            loader = wrk_binary(args) or "aiohttp client"
            print(f"load: {args.connections} keep-alive TLS connections ({loader}) on CPU "
                  f"{sorted(os.sched_getaffinity(0))[0]}, servers on CPU {sorted(os.sched_getaffinity(0))[-1]}; "
                  f"{args.warmup:g} s warm-up + {args.seconds:g} s per run")
            rounds: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {label: [] for label in requests}
            for round_number in range(1, args.rounds + 1):
                print(f"round {round_number}:")
                for label, body_file in body_files.items():
                    bare_result = bare.measure(body_file, ca_file, args)
                    ours_result = ours.measure(body_file, ca_file, args)
                    rounds[label].append((bare_result, ours_result))
                    print(line(f"bare, {label}", bare_result))
                    print(line(f"nichotplug serve, {label}", ours_result, bare_result))
            for label, pairs in rounds.items():
                summarize(pairs, title=f", {label}", ours_label=f"nichotplug serve, {label}", target=targets[label])
            print(f"  RSS of nichotplug serve after the runs: {ours.rss_mib():.0f} MiB")
        finally:
            for server in stoppable:
                server.stop()
            assert apiserver.stdin is not None
            apiserver.stdin.close()
            apiserver.wait(timeout=60)


def orchestrate(args: argparse.Namespace) -> None:
    from nichotplug.certs import make_bundle, write_bundle

    with tempfile.TemporaryDirectory(prefix="nichotplug-bench-") as folder:
        cert_dir = Path(folder)
        write_bundle(make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"]), cert_dir)
        body_file = cert_dir / "review.json"
        body_file.write_bytes(review_body(args.vms))
        ca_file = cert_dir / "ca.crt"
        servers: list[Server] = []
        try:
            bare = Server("bare", cert_dir, args)
            ours = Server("ours", cert_dir, args)
            servers += [bare, ours]
            facts = ours.facts
            print(f"cluster view: {args.vms:,} VMs x {INTERFACES} interfaces{' + a VMI each' if args.vmis else ''} "
                  f"via ClusterView.apply_event in {facts['build_seconds']:.1f} s; {facts['macs']:,} MACs indexed")
            print(f"  RSS of our server: {facts['rss_before_mib']:.0f} MiB before, {facts['rss_view_mib']:.0f} MiB "
                  f"with the view (+{facts['rss_view_mib'] - facts['rss_before_mib']:.0f} MiB)")
            loader = wrk_binary(args) or "aiohttp client"
            pinned = "servers and loader on separate CPUs" if len(os.sched_getaffinity(0)) >= 2 else "one CPU"
            print(f"load: {args.connections} keep-alive TLS connections from a second process ({loader}; {pinned}), "
                  f"{args.warmup:g} s warm-up + {args.seconds:g} s, review of {len(body_file.read_bytes()):,} bytes")

            # Interleaved rounds: other load on the machine hits both sides alike.
            rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for round_number in range(1, args.rounds + 1):
                bare_result = bare.measure(body_file, ca_file, args)
                print(f"round {round_number} (load: {bare_result['loader']}):")
                print(line("bare aiohttp (uvloop, orjson)", bare_result))
                rounds.append((bare_result, ours.measure(body_file, ca_file, args)))
                print(line("nichotplug (uvloop, orjson)", rounds[-1][1], bare_result))
            summarize(rounds)
            side_by_side(bare, ours, body_file, args)
            median_bare = median_figures([pair[0] for pair in rounds])
            # Paced below saturation: the latency an API server sees when it is not flooding us.
            paced = argparse.Namespace(**{**vars(args), "rate": round(median_bare["rps"] * args.paced_fraction)})
            print(f"paced at {paced.rate} req/s ({args.paced_fraction:g} of the bare server's closed-loop rate; "
                  "load: aiohttp, wrk cannot pace):")
            paced_bare = bare.measure(body_file, ca_file, paced)
            print(line("bare aiohttp (uvloop, orjson)", paced_bare))
            print(line("nichotplug (uvloop, orjson)", ours.measure(body_file, ca_file, paced), paced_bare))
            print(f"  RSS of our server after the runs: {ours.rss_mib():.0f} MiB")
            if not args.quick:
                print("variants (closed loop, one run each, compared with the median bare round):")
                for label, role, loop, use_orjson in (("nichotplug (asyncio, orjson)", "ours", "asyncio", True),
                                                      ("nichotplug (uvloop, json)", "ours", "uvloop", False),
                                                      ("bare aiohttp (asyncio, json)", "bare", "asyncio", False)):
                    variant = Server(role, cert_dir, args, loop=loop, use_orjson=use_orjson)
                    servers.append(variant)
                    result = variant.measure(body_file, ca_file, args)
                    print(line(label, result, None if role == "bare" else median_bare))
                    variant.stop()
                    servers.remove(variant)
        finally:
            for server in servers:
                server.stop()
    hot_loop(build_view(args.vms), args.vms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--role", choices=["orchestrate", "bare", "ours", "load", "apiserver"], default="orchestrate")
    parser.add_argument("--target", choices=["serve", "harness"], default="serve",
                        help="serve: `nichotplug serve` synced from an API server, CREATE and hot-plug UPDATE; "
                             "harness: the view built in-process, CREATE only, with variants and a hot loop")
    parser.add_argument("--vms", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (wrk: whole seconds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved bare/ours rounds (median reported)")
    parser.add_argument("--loader", choices=["auto", "wrk", "aiohttp"], default="auto",
                        help="load generator: wrk when installed (auto), or the aiohttp client")
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)  # set per phase
    parser.add_argument("--quick", action="store_true", help="only bare vs ours on uvloop + orjson")
    parser.add_argument("--no-freeze", action="store_true", help="do not gc.freeze() the built view")
    parser.add_argument("--vmis", action="store_true", help="also feed a running VMI per VM (RSS with VMIs)")
    parser.add_argument("--paced-fraction", type=float, default=0.25,
                        help="paced phase: this share of the bare server's closed-loop rate")
    # internal, for the child processes
    parser.add_argument("--port", type=int)
    parser.add_argument("--certs", type=Path)
    parser.add_argument("--loop", default="uvloop")
    parser.add_argument("--stdlib-json", action="store_true")
    parser.add_argument("--url")
    parser.add_argument("--body")
    parser.add_argument("--ca")
    args = parser.parse_args()
    if args.role == "bare":
        run_bare(args.port, args.certs, args.loop, not args.stdlib_json)
    elif args.role == "ours":
        run_ours(args)
    elif args.role == "load":
        run_load(args)
    elif args.role == "apiserver":
        run_apiserver(args)
    else:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        orchestrate_serve(args) if args.target == "serve" else orchestrate(args)


if __name__ == "__main__":
    main()
