"""The DRA device book: ResourceSlices and DeviceClasses in, per-node device counts for each DRA
profile out, merged into the node offers; a count it cannot know never becomes a denial."""

from __future__ import annotations

import time

import jsonpatch
import pytest

from airflow_gpu_webhook.cluster import dra_cel
from airflow_gpu_webhook.cluster.devices import DeviceBook
from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.nodes import NodeBook
from airflow_gpu_webhook.core.validate import decide_validation

from conftest import airflow_fixture, policy_with

A100_KEY, MIG_KEY, ER_KEY = ("dra.gpu.platform/a100-dra", "dra.gpu.platform/a100-dra-mig-1g.10gb",
                             "dra.gpu.platform/a100-mig-1g.10gb-er")
# As the NVIDIA DRA driver's classes select: by the driver and the device's type.
GPU_CLASS = ("gpu.nvidia.com", 'device.driver == "gpu.nvidia.com" && device.attributes["gpu.nvidia.com"].type == "gpu"')
MIG_CLASS = ("mig.nvidia.com", 'device.driver == "gpu.nvidia.com" && device.attributes["gpu.nvidia.com"].type == "mig"')
ER_CLASS = ("mig-1g-10gb.gpu.nvidia.com", 'device.driver == "gpu.nvidia.com" && device.attributes["gpu.nvidia.com"].type == "mig" '
            '&& device.attributes["gpu.nvidia.com"].profile == "1g.10gb"')
CLASSES = (GPU_CLASS, MIG_CLASS, ER_CLASS)


def gpu(name: str, product: str = "NVIDIA A100-SXM4-80GB", **attributes) -> dict:
    return {"name": name, "attributes": {"type": {"string": "gpu"}, "productName": {"string": product},
                                         **{k: {"string": v} for k, v in attributes.items()}}}


def mig(name: str, profile: str = "1g.10gb") -> dict:
    return {"name": name, "attributes": {"type": {"string": "mig"}, "profile": {"string": profile}}}


def resource_slice(name: str, devices: list, node: str | None = "node-a", *, driver: str = "gpu.nvidia.com",
                   pool: str | None = None, generation: int = 1, **spec) -> dict:
    placement = {"nodeName": node} if node else spec or {"allNodes": True}
    return {"metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"driver": driver, "pool": {"name": pool or node or "shared", "generation": generation,
                                                "resourceSliceCount": 1},
                     **placement, "devices": devices}}


def device_class(name: str, *expressions: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"selectors": [{"cel": {"expression": e}} for e in expressions]}}


def book_with(policy, classes=CLASSES, slices=()) -> tuple[DeviceBook, list]:
    published: list = []
    book = DeviceBook(policy, lambda devices, everywhere: published.append((devices, everywhere)))
    book.classes.replace_all([device_class(*c) for c in classes])
    book.slices.replace_all(list(slices))
    return book, published


COUNTS = [
    ("A100s on a node count for the A100 profile; an H100 beside them does not",
     CLASSES, [resource_slice("s1", [gpu("g0"), gpu("g1"), gpu("g2", product="NVIDIA H100-80GB-HBM3")])],
     {"node-a": {A100_KEY: 2}}, {}),
    ("MIG 1g devices count for the MIG claim profile and, through its own class, for the extended-resource one",
     CLASSES, [resource_slice("s1", [mig("m0"), mig("m1"), mig("m2", "2g.20gb")])],
     {"node-a": {MIG_KEY: 2, ER_KEY: 2}}, {}),
    ("a DeviceClass that does not exist selects nothing",
     (GPU_CLASS,), [resource_slice("s1", [mig("m0")])], {}, {}),
    ("two slices of one node add up; another node counts apart",
     CLASSES, [resource_slice("s1", [gpu("g0")], pool="p1"), resource_slice("s2", [gpu("g1")], pool="p2"),
               resource_slice("s3", [gpu("g2")], node="node-b")],
     {"node-a": {A100_KEY: 2}, "node-b": {A100_KEY: 1}}, {}),
    ("only the newest generation of a pool counts",
     CLASSES, [resource_slice("old", [gpu("g0"), gpu("g1"), gpu("g2")], generation=1),
               resource_slice("new", [gpu("g0")], generation=2)],
     {"node-a": {A100_KEY: 1}}, {}),
    ("a device of a slice for all nodes that a profile selects makes its count unknown on every node",
     CLASSES, [resource_slice("s1", [gpu("g0")]), resource_slice("net", [gpu("n0")], node=None)],
     {"node-a": {A100_KEY: 1}}, {A100_KEY: None}),
    ("so does one of a slice placed by a node selector",
     CLASSES, [resource_slice("net", [mig("n0")], node=None, nodeSelector={"nodeSelectorTerms": []})],
     {}, {MIG_KEY: None, ER_KEY: None}),
    ("a device of such a slice that no profile selects changes nothing",
     CLASSES, [resource_slice("net", [{"name": "x"}], node=None, driver="other.example.com")], {}, {}),
    ("a class selector that cannot be evaluated makes the node's count unknown, not zero",
     (("gpu.nvidia.com", 'cel.bind(d, device.attributes["gpu.nvidia.com"], d.index == 0)'),),
     [resource_slice("s1", [gpu("g0")])], {"node-a": {A100_KEY: None}}, {}),
    ("a device whose version attribute is no semver makes every selecting class's count unknown on that node",
     CLASSES, [resource_slice("s1", [gpu("g0"), {"name": "bad", "attributes": {"v": {"version": "x"}}}])],
     {"node-a": {A100_KEY: None, MIG_KEY: None, ER_KEY: None}}, {}),
    ("a class that says no before the profile's selector errs: not counted, and known",
     (("gpu.nvidia.com", 'device.driver == "other"'),), [resource_slice("s1", [{"name": "g0"}])], {}, {}),
    ("the profile's selector erring on a device its class selects: unknown there",
     CLASSES, [resource_slice("s1", [{"name": "g0", "attributes": {"type": {"string": "gpu"}}}])],
     {"node-a": {A100_KEY: None}}, {}),
]


