"""The MAC controller: records observed MACs on running VMs and backfills them into halted VMs.

``run_controller(api, view, namespace=..., identity=...)`` is the entry point ``nichotplug serve``
calls; ``MacController`` is one leadership term (queue, workers, resync, duplicate-MAC audit).
"""

from nichotplug.controller.loop import MacController, run_controller

__all__ = ["MacController", "run_controller"]
