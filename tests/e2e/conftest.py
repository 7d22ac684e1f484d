"""Session fixture for the e2e testbed: build (cached), start, create node pools, always stop.

A component that cannot start FAILS the session's e2e tests with its log tail; nothing here skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from .controlplane import ControlPlane, build


@pytest.fixture(scope="session")
def controlplane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    """The running testbed with the simulated GPU/CPU node pools Ready.

    Register webhooks with ``controlplane.apply(config_dict)``; create pods with
    ``kubernetes.client.CoreV1Api(controlplane.api_client())`` or ``controlplane.apply``.
    """
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def echo(line: str) -> None:  # show build progress live: a cold build takes minutes
        with capman.global_and_fixture_disabled():
            print(line, flush=True)

    cp = ControlPlane(build(echo=echo))
    request.addfinalizer(cp.stop)  # also atexit and PR_SET_PDEATHSIG in the children
    cp.start()
    cp.create_gpu_nodes()
    yield cp


@pytest.fixture
def namespace(controlplane: ControlPlane) -> str:
    """A fresh namespace per test (never deleted: without kube-controller-manager a deleted
    namespace stays Terminating; the whole etcd is thrown away at the end)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name