@pytest.mark.parametrize("description, classes, slices, devices, everywhere", COUNTS, ids=[c[0] for c in COUNTS])
def test_device_counts(dra_policy, description, classes, slices, devices, everywhere):
    book, published = book_with(dra_policy, classes, slices)
    assert book.devices() == published[-1] == (devices, everywhere)


def test_every_dra_count_is_unknown_until_both_watches_have_read_their_lists(dra_policy):
    published: list = []
    book = DeviceBook(dra_policy, lambda devices, everywhere: published.append((devices, everywhere)))
    unknown = ({}, {A100_KEY: None, MIG_KEY: None, ER_KEY: None})
    assert published == [unknown], "published at once: no DRA pod is judged on a count of zero"
    book.slices.replace_all([resource_slice("s1", [gpu("g0")])])
    assert book.devices() == unknown
    book.classes.replace_all([device_class(*GPU_CLASS)])
    assert book.devices() == ({"node-a": {A100_KEY: 1}}, {})


def test_a_watch_that_falls_behind_makes_the_counts_unknown_until_its_next_list(dra_policy):
    book, _ = book_with(dra_policy, slices=[resource_slice("s1", [gpu("g0")])])
    book.slices.lost()
    assert book.devices()[1][A100_KEY] is None
    book.slices.replace_all([resource_slice("s1", [gpu("g0"), gpu("g1")])])
    assert book.devices() == ({"node-a": {A100_KEY: 2}}, {})


def test_slice_events_change_the_counts(dra_policy):
    book, _ = book_with(dra_policy)
    book.slices.apply("ADDED", resource_slice("s1", [gpu("g0")]))
    book.slices.apply("MODIFIED", resource_slice("s1", [gpu("g0"), gpu("g1"), gpu("g2")]))
    book.slices.apply("ADDED", resource_slice("s2", [gpu("g0")], node="node-b"))
    assert book.devices() == ({"node-a": {A100_KEY: 3}, "node-b": {A100_KEY: 1}}, {})
    book.slices.apply("DELETED", resource_slice("s1", []))
    assert book.devices() == ({"node-b": {A100_KEY: 1}}, {})


def test_a_class_change_counts_every_slice_again(dra_policy):
    book, _ = book_with(dra_policy, slices=[resource_slice("s1", [gpu("g0"), gpu("g1", index="x")])])
    book.classes.apply("MODIFIED", device_class("gpu.nvidia.com", '"index" in device.attributes["gpu.nvidia.com"]'))
    # the class now selects g1 alone
    assert book.devices() == ({"node-a": {A100_KEY: 1}}, {})
    book.classes.apply("DELETED", device_class("gpu.nvidia.com"))
    assert book.devices() == ({}, {})


def _until(check, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.01)
    return check()


def _reloaded(dra_policy):
    profiles = {name: p.model_dump(mode="json", exclude_none=True) for name, p in dra_policy.spec.profiles.items()}
    profiles["a100-dra"]["dra"]["selector"] = 'device.attributes["gpu.nvidia.com"].productName.startsWith("NVIDIA")'
    return policy_with(profiles=profiles)


