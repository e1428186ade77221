"""What ``kubectl nichotplug add-nic`` / ``remove-nic`` print about a written change, on either path.

The direct path (``actions.commands``) has the flow's :class:`ActionResult`; the subresource path
(``actions.remote``) rebuilds one from the answer, so both say the same words.
"""

from __future__ import annotations

from typing import TextIO

from nichotplug.actions.flow import ActionResult


def print_written(result: ActionResult, vm_ref: str, out: TextIO, err: TextIO, *, added: bool) -> None:
    """The interface written, then how the change is applied (a stopped VM needs no migration)."""
    if added:
        _print_added(result, vm_ref, out)
    else:
        _print_removed(result, vm_ref, out)
    if not result.stopped:
        _report_migration(result, out, err)


def _print_added(result: ActionResult, vm_ref: str, out: TextIO) -> None:
    if result.stopped:
        print(f"interface {result.interface} (MAC {result.mac}) added to the spec of VM {vm_ref}; the VM is "
              "stopped, so nothing is hot-plugged: it has the interface from its next start", file=out)
    else:
        print(f"interface {result.interface} (MAC {result.mac}) added to VM {vm_ref}", file=out)


def _print_removed(result: ActionResult, vm_ref: str, out: TextIO) -> None:
    if result.stopped:
        print(f"interface {result.interface} and its network removed from the spec of VM {vm_ref}; the VM is "
              "stopped, so nothing is unplugged: it starts without them", file=out)
    else:
        print(f"interface {result.interface} of VM {vm_ref} set to state absent (unplug requested)", file=out)


def _report_migration(result: ActionResult, out: TextIO, err: TextIO) -> None:
    if result.migration_pending:
        print(f"live migration {result.migration} is already pending and applies this change too; "
              "no other was requested", file=out)
    elif result.migration:
        print(f"live migration {result.migration} requested to apply it now", file=out)
    elif result.migration_error:
        print(f"warning: {result.migration_error}", file=err)
    else:
        print("no migration requested: KubeVirt applies the change at its next rollout or restart", file=out)
