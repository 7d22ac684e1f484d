"""One free loopback port, for every server the tests and benchmarks start (stdlib only, so the
control plane, the test webhook servers and benchmarks/ share it)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on now (for a server about to be started)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
