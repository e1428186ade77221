"""Tests of the kubectl-nichotplug plugin, driven through real kubectl."""
