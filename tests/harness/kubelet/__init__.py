"""A kubelet and the workload controllers, standing in for a cluster's nodes (docs/e2e.md).

It runs the pods stored in the Kubernetes API emulator as real processes on this machine:
``controllers`` makes pods for Deployments and StatefulSets and keeps their status,
``pods`` runs each pod's containers (``containers``, ``volumes``, ``probes``) on its own
loopback address (``podnet``) with names from a private /etc/hosts (``hosts``), and
``main`` ties them together in one polling loop: ``python -m harness.kubelet --help``.
"""
