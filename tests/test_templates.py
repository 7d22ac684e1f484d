"""The platform's claim templates: the book admission reads, the reconcile plan, and the
reconciler's writes against an in-memory API with the API server's rules (AlreadyExists,
resourceVersion and uid preconditions, an immutable spec), raced by other writers."""

from __future__ import annotations

import copy
import itertools
import threading
import time
import uuid

import pytest
from kubernetes.client.rest import ApiException

from airflow_gpu_webhook.cluster.templates import SETTLE, TemplateBook, TemplateReconciler, template_plan
from airflow_gpu_webhook.core.dra import claim_template, desired_templates

from conftest import policy_with

A100 = ("ml-jobs", "gpu-platform-a100-dra")


class FakeTemplates:
    """ResourceClaimTemplates as the API server keeps them: versions from one counter, a uid per
    object, 409 AlreadyExists / Conflict, the spec immutable, preconditions on delete.
    ``before(call)`` runs before each call: another writer's move, or a failure to raise."""

    def __init__(self, namespaces=("airflow", "ml-jobs")) -> None:
        self.namespaces = set(namespaces)
        self.objects: dict[tuple[str, str], dict] = {}
        self.versions = itertools.count(100)
        self.calls: list[tuple[str, tuple[str, str]]] = []
        self.done: list[str] = []   # the writes that succeeded
        self.before = lambda call, key: None
        self.lock = threading.Lock()

    def _stamp(self, obj: dict) -> dict:
        obj["metadata"]["resourceVersion"] = str(next(self.versions))
        return copy.deepcopy(obj)

    def put(self, template: dict) -> dict:
        """A write by someone else (a tenant, an older replica, the chart)."""
        with self.lock:
            obj = copy.deepcopy(template)
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            self.objects[obj["metadata"]["namespace"], obj["metadata"]["name"]] = obj
            return self._stamp(obj)

    def _enter(self, call: str, key: tuple[str, str]) -> None:
        self.calls.append((call, key))
        self.before(call, key)

    def create(self, template):
        key = (template["metadata"]["namespace"], template["metadata"]["name"])
        self._enter("create", key)
        with self.lock:
            if key[0] not in self.namespaces:
                raise ApiException(status=404, reason="NotFound")
            if key in self.objects:
                raise ApiException(status=409, reason="AlreadyExists")
            obj = copy.deepcopy(dict(template))
            obj["metadata"]["uid"] = str(uuid.uuid4())
            self.objects[key] = obj
            self.done.append("create")
            return self._stamp(obj)

    def read(self, namespace, name):
        self._enter("read", (namespace, name))
        with self.lock:
            obj = self.objects.get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def relabel(self, namespace, name, resource_version, labels):
        self._enter("relabel", (namespace, name))
        with self.lock:
            obj = self.objects.get((namespace, name))
            if obj is None:
                raise ApiException(status=404, reason="NotFound")
            if obj["metadata"]["resourceVersion"] != resource_version:
                raise ApiException(status=409, reason="Conflict")
            obj["metadata"].setdefault("labels", {}).update(labels)
            return self._stamp(obj)

    def delete(self, namespace, name, uid, resource_version):
        self._enter("delete", (namespace, name))
        with self.lock:
            obj = self.objects.get((namespace, name))
            if obj is None:
                raise ApiException(status=404, reason="NotFound")
            if obj["metadata"]["uid"] != uid or obj["metadata"]["resourceVersion"] != resource_version:
                raise ApiException(status=409, reason="Conflict")
            del self.objects[namespace, name]
            self.done.append("delete")

    def writes(self) -> list[str]:
        return [call for call, _ in self.calls if call != "read"]


def listed(api: FakeTemplates) -> list[dict]:
    """What a label-selected list shows: the objects that still carry our label."""
    return [copy.deepcopy(o) for o in api.objects.values()
            if (o["metadata"].get("labels") or {}).get("app.kubernetes.io/managed-by") == "airflow-gpu-webhook"]


def reconciler(policy, api: FakeTemplates, clock=time.monotonic) -> tuple[TemplateReconciler, TemplateBook, list]:
    book = TemplateBook(policy)
    book.replace_all(listed(api))
    counted: list[str] = []
    return TemplateReconciler(api, book, live=lambda: True, counted=counted.append, clock=clock), book, counted


def drifted(policy, key=A100) -> dict:
    template = claim_template(key[1].removeprefix("gpu-platform-"), policy.spec.profiles[key[1].removeprefix(
        "gpu-platform-")], key[0])
    template["spec"]["spec"]["devices"]["requests"][0]["exactly"]["count"] = 4   # four devices per claim
    return template


