"""The usage book: pod events in, per-tenant usage out, as the quota counts it; the pod watch
says when it is behind."""

from __future__ import annotations

import sys
import threading
import time
from decimal import Decimal as D

import jsonpatch
import pytest
from cluster_fakes import FakeApi, FakeResponse
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cluster.tracker import _WATCH_READ_TIMEOUT, PodWatch, UsageBook
from airflow_gpu_webhook.core.mutate import decide_mutation

from conftest import airflow_fixture, policy_with


def managed(case_id: str, policy, uid: str, phase: str = "Running") -> dict:
    """An Airflow fixture pod as the API server stores it after our mutation."""
    case = airflow_fixture(case_id)
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], policy).patch))
    pod["metadata"].update(uid=uid, namespace=case["namespace"], name=f"{case_id}-{uid}")
    pod["status"] = {"phase": phase}
    return pod


def test_added_pods_count_and_finished_or_deleted_ones_stop_counting(policy):
    book = UsageBook(policy)
    book.apply("ADDED", managed("kpo_h100_count2", policy, "a"))
    book.apply("ADDED", managed("kpo_mig_1g_xcom", policy, "b"))
    book.apply("ADDED", managed("kpo_nightly_a100", policy, "c"))
    assert book.usage() == {
        "vision": {"nvidia.com/gpu": D(2), "nvidia.com/mig-1g.10gb": D(1), "gpuEquivalent": D("2.125")},
        "forecasting": {"nvidia.com/gpu": D(1), "gpuEquivalent": D(1)},
    }
    book.apply("MODIFIED", managed("kpo_h100_count2", policy, "a", phase="Succeeded"))
    book.apply("DELETED", managed("kpo_nightly_a100", policy, "c"))
    assert book.usage() == {"vision": {"nvidia.com/mig-1g.10gb": D(1), "gpuEquivalent": D("0.125")}}


def test_a_modified_event_replaces_the_pods_charge_instead_of_adding_to_it(policy):
    book = UsageBook(policy)
    for _ in range(3):
        book.apply("MODIFIED", managed("kpo_h100_count2", policy, "same"))
    assert book.usage()["vision"]["nvidia.com/gpu"] == D(2)


def test_a_relist_replaces_everything(policy):
    book = UsageBook(policy)
    book.apply("ADDED", managed("kpo_h100_count2", policy, "gone"))
    book.replace_all([managed("kpo_nightly_a100", policy, "new")])
    assert list(book.usage()) == ["forecasting"]


def test_a_new_policy_recharges_the_pods_it_keeps(policy):
    book = UsageBook(policy)
    book.apply("ADDED", managed("kpo_mig_1g_xcom", policy, "m"))
    profiles = {name: p.model_dump(mode="json", exclude_none=True) for name, p in policy.spec.profiles.items()}
    profiles["a100-mig-1g.10gb"]["gpuEquivalent"] = "0.5"
    book.set_policy(policy_with(profiles=profiles))
    assert book.usage()["vision"]["gpuEquivalent"] == D("0.5")


def test_holders_are_listed_largest_first(policy):
    book = UsageBook(policy)
    book.apply("ADDED", managed("kpo_mig_1g_xcom", policy, "small"))
    book.apply("ADDED", managed("kpo_h100_count2", policy, "big"))
    assert [record.uid for record in book.holders("vision")] == ["big", "small"]


RELABELLED = [
    ("removing the tenant-deciding label moves nothing", lambda labels: labels.pop("team", None)),
    ("relabelling the team to another tenant moves nothing", lambda labels: labels.update(team="forecasting")),
    ("removing the airflow dag_id label moves nothing", lambda labels: labels.pop("dag_id", None)),
    ("removing the profile label keeps the charge", lambda labels: labels.pop("gpu-profile", None)),
]


