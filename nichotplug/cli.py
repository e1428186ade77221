"""The ``nichotplug`` console script: one command, several subcommands.

Each subcommand's implementation is imported only when it runs, so
``nichotplug --help`` stays fast and a broken optional piece cannot stop the
others from starting.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# subcommand -> "module:function"; the function takes the parsed namespace and returns an exit code.
_HANDLERS = {
    "serve": "nichotplug.service:run_serve",
    "certs": "nichotplug.cli:run_certs",
    "demo": "nichotplug.demo:run_demo",
}


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="serve the admission webhooks, the action API and the controller")
    serve.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, then ~/.kube/config)")
    serve.add_argument("--context", help="kubeconfig context to use")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=int, default=9443, help="HTTPS port for webhooks and actions")
    serve.add_argument("--metrics-port", type=int, default=8080, help="plain-HTTP port for /metrics (0: off)")
    serve.add_argument("--tls-cert-file", help="serving certificate (PEM); reloaded when it changes")
    serve.add_argument("--tls-key-file", help="serving key (PEM); reloaded when it changes")
    serve.add_argument("--no-controller", action="store_true", help="do not run the MAC controller")
    serve.add_argument("--no-migrate", action="store_true",
                       help="after addNic/removeNic, leave the change to KubeVirt's LiveUpdate rollout")
    serve.add_argument("--namespace", help="namespace of the Lease and TLS Secret (default: $POD_NAMESPACE)")
    serve.add_argument("--self-managed-certs", action="store_true",
                       help="create and rotate the serving certificate in a Secret and patch the webhook caBundles")
    serve.add_argument("--tls-secret", default="nichotplug-tls", help="Secret for self-managed certificates")
    serve.add_argument("--service-name", default="nichotplug", help="Service name the certificate is for")
    serve.add_argument("--mutating-webhook", default="nichotplug",
                       help="MutatingWebhookConfiguration whose caBundle is managed")
    serve.add_argument("--validating-webhook", default="nichotplug",
                       help="ValidatingWebhookConfiguration whose caBundle is managed")
    serve.add_argument("--cert-validity", default="365d",
                       help="self-managed serving certificate validity, e.g. 365d, 12h; rotated when a third "
                            "remains (default: %(default)s)")
    serve.add_argument("--cert-check-interval", default="30s",
                       help="how often self-managed certificates re-read their Secret (default: %(default)s)")
    serve.add_argument("--cert-extra-name", action="append", default=[],
                       help="extra DNS name or IP address for the self-managed certificate (repeatable)")
    serve.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")


def _add_certs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    certs = sub.add_parser("certs", help="write a CA and a serving certificate (ca.crt, tls.crt, tls.key)")
    certs.add_argument("--out", type=Path, default=Path("certs"), help="output folder (default: %(default)s)")
    certs.add_argument("--dns", action="append", default=[], help="DNS name (repeatable)")
    certs.add_argument("--ip", action="append", default=[], help="IP address (repeatable)")
    certs.add_argument("--days", type=int, default=365, help="validity of the serving certificate in days")


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="walk the hot-plug story against an in-process Kubernetes API server")
    demo.add_argument("--pause", type=float, default=0.0, help="seconds to wait between steps")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nichotplug", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_certs(sub)
    _add_demo(sub)
    return parser


def run_certs(args: argparse.Namespace) -> int:
    """``nichotplug certs``: write a fresh CA and serving certificate."""
    import datetime
    import ipaddress

    from nichotplug.certs import make_bundle, write_bundle

    if not args.dns and not args.ip:
        print("nichotplug certs: give at least one --dns NAME or --ip ADDRESS", file=sys.stderr)
        return 2
    if args.days < 1:
        print("nichotplug certs: --days must be at least 1", file=sys.stderr)
        return 2
    for ip in args.ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            print(f"nichotplug certs: {ip!r} is not an IP address", file=sys.stderr)
            return 2
    bundle = make_bundle(dns_names=args.dns, ip_addresses=args.ip, valid_for=datetime.timedelta(days=args.days))
    for path in write_bundle(bundle, args.out).values():
        print(path)
    return 0


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, function_name = target.partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module_name), function_name)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return _resolve(_HANDLERS[args.command])(args)


if __name__ == "__main__":
    sys.exit(main())
