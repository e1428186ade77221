"""The ``nichotplug`` console script: one command, several subcommands.

Each subcommand's implementation is imported only when it runs, so
``nichotplug --help`` stays fast and a broken optional piece cannot stop the
others from starting.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from nichotplug import __version__

DESCRIPTION = ("nichotplug: safe NIC hot-plug for KubeVirt VMs in Harvester (admission webhooks, MAC "
               "controller, action API).")

# subcommand -> "module:function"; the function takes the parsed namespace and returns an exit code.
_HANDLERS = {
    "serve": "nichotplug.service:run_serve",
    "certs": "nichotplug.cli:run_certs",
    "demo": "nichotplug.demo:run_demo",
}


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve", help="serve the admission webhooks, the action API and the controller",
        description="Serve the admission webhooks and the action API over HTTPS, /metrics over plain HTTP, and "
                    "run the MAC controller. The webhooks see VMs in every namespace (MAC uniqueness is "
                    "cluster-wide); the controller WRITES VMs (observed-MAC annotation, MAC backfill) in every "
                    "namespace unless --controller-namespace limits it or --no-controller turns it off.")
    serve.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then the in-cluster service "
                                            "account, then ~/.kube/config)")
    serve.add_argument("--context", help="kubeconfig context to use")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=9443,
                       help="HTTPS port for webhooks and actions (default: %(default)s)")
    serve.add_argument("--metrics-port", type=int, default=8080,
                       help="plain-HTTP port for /metrics, 0 for none (default: %(default)s)")
    _add_tls(serve)
    controller = serve.add_argument_group("controller")
    controller.add_argument("--no-controller", action="store_true",
                            help="do not run the MAC controller: nichotplug then writes no VM on its own")
    controller.add_argument("--controller-namespace", action="append", default=[], metavar="NS",
                            help="let the controller write VMs only in NS (repeatable; default: every namespace). "
                                 "The webhooks still see and judge every namespace")
    serve.add_argument("--no-migrate", action="store_true",
                       help="after addNic/removeNic, leave the change to KubeVirt's LiveUpdate rollout")
    serve.add_argument("--apiservice", default="",
                       help="serve the NIC actions as subresources of this APIService (v1.subresources.nichotplug.io) "
                            "to kube-apiserver's aggregation layer and, with --self-managed-certs, keep its caBundle "
                            "in step (default: not served)")
    serve.add_argument("--namespace", help="namespace of the Lease and TLS Secret (default: $POD_NAMESPACE)")
    serve.add_argument("--shutdown-delay", type=float, default=5.0, metavar="SECONDS",
                       help="after SIGTERM, keep answering (with /readyz failing) this long before draining, so "
                            "the pod leaves the Service's endpoints first; SIGINT skips it (default: %(default)s)")
    serve.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                       help="logging level (default: %(default)s)")
    serve.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="text: one line a person reads; json: one JSON object per line with time, level, "
                            "logger, message and each admission request's fields (default: %(default)s)")


def _add_tls(serve: argparse.ArgumentParser) -> None:
    tls = serve.add_argument_group(
        "TLS (required, one of two ways)",
        "Either --tls-cert-file and --tls-key-file, or --self-managed-certs: webhooks are served over TLS only.")
    tls.add_argument("--tls-cert-file", help="serving certificate (PEM); reloaded when it changes")
    tls.add_argument("--tls-key-file", help="serving key (PEM); reloaded when it changes")
    tls.add_argument("--self-managed-certs", action="store_true",
                     help="create and rotate the serving certificate in a Secret and patch the webhook caBundles")
    tls.add_argument("--tls-secret", default="nichotplug-tls",
                     help="Secret for self-managed certificates (default: %(default)s)")
    tls.add_argument("--service-name", default="nichotplug",
                     help="Service name the certificate is for (default: %(default)s)")
    tls.add_argument("--mutating-webhook", default="nichotplug",
                     help="MutatingWebhookConfiguration whose caBundle is managed (default: %(default)s)")
    tls.add_argument("--validating-webhook", default="nichotplug",
                     help="ValidatingWebhookConfiguration whose caBundle is managed (default: %(default)s)")
    tls.add_argument("--cert-validity", default="365d",
                     help="self-managed serving certificate validity, e.g. 365d, 12h; rotated when a third "
                          "remains (default: %(default)s)")
    tls.add_argument("--cert-check-interval", default="30s",
                     help="how often self-managed certificates re-read their Secret (default: %(default)s)")
    tls.add_argument("--cert-extra-name", action="append", default=[],
                     help="extra DNS name or IP address for the self-managed certificate (repeatable)")


def _add_certs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser(
        "certs", help="write a CA and a serving certificate (ca.crt, tls.crt, tls.key)",
        description="Write a new CA (ca.crt) and a serving certificate signed by it (tls.crt, tls.key) for "
                    "development and tests; in a cluster, the chart's self-managed mode or cert-manager does this.")
    certs.add_argument("--out", type=Path, default=Path("certs"), help="output folder (default: %(default)s)")
    certs.add_argument("--dns", action="extend", nargs="+", default=[], metavar="NAME",
                       help="DNS name(s) of the serving certificate (repeatable)")
    certs.add_argument("--ip", action="extend", nargs="+", default=[], metavar="ADDRESS",
                       help="IP address(es) of the serving certificate (repeatable)")
    certs.add_argument("--days", type=int, default=365,
                       help="validity of the serving certificate in days, at most the CA's (ten years)")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="walk the hot-plug story against an in-process Kubernetes API server")
    demo.add_argument("--pause", type=float, default=0.0, help="seconds to wait between steps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nichotplug", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_certs(sub)
    _add_demo(sub)
    return parser


def run_certs(args: argparse.Namespace) -> int:
    """``nichotplug certs``: write a fresh CA and serving certificate."""
    import datetime

    from nichotplug.certs import make_bundle, write_bundle

    problem = _certs_problem(args)
    if problem:
        print(f"nichotplug certs: {problem}", file=sys.stderr)
        return 2
    bundle = make_bundle(dns_names=args.dns, ip_addresses=args.ip, valid_for=datetime.timedelta(days=args.days))
    try:
        paths = write_bundle(bundle, args.out)
    except OSError as error:
        print(f"nichotplug certs: cannot write into {str(args.out)!r}: {error.strerror or error}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


# A DNS name as a certificate holds it: dot-separated labels of letters, digits and inner hyphens
# (a leading "*." for a wildcard), 253 characters at most. Internationalised names go in as punycode.
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_dns_name(name: str) -> bool:
    labels = name.removeprefix("*.").split(".")
    return len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


def _certs_problem(args: argparse.Namespace) -> str | None:
    import ipaddress

    from nichotplug.certs import CA_DAYS

    if not args.dns and not args.ip:
        return "give at least one --dns NAME or --ip ADDRESS"
    if not 1 <= args.days <= CA_DAYS:
        return f"--days must be between 1 and {CA_DAYS} (the CA's validity), got {args.days}"
    for name in args.dns:
        if not _is_dns_name(name):
            return f"{name!r} is not a DNS name (letters, digits, hyphens and dots; punycode for other scripts)"
    for ip in args.ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return f"{ip!r} is not an IP address"
    if args.out.exists() and not args.out.is_dir():
        return f"--out {str(args.out)!r} exists and is not a folder"
    return None


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, function_name = target.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), function_name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _resolve(_HANDLERS[args.command])(args)


if __name__ == "__main__":
    sys.exit(main())
