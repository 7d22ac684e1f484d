"""The validating step for an UPDATE of a pod, pure: the accounting facts stay as admitted.

A pod's GPU charge is decided once, at CREATE, and stamped on it (``gpu.platform/*`` labels,
webhook/core/mutate.py). A namespace user with the default ``edit`` role may patch any label of a
running pod, so without this step one ``kubectl label`` would move a pod's charge to another
tenant or out of the books. Refused on UPDATE:

- on every pod: adding, removing or changing any label whose key starts with ``gpu.platform/``
  (stamps added later would make a CPU pod look managed; stamps removed would hide a GPU pod);
- on a managed pod (the old pod carries ``gpu.platform/managed=true``) also: the ``dag_id``
  label and annotation, the policy's profile and count label keys, and every label key a
  tenant's ``podLabels`` match reads: the facts its tenant, profile and count came from;
- on a pod that holds no GPU: a toleration added (the API server lets any pod gain
  tolerations) that lets it reach a GPU node, judged as the same pod would be at CREATE
  (``gpuReachingPods``: denied, or every container must already carry ``void``, which an
  update cannot add, and the privilege and hostPath rules hold). Without this, a Pending
  CPU pod with a GPU nodeSelector walks onto a GPU node after one ``kubectl patch``.

Everything else passes: Airflow's own later updates (KubernetesPodOperator's
``already_checked`` label, the executor's ``airflow-worker`` adoption label), finalizers,
owner references. Status updates and deletions are no UPDATE of ``pods`` at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .decision import Decision, Reason, Violation
from .mutate import MANAGED_LABEL, STAMP_PREFIX
from .pod import annotations as pod_annotations
from .pod import gpu_containers, labels
from .policy import Policy, per_policy
from .rules import gpu_reach, security_violations
from .validate import reaching_violations

__all__ = ["decide_update", "fixed_label_keys"]

_DAG_ID = "dag_id"
_ABSENT = object()


@per_policy
def fixed_label_keys(policy: Policy) -> frozenset[str]:
    """The label keys, besides the ``gpu.platform/`` stamps, that decided a managed pod's charge
    (computed once per policy, not on every UPDATE)."""
    keys = {_DAG_ID, policy.spec.labels.profile, policy.spec.labels.count}
    for tenant in policy.spec.tenants.values():
        for match in tenant.match:
            keys.update(match.podLabels or ())
    return frozenset(k for k in keys if not k.startswith(STAMP_PREFIX))


def _shown(value: Any) -> str:
    return "absent" if value is _ABSENT else repr(value)


def _changes(kind: str, old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]) -> list[Violation]:
    found = []
    for key in sorted(set(keys)):
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if before != after:
            change = "removes" if after is _ABSENT else "adds" if before is _ABSENT else "changes"
            found.append(Violation(Reason.ACCOUNTING_FIXED, (
                f"this update {change} {kind} {key} (was {_shown(before)}, would be {_shown(after)}); the pod's GPU "
                f"quota is charged by what it carried at admission, so {kind}s that decide its tenant, profile or "
                f"count cannot change afterwards: relaunch the task (a new pod) instead")))
    return found


def _new_reach(old: Mapping[str, Any], new: Mapping[str, Any], policy: Policy) -> list[Violation]:
    """A pod holding no GPU that this update lets reach a GPU node (tolerations are the only
    reach the API server lets an update add: ``nodeName`` and ``runtimeClassName`` are fixed)."""
    if labels(old).get(MANAGED_LABEL) == "true" or gpu_containers(new):
        return []
    before = set(gpu_reach(old, policy))
    added = [route for route in gpu_reach(new, policy) if route not in before]
    if not added:
        return []
    # As at CREATE: the privilege and hostPath rules of a reaching pod too (a privileged or
    # hostPath-/ CPU pod was fine on a CPU node, and `void` does not stop either on a GPU node).
    return security_violations(new, policy, gpu_pod=False, reaching=True) + reaching_violations(new, policy, added)


def decide_update(old: Mapping[str, Any], new: Mapping[str, Any], policy: Policy) -> Decision:
    """Allow an UPDATE of a pod unless it changes a fact its GPU accounting rests on."""
    old_labels, new_labels = labels(old), labels(new)
    stamps = (k for k in (*old_labels, *new_labels) if k.startswith(STAMP_PREFIX))
    problems = _changes("label", old_labels, new_labels, stamps)
    if old_labels.get(MANAGED_LABEL) == "true":
        problems += _changes("label", old_labels, new_labels, fixed_label_keys(policy))
        problems += _changes("annotation", pod_annotations(old), pod_annotations(new), (_DAG_ID,))
    problems += _new_reach(old, new, policy)
    if problems:
        return Decision.deny(problems)
    return Decision.allow(Reason.UPDATE)
