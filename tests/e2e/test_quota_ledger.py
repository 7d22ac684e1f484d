"""No over-admission: two `serve --track-usage` replicas behind one address (a round-robin TCP
balancer standing in for the Service), a burst of concurrent pod creates through the real API
server, and the quota ledger shared only through that API server.

Proven: 100 concurrent 1-GPU creates for a tenant with quota 5 admit exactly 5, every other one
denied with the quota message; after both replicas restart, usage rebuilt from the cluster is
what it was; a reservation whose pod never appears holds the quota for no more than the ghost
grace; pods that finish mid-burst free their share without over-admission; a replica killed
mid-burst costs refusals (failurePolicy: Fail), never an over-admission. (One replica's watch
stalled or broken, and ghosts of failed creates: test_quota_watches.py.)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

import pytest

from .conftest import airflow_pod
from .controlplane import ControlPlane
from .quota_cluster import (
    CASE,
    GRACE,
    NAMESPACE,
    QUOTA,
    Replicas,
    burst,
    burst_client,
    create,
    finish,
    ledger_rounds,
    running,
    serving,
    wait_quota_free,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def replicas(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    yield from serving(controlplane, tmp_path_factory.mktemp("replicas"))


def test_a_burst_of_100_creates_over_two_replicas_admits_exactly_the_quota(replicas, controlplane):
    core = burst_client(controlplane)
    names = [f"burst-{uuid.uuid4().hex[:8]}" for _ in range(100)]
    with ThreadPoolExecutor(max_workers=25) as pool:
        outcomes = dict(zip(names, pool.map(lambda n: create(core, n), names), strict=True))
    admitted = [n for n, outcome in outcomes.items() if outcome == "admitted"]
    try:
        assert len(admitted) == QUOTA, {o for o in outcomes.values() if o != "admitted"}
        denials = {o for o in outcomes.values() if o != "admitted"}
        assert all("exceeded quota: tenant forecasting, nvidia.com/gpu, requested: 1" in d for d in denials), denials
        for log in (replicas.first.server.log, replicas.second.log):   # both replicas really took part
            assert "reason=quota-exceeded" in log.read_text()
        written = [ledger_rounds(server, "written") for server in (replicas.first.server, replicas.second)]
        # a write records a batch (group commit): at most one per admitted pod, at least one
        assert 1 <= sum(written) <= QUOTA, f"ledger writes per replica: {written}"

        replicas.restart()   # usage rebuilt from the cluster: still full
        assert "used: 5, limited: 5" in create(core, f"after-restart-{uuid.uuid4().hex[:6]}")
    finally:
        finish(core, admitted)


def test_a_reservation_whose_pod_never_appears_holds_quota_no_longer_than_the_grace(replicas, controlplane):
    core = burst_client(controlplane)
    for name in [f"fill-{uuid.uuid4().hex[:6]}" for _ in range(QUOTA - 1)]:
        assert create(core, name) == "admitted"
    # A pod both steps admit, then never created (a later admission step refused it):
    ghost = airflow_pod(CASE, "ghost")
    ghost["metadata"]["uid"] = str(uuid.uuid4())
    assert replicas.first.server.chain(ghost, NAMESPACE)[1]["allowed"] is True
    reserved = time.monotonic()
    assert "used: 5, limited: 5" in create(core, f"blocked-{uuid.uuid4().hex[:6]}")
    while (outcome := create(core, f"late-{uuid.uuid4().hex[:6]}")) != "admitted":
        assert time.monotonic() - reserved < GRACE + 10, f"the ghost's reservation was not released: {outcome}"
        time.sleep(0.25)
    print(f"ghost (never created) held the quota for {time.monotonic() - reserved:.1f} s (grace {GRACE:g} s)")
    finish(core, [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE).items
                   if p.status.phase in ("Pending", "Running") and p.metadata.name.startswith(("fill-", "late-"))])


def test_pods_completing_mid_burst_free_quota_without_over_admitting(replicas, controlplane):
    core = burst_client(controlplane)
    wait_quota_free(core)
    names = [f"churn-{uuid.uuid4().hex[:8]}" for _ in range(60)]
    admitted: list[str] = []
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = {pool.submit(create, core, name): name for name in names}
        finished: list[str] = []
        for future in as_completed(futures):
            if future.result() == "admitted":
                admitted.append(futures[future])
                if len(finished) < 2:   # two tasks end while the burst goes on
                    finish(core, [futures[future]])
                    finished.append(futures[future])
    try:
        assert QUOTA <= len(admitted) <= QUOTA + len(finished)
        assert len(running(core, names)) <= QUOTA
    finally:
        finish(core, admitted)


def test_killing_a_replica_mid_burst_never_over_admits(replicas, controlplane):
    core = burst_client(controlplane)
    wait_quota_free(core)

    def kill_at(done: int) -> None:
        if done == 15:
            replicas.second.stop()   # one replica dies; the balancer still sends it connections

    outcomes = burst(core, "kill", count=60, workers=20, during=kill_at)
    admitted = [n for n, o in outcomes.items() if o == "admitted"]
    try:
        assert len(admitted) == QUOTA
        refused = {o for o in outcomes.values() if o != "admitted"}
        assert all("exceeded quota: tenant forecasting" in o or 'failed calling webhook "' in o for o in refused), refused
    finally:
        finish(core, admitted)
