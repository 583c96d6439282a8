"""Real servers for tests, benchmarks and the local demo.

Each server runs as a child process on a free loopback port and can be stopped, killed
(SIGKILL) and restarted mid-test; see :mod:`harness.servers`. Binaries are found or installed
by :mod:`harness.tools`.
"""
