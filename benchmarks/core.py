"""The pure decision's speed on Airflow-built pods, against a JSON parse of the same review.

Target: the decision takes at most 50 us per Airflow GPU pod, as rules are added. The baseline
(orjson parsing the AdmissionReview the decision reads) is work every webhook must do, so the
ratio says what the decision costs on top of merely reading its input. The validating decision
is also timed step by step (the rows starting with "validate:"), so a new rule's cost shows on
its own row.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jsonpatch
import orjson

from airflow_gpu_webhook.core.mutate import decide_mutation
from airflow_gpu_webhook.core.policy import Policy, load_policy
from airflow_gpu_webhook.core.validate import decide_validation
from airflow_gpu_webhook.server.admission import mutate
from airflow_gpu_webhook.server.review import parse_review, review_response

ROOT = Path(__file__).resolve().parent.parent
GPU_CASE, CPU_CASE = "kpo_mig_1g_xcom", "kpo_cpu_plain"


def case(case_id: str) -> dict:
    return json.loads((ROOT / "tests" / "fixtures" / "airflow" / f"{case_id}.json").read_text())


def review_bytes(pod: dict, namespace: str) -> bytes:
    return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "operation": "CREATE", "namespace": namespace, "object": pod}})


def per_call_us(fn: Callable[[], object], seconds: float = 1.0) -> float:
    """Median of 5 runs of the mean time per call, in microseconds."""
    runs = []
    for _ in range(5):
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 5:
            for _ in range(200):
                fn()
            count += 200
        runs.append(elapsed / count * 1e6)
    return sorted(runs)[2]


def validation_steps(mutated: dict, policy: Policy) -> dict[str, Callable[[], object]]:
    """The steps of :func:`decide_validation` on the mutated GPU pod, each alone, in its order."""
    from airflow_gpu_webhook.core import validate
    from airflow_gpu_webhook.core.plan import plan_gpu, scope_of
    from airflow_gpu_webhook.core.pod import gpu_containers
    from airflow_gpu_webhook.core.quota import charge, exceeded_lines, gpu_request
    from airflow_gpu_webhook.core.rules import security_violations

    plan = plan_gpu(mutated, "airflow", policy)
    containers = gpu_containers(mutated)
    quota = policy.spec.tenants[plan.tenant].quota
    return {
        "validate: scope and GPU containers": lambda: (scope_of(mutated, policy), gpu_containers(mutated)),
        "validate: security rules (every route to a GPU)": lambda: security_violations(mutated, policy, True),
        "validate: plan (profile, count, tenant, target)": lambda: plan_gpu(mutated, "airflow", policy),
        "validate: drift from the plan (the mutation re-run)": lambda: validate._drift(mutated, plan, policy),
        "validate: quota (charge, exceeded lines)": lambda: exceeded_lines(
            plan.tenant, quota, charge(gpu_request(containers), plan.profile, policy), {}),
    }


def run() -> list[tuple[str, float, float]]:
    policy = load_policy(ROOT / "manifests" / "policy.yaml")
    gpu, cpu = case(GPU_CASE), case(CPU_CASE)
    gpu_body = review_bytes(gpu["pod"], gpu["namespace"])
    mutated = jsonpatch.apply_patch(gpu["pod"], list(decide_mutation(gpu["pod"], gpu["namespace"], policy).patch))
    baseline = per_call_us(lambda: orjson.loads(gpu_body))
    scenarios = {
        "mutate an Airflow GPU pod (decide_mutation)": lambda: decide_mutation(gpu["pod"], "airflow", policy),
        "validate the mutated GPU pod (decide_validation)": lambda: decide_validation(mutated, "airflow", policy, {}),
        "pass-through CPU pod (mutate + validate)": lambda: (decide_mutation(cpu["pod"], "airflow", policy),
                                                            decide_validation(cpu["pod"], "airflow", policy, {})),
        "whole /mutate handler without HTTP (parse + decide + encode)": lambda: orjson.dumps(
            review_response("u", mutate(parse_review(gpu_body), policy))),
        **validation_steps(mutated, policy),
    }
    rows = [("baseline: orjson.loads of the GPU pod's AdmissionReview", baseline, 1.0)]
    for name, fn in scenarios.items():
        us = per_call_us(fn)
        rows.append((name, us, us / baseline))
    return rows


def report(rows: list[tuple[str, float, float]]) -> str:
    lines = ["| pure core (per call) | us | x baseline | calls/s |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {name} | {us:.1f} | {ratio:.1f} | {1e6 / us:,.0f} |" for name, us, ratio in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(run()))
