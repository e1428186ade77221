"""``kubectl nichotplug``: hot-plug and hot-unplug NICs of running VMs in one command.

Installed as the console script ``kubectl-nichotplug``, so kubectl finds it on ``PATH`` as a plugin.
It uses the user's kubeconfig and context (``--kubeconfig``, ``--context``, ``-n``, ``$KUBECONFIG``,
the context's namespace). When kube-apiserver serves nichotplug's subresource API
(``subresources.nichotplug.io/v1``), the commands call it, so a user granted only the
``nichotplug-nic-operator`` role can use them; otherwise they run the same flow and rules as the
action API (:mod:`nichotplug.actions.flow`) with the user's own rights on the VM. ``-v`` says which
path was taken. Either way RBAC and our admission webhooks judge the change.

Exit codes: 0 done (or eligible), 1 refused or failed (the message says why and what to do),
2 usage (bad arguments, no usable kubeconfig). This module only parses the command line; the
commands live in :mod:`nichotplug.actions.commands`, imported once the arguments are valid.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any


def _mac(text: str) -> str:
    """``--mac``: a unicast MAC in a form KubeVirt accepts (argparse names the flag in its error)."""
    from nichotplug.rules.mac import InvalidMac, check_unicast_mac

    try:
        return check_unicast_mac(text)
    except InvalidMac as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _interface(text: str) -> str:
    """``--interface``: a name KubeVirt takes for an interface (a DNS-1123 label)."""
    from nichotplug.rules.nic_plans import is_dns1123_label

    if not is_dns1123_label(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid interface name: use at most 63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit")
    return text


def _network(text: str) -> str:
    """``--network``: NAMESPACE/NAME or NAME of a NetworkAttachmentDefinition."""
    from nichotplug.rules.nic_plans import ActionRefusal, parse_network_name

    if isinstance(parse_network_name(text, "default"), ActionRefusal):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAMESPACE/NAME or NAME of a NetworkAttachmentDefinition")
    return text


def _common_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # The options are accepted before and after the subcommand; on the subcommand they default to
    # SUPPRESS so they do not overwrite a value given before it.
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", default=default, help="kubeconfig context (default: the current context)")
    parser.add_argument("-n", "--namespace", default=default, help="namespace of the VM (default: the context's)")
    parser.add_argument("-v", "--verbose", action="store_true", default=False if not suppress else argparse.SUPPRESS,
                        help="say whether the subresource API or the Kubernetes API directly is used")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl nichotplug", description="Hot-plug and hot-unplug NICs of running KubeVirt VMs safely.")
    _common_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = sub.add_parser("add-nic", help="hot-plug a virtio bridge interface on a network (on a stopped VM: add "
                                         "it to the spec)")
    add.add_argument("vm", metavar="VM")
    add.add_argument("--network", required=True, type=_network,
                     help="NetworkAttachmentDefinition as NAMESPACE/NAME or NAME")
    add.add_argument("--interface", type=_interface, help="interface name (default: the first free nic-<n>)")
    add.add_argument("--mac", type=_mac, help="MAC address (default: a generated one)")
    add.add_argument("--no-migrate", action="store_true",
                     help="do not request a live migration to apply it now (uses the Kubernetes API directly)")

    remove = sub.add_parser("remove-nic", help="hot-unplug an interface (sets it state: absent); on a stopped VM, "
                                               "remove it and its network from the spec")
    remove.add_argument("vm", metavar="VM")
    remove.add_argument("--interface", required=True, type=_interface, help="name of the interface to unplug")
    remove.add_argument("--no-migrate", action="store_true",
                        help="do not request a live migration to apply it now (uses the Kubernetes API directly)")

    listing = sub.add_parser("list", help="list the VM's interfaces and whether each can be unplugged")
    listing.add_argument("vm", metavar="VM")

    check = sub.add_parser(
        "check", help="say whether the VM (or every VM of a namespace, -A: of the cluster) can take a NIC now")
    check.add_argument("vm", metavar="VM", nargs="?", help="one VM (default: every VM of the namespace)")
    check.add_argument("-A", "--all-namespaces", action="store_true", help="every VM in every namespace")
    check.add_argument("-l", "--selector", default="", help="only VMs matching this label selector")
    check.add_argument("-o", "--output", choices=("wide", "json", "yaml"), help="output format")

    guest = sub.add_parser("guest-config", help="the VM's NICs with their MACs, and a cloud-init netplan "
                                                "config naming each NIC by MAC")
    guest.add_argument("vm", metavar="VM")

    for subparser in (add, remove, listing, check, guest):
        _common_options(subparser, suppress=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``kubectl-nichotplug``)."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error, as argparse does
    from nichotplug.actions.commands import run  # the Kubernetes client loads only when needed

    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
