"""The platform's ResourceClaimTemplates (DRA ``claim`` profiles): kept in place in the tenants'
namespaces, and known to the validating step.

- :class:`TemplateBook`, fed by a watch of the templates labelled
  ``app.kubernetes.io/managed-by=airflow-gpu-webhook`` (only the ``gpu-platform-*`` names are
  kept: namespace, name, uid, version, spec, our labels): :meth:`TemplateBook.templates` is the
  set of (namespace, name) whose spec is the policy's (core/dra.py ``template_matches``), which
  ``decide_validation`` takes as ``templates``. None until the watch has synced.
- :func:`template_plan`, pure: what to do so that every namespace a tenant's ``match`` names holds
  every claim profile's template, exactly ``claim_template(...)``: ``create`` a missing one,
  ``replace`` one whose spec differs (a template's spec is immutable: delete, then create),
  ``relabel`` one that lost our labels.
- :class:`TemplateReconciler`, the I/O, on a thread: runs the plan when the watch has synced,
  on every watch event and policy reload, and every :data:`RESYNC` seconds.

Several replicas reconcile at once, so every write is safe to race: a create that finds the
template there (409 AlreadyExists) reads it and judges it again; a delete carries the uid and
resourceVersion it judged as preconditions and a relabel the resourceVersion (409 Conflict:
read again). A tenant cannot hide a template from the watch by deleting our label: the watch
then sees it go, the create finds it there, and the read shows what to restore. Two replicas
with different policies (a reload reaches them a minute apart) would replace each other's
template; each waits :data:`SETTLE` seconds before replacing one it replaced itself, which bounds
that churn until both hold the same policy.

Templates of profiles no longer in the policy, and those in namespaces no tenant names any more,
are left alone: no pod is admitted to claim from them (``templates`` is computed under the
policy in force). A namespace named by a tenant that does not exist yet gets its templates at
the next resync after it is created.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..core.dra import MANAGED_BY, desired_templates, template_matches
from ..core.pod import as_dict, metadata
from ..core.policy import CLAIM_TEMPLATE_PREFIX, Policy
from .tracker import resource_version

if TYPE_CHECKING:
    from kubernetes.client import ResourceV1Api

__all__ = ["RESULTS", "RESYNC", "SETTLE", "TEMPLATES_PATH", "TEMPLATES_SELECTOR", "ResourceV1Templates", "Step",
           "TemplateApi", "TemplateBook", "TemplateReconciler", "TemplateRecord", "template_plan"]

log = logging.getLogger("gpu_webhook.templates")

TEMPLATES_PATH = "/apis/resource.k8s.io/v1/resourceclaimtemplates"
#: The label every platform template carries (core/dra.py ``claim_template``); the watch selects on it.
TEMPLATES_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
#: Seconds between two full reconciliations without any event (a namespace created meanwhile).
RESYNC = 60.0
#: Seconds after a failed or deferred write before the next try.
RETRY = 5.0
#: Seconds a replica waits before replacing a template it replaced itself (see the module's text).
SETTLE = 5.0
#: How a template's reconciliation can end (the metric's values); "current" is not counted.
RESULTS = ("created", "replaced", "relabelled", "conflict", "deferred", "no-namespace", "failed")
#: Reads and writes tried for one template in one pass before it waits for the next.
_ATTEMPTS = 4

Key = tuple[str, str]


@dataclass(frozen=True)
class TemplateRecord:
    """What the book keeps of one platform template: enough to judge it and to write it safely."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    spec: Any
    labels: Mapping[str, str]

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @property
    def version(self) -> int:
        return resource_version({"metadata": {"resourceVersion": self.resource_version}})

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> TemplateRecord:
        meta = metadata(obj)
        return cls(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")),
                   str(meta.get("resourceVersion", "")), obj.get("spec"), dict(as_dict(meta.get("labels"))))

    def as_template(self) -> dict[str, Any]:
        return {"metadata": {"name": self.name, "namespace": self.namespace}, "spec": self.spec}


@dataclass(frozen=True)
class Step:
    """One write of the plan: ``desired`` is the policy's template for ``key``."""

    action: Literal["create", "replace", "relabel"]
    key: Key
    desired: dict[str, Any]


def _judge(current: TemplateRecord | None, desired: Mapping[str, Any], policy: Policy) -> str | None:
    """The action ``current`` needs to become ``desired``, or None when it is that already."""
    if current is None:
        return "create"
    if not template_matches(current.as_template(), policy):
        return "replace"
    wanted = as_dict(as_dict(desired.get("metadata")).get("labels"))
    return "relabel" if any(current.labels.get(k) != v for k, v in wanted.items()) else None


def template_plan(policy: Policy, observed: Mapping[Key, TemplateRecord]) -> list[Step]:
    """The writes that make ``observed`` hold every template of :func:`desired_templates`,
    in (namespace, name) order; empty when all are current."""
    steps = []
    for key, desired in sorted(desired_templates(policy).items()):
        action = _judge(observed.get(key), desired, policy)
        if action is not None:
            steps.append(Step(action, key, desired))  # type: ignore[arg-type]
    return steps


