"""Benchmark: CPU instructions and cache misses per validation request, ours against bare aiohttp.

``benchmarks/webhook.py`` measures what matters (requests/s and latency), but on a shared machine its
figures drift by several percent from one minute to the next, more than a small change to the hot
path is worth. This one counts instead of timing: each server of ``webhook.py`` (same roles, same
review, same TLS) runs under valgrind's callgrind with its cache simulator, is warmed up by wrk, and
is counted only while wrk loads it for a fixed time. Counts are the same from run to run within a
percent or two whatever else the machine does, so two versions of the code can be compared.

Printed per request: instructions, first-level cache misses (instruction and data), and callgrind's
cycle estimate (instructions + 10 per first-level miss + 100 per last-level miss), each with its
ratio to the bare server. The estimate undercounts what cold caches cost a real CPU: the measured
throughput ratio of ``webhook.py`` has been lower than this one. Use it to compare versions, and
``webhook.py`` for the figure the targets are about.

The view has 1,000 VMs by default: a request costs the same at 100,000 (``webhook.py`` shows it),
and valgrind builds a big view slowly.

Run: ``.venv/bin/python benchmarks/webhook_instructions.py [--vms 1000] [--seconds 10]``
(needs ``valgrind`` and ``wrk``: ``apt-get install valgrind wrk``).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import webhook  # the sibling benchmark: its server roles, review and wrk runner

# Callgrind's events with --cache-sim=yes, in the order callgrind_annotate prints them.
_FIRST_LEVEL_MISSES = ("I1mr", "D1mr", "D1mw")
_LAST_LEVEL_MISSES = ("ILmr", "DLmr", "DLmw")


def program_totals(callgrind_out: Path) -> dict[str, int]:
    """Event name -> total, from callgrind_annotate's PROGRAM TOTALS line."""
    text = subprocess.run(["callgrind_annotate", str(callgrind_out)], capture_output=True, text=True,
                          check=True).stdout
    lines = text.splitlines()
    totals_at = next(index for index, line in enumerate(lines) if "PROGRAM TOTALS" in line)
    names = next(line.split() for line in reversed(lines[:totals_at]) if line.startswith("Ir"))
    values = [int(value.replace(",", "")) for value in re.findall(r"([\d,]+) \(100\.0%\)", lines[totals_at])]
    return dict(zip(names, values, strict=True))


def count_server(role: str, cert_dir: Path, body_file: Path, args: argparse.Namespace, wrk: str) -> dict[str, float]:
    """Per-request event counts of one server role, counted only while wrk loads it."""
    out_file = cert_dir / f"callgrind.{role}.out"
    valgrind = ["valgrind", "--quiet", "--tool=callgrind", "--instr-atstart=no", "--cache-sim=yes",
                f"--callgrind-out-file={out_file}"]
    server = webhook.Server(role, cert_dir, args, prefix=valgrind)
    try:
        webhook.run_wrk(wrk, server.url, body_file, args.connections, args.warmup)
        subprocess.run(["callgrind_control", "--instr=on", str(server.process.pid)], check=True, capture_output=True)
        figures = webhook.run_wrk(wrk, server.url, body_file, args.connections, args.seconds)
        subprocess.run(["callgrind_control", "--instr=off", str(server.process.pid)], check=True, capture_output=True)
    finally:
        server.stop()  # callgrind writes its file as the process exits
    totals = program_totals(out_file)
    per_request = {name: value / figures["requests"] for name, value in totals.items()}
    per_request["L1 misses"] = sum(per_request.get(name, 0.0) for name in _FIRST_LEVEL_MISSES)
    per_request["cycle estimate"] = (per_request["Ir"] + 10 * per_request["L1 misses"]
                                     + 100 * sum(per_request.get(name, 0.0) for name in _LAST_LEVEL_MISSES))
    per_request["requests"] = figures["requests"]
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--vms", type=int, default=1_000)
    parser.add_argument("--seconds", type=int, default=10, help="counted seconds of load per server")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before counting starts")
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()
    tools = ("valgrind", "callgrind_control", "callgrind_annotate", "wrk")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (apt-get install valgrind wrk)")
    # What webhook.Server passes on to the roles it starts.
    args.vmis, args.no_freeze = False, False
    wrk = shutil.which("wrk") or "wrk"
    from nichotplug.certs import make_bundle, write_bundle

    with tempfile.TemporaryDirectory(prefix="nichotplug-bench-") as folder:
        cert_dir = Path(folder)
        write_bundle(make_bundle(dns_names=["localhost"], ip_addresses=["127.0.0.1"]), cert_dir)
        body_file = cert_dir / "review.json"
        body_file.write_bytes(webhook.review_body(args.vms))
        print(f"callgrind with cache simulation; {args.vms:,} VMs in our view; wrk with {args.connections} "
              f"keep-alive TLS connections, {args.warmup} s uncounted, then {args.seconds} s counted per server")
        bare = count_server("bare", cert_dir, body_file, args, wrk)
        ours = count_server("ours", cert_dir, body_file, args, wrk)
    print(f"{'per request':<22} {'bare aiohttp':>14} {'nichotplug':>14} {'ours / bare':>12}")
    for name, label in (("Ir", "instructions"), ("L1 misses", "L1 cache misses"), ("cycle estimate", "cycle estimate")):
        print(f"{label:<22} {bare[name]:14,.0f} {ours[name]:14,.0f} {ours[name] / bare[name]:11.3f}x")
    print(f"(requests counted: bare {bare['requests']:,.0f}, ours {ours['requests']:,.0f}; "
          f"throughput would scale as bare / ours: {bare['cycle estimate'] / ours['cycle estimate']:.2f}x)")


if __name__ == "__main__":
    main()