@pytest.mark.parametrize("description, relabel", RELABELLED, ids=[r[0] for r in RELABELLED])
def test_usage_is_charged_from_the_stamps_not_the_current_labels(policy, description, relabel):
    book = UsageBook(policy)
    pod = managed("kpo_h100_count2", policy, "a")
    book.apply("ADDED", pod)
    before = book.usage()
    relabel(pod["metadata"]["labels"])
    book.apply("MODIFIED", pod)
    assert book.usage() == before == {"vision": {"nvidia.com/gpu": D(2), "gpuEquivalent": D(2)}}


def test_a_pod_without_the_managed_stamp_is_not_charged_even_with_a_tenant_stamp(policy):
    pod = managed("kpo_h100_count2", policy, "a")
    pod["metadata"]["labels"]["gpu.platform/managed"] = "false"
    book = UsageBook(policy)
    book.apply("ADDED", pod)
    assert book.usage() == {} and len(book) == 0


def test_a_new_policy_reweighs_but_keeps_the_stamped_tenant(policy):
    book = UsageBook(policy)
    book.apply("ADDED", managed("kpo_h100_count2", policy, "a"))
    tenants = {name: t.model_dump(mode="json", exclude_none=True) for name, t in policy.spec.tenants.items()}
    tenants = dict(reversed(list(tenants.items())))   # match order changes which tenant a pod would resolve to
    for tenant in tenants.values():
        tenant["match"] = [{"namespace": "ml-jobs"}]
    book.set_policy(policy_with(tenants=tenants))
    assert list(book.usage()) == ["vision"]