class TemplateBook:
    """The platform templates the watch has seen (and those this replica wrote); thread-safe.
    ``changed()`` is called after each watch event, list and policy change."""

    def __init__(self, policy: Policy, changed: Callable[[], None] = lambda: None) -> None:
        self._lock = threading.Lock()
        self._policy = policy
        self._records: dict[Key, TemplateRecord] = {}
        self._current: frozenset[Key] = frozenset()
        self.changed = changed

    @property
    def policy(self) -> Policy:
        return self._policy

    def _rebuild(self) -> None:
        self._current = frozenset(k for k, r in self._records.items() if template_matches(r.as_template(),
                                                                                           self._policy))

    def _take(self, event: str, obj: Mapping[str, Any]) -> None:
        record = TemplateRecord.from_object(obj)
        if not record.name.startswith(CLAIM_TEMPLATE_PREFIX):
            return   # another template that carries our label: nothing of the platform's
        held = self._records.get(record.key)
        if held is not None and record.version < held.version:
            return   # older than what this replica wrote since (the watch is catching up)
        if event == "DELETED":
            del self._records[record.key]
        else:
            self._records[record.key] = record

    def apply(self, event: str, obj: Mapping[str, Any]) -> None:
        """A watch event. A template that loses our label is DELETED for a label-selected watch."""
        with self._lock:
            self._take(event, obj)
            self._rebuild()
        self.changed()

    def replace_all(self, objs: Iterable[Mapping[str, Any]]) -> None:
        records = [TemplateRecord.from_object(o) for o in objs]
        with self._lock:
            self._records = {r.key: r for r in records if r.name.startswith(CLAIM_TEMPLATE_PREFIX)}
            self._rebuild()
        self.changed()

    def offer(self, obj: Mapping[str, Any]) -> None:
        """What a write of this replica returned (or a fresh read): known before the watch shows it."""
        with self._lock:
            self._take("MODIFIED", obj)
            self._rebuild()

    def forget(self, key: Key, version: int) -> None:
        """This replica deleted the template it held at ``version``."""
        with self._lock:
            held = self._records.get(key)
            if held is not None and held.version <= version:
                del self._records[key]
                self._rebuild()

    def set_policy(self, policy: Policy) -> None:
        with self._lock:
            self._policy = policy
            self._rebuild()
        self.changed()

    def records(self) -> dict[Key, TemplateRecord]:
        with self._lock:
            return dict(self._records)

    def templates(self) -> frozenset[Key]:
        """(namespace, name) of every platform template whose spec is the policy's."""
        return self._current


class TemplateApi(Protocol):
    """The template calls the reconciler makes, raw JSON in and out; failures raise
    ``kubernetes.client.rest.ApiException`` (409: AlreadyExists or Conflict; 404: not there)."""

    def create(self, template: Mapping[str, Any]) -> dict[str, Any]: ...

    def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def relabel(self, namespace: str, name: str, resource_version: str,
                labels: Mapping[str, str]) -> dict[str, Any]: ...

    def delete(self, namespace: str, name: str, uid: str, resource_version: str) -> None: ...


