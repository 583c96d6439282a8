"""Real servers for tests, benchmarks and the local demo.

Each server runs as a child process on a free loopback port and can be stopped, killed
(SIGKILL) and restarted mid-test; see :mod:`harness.servers`. Binaries are found or installed
by :mod:`harness.tools`. :mod:`harness.kube` runs the Kubernetes API emulator; the end-to-end
bed (:mod:`harness.e2e_bed`) adds a kubelet stand-in (:mod:`harness.kubelet`) that runs pods as
processes, and the chart rendered by Helm (docs/e2e.md).
"""