# ------------------------------------------------------------------------------------- the plan
def test_the_plan_creates_what_is_missing_replaces_what_drifted_relabels_and_leaves_what_is_current(dra_policy):
    api = FakeTemplates()
    desired = desired_templates(dra_policy)
    api.put(desired["airflow", "gpu-platform-a100-dra"])                             # current
    api.put(drifted(dra_policy))                                                      # another spec
    unlabelled = copy.deepcopy(desired["ml-jobs", "gpu-platform-a100-dra-mig-1g.10gb"])
    del unlabelled["metadata"]["labels"]["gpu.platform/profile"]
    api.put(unlabelled)                                                               # a label gone
    book = TemplateBook(dra_policy)
    book.replace_all(listed(api))
    assert [(s.action, s.key) for s in template_plan(dra_policy, book.records())] == [
        ("create", ("airflow", "gpu-platform-a100-dra-mig-1g.10gb")),
        ("replace", A100),
        ("relabel", ("ml-jobs", "gpu-platform-a100-dra-mig-1g.10gb")),
    ]


def test_a_policy_without_claim_profiles_plans_nothing():
    assert template_plan(policy_with(), {}) == []


# ------------------------------------------------------------------------------------- the book
def test_the_book_knows_the_templates_whose_spec_is_the_policys(dra_policy):
    api = FakeTemplates()
    for template in desired_templates(dra_policy).values():
        api.put(template)
    api.put(drifted(dra_policy))
    other = claim_template("a100-dra", dra_policy.spec.profiles["a100-dra"], "ml-jobs")
    other["metadata"]["name"] = "team-template"   # a tenant's own template with our label: not kept
    api.put(other)
    book = TemplateBook(dra_policy)
    assert book.templates() == frozenset()
    book.replace_all(listed(api))
    assert book.templates() == frozenset(desired_templates(dra_policy)) - {A100}
    assert ("ml-jobs", "team-template") not in book.records()


def test_a_policy_change_judges_the_templates_again(dra_policy):
    book = TemplateBook(dra_policy)
    book.replace_all([FakeTemplates().put(t) for t in desired_templates(dra_policy).values()])
    profiles = {name: p.model_dump(mode="json", exclude_none=True) for name, p in dra_policy.spec.profiles.items()}
    profiles["a100-dra"]["dra"]["selector"] = 'device.attributes["gpu.nvidia.com"].productName == "NVIDIA H100"'
    book.set_policy(policy_with(profiles=profiles, tenants=dra_policy.model_dump(mode="json")["spec"]["tenants"]))
    assert {name for _, name in book.templates()} == {"gpu-platform-a100-dra-mig-1g.10gb"}