def _bomb(pod: dict, size: int) -> dict:
    pod["metadata"]["labels"].update({f"k{i}": "v" * 60 for i in range(size // 64)})
    pod["metadata"]["annotations"] = {"a": "x" * size}
    return pod


def test_the_per_pod_record_does_not_grow_with_the_pods_labels(policy):
    plain = UsageBook(policy)
    plain.apply("ADDED", managed("kpo_mig_1g_xcom", policy, "x"))
    bombed = UsageBook(policy)
    bombed.apply("ADDED", _bomb(managed("kpo_mig_1g_xcom", policy, "x"), 770_000))
    (small,), (big,) = plain.holders("vision"), bombed.holders("vision")
    assert small == big, "the record is the same whatever the labels"
    assert sum(sys.getsizeof(v) for v in big if isinstance(v, str)) < 1_000


def test_a_label_bomb_without_stamps_keeps_nothing(policy):
    book = UsageBook(policy)
    pod = {"metadata": {"uid": "bomb", "namespace": "default", "name": "b",
                        "labels": {"gpu.platform/managed": "true", **{f"k{i}": "v" * 60 for i in range(12_000)}}},
           "spec": {"containers": [{"name": "c"}]}}
    book.apply("ADDED", pod)
    book.replace_all([pod])
    assert len(book) == 0 and not book.seen("bomb")


def test_a_holder_name_is_cut_to_a_bounded_length(policy):
    pod = managed("kpo_h100_count2", policy, "a")
    pod["metadata"]["labels"]["task_id"] = "t" * 500
    book = UsageBook(policy)
    book.apply("ADDED", pod)
    assert len(book.holders("vision")[0].holder) <= 100


def test_the_book_remembers_at_which_version_it_first_saw_a_pod(policy):
    book = UsageBook(policy)
    pod = managed("kpo_h100_count2", policy, "a")
    pod["metadata"]["resourceVersion"] = "41"
    book.apply("ADDED", pod)
    pod["metadata"]["resourceVersion"] = "57"
    book.apply("MODIFIED", pod)
    book.apply("DELETED", pod)
    assert book.seen_at("a") == 41 and book.seen_at("never") is None


def test_only_pods_carrying_both_stamps_are_listed_and_a_list_is_read_page_by_page(policy):
    pods = [managed("kpo_h100_count2", policy, f"u{i}") for i in range(120)]
    api = FakeApi(pods, [])
    watch = PodWatch(api, UsageBook(policy))
    assert watch.list_once() == "100" and api.lists == 6   # 20 a page
    assert api.selectors == {"gpu.platform/managed=true,gpu.platform/tenant"}
    assert watch.book.usage()["vision"]["nvidia.com/gpu"] == D(240)
    assert watch.reached == 100


def test_the_watch_advances_on_events_and_bookmarks_and_a_wait_for_a_version_is_bounded(policy):
    pod = managed("kpo_h100_count2", policy, "a")
    pod["metadata"]["resourceVersion"] = "120"
    api = FakeApi([], [[{"type": "ADDED", "object": pod},
                        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}}]])
    watch = PodWatch(api, UsageBook(policy))
    watch.start()
    try:
        assert watch.wait_reached(150, timeout=5)
        started = time.monotonic()
        assert not watch.wait_reached(151, timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        watch.stop()


def test_a_broken_watch_clears_synced_until_the_next_list_completes(policy):
    broken = threading.Event()

    class Broken(ConnectionResetError):
        def __init__(self):
            broken.set()
            super().__init__("connection reset by peer")

    api = FakeApi([], [[], Broken()])
    watch = PodWatch(api, UsageBook(policy))
    gate = threading.Event()
    original = watch.list_once

    def slow_list():   # the second list waits, so the gap is observable
        if api.lists:
            gate.wait(5)
        return original()

    watch.list_once = slow_list
    watch.start()
    try:
        assert broken.wait(5)
        time.sleep(0.1)
        assert not watch.synced.is_set(), "a broken watch must not stay ready"
        assert not watch.wait_reached(0, timeout=0.1)
        gate.set()
        assert watch.wait_synced(5) and api.lists == 2
    finally:
        watch.stop()


def test_a_restart_drops_a_stalled_stream_and_lists_again(policy):
    """A stream that delivers nothing and raises nothing (a half-open connection) until it is
    shut down: restart() interrupts it, the watch goes unready and lists again."""
    shut = threading.Event()

    def stalled(*_a, **_k):
        shut.wait(10)
        return iter(())

    class Api(FakeApi):
        def call_api(self, path, method, query_params, **kw):
            if dict(query_params).get("watch") == "true" and self.lists == 1:
                return FakeResponse(stream=stalled, shutdown=shut.set)
            return super().call_api(path, method, query_params, **kw)

    api = Api([], [])
    watch = PodWatch(api, UsageBook(policy))
    watch.start()
    try:
        assert watch.wait_synced(5)
        time.sleep(0.2)   # the watch thread now blocks in the stalled stream
        watch.restart("behind the quota ledger for 5 s")
        assert shut.is_set() and not watch.synced.is_set()
        deadline = time.monotonic() + 5
        while api.lists < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.lists == 2 and watch.wait_synced(5)
    finally:
        shut.set()
        watch.stop()


def test_a_reload_while_a_list_is_read_weighs_the_listed_pods_by_the_new_policy(policy):
    """The list is reduced to records outside the lock (pages stream in); a reload landing in
    between must not leave pods weighted by the old policy for their whole life."""
    profiles = {name: p.model_dump(mode="json", exclude_none=True) for name, p in policy.spec.profiles.items()}
    profiles["a100-mig-1g.10gb"]["gpuEquivalent"] = 0.5
    heavier = policy_with(profiles=profiles)
    book = UsageBook(policy)

    def pages():
        yield managed("kpo_mig_1g_xcom", policy, "a")
        book.set_policy(heavier)   # the reload thread, mid-list
        yield managed("kpo_mig_1g_xcom", policy, "b")

    book.replace_all(pages())
    assert book.usage()["vision"]["gpuEquivalent"] == D("1.0")   # 2 slices x 0.5, not 0.125 + 0.5


@pytest.mark.parametrize("value, number", [
    pytest.param("42", 42, id="digits are a version"),
    pytest.param("", 0, id="empty is none"),
    pytest.param(None, 0, id="absent is none"),
    pytest.param("\u00b2", 0, id="a superscript digit is none (str.isdigit accepts it, int raises)"),
    pytest.param("4\u0662", 0, id="non-ASCII digits are none"),
])
def test_a_resource_version_is_read_as_ascii_digits_only(value, number):
    from airflow_gpu_webhook.cluster.tracker import version_number

    assert version_number(value) == number


class RecordingBook(UsageBook):
    def __init__(self, policy) -> None:
        super().__init__(policy)
        self.objects: list = []

    def apply(self, event, pod):
        self.objects.append(pod)
        super().apply(event, pod)


GONE = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                                    "reason": "Expired", "message": "too old resource version: 1 (100)"}}
INTERNAL = {"type": "ERROR", "object": {"kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd"}}
ENDINGS = [
    ("an ERROR 410 Gone event ends the watch: unready, listed again at once", [[GONE]], 0.0, 0.9),
    ("an ERROR event of another status ends it the same way", [[INTERNAL]], 0.0, 0.9),
    ("events before the ERROR are applied, a blank line is skipped", [[b"\n", "pod", GONE]], 0.0, 0.9),
    ("a watch that cannot be opened is a failure: unready, listed again after a pause",
     [ApiException(status=403, reason="Forbidden")], 0.9, 5.0),
]


