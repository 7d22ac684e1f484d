"""The quota ledger: compare-and-swap reservations never over-admit, expire, and fail closed."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from webhook.ledger import Ledger, live_reservations
from webhook.tracker import UsageBook

QUOTA = {"nvidia.com/gpu": D(5), "gpuEquivalent": D(5)}
ONE_GPU = {"nvidia.com/gpu": D(1), "gpuEquivalent": D(1)}


class ConfigMaps:
    """An in-memory stand-in for the ConfigMap API with the API server's resourceVersion rule:
    a replace carrying a stale version is a 409 Conflict. ``fail`` makes every call a 500."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict] = {}
        self.version = 0
        self.conflicts = 0
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise ApiException(status=500, reason="etcd unavailable")

    def read_namespaced_config_map(self, name, namespace, **_):
        self._check()
        with self.lock:
            if name not in self.objects:
                raise ApiException(status=404, reason="NotFound")
            data = json.dumps(self.objects[name]).encode()
        time.sleep(0.002)   # a network round trip: other replicas' writes land meanwhile
        return SimpleNamespace(data=data)

    def _store(self, name, body):
        self.version += 1
        body = json.loads(json.dumps(body))
        body["metadata"]["resourceVersion"] = str(self.version)
        self.objects[name] = body

    def create_namespaced_config_map(self, namespace, body, **_):
        self._check()
        with self.lock:
            if body["metadata"]["name"] in self.objects:
                self.conflicts += 1
                raise ApiException(status=409, reason="AlreadyExists")
            self._store(body["metadata"]["name"], body)

    def replace_namespaced_config_map(self, name, namespace, body, **_):
        self._check()
        with self.lock:
            if self.objects[name]["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
                self.conflicts += 1
                raise ApiException(status=409, reason="Conflict")
            self._store(name, body)


@pytest.fixture
def api():
    return ConfigMaps()


def _ledger(api, policy, **kwargs) -> Ledger:
    return Ledger(api, "gpu-webhook", UsageBook(policy), **kwargs)


def test_fifty_concurrent_reservations_from_two_replicas_admit_exactly_the_quota(api, policy):
    replicas = [_ledger(api, policy), _ledger(api, policy)]   # share nothing but the "API server"
    with ThreadPoolExecutor(max_workers=16) as pool:
        decisions = list(pool.map(lambda i: replicas[i % 2].reserve("forecasting", QUOTA, f"uid-{i}", f"p{i}", ONE_GPU),
                                  range(50)))
    assert sum(d.allowed for d in decisions) == 5
    assert {d.message for d in decisions if not d.allowed} == {
        "exceeded quota: tenant forecasting, nvidia.com/gpu, requested: 1, used: 5, limited: 5; "
        "exceeded quota: tenant forecasting, gpuEquivalent, requested: 1, used: 5, limited: 5"}
    assert api.conflicts > 0, "the test must actually race"


ROUNDS = [
    ("a free ledger is written in one round", "free", ["written"]),
    ("a full quota ends the round without a write", "full", ["written", "over-quota"]),
    ("a round that loses the race to another replica reads again", "race", ["conflict", "written"]),
]


@pytest.mark.parametrize("description, situation, rounds", ROUNDS, ids=[r[0] for r in ROUNDS])
def test_each_round_is_counted_by_how_it_ended(api, policy, description, situation, rounds):
    ended: list[str] = []
    ledger = _ledger(api, policy, counted=ended.append)
    quota = {"nvidia.com/gpu": D(1)} if situation == "full" else QUOTA
    if situation == "full":
        ledger.reserve("forecasting", quota, "first", "p", ONE_GPU)
    if situation == "race":   # another replica creates the ledger between this one's read and write
        def read_then_lose(name, namespace, **_):
            del api.read_namespaced_config_map   # once: later reads are the real ones
            _ledger(api, policy).reserve("forecasting", QUOTA, "rival", "p", ONE_GPU)
            raise ApiException(status=404, reason="NotFound")
        api.read_namespaced_config_map = read_then_lose
    ledger.reserve("forecasting", quota, "mine", "p", ONE_GPU)
    assert ended == rounds


def test_an_expired_reservation_no_longer_holds_quota(api, policy):
    clock = [1000.0]
    ledger = _ledger(api, policy, ttl=30, clock=lambda: clock[0])
    for i in range(5):
        assert ledger.reserve("forecasting", QUOTA, f"u{i}", "p", ONE_GPU).allowed
    assert not ledger.reserve("forecasting", QUOTA, "late", "p", ONE_GPU).allowed
    clock[0] += 31
    assert ledger.reserve("forecasting", QUOTA, "late", "p", ONE_GPU).allowed


def test_a_reservation_whose_pod_the_watch_has_seen_counts_as_usage_not_twice(policy):
    seen = {"u0"}
    reservations = {"u0": {"expires": 2000}, "u1": {"expires": 2000}, "u2": {"expires": 10}}
    assert list(live_reservations(reservations, 1000, seen.__contains__)) == ["u1"]


def test_a_retried_admission_replaces_its_own_reservation(api, policy):
    ledger = _ledger(api, policy)
    for _ in range(8):
        assert ledger.reserve("forecasting", QUOTA, "same-pod", "p", ONE_GPU).allowed


def test_an_unavailable_ledger_denies_with_a_retryable_503(api, policy):
    api.fail = True
    ended: list[str] = []
    decision = _ledger(api, policy, deadline=0.3, counted=ended.append).reserve("forecasting", QUOTA, "u", "p", ONE_GPU)
    assert (decision.allowed, decision.code, decision.reason) == (False, 503, "ledger-unavailable")
    assert ended and set(ended) == {"unavailable"}
    assert "retry" in decision.message


def test_dry_runs_and_pods_not_admitted_reserve_nothing(api, policy):
    import asyncio

    from webhook.decision import Decision
    from webhook.ledger import QuotaReserver

    reserver = QuotaReserver(_ledger(api, policy))
    admitted = Decision.allow("admitted", tenant="forecasting")
    pod = {"metadata": {"name": "p", "uid": "u1"}, "spec": {"containers": []}}
    dry = SimpleNamespace(dry_run=True, object=pod, namespace="airflow")
    wet = SimpleNamespace(dry_run=False, object=pod, namespace="airflow")
    assert asyncio.run(reserver(dry, admitted, policy)) is admitted
    assert asyncio.run(reserver(wet, Decision.allow("unlabelled"), policy)).reason == "unlabelled"
    assert api.objects == {}, "nothing may be written for a dry run or a pod without quota"
    asyncio.run(reserver(wet, admitted, policy))
    assert list(api.objects) == ["gpu-webhook-ledger-forecasting"]
