"""The usage book: pod events in, per-tenant usage out, as the quota counts it."""

from __future__ import annotations

from decimal import Decimal as D

import jsonpatch

from conftest import airflow_fixture, policy_with
from webhook.mutate import decide_mutation
from webhook.tracker import UsageBook, compact_pod


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
    assert [pod["metadata"]["uid"] for _, pod in book.holders("vision")] == ["big", "small"]


def test_the_book_keeps_only_what_quota_reads(policy):
    pod = managed("kpo_mig_1g_xcom", policy, "x")
    compact = compact_pod(pod)
    assert set(compact["spec"]) == {"containers", "initContainers"}
    assert all(set(c) <= {"name", "resources", "restartPolicy"} for c in compact["spec"]["containers"])
    assert len(str(compact)) < len(str(pod)) / 2