def test_a_policy_reload_counts_for_the_new_profiles(dra_policy):
    book, _ = book_with(dra_policy, slices=[resource_slice("s1", [gpu("g0"), gpu("g1", product="NVIDIA H100-80GB-HBM3")])])
    book.set_policy(_reloaded(dra_policy))
    assert _until(lambda: book.devices() == ({"node-a": {A100_KEY: 2}}, {}))
    book.set_policy(policy_with())   # the reference policy: no DRA profile left
    assert _until(lambda: book.devices() == ({}, {}))


def test_a_reload_never_waits_for_a_recount_and_knows_nothing_until_it_is_done(dra_policy):
    """A reload runs on the server's event loop; a recount under way holds the book's lock."""
    book, published = book_with(dra_policy, slices=[resource_slice("s1", [gpu("g0")])])
    with book._lock:   # a watch thread counting a large cluster
        started = time.monotonic()
        book.set_policy(_reloaded(dra_policy))
        assert time.monotonic() - started < 0.5
        unknown = ({}, {A100_KEY: None, MIG_KEY: None, ER_KEY: None})
        assert published[-1] == unknown
        book._push()   # the counting thread publishing for the old profiles: held back
        assert published[-1] == unknown
    assert _until(lambda: book.devices() == ({"node-a": {A100_KEY: 1}}, {}))


def test_a_slice_event_evaluates_that_slice_only_and_an_admission_evaluates_nothing(dra_policy, monkeypatch):
    book, _ = book_with(dra_policy, slices=[resource_slice(f"s{i}", [gpu("g0"), gpu("g1")], node=f"n{i}")
                                            for i in range(20)])
    calls = []
    original = dra_cel.Selectors.matches
    monkeypatch.setattr(dra_cel.Selectors, "matches", lambda self, e, d: calls.append(e) or original(self, e, d))
    book.slices.apply("MODIFIED", resource_slice("s3", [gpu("g0")], node="n3"))
    assert 0 < len(calls) <= 3 * 2, "one device, each class once and each selecting profile once"
    calls.clear()
    nodes = NodeBook()
    nodes.set_devices(*book.devices())
    nodes.offers()
    assert calls == []


# ------------------------------------------------------------ through the node offers to a decision
CPU_NODE = {"metadata": {"name": "cpu-0"}, "status": {"allocatable": {"cpu": "8"}}}


def gpu_node(name: str) -> dict:
    return {"metadata": {"name": name, "labels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "96"}}}


def dra_pod(policy, count: int) -> dict:
    case = airflow_fixture("kpo_h100_count2")
    case["pod"]["metadata"]["labels"].update({"gpu.platform/profile": "a100-dra", "gpu.platform/count": str(count)})
    return jsonpatch.apply_patch(case["pod"], list(decide_mutation(case["pod"], "ml-jobs", policy).patch))


ADMISSIONS = [
    ("a pod asking for more A100s than any node offers is refused, naming the largest", 4,
     [resource_slice("s1", [gpu("g0"), gpu("g1")], node="gpu-0"), resource_slice("s2", [gpu("g0")], node="gpu-1")],
     "no-node-fits", "the largest offers 2"),
    ("one a node can hold is admitted", 2, [resource_slice("s1", [gpu("g0"), gpu("g1")], node="gpu-0")],
     "admitted", None),
    ("no slice at all: no node offers any", 1, [], "no-node-fits", "the largest offers 0"),
    ("a node whose count is unknown might hold it: admitted", 4,
     [resource_slice("s1", [gpu("g0"), {"name": "bad", "attributes": {"v": {"version": "x"}}}], node="gpu-0")],
     "admitted", None),
]


@pytest.mark.parametrize("description, count, slices, reason, message", ADMISSIONS, ids=[a[0] for a in ADMISSIONS])
def test_the_capacity_check_reads_the_dra_counts(dra_policy, description, count, slices, reason, message):
    nodes = NodeBook()
    nodes.replace_all([CPU_NODE, gpu_node("gpu-0"), gpu_node("gpu-1")])
    book = DeviceBook(dra_policy, nodes.set_devices)
    book.classes.replace_all([device_class(*c) for c in CLASSES])
    book.slices.replace_all(slices)
    decision = decide_validation(dra_pod(dra_policy, count), "ml-jobs", dra_policy, {}, nodes.offers())
    assert decision.reason == reason
    if message:
        assert message in decision.message


def test_before_the_dra_watches_have_synced_a_dra_pod_is_not_refused_for_capacity(dra_policy):
    nodes = NodeBook()
    nodes.replace_all([gpu_node("gpu-0")])
    DeviceBook(dra_policy, nodes.set_devices)
    assert decide_validation(dra_pod(dra_policy, 4), "ml-jobs", dra_policy, {}, nodes.offers()).allowed
