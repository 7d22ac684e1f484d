"""Node capacity: a GPU pod no node could ever hold is refused, naming what exists instead."""

from __future__ import annotations

import jsonpatch
import pytest

from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.nodes import NodeBook, NodeOffer, capacity_verdict, tolerates

from conftest import airflow_fixture

GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def node(name, product, gpus, *, resource="nvidia.com/gpu", taints=(GPU_TAINT,), extra_labels=None):
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product, **(extra_labels or {})}},
            "spec": {"taints": list(taints)}, "status": {"allocatable": {resource: str(gpus), "cpu": "96"}}}


H100 = node("h100-0", "NVIDIA-H100-80GB-HBM3", 8)
A100_MIG = node("mig-0", "NVIDIA-A100-SXM4-80GB", 28, resource="nvidia.com/mig-1g.10gb",
                extra_labels={"nvidia.com/mig.strategy": "mixed"})


def final_pod(case_id, policy):
    case = airflow_fixture(case_id)
    return jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], case["namespace"], policy).patch))


def offers(*nodes):
    return [NodeOffer.from_node(n) for n in nodes]


VERDICTS = [
    ("a 2-GPU H100 pod fits an 8-GPU H100 node", "kpo_h100_count2", "nvidia.com/gpu", 2, (H100, A100_MIG),
     False, None, None),
    ("8 x 1g.10gb fit a node with 28 slices", "kpo_mig_1g_xcom", "nvidia.com/mig-1g.10gb", 8, (A100_MIG,),
     False, None, None),
    ("nine H100s fit no node; the largest offer is named", "kpo_h100_count2", "nvidia.com/gpu", 9, (H100,),
     False, "no node offers 9 x nvidia.com/gpu with nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3; the largest offers 8",
     None),
    ("no H100 node at all is a denial", "kpo_h100_count2", "nvidia.com/gpu", 2, (A100_MIG,), False,
     "no node matches that selector and tolerations at all", None),
    ("no H100 node in a scale-from-zero pool is a warning", "kpo_h100_count2", "nvidia.com/gpu", 2, (A100_MIG,),
     True, None, "the pool scales from zero"),
    ("a node whose taint the pod does not tolerate does not count", "kpo_h100_count2", "nvidia.com/gpu", 2,
     (node("h100-x", "NVIDIA-H100-80GB-HBM3", 8, taints=(GPU_TAINT, {"key": "maintenance", "effect": "NoExecute"})),),
     False, "no node matches", None),
]


@pytest.mark.parametrize("description, case_id, resource, count, nodes, from_zero, denial, warning",
                         VERDICTS, ids=[v[0] for v in VERDICTS])
def test_capacity_verdicts(policy, description, case_id, resource, count, nodes, from_zero, denial, warning):
    no_fit, warned = capacity_verdict(final_pod(case_id, policy), resource, count, offers(*nodes), from_zero)
    assert (no_fit is None) == (denial is None) and (warned is None) == (warning is None)
    if denial:
        assert no_fit.reason == "no-node-fits" and denial in no_fit.message
    if warning:
        assert warning in warned


@pytest.mark.parametrize("toleration, taint, expected", [
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}, GPU_TAINT, True),
    ({"operator": "Exists"}, GPU_TAINT, True),
    ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, GPU_TAINT, True),
    ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "other"}, GPU_TAINT, False),
    ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, GPU_TAINT, False),
])
def test_tolerations_match_as_the_scheduler_matches_them(toleration, taint, expected):
    assert tolerates([toleration], (taint,)) is expected


def test_the_book_follows_node_events():
    book = NodeBook()
    book.replace_all([H100])
    book.apply("ADDED", A100_MIG)
    book.apply("MODIFIED", node("h100-0", "NVIDIA-H100-80GB-HBM3", 4))
    assert sorted((o.name, dict(o.allocatable)) for o in book.offers()) == [
        ("h100-0", {"nvidia.com/gpu": 4}), ("mig-0", {"nvidia.com/mig-1g.10gb": 28})]
    book.apply("DELETED", A100_MIG)
    assert [o.name for o in book.offers()] == ["h100-0"]


# -- DRA device counts merged into the offers (NodeBook.set_devices; counted by webhook/cluster/devices.py)
DRA_KEY = "dra.gpu.platform/a100-dra"


def test_dra_counts_are_merged_into_the_node_offers_and_kept_apart_from_the_node_watch():
    book = NodeBook()
    book.replace_all([H100, A100_MIG])
    book.set_devices({"h100-0": {DRA_KEY: 3}}, {"dra.gpu.platform/shared": 1})
    assert {o.name: dict(o.allocatable) for o in book.offers()} == {
        "h100-0": {"nvidia.com/gpu": 8, DRA_KEY: 3, "dra.gpu.platform/shared": 1},
        "mig-0": {"nvidia.com/mig-1g.10gb": 28, "dra.gpu.platform/shared": 1}}
    book.apply("MODIFIED", node("h100-0", "NVIDIA-H100-80GB-HBM3", 4))   # a node event keeps the DRA counts
    assert dict(next(o for o in book.offers() if o.name == "h100-0").allocatable) == {
        "nvidia.com/gpu": 4, DRA_KEY: 3, "dra.gpu.platform/shared": 1}
    book.set_devices({})
    assert {o.name: dict(o.allocatable) for o in book.offers()} == {
        "h100-0": {"nvidia.com/gpu": 4}, "mig-0": {"nvidia.com/mig-1g.10gb": 28}}


def test_a_count_not_known_on_a_node_or_everywhere_is_listed_as_unknown_not_as_zero():
    book = NodeBook()
    book.replace_all([H100, A100_MIG])
    book.set_devices({"h100-0": {DRA_KEY: None}, "mig-0": {DRA_KEY: 2}})
    assert {o.name: (dict(o.allocatable).get(DRA_KEY), o.unknown) for o in book.offers()} == {
        "h100-0": (None, frozenset({DRA_KEY})), "mig-0": (2, frozenset())}
    book.set_devices({"mig-0": {DRA_KEY: 2}}, {DRA_KEY: None})
    assert all(o.unknown == {DRA_KEY} and DRA_KEY not in o.allocatable for o in book.offers())


UNKNOWN = [
    ("a node whose count is unknown might fit: no denial", {DRA_KEY: 1}, frozenset({DRA_KEY}), True),
    ("a known count too small is a denial", {DRA_KEY: 1}, frozenset(), False),
    ("an unknown key the pod does not use changes nothing", {DRA_KEY: 1}, frozenset({"dra.gpu.platform/other"}), False),
]


@pytest.mark.parametrize("description, allocatable, unknown, fits", UNKNOWN, ids=[u[0] for u in UNKNOWN])
def test_the_verdict_never_denies_past_a_node_whose_count_is_unknown(policy, description, allocatable, unknown, fits):
    offer = NodeOffer("h100-0", {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, (GPU_TAINT,), allocatable, unknown)
    no_fit, warned = capacity_verdict(final_pod("kpo_h100_count2", policy), "nvidia.com/gpu", 2, [offer], False,
                                      (DRA_KEY,))
    assert (no_fit is None) is fits and warned is None