@pytest.mark.parametrize("description, streams, least, most", ENDINGS, ids=[e[0] for e in ENDINGS])
def test_how_a_watch_ends_decides_how_soon_it_lists_again(policy, description, streams, least, most):
    pod = managed("kpo_h100_count2", policy, "a")
    pod["metadata"]["resourceVersion"] = "120"
    streams = [[{"type": "ADDED", "object": pod} if e == "pod" else e for e in s] if isinstance(s, list) else s
               for s in streams]
    api = FakeApi([], streams)
    watch = PodWatch(api, RecordingBook(policy))
    synced_at_list = []
    original = watch.list_once

    def list_once():
        synced_at_list.append(watch.synced.is_set())
        return original()

    watch.list_once = list_once
    watch.start()
    try:
        deadline = time.monotonic() + 5
        while api.lists < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert api.lists >= 2
        assert synced_at_list[:2] == [False, False], "unready until the new list completes"
        assert least <= api.list_times[1] - api.list_times[0] < most
        assert all(r.closed for r in api.responses), "every stream's connection is closed"
        if "applied" in description:
            assert watch.book.objects == [pod] and watch.reached >= 120
    finally:
        watch.stop()


def test_the_watch_hands_the_book_raw_dicts_with_a_read_timeout_on_the_stream(policy):
    pod = managed("kpo_h100_count2", policy, "a")
    api = FakeApi([], [[{"type": "ADDED", "object": pod}]])
    watch = PodWatch(api, RecordingBook(policy))
    watch.start()
    try:
        deadline = time.monotonic() + 5
        while not watch.book.objects and time.monotonic() < deadline:
            time.sleep(0.02)
        assert watch.book.objects == [pod] and type(watch.book.objects[0]) is dict   # no V1Pod model
        assert api.timeouts == {"list": 60, "watch": (10, _WATCH_READ_TIMEOUT)}
    finally:
        watch.stop()


def test_a_dra_claim_pod_is_charged_one_unit_of_its_profiles_resource_per_claim(dra_policy):
    """The pod watch needs nothing for DRA: the stamps and the platform's claims are on the pod."""
    case = airflow_fixture("kpo_h100_count2")
    labels = case["pod"]["metadata"]["labels"]
    labels.update({"gpu.platform/profile": "a100-dra-mig-1g.10gb", "gpu.platform/count": "3"})
    pod = jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], "ml-jobs", dra_policy).patch))
    pod["metadata"].update(uid="dra", namespace="ml-jobs", name="dra-pod")
    pod["status"] = {"phase": "Running"}
    assert [c["resourceClaimTemplateName"] for c in pod["spec"]["resourceClaims"]] == [
        "gpu-platform-a100-dra-mig-1g.10gb"] * 3
    book = UsageBook(dra_policy)
    book.apply("ADDED", pod)
    assert book.usage() == {"vision": {"nvidia.com/mig-1g.10gb": D(3), "gpuEquivalent": D("0.375")}}
    book.apply("MODIFIED", {**pod, "status": {"phase": "Succeeded"}})
    assert book.usage() == {}
