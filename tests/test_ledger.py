"""The quota ledger: compare-and-swap reservations never over-admit, leave only when confirmed,
free ghosts after the grace, refuse forged identities, and fail closed."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal as D
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cluster.ledger import Ledger, identity_problem
from airflow_gpu_webhook.cluster.tracker import UsageBook

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
        self.reads = self.writes = 0
        self.fail = False
        self.pods: dict[str, dict] = {}   # "ns/name" -> pod, for the ledger's direct GETs

    def _check(self) -> None:
        if self.fail:
            raise ApiException(status=500, reason="etcd unavailable")

    def read_namespaced_config_map(self, name, namespace, **_):
        self._check()
        with self.lock:
            self.reads += 1
            if name not in self.objects:
                raise ApiException(status=404, reason="NotFound")
            data = json.dumps(self.objects[name]).encode()
        time.sleep(0.002)   # a network round trip: other replicas' writes land meanwhile
        return SimpleNamespace(data=data)

    def read_namespaced_pod(self, name, namespace, **_):
        self._check()
        if f"{namespace}/{name}" not in self.pods:
            raise ApiException(status=404, reason="NotFound")
        return SimpleNamespace(data=json.dumps(self.pods[f"{namespace}/{name}"]).encode())

    def _store(self, name, body):
        self.version += 1
        body = json.loads(json.dumps(body))
        body["metadata"]["resourceVersion"] = str(self.version)
        self.objects[name] = body
        self.writes += 1
        return SimpleNamespace(data=json.dumps(body).encode())   # what _preload_content=False returns

    def create_namespaced_config_map(self, namespace, body, **_):
        self._check()
        with self.lock:
            if body["metadata"]["name"] in self.objects:
                self.conflicts += 1
                raise ApiException(status=409, reason="AlreadyExists")
            return self._store(body["metadata"]["name"], body)

    def replace_namespaced_config_map(self, name, namespace, body, **_):
        self._check()
        with self.lock:
            if self.objects[name]["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
                self.conflicts += 1
                raise ApiException(status=409, reason="Conflict")
            return self._store(name, body)


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


def _uid(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


class Watch:
    """This replica's watch progress, set by the test."""

    def __init__(self, reached: int = 0) -> None:
        self.reached = reached
        self.waits: list[float] = []
        self.restarts: list[str] = []

    def wait_reached(self, version: int, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.reached >= version

    def restart(self, why: str) -> None:
        self.restarts.append(why)


def _pod(policy, uid: str, version: int, name: str = "p") -> dict:
    return {"metadata": {"uid": uid, "namespace": "airflow", "name": name, "resourceVersion": str(version),
                         "labels": {"gpu.platform/managed": "true", "gpu.platform/tenant": "forecasting",
                                    "gpu.platform/profile": "a100-40gb"}},
            "spec": {"containers": [{"name": "base", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}


def _ledger_data(api) -> tuple[dict, int]:
    data = api.objects["gpu-webhook-ledger-forecasting"]["data"]
    return json.loads(data["reservations"]), int(data["prunedThrough"])


def test_a_lagging_replica_is_never_fooled_by_reservations_another_replica_pruned(api, policy):
    """Replica A's watch sees 3 admitted pods and prunes their reservations; replica B's watch
    has seen none of them. B must not count 0: it waits for its watch, then answers 503."""
    watch_a, watch_b = Watch(10), Watch(10)
    a = Ledger(api, "gpu-webhook", UsageBook(policy), watch_a)
    b = Ledger(api, "gpu-webhook", UsageBook(policy), watch_b)
    for i in range(3):
        assert a.reserve("forecasting", QUOTA, _uid(i), f"airflow/p{i}", ONE_GPU).allowed
    for i in range(3):
        a.book.apply("ADDED", _pod(policy, _uid(i), 20 + i, f"p{i}"))
    watch_a.reached = 30
    assert a.reserve("forecasting", QUOTA, _uid(3), "airflow/p3", ONE_GPU).allowed
    reservations, pruned_through = _ledger_data(api)
    assert list(reservations) == [_uid(3)] and pruned_through == 22
    ended: list[str] = []
    b.counted = ended.append
    decision = b.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", {"nvidia.com/gpu": D(2), "gpuEquivalent": D(2)})
    assert (decision.allowed, decision.code, decision.reason) == (False, 503, "watch-behind")
    assert "retry" in decision.message
    assert "watch-behind" in ended
    watch_b.waits.clear()
    assert b.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", ONE_GPU).reason == "watch-behind"
    assert watch_b.waits == [0.0], "still behind: the next round answers at once instead of waiting again"
    watch_b.reached = 30   # caught up: B now counts the 3 pods as usage, the 4th as a reservation
    for i in range(3):
        b.book.apply("ADDED", _pod(policy, _uid(i), 20 + i, f"p{i}"))
    assert not b.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", {"nvidia.com/gpu": D(2),
                                                                         "gpuEquivalent": D(2)}).allowed
    assert b.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", ONE_GPU).allowed


def test_a_reservation_whose_pod_this_replicas_watch_has_seen_counts_as_usage_not_twice(api, policy):
    ledger = Ledger(api, "gpu-webhook", UsageBook(policy), Watch(100))
    for i in range(5):
        assert ledger.reserve("forecasting", QUOTA, _uid(i), f"airflow/p{i}", ONE_GPU).allowed
        ledger.book.apply("ADDED", _pod(policy, _uid(i), 50, f"p{i}"))
    assert "used: 5, limited: 5" in ledger.reserve("forecasting", QUOTA, _uid(7), "airflow/p7", ONE_GPU).message


GHOSTS = [
    ("a pod that was never created is pruned as a ghost after the grace", None, True),
    ("a pod of the same name with another uid (AlreadyExists) is pruned as a ghost", "other", True),
    ("a pod that exists but this replica's watch has not reached keeps its reservation", "same-ahead", False),
    ("a pod that exists and this replica's watch has reached is pruned as confirmed", "same", True),
]


@pytest.mark.parametrize("description, found, freed", GHOSTS, ids=[g[0] for g in GHOSTS])
def test_an_unseen_reservation_older_than_the_grace_is_checked_with_a_get(api, policy, description, found, freed):
    clock = [1000.0]
    pruned: list[str] = []
    ledger = Ledger(api, "gpu-webhook", UsageBook(policy), Watch(100), grace=10, clock=lambda: clock[0],
                    pruned=pruned.append)
    for i in range(5):
        assert ledger.reserve("forecasting", QUOTA, _uid(i), f"airflow/p{i}", ONE_GPU).allowed
    for i in range(1, 5):   # the other four were created: the watch sees them, they are usage
        api.pods[f"airflow/p{i}"] = _pod(policy, _uid(i), 90, f"p{i}")
        ledger.book.apply("ADDED", api.pods[f"airflow/p{i}"])
    if found is not None:
        api.pods["airflow/p0"] = _pod(policy, _uid(99) if found == "other" else _uid(0),
                                      500 if found == "same-ahead" else 90, "p0")
    clock[0] += 5   # within the grace: nothing is fetched, nothing freed
    assert not ledger.reserve("forecasting", QUOTA, _uid(7), "airflow/p7", ONE_GPU).allowed
    clock[0] += 6
    assert ledger.reserve("forecasting", QUOTA, _uid(7), "airflow/p7", ONE_GPU).allowed is freed
    if freed:
        assert pruned.count("ghost") == (1 if found in (None, "other") else 0)
        assert _uid(0) not in _ledger_data(api)[0]


IDENTITIES = [
    ("a valid pod is accepted", "airflow", "nightly-fit-1a2b", _uid(1), None),
    ("a megabyte name is refused", "airflow", "a" * 1_000_000, _uid(1), "metadata.name"),
    ("a name with a slash is refused", "airflow", "x/y", _uid(1), "metadata.name"),
    ("an uppercase namespace is refused", "Airflow", "p", _uid(1), "namespace"),
    ("a 64-character namespace is refused", "n" * 64, "p", _uid(1), "namespace"),
    ("an empty uid is refused", "airflow", "p", "", "metadata.uid"),
    ("a uid that is not a UUID is refused", "airflow", "p", "u" * 36, "metadata.uid"),
]


@pytest.mark.parametrize("description, namespace, name, uid, field", IDENTITIES, ids=[i[0] for i in IDENTITIES])
def test_only_valid_kubernetes_identities_reach_the_ledger(description, namespace, name, uid, field):
    problem = identity_problem(namespace, name, uid)
    assert (problem and problem.message.split()[2]) == (f"{field}" if field else None)
    if problem:
        assert len(problem.message) < 400 and "send this review through the API server" in problem.message


def test_a_maximal_reservation_has_a_bounded_size(api, policy):
    namespace, name = "n" * 63, ".".join(["a" * 63] * 3) + "." + "b" * 61
    assert len(name) == 253 and identity_problem(namespace, name, _uid(1)) is None
    ledger = Ledger(api, "gpu-webhook", UsageBook(policy), Watch(100))
    assert ledger.reserve("forecasting", QUOTA, _uid(1), f"{namespace}/{name}", ONE_GPU).allowed
    assert len(api.objects["gpu-webhook-ledger-forecasting"]["data"]["reservations"]) < 500


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

    from airflow_gpu_webhook.cluster.ledger import QuotaReserver
    from airflow_gpu_webhook.core.decision import Decision

    reserver = QuotaReserver(_ledger(api, policy))
    admitted = Decision.allow("admitted", tenant="forecasting")
    pod = _pod(policy, _uid(1), 1)
    dry = SimpleNamespace(dry_run=True, object=pod, namespace="airflow")
    wet = SimpleNamespace(dry_run=False, object=pod, namespace="airflow")
    assert asyncio.run(reserver(dry, admitted, policy)) is admitted
    assert asyncio.run(reserver(wet, Decision.allow("unlabelled"), policy)).reason == "unlabelled"
    assert api.objects == {}, "nothing may be written for a dry run or a pod without quota"
    asyncio.run(reserver(wet, admitted, policy))
    assert list(api.objects) == ["gpu-webhook-ledger-forecasting"]


def _review(pod: dict, namespace: str = "airflow") -> SimpleNamespace:
    return SimpleNamespace(dry_run=False, object=pod, namespace=namespace)


def test_a_forged_review_is_refused_before_any_ledger_write(api, policy):
    import asyncio

    from airflow_gpu_webhook.cluster.ledger import QuotaReserver
    from airflow_gpu_webhook.core.decision import Decision

    pod = _pod(policy, _uid(1), 1, name="x" * 300_000)
    decision = asyncio.run(QuotaReserver(_ledger(api, policy))(_review(pod), Decision.allow("admitted",
                                                                                             tenant="forecasting"),
                                                                policy))
    assert (decision.allowed, decision.code, decision.reason) == (False, 400, "invalid-identity")
    assert api.objects == {}


def test_a_pod_whose_charge_touches_no_quota_line_takes_no_ledger_round(api, policy):
    import asyncio

    from airflow_gpu_webhook.cluster.ledger import QuotaReserver
    from airflow_gpu_webhook.core.decision import Decision

    from conftest import policy_with

    tenants = {name: t.model_dump(mode="json", exclude_none=True) for name, t in policy.spec.tenants.items()}
    tenants["forecasting"]["quota"] = {"nvidia.com/mig-1g.10gb": 4}
    unlimited = policy_with(tenants=tenants)
    api.fail = True   # any round would end in a 503
    admitted = Decision.allow("admitted", tenant="forecasting")
    assert asyncio.run(QuotaReserver(_ledger(api, unlimited))(_review(_pod(policy, _uid(1), 1)), admitted,
                                                              unlimited)) is admitted


def test_a_watch_behind_the_ledger_for_five_seconds_is_restarted_once(api, policy):
    """A stalled stream raises nothing: the ledger, which knows other replicas saw those pods,
    restarts this replica's watch (unready, a fresh list) after RESTART_BEHIND seconds."""
    now = [1000.0]
    ahead = Ledger(api, "gpu-webhook", UsageBook(policy), Watch(100))
    assert ahead.reserve("forecasting", QUOTA, _uid(0), "airflow/p0", ONE_GPU).allowed
    ahead.book.apply("ADDED", _pod(policy, _uid(0), 60, "p0"))
    assert ahead.reserve("forecasting", QUOTA, _uid(1), "airflow/p1", ONE_GPU).allowed   # prunes p0: through 60
    stalled = Watch(10)
    behind = Ledger(api, "gpu-webhook", UsageBook(policy), stalled, clock=lambda: now[0])
    for step in (0.0, 2.0, 2.9):
        now[0] += step
        assert behind.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", ONE_GPU).reason == "watch-behind"
    assert stalled.restarts == [], "behind for 4.9 s: not yet"
    now[0] += 0.2
    assert behind.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", ONE_GPU).reason == "watch-behind"
    assert len(stalled.restarts) == 1 and "behind the quota ledger for 5 s" in stalled.restarts[0]
    now[0] += 1.0
    behind.reserve("forecasting", QUOTA, _uid(9), "airflow/p9", ONE_GPU)
    assert len(stalled.restarts) == 1, "the timer starts again after a restart"


# --- group commit: one round for the requests that queued while the last one was in flight ---
def test_a_batch_is_checked_in_arrival_order_and_written_once(api, policy):
    from airflow_gpu_webhook.cluster.ledger import Reservation

    ended: list[str] = []
    ledger = _ledger(api, policy, counted=ended.append)
    batch = [Reservation(_uid(i), f"airflow/p{i}", ONE_GPU) for i in range(8)]
    decisions = ledger.reserve_many("forecasting", QUOTA, batch)
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    assert {d.reason for d in decisions[5:]} == {"quota-exceeded"}
    assert "used: 5, limited: 5" in decisions[5].message, "each request is checked after those admitted before it"
    assert (api.version, ended) == (1, ["written"]), "one write for the whole batch"
    assert sorted(_ledger_data(api)[0]) == sorted(_uid(i) for i in range(5))


def _reservers(api, policy, replicas: int, counted: list[str]):
    from airflow_gpu_webhook.cluster.ledger import QuotaReserver

    return [QuotaReserver(_ledger(api, policy, counted=counted.append)) for _ in range(replicas)]


async def _admit(reservers, policy, pods: int, first: int = 0) -> list:
    import asyncio

    from airflow_gpu_webhook.core.decision import Decision

    admitted = Decision.allow("admitted", tenant="forecasting")
    return await asyncio.gather(*(reservers[i % len(reservers)](_review(_pod(policy, _uid(i), 1, name=f"p{i}")),
                                                                 admitted, policy) for i in range(first, first + pods)))


@pytest.mark.parametrize("replicas", [1, 2], ids=["one replica", "two replicas racing"])
def test_a_burst_is_admitted_exactly_to_the_quota_in_few_rounds(api, policy, replicas):
    """60 concurrent admissions of one GPU each against the tenant's 2-GPU quota: exactly 2
    admitted, and far fewer ledger rounds than requests (the first round takes one request, the
    next all that queued behind it)."""
    import asyncio

    assert policy.spec.tenants["forecasting"].quota["nvidia.com/gpu"] == 2
    rounds: list[str] = []
    decisions = asyncio.run(_admit(_reservers(api, policy, replicas, rounds), policy, 60))
    assert sum(d.allowed for d in decisions) == 2
    assert {d.reason for d in decisions if not d.allowed} == {"quota-exceeded"}
    assert len(rounds) <= 6 * replicas, f"{len(rounds)} rounds for 60 requests: not batched"
    assert len(_ledger_data(api)[0]) == 2


def test_without_group_commit_each_request_takes_a_round_of_its_own(api, policy):
    """max_batch=1 (the benchmark knob): the ledger as it was before group commit, one round per
    request, one at a time, and just as exact."""
    import asyncio

    from airflow_gpu_webhook.cluster.ledger import QuotaReserver

    rounds: list[str] = []
    reserver = QuotaReserver(_ledger(api, policy, counted=rounds.append), max_batch=1)
    decisions = asyncio.run(_admit([reserver], policy, 12))
    assert sum(d.allowed for d in decisions) == 2
    assert len(rounds) == 12, "one round per request"


def test_a_failing_round_answers_every_waiting_request_and_the_next_burst_starts_afresh(api, policy):
    import asyncio

    reserver = _reservers(api, policy, 1, [])[0]

    def broken(*args, **kwargs):
        raise RuntimeError("bug in a round")

    reserver.ledger.reserve_many = broken
    with pytest.raises(RuntimeError, match="bug in a round"):
        asyncio.run(_admit([reserver], policy, 10))
    del reserver.ledger.reserve_many
    assert sum(d.allowed for d in asyncio.run(_admit([reserver], policy, 10))) == 2


def test_a_request_that_stopped_waiting_does_not_stall_the_others(api, policy):
    import asyncio

    from airflow_gpu_webhook.core.decision import Decision

    reserver = _reservers(api, policy, 1, [])[0]
    admitted = Decision.allow("admitted", tenant="forecasting")

    async def scenario() -> list:
        first = asyncio.ensure_future(reserver(_review(_pod(policy, _uid(0), 1, name="p0")), admitted, policy))
        queued = asyncio.ensure_future(reserver(_review(_pod(policy, _uid(1), 1, name="p1")), admitted, policy))
        await asyncio.sleep(0)
        queued.cancel()   # the API server gave up on this call
        later = await _admit([reserver], policy, 1, first=2)
        return [await first, *later]

    assert [d.allowed for d in asyncio.run(scenario())] == [True, True], "2 GPUs: the cancelled one held none"


# --- the ledger cache: a round reads the API server only after its copy lost a race ----------
def test_with_a_live_cache_one_replica_writes_without_reading(api, policy):
    from airflow_gpu_webhook.cluster.ledger import LedgerCache

    ledger = _ledger(api, policy, cache=LedgerCache(), cache_live=lambda: True)
    decisions = [ledger.reserve("forecasting", QUOTA, _uid(i), f"airflow/p{i}", ONE_GPU) for i in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert (api.reads, api.writes) == (1, 5), "its own writes keep its copy current; the one denial reads once"


def test_a_stale_copy_loses_the_swap_and_is_read_again_once(api, policy):
    """Replica B's copy is behind A's writes (its watch has not delivered them): B's write is
    refused, B reads the ledger once, counts A's reservations and denies: the quota holds
    exactly. Its copy is then current, and its next round reads nothing."""
    from airflow_gpu_webhook.cluster.ledger import LedgerCache

    a = _ledger(api, policy, cache=LedgerCache(), cache_live=lambda: True)
    b = _ledger(api, policy, cache=LedgerCache(), cache_live=lambda: True)
    assert b.reserve("forecasting", QUOTA, _uid(0), "airflow/p0", ONE_GPU).allowed
    for i in range(1, 5):
        assert a.reserve("forecasting", QUOTA, _uid(i), f"airflow/p{i}", ONE_GPU).allowed
    reads, conflicts = api.reads, api.conflicts
    decision = b.reserve("forecasting", QUOTA, _uid(5), "airflow/p5", ONE_GPU)
    assert (decision.allowed, decision.reason) == (False, "quota-exceeded")
    assert (api.reads - reads, api.conflicts - conflicts) == (1, 1)
    assert sorted(_ledger_data(api)[0]) == sorted(_uid(i) for i in range(5))
    reads, conflicts = api.reads, api.conflicts
    assert b.reserve("forecasting", QUOTA, _uid(4), "airflow/p4", ONE_GPU).allowed   # a retry replaces its own
    assert (api.reads - reads, api.conflicts - conflicts) == (0, 0)


def test_a_late_watch_event_never_replaces_a_newer_copy():
    from airflow_gpu_webhook.cluster.ledger import LedgerCache

    cache = LedgerCache()
    cache.offer({"metadata": {"name": "l", "resourceVersion": "7"}, "data": {"x": "new"}})
    cache.apply("MODIFIED", {"metadata": {"name": "l", "resourceVersion": "5"}, "data": {"x": "old"}})
    assert cache.get("l")["data"] == {"x": "new"}
    cache.apply("DELETED", {"metadata": {"name": "l", "resourceVersion": "8"}})
    assert cache.get("l") is None


def test_a_denial_read_from_a_stale_cache_is_confirmed_by_the_api_server(api, policy):
    """The cache holds a ledger full of reservations the API server's copy no longer has (pruned
    by another replica; this replica's ledger watch stalled). A write would have caught the stale
    copy; a denial writes nothing, so it is read again before it is given: no false denial."""
    from airflow_gpu_webhook.cluster.ledger import LedgerCache
    from airflow_gpu_webhook.core.policy import ledger_name

    cache, ended = LedgerCache(), []
    held = {_uid(i): {"charge": {"nvidia.com/gpu": "1", "gpuEquivalent": "1"}, "at": time.time(), "pod": f"airflow/h{i}"}
            for i in range(10, 15)}
    cache.offer({"metadata": {"name": ledger_name("forecasting"), "resourceVersion": "1"},
                 "data": {"reservations": json.dumps(held), "prunedThrough": "0"}})
    ledger = _ledger(api, policy, cache=cache, cache_live=lambda: True, counted=ended.append)
    assert ledger.reserve("forecasting", QUOTA, _uid(0), "airflow/p0", ONE_GPU).allowed
    assert ended == ["recheck", "written"]
    assert list(_ledger_data(api)[0]) == [_uid(0)]