class ResourceV1Templates:
    """:class:`TemplateApi` on the client's ``ResourceV1Api``, raw (``_preload_content=False``)."""

    def __init__(self, api: ResourceV1Api, timeout: float = 5.0) -> None:
        self.api, self.timeout = api, timeout

    def create(self, template: Mapping[str, Any]) -> dict[str, Any]:
        namespace = template["metadata"]["namespace"]
        return json.loads(self.api.create_namespaced_resource_claim_template(
            namespace, template, _preload_content=False, _request_timeout=self.timeout).data)

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return json.loads(self.api.read_namespaced_resource_claim_template(
                name, namespace, _preload_content=False, _request_timeout=self.timeout).data)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def relabel(self, namespace: str, name: str, resource_version: str,
                labels: Mapping[str, str]) -> dict[str, Any]:
        """A merge patch of the labels; its resourceVersion is a precondition (409 when it moved)."""
        body = {"metadata": {"resourceVersion": resource_version, "labels": dict(labels)}}
        return json.loads(self.api.patch_namespaced_resource_claim_template(
            name, namespace, body, _content_type="application/merge-patch+json", _preload_content=False,
            _request_timeout=self.timeout).data)

    def delete(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        self.api.delete_namespaced_resource_claim_template(
            name, namespace, body={"preconditions": {"uid": uid, "resourceVersion": resource_version}},
            _preload_content=False, _request_timeout=self.timeout)


class TemplateReconciler:
    """Runs :func:`template_plan` against the API server, on a thread (see the module's text).

    ``live()``: the template watch has synced (nothing is planned from a partial view);
    ``counted(result)``: one of :data:`RESULTS` per template written or given up on."""

    def __init__(self, api: TemplateApi, book: TemplateBook, live: Callable[[], bool],
                 counted: Callable[[str], None] = lambda result: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api, self.book, self.live, self.counted, self.clock = api, book, live, counted, clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._replaced: dict[Key, float] = {}   # key -> when this replica last replaced it

    def trigger(self) -> None:
        """Reconcile soon (a watch event, a list, a reload)."""
        self._wake.set()

    def reconcile(self) -> list[str]:
        """One pass: every step of the plan, each template converged on its own; the results."""
        policy = self.book.policy
        results = []
        for step in template_plan(policy, self.book.records()):
            try:
                result = self._converge(step, policy)
            except Exception as err:  # noqa: BLE001 - one template's failure must not stop the others
                log.warning("ResourceClaimTemplate %s/%s: %s failed (%s); retrying in %.0fs", *step.key, step.action,
                            _reason(err), RETRY)
                result = "failed"
            if result != "current":
                self.counted(result)
            results.append(result)
        return results

    def _converge(self, step: Step, policy: Policy) -> str:
        """Make one template the policy's, re-reading whenever another writer got there first."""
        namespace, name = step.key
        current: TemplateRecord | None = self.book.records().get(step.key)
        action: str | None = step.action
        replaced = False
        for _ in range(_ATTEMPTS):
            if action is None:
                return "current"
            if action == "create":
                created = self._create(step.desired)
                if created is not None:
                    return created if created != "created" or not replaced else "replaced"
            elif action == "replace":
                assert current is not None
                if step.key in self._replaced and self.clock() - self._replaced[step.key] < SETTLE:
                    log.info("ResourceClaimTemplate %s/%s differs again from the policy right after this replica "
                             "replaced it (another replica's policy?); waiting %.0fs", namespace, name, SETTLE)
                    return "deferred"
                if self._delete(current):
                    self._replaced[step.key] = self.clock()
                    replaced, action = True, "create"
                    continue
            elif action == "relabel":
                assert current is not None
                if self._relabel(current, step.desired):
                    return "relabelled"
            found = self.api.read(namespace, name)   # another writer was first: judge what is there now
            if found is not None:
                self.book.offer(found)
            current = None if found is None else TemplateRecord.from_object(found)
            action = _judge(current, step.desired, policy)
        log.info("ResourceClaimTemplate %s/%s kept changing under this replica; next pass", namespace, name)
        return "conflict"

    def _create(self, desired: Mapping[str, Any]) -> str | None:
        """Create ``desired``: "created", "no-namespace", or None when it is there already (read it and judge it)."""
        from kubernetes.client.rest import ApiException

        namespace, name = desired["metadata"]["namespace"], desired["metadata"]["name"]
        try:
            written = self.api.create(desired)
        except ApiException as err:
            if err.status == 409:
                return None
            if err.status == 404:
                log.warning("ResourceClaimTemplate %s/%s: namespace %s, which the policy's tenants name, does not "
                            "exist; retrying in %.0fs", namespace, name, namespace, RESYNC)
                return "no-namespace"
            raise
        self.book.offer(written)
        log.info("ResourceClaimTemplate %s/%s created from the policy", namespace, name)
        return "created"

    def _delete(self, current: TemplateRecord) -> bool:
        """Delete the template as judged (uid and resourceVersion as preconditions); False on 409."""
        from kubernetes.client.rest import ApiException

        try:
            self.api.delete(current.namespace, current.name, current.uid, current.resource_version)
        except ApiException as err:
            if err.status == 409:
                return False
            if err.status != 404:
                raise
        self.book.forget(current.key, current.version)
        return True

    def _relabel(self, current: TemplateRecord, desired: Mapping[str, Any]) -> bool:
        from kubernetes.client.rest import ApiException

        labels = as_dict(as_dict(desired.get("metadata")).get("labels"))
        try:
            written = self.api.relabel(current.namespace, current.name, current.resource_version, labels)
        except ApiException as err:
            if err.status in (404, 409):
                return False
            raise
        self.book.offer(written)
        log.info("ResourceClaimTemplate %s/%s: the platform's labels restored", *current.key)
        return True

    def run(self) -> None:
        """Reconcile on every trigger once the watch has synced, and every RESYNC seconds; sooner
        after a failure."""
        wait = RESYNC
        while not self._stop.is_set():
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self.live():
                wait = RESYNC   # the watch's list will trigger a pass
                continue
            results = self.reconcile()
            wait = RETRY if any(r in ("conflict", "deferred", "failed") for r in results) else RESYNC

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="claim templates", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()


def _reason(err: BaseException) -> str:
    status = getattr(err, "status", None)
    if status is not None:
        body = getattr(err, "body", None)
        try:
            message = json.loads(body).get("message") if body else None
        except (ValueError, AttributeError):
            message = None
        return f"{status} {getattr(err, 'reason', '')}" + (f": {message}" if message else "")
    return str(err) or type(err).__name__
