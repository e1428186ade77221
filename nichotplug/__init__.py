"""nichotplug: safe NIC hot-plug for KubeVirt virtual machines in Harvester."""

__version__ = "0.1.0"