def test_an_event_older_than_what_this_replica_wrote_is_ignored(dra_policy):
    api = FakeTemplates()
    old = api.put(desired_templates(dra_policy)[A100])
    book = TemplateBook(dra_policy)
    book.replace_all([old])
    newer = api.put(desired_templates(dra_policy)[A100])   # recreated: a newer version
    book.offer(newer)
    gone = copy.deepcopy(old)
    gone["metadata"]["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 0)
    book.apply("DELETED", gone)                            # the watch catching up on the old one's delete
    assert A100 in book.templates()
    later = copy.deepcopy(newer)
    later["metadata"]["resourceVersion"] = str(int(newer["metadata"]["resourceVersion"]) + 1)
    book.apply("DELETED", later)                           # a delete after what this replica wrote
    assert A100 not in book.templates()


# ------------------------------------------------------------------------------------- the reconciler
def test_missing_templates_are_created_and_a_second_pass_writes_nothing(dra_policy):
    api = FakeTemplates()
    reconcile, book, counted = reconciler(dra_policy, api)
    assert reconcile.reconcile() == ["created"] * 4 and counted == ["created"] * 4
    assert {k: v["spec"] for k, v in api.objects.items()} == {
        k: v["spec"] for k, v in desired_templates(dra_policy).items()}
    assert book.templates() == frozenset(desired_templates(dra_policy)), "known before the watch shows them"
    api.calls.clear()
    assert reconcile.reconcile() == [] and api.calls == []


def test_a_drifted_template_is_deleted_with_preconditions_and_created_with_the_policys_spec(dra_policy):
    api = FakeTemplates()
    for template in desired_templates(dra_policy).values():
        api.put(template)
    api.put(drifted(dra_policy))
    reconcile, book, counted = reconciler(dra_policy, api)
    assert reconcile.reconcile() == ["replaced"] and counted == ["replaced"]
    assert api.writes() == ["delete", "create"]
    assert api.objects[A100]["spec"] == desired_templates(dra_policy)[A100]["spec"]
    assert A100 in book.templates()


def test_a_template_hidden_by_deleting_our_label_is_found_by_the_create_and_relabelled(dra_policy):
    api = FakeTemplates()
    hidden = copy.deepcopy(desired_templates(dra_policy)[A100])
    hidden["metadata"]["labels"] = {"team": "vision"}
    api.put(hidden)
    reconcile, book, counted = reconciler(dra_policy, api)
    assert A100 not in book.records(), "the label-selected watch does not see it"
    results = reconcile.reconcile()
    assert sorted(results) == sorted(counted) == ["created"] * 3 + ["relabelled"]
    assert [c for c in api.calls if c[1] == A100] == [("create", A100), ("read", A100), ("relabel", A100)]
    assert api.objects[A100]["metadata"]["labels"] == {"team": "vision", **desired_templates(dra_policy)[A100][
        "metadata"]["labels"]}


def test_a_template_created_by_another_replica_meanwhile_is_read_and_left(dra_policy):
    api = FakeTemplates()
    reconcile, _, counted = reconciler(dra_policy, api)

    def other_replica_first(call, key):
        if call == "create" and key not in api.objects:
            api.put(desired_templates(dra_policy)[key])

    api.before = other_replica_first
    assert reconcile.reconcile() == ["current"] * 4 and counted == []


def test_a_delete_that_loses_to_another_writer_reads_again_and_judges_what_is_there(dra_policy):
    api = FakeTemplates()
    api.put(drifted(dra_policy))
    reconcile, _, _ = reconciler(dra_policy, api)
    for key, template in desired_templates(dra_policy).items():
        if key != A100:
            api.put(template)
    reconcile.book.replace_all(listed(api))

    def replaced_meanwhile(call, key):
        if call == "delete" and key == A100 and api.objects[A100]["spec"] != desired_templates(dra_policy)[A100]["spec"]:
            api.objects.pop(A100)
            api.put(desired_templates(dra_policy)[A100])   # another replica replaced it first

    api.before = replaced_meanwhile
    assert reconcile.reconcile() == ["current"]
    assert [c for c in api.calls if c[1] == A100] == [("delete", A100), ("read", A100)]


def test_a_template_replaced_moments_ago_by_this_replica_waits_before_the_next_replace(dra_policy):
    """Two replicas holding different policies would replace each other's template in a loop;
    each waits SETTLE seconds before replacing one it replaced itself."""
    now = [1000.0]
    api = FakeTemplates()
    for template in desired_templates(dra_policy).values():
        api.put(template)
    api.put(drifted(dra_policy))
    reconcile, _, counted = reconciler(dra_policy, api, clock=lambda: now[0])
    assert reconcile.reconcile() == ["replaced"]
    api.objects.pop(A100)
    reconcile.book.offer(api.put(drifted(dra_policy)))   # the other replica's policy, right after
    assert reconcile.reconcile() == ["deferred"]
    now[0] += SETTLE
    assert reconcile.reconcile() == ["replaced"] and counted == ["replaced", "deferred", "replaced"]


def test_a_missing_namespace_and_a_failing_api_are_counted_and_do_not_stop_the_other_templates(dra_policy):
    api = FakeTemplates(namespaces=("ml-jobs",))

    def forbidden(call, key):
        if key == A100:
            raise ApiException(status=403, reason="Forbidden")

    api.before = forbidden
    reconcile, _, counted = reconciler(dra_policy, api)
    assert sorted(reconcile.reconcile()) == ["created", "failed", "no-namespace", "no-namespace"]
    assert sorted(counted) == ["created", "failed", "no-namespace", "no-namespace"]


def test_racing_replicas_leave_each_template_created_once(dra_policy):
    api = FakeTemplates()
    replicas = [reconciler(dra_policy, api)[0] for _ in range(4)]
    api.put(drifted(dra_policy))
    for replica in replicas:
        replica.book.replace_all(listed(api))
    api.before = lambda call, key: time.sleep(0.002)   # let the replicas' calls interleave
    threads = [threading.Thread(target=r.reconcile) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert {k: v["spec"] for k, v in api.objects.items()} == {
        k: v["spec"] for k, v in desired_templates(dra_policy).items()}
    assert sorted(api.done) == ["create"] * 4 + ["delete"], "each written once: the others saw it done"


def test_the_thread_waits_for_the_watch_and_reconciles_on_a_trigger(dra_policy):
    api = FakeTemplates()
    book = TemplateBook(dra_policy)
    live = threading.Event()
    reconcile = TemplateReconciler(api, book, live=live.is_set)
    book.changed = reconcile.trigger
    reconcile.start()
    try:
        book.replace_all([])        # a list, but the watch is not synced yet
        time.sleep(0.2)
        assert api.calls == []
        live.set()
        book.replace_all([])        # the list that syncs it
        deadline = time.monotonic() + 5
        while len(api.objects) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(api.objects) == 4
    finally:
        reconcile.stop()


@pytest.mark.parametrize("results, retry", [(["created"], False), (["failed"], True), (["deferred"], True),
                                            (["no-namespace"], False)])
def test_only_a_failure_or_a_deferral_brings_the_next_pass_forward(dra_policy, results, retry, monkeypatch):
    from airflow_gpu_webhook.cluster import templates

    waits = []

    class Wake:
        def wait(self, seconds):
            waits.append(seconds)
            if len(waits) > 2:
                reconcile.stop()

        def clear(self):
            pass

        def set(self):
            pass

    reconcile = TemplateReconciler(FakeTemplates(), TemplateBook(dra_policy), live=lambda: True)
    reconcile._wake = Wake()
    monkeypatch.setattr(reconcile, "reconcile", lambda: results)
    reconcile.run()
    assert waits[1] == (templates.RETRY if retry else templates.RESYNC)
