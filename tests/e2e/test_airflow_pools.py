"""Queue, don't fail (issue 16): GPU tasks wait in their tenant's Airflow pool, proven with real Airflow.

A real Airflow 3.3.2 (tests/e2e/airflow_stack.py: PostgreSQL, API server, scheduler with the
LocalExecutor, one DAG processor per bundle) runs KubernetesPodOperator tasks against the testbed's
kube-apiserver, with `gpu-webhook serve --track-usage` registered as it ships (quota charged against
the running pods). Pools come from `gpu-webhook airflow-pools --apply` (the REST API); the DAG
processor of bundle `pooled` assigns them, the one of bundle `unpooled` runs with
`[gpu_webhook] assign_pools = False`. Four DAG runs start at once (tests/e2e/pool_dags/):

| DAG | tenant (namespace) | quota | tasks |
| --- | --- | --- | --- |
| pools_a__mapped8 | pools-a | 2 MIG 1g.10gb slices (gpuEquivalent 0.25): pool of 2 slots | 8 mapped, 1 slice each |
| pools_off__mapped8 | pools-a-off | the same, pools switched off | the same |
| pools_b__mapped4 | pools-b | 1 GPU-equivalent: pool of 8 slots | 4 mapped |
| pools_free__mapped8 | pools-free | none: no pool | 8 mapped (the unlimited baseline) |

Read back from Airflow's REST API (task instances), the API server (pods) and the webhook's
/metrics (denials per tenant). `dag.test()` is not used: it ignores pools.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from .airflow_stack import AirflowStack, Postgres
from .conftest import RegisteredWebhook, registered_webhook
from .controlplane import ControlPlane
from conftest import POLICY_FILE

pytestmark = pytest.mark.e2e

DAGS = Path(__file__).parent / "pool_dags"
RUN_LABEL = "e2e.gpu.platform/run"
SLICES = {"nvidia.com/mig-1g.10gb": 2, "gpuEquivalent": 0.25}
#: tenant -> (namespace, quota); every tenant matches on its namespace alone.
TENANTS: dict[str, dict[str, Any]] = {
    "pools-a": SLICES, "pools-a-off": SLICES, "pools-b": {"gpuEquivalent": 1}, "pools-c": {"gpuEquivalent": 1},
    "pools-free": {}}
#: dag_id -> (tenant, tasks), the runs started together.
RUNS = {"pools_a__mapped8": ("pools-a", 8), "pools_off__mapped8": ("pools-a-off", 8),
        "pools_b__mapped4": ("pools-b", 4), "pools_free__mapped8": ("pools-free", 8)}
#: How long each pod runs once on its node (given to the DAGs as E2E_POD_SECONDS).
POD_SECONDS = 6
UNSIZED = "pools_c__unsized"   # parsed, never run: its pool is deleted before parsing
PARSE_TIMEOUT = 180
RUN_TIMEOUT = 300


def pool_policy(path: Path) -> Path:
    """The reference policy plus the test's tenants (it only grows: the reference stays valid)."""
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"]["tenants"].update({name: {"match": [{"namespace": name}], **({"quota": quota} if quota else {})}
                                    for name, quota in TENANTS.items()})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class Run:
    dag_id: str
    tenant: str
    state: str
    seconds: float
    tis: list[dict[str, Any]]
    pods: list[Any]
    denials: float

    def waits(self) -> list[float]:
        """Seconds each task instance spent scheduled before it was queued: waiting for its pool."""
        return [(datetime.fromisoformat(t["queued_when"]) - datetime.fromisoformat(t["scheduled_when"])).total_seconds()
                for t in self.tis]

    def intervals(self) -> list[tuple[datetime, datetime]]:
        """Each pod's [admitted, finished) span: when it held quota, by its own timestamps."""
        spans = []
        for pod in self.pods:
            base = next(s for s in pod.status.container_statuses if s.name == "base")
            spans.append((pod.metadata.creation_timestamp, base.state.terminated.finished_at))
        return spans

    def most_at_once(self) -> int:
        """The most pods of the run that held quota at the same time (half-open spans: a pod
        admitted in the second another finished does not overlap it; timestamps are whole seconds)."""
        events = sorted([(start, 1) for start, _ in self.intervals()] + [(end, -1) for _, end in self.intervals()])
        running = most = 0
        for _, step in events:
            running += step
            most = max(most, running)
        return most


@dataclass
class Result:
    runs: dict[str, Run]
    parse_log: str
    import_errors: Any
    pools: dict[str, Any]
    unsized_loaded: bool


def _seconds(run: dict[str, Any]) -> float:
    return (datetime.fromisoformat(run["end_date"]) - datetime.fromisoformat(run["start_date"])).total_seconds()


def _denials(webhook: RegisteredWebhook) -> dict[str, float]:
    """Denied admissions per tenant so far, from the webhook's own /metrics."""
    counts: dict[str, float] = {}
    for m in re.finditer(r'^gpu_webhook_admissions_total\{([^}]*)\} (\S+)$', webhook.server.client.get("/metrics").text,
                         re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("outcome") == "denied":
            counts[labels["tenant"]] = counts.get(labels["tenant"], 0) + float(m.group(2))
    return counts


@pytest.fixture(scope="module")
def pools_webhook(controlplane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegisteredWebhook]:
    tmp = tmp_path_factory.mktemp("pools-webhook")
    for name in TENANTS:
        controlplane.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield from registered_webhook(controlplane, tmp, "--track-usage", "--kubeconfig", str(controlplane.kubeconfig),
                                  "--ledger-namespace", "default", policy=pool_policy(tmp / "policy.yaml"))


@pytest.fixture(scope="module")
def result(controlplane: ControlPlane, pools_webhook: RegisteredWebhook,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Result]:
    """ONE Airflow deployment; pools applied, the four runs started together and read back."""
    home = tmp_path_factory.mktemp("airflow-pools")
    policy = pool_policy(home / "policy.yaml")
    run_label = uuid.uuid4().hex[:12]
    kubeconfig = controlplane.env()["KUBECONFIG"]
    postgres = Postgres()
    stack = AirflowStack(home, postgres.start(), {
        "AIRFLOW__GPU_WEBHOOK__POLICY_FILE": str(policy), "KUBECONFIG": kubeconfig, "E2E_KUBECONFIG": kubeconfig,
        "E2E_RUN": run_label, "E2E_POD_SECONDS": str(POD_SECONDS), "AIRFLOW__CORE__PARALLELISM": "32"},
        {"pooled": (DAGS / "pooled", {}),
         "unpooled": (DAGS / "unpooled", {"AIRFLOW__GPU_WEBHOOK__ASSIGN_POOLS": "False"})})
    try:
        stack.start_api()
        applied = subprocess.run([sys.executable, "-m", "airflow_gpu_webhook.cli.main", "airflow-pools", "--policy",
                                  str(policy), "--apply", stack.url], capture_output=True, text=True, timeout=60)
        assert applied.returncode == 0, applied.stderr
        stack.call("DELETE", "/api/v2/pools/gpu-pools-c")
        stack.start_scheduling()
        stack.wait_for(lambda: all(stack.get(f"/api/v2/dags/{d}") for d in [*RUNS, UNSIZED]), PARSE_TIMEOUT,
                       "the DAG processors to parse the pool DAGs")
        before = _denials(pools_webhook)
        started = {dag_id: stack.trigger(dag_id) for dag_id in RUNS}
        finished = {dag_id: stack.wait_run(dag_id, run_id, RUN_TIMEOUT) for dag_id, run_id in started.items()}
        after = _denials(pools_webhook)
        core = client.CoreV1Api(controlplane.api_client())
        runs = {}
        for dag_id, (tenant, _) in RUNS.items():
            pods = core.list_namespaced_pod(tenant, label_selector=f"{RUN_LABEL}={run_label},dag_id={dag_id}").items
            runs[dag_id] = Run(dag_id, tenant, finished[dag_id]["state"], _seconds(finished[dag_id]),
                               stack.task_instances(dag_id, started[dag_id]), pods,
                               after.get(tenant, 0) - before.get(tenant, 0))
        parse_log = "\n".join(p.read_text(errors="replace") for p in (home / "logs" / "dag_processor").rglob("*.log"))
        summary = {d: {"state": r.state, "seconds": round(r.seconds, 1), "most_at_once": r.most_at_once(),
                       "failed": sum(t["state"] != "success" for t in r.tis), "denials": r.denials,
                       "longest_wait": round(max(r.waits()), 1)}
                   for d, r in runs.items()}
        print(f"\npool runs: {json.dumps(summary)}; pooled/unlimited wall time "
              f"{runs['pools_a__mapped8'].seconds / runs['pools_free__mapped8'].seconds:.2f}")
        yield Result(runs, parse_log, stack.get("/api/v2/importErrors"),
                     {p["name"]: p for p in stack.call("GET", "/api/v2/pools")["pools"]},
                     stack.get(f"/api/v2/dags/{UNSIZED}") is not None)
    except Exception:
        print(stack.tails())
        raise
    finally:
        stack.stop()
        postgres.stop()


# -------------------------------------------------------------------------------------------- tests
def test_the_pools_applied_through_the_rest_api_follow_the_policy(result):
    assert {n: (p["slots"], p["include_deferred"]) for n, p in result.pools.items() if n.startswith("gpu-pools")} == {
        "gpu-pools-a": (2, True), "gpu-pools-a-off": (2, True), "gpu-pools-b": (8, True)}


def test_eight_mig_tasks_over_a_quota_of_two_all_succeed_first_try_with_no_webhook_denial(result):
    run = result.runs["pools_a__mapped8"]
    assert run.state == "success"
    assert sorted((t["map_index"], t["state"], t["try_number"]) for t in run.tis) == [
        (i, "success", 1) for i in range(8)]
    assert {(t["pool"], t["pool_slots"]) for t in run.tis} == {("gpu-pools-a", 1)}
    assert run.denials == 0
    assert len(run.pods) == 8 and all(p.status.phase == "Succeeded" for p in run.pods)


def test_pod_timestamps_show_no_more_than_the_quota_running_at_once(result):
    assert result.runs["pools_a__mapped8"].most_at_once() == 2


def test_with_pool_assignment_off_the_same_dag_fails_tasks_on_the_webhooks_quota_denials(result):
    run = result.runs["pools_off__mapped8"]
    failed = [t for t in run.tis if t["state"] == "failed"]
    assert {(t["pool"], t["pool_slots"]) for t in run.tis} == {("default_pool", 1)}
    assert run.state == "failed" and failed, [(t["map_index"], t["state"]) for t in run.tis]
    assert run.denials >= len(failed), "every failed task is a pod the webhook refused"
    assert len(run.pods) == 8 - len(failed)
    assert run.most_at_once() <= 2, "the webhook still held the line"


def test_a_second_tenants_tasks_are_not_held_back_by_the_first_tenants_pool(result):
    """Waits read from the task instances (scheduled -> queued): pools-a's last tasks can be queued only
    after 6 of its tasks finished, 3 waves of 2 pods of POD_SECONDS each; pools-b's are queued at once."""
    a, b = result.runs["pools_a__mapped8"], result.runs["pools_b__mapped4"]
    assert b.state == "success" and b.denials == 0
    assert {(t["pool"], t["state"]) for t in b.tis} == {("gpu-pools-b", "success")}
    assert max(a.waits()) >= 3 * POD_SECONDS, "pools-a's tasks waited for their pool"
    assert max(b.waits()) < 10, f"pools-b's tasks waited {max(b.waits()):.1f} s to be queued"


def test_the_unlimited_baseline_runs_in_the_default_pool(result):
    run = result.runs["pools_free__mapped8"]
    assert run.state == "success" and {t["pool"] for t in run.tis} == {"default_pool"}


def test_a_missing_pool_is_a_warning_of_the_dag_processor_not_an_import_error(result):
    assert result.unsized_loaded
    assert result.import_errors is not None and result.import_errors["total_entries"] == 0
    assert ("[gpu-webhook] task 'slice' in DAG 'pools_c__unsized' waits in GPU pool gpu-pools-c: Airflow pool "
            "'gpu-pools-c' does not exist") in result.parse_log
    assert "waits in GPU pool gpu-pools-a:" not in result.parse_log, "gpu-pools-a exists with the policy's size"
