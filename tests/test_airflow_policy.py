"""The parse-time check with real Airflow: DAG files through Airflow's own DagBag.

One subprocess (Airflow configures itself at import, so it must not share this process) imports
Airflow with this package installed, so the ``airflow.policy`` entry point is what registers the
check, and fills a DagBag from ``tests/airflow_dags/`` once per step: the reference policy, the
option unset, a policy file that cannot be read, ``enforcement: warn``, a policy file replaced
in place. Airflow reads ``AIRFLOW__*`` variables on every ``conf.get``, so a step only changes
the environment. Each test then asserts on one file of one step.

Airflow is required: these tests fail, never skip, without it (``pip install -e '.[e2e]'``).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from typing import Any

import pytest
import yaml

from conftest import POLICY_FILE, ROOT, airflow_env
from serve import send_json

DAGS = ROOT / "tests" / "airflow_dags"
KNOWN = "a100-80gb, h100-80gb, a100-mig-1g.10gb, a100-mig-2g.20gb, a100-mig-3g.40gb"
KPO = "(KubernetesPodOperator pod)"
ALL_FILES = sorted(p.name for p in DAGS.glob("*.py"))

LOADER = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    dags, steps, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    manager = settings.get_policy_plugin_manager()
    results = {"plugins": [name for name, _ in manager.list_name_plugin()],
               "task_policy": [i.function.__module__ for i in manager.hook.task_policy.get_hookimpls()]}
    for step in steps:
        if step.get("write"):
            path = Path(step["policy_file"])
            before = path.stat().st_mtime_ns if path.exists() else 0
            path.write_text(step["write"])
            os.utime(path, ns=(before + 10**9, before + 10**9))  # a new mtime even on coarse clocks
        os.environ["AIRFLOW__GPU_WEBHOOK__POLICY_FILE"] = step["policy_file"]
        os.environ.update(step.get("env", {}))
        bag = DagBag(dags)
        loaded = {}
        for dag in bag.dags.values():
            loaded.setdefault(Path(dag.fileloc).name, []).append(dag.dag_id)
        pools = {f"{d.dag_id}.{t.task_id}": [t.pool, t.pool_slots] for d in bag.dags.values() for t in d.tasks}
        results[step["name"]] = {"import_errors": {Path(k).name: v for k, v in bag.import_errors.items()},
                                 "loaded": loaded, "pools": pools}
        for name in step.get("env", {}):
            del os.environ[name]
    Path(out).write_text(json.dumps(results))
""")


def _policy_text(**spec_changes: Any) -> str:
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["spec"].update(spec_changes)
    return yaml.safe_dump(data)


#: What the stand-in Airflow API answers for GET /api/v2/pools: gpu-vision smaller than the policy's 48
#: slots; gpu-forecasting absent.
STUB_POOLS = {"pools": [{"name": "default_pool", "slots": 128}, {"name": "gpu-vision", "slots": 8}],
              "total_entries": 2}


@pytest.fixture(scope="module")
def pools_api() -> Iterator[str]:
    """A stand-in for Airflow's REST API serving STUB_POOLS (the real one: tests/e2e/test_airflow_pools.py)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            found = self.path.startswith("/api/v2/pools")
            send_json(self, STUB_POOLS if found else {}, 200 if found else 404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory, pools_api: str) -> dict[str, Any]:
    """Every step's import errors, loaded DAG ids per file and task pools, and the log of the whole run."""
    if importlib.util.find_spec("airflow") is None:
        pytest.fail("apache-airflow is not installed in this environment: pip install -e '.[e2e]'")
    if not any(ep.value == "airflow_gpu_webhook.airflow.policy" for ep in entry_points(group="airflow.policy")):
        pytest.fail("the airflow.policy entry point is not registered: pip install -e . (again) after editing "
                    "pyproject.toml")
    tmp = tmp_path_factory.mktemp("airflow")
    spec = yaml.safe_load(POLICY_FILE.read_text())["spec"]
    profiles = spec["profiles"]
    by_requester = {**spec["tenants"], "platform": {"match": [{"serviceAccount": "airflow/platform-worker"}]}}
    steps = [
        {"name": "reference", "policy_file": str(POLICY_FILE)},
        {"name": "off", "policy_file": ""},
        {"name": "unreadable", "policy_file": str(tmp / "missing.yaml")},
        {"name": "warn", "policy_file": str(tmp / "warn.yaml"), "write": _policy_text(enforcement="warn")},
        {"name": "replaced", "policy_file": str(tmp / "warn.yaml"),
         "write": _policy_text(profiles={**profiles, "h100-8gb": profiles["h100-80gb"]})},
        {"name": "requester", "policy_file": str(tmp / "requester.yaml"), "write": _policy_text(tenants=by_requester)},
        {"name": "pools_off", "policy_file": str(POLICY_FILE), "env": {"AIRFLOW__GPU_WEBHOOK__ASSIGN_POOLS": "False"}},
        {"name": "named_pools", "policy_file": str(tmp / "named.yaml"), "env": {
            "AIRFLOW__GPU_WEBHOOK__AIRFLOW_API_URL": pools_api},
         "write": _policy_text(tenants={**spec["tenants"], "vision": {
             **spec["tenants"]["vision"], "airflowPools": ["vision-urgent"]}})},
    ]
    env = airflow_env(tmp, AIRFLOW__CORE__DAGS_FOLDER=str(DAGS), AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE="airflow")
    out = tmp / "results.json"
    # Run outside the checkout, so the entry point can only come from the installed package.
    run = subprocess.run([sys.executable, "-c", LOADER, str(DAGS), json.dumps(steps), str(out)],
                         env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"the DagBag run failed:\n{run.stderr[-4000:]}"
    return {**json.loads(out.read_text()), "log": run.stdout + run.stderr}


def test_the_check_is_registered_by_the_airflow_policy_entry_point(parsed):
    assert "gpu_webhook" in parsed["plugins"]
    assert parsed["task_policy"] == ["airflow_gpu_webhook.airflow.policy"]


@pytest.mark.parametrize("dag_file, message", [
    pytest.param("bad_unknown_profile.py",
                 f"task 'train' in DAG 'bad_unknown_profile' {KPO}: gpu.platform/profile 'h100-8gb' is not a known "
                 f"GPU profile; known profiles: {KNOWN}",
                 id="an unknown profile fails the DAG and names the known profiles"),
    pytest.param("bad_count_zero.py",
                 f"task 'train' in DAG 'bad_count_zero' {KPO}: gpu.platform/count '0' must be a positive whole "
                 f"number (1 to 8 for profile a100-80gb)",
                 id="a count of zero fails the DAG with the profile's range"),
    pytest.param("bad_visible_devices_env.py",
                 f"task 'sneaky' in DAG 'bad_visible_devices_env' {KPO}: container 'base' sets env "
                 f"NVIDIA_VISIBLE_DEVICES='all', which makes the container toolkit expose GPUs the device plugin never "
                 f"allocated; remove it (only NVIDIA_VISIBLE_DEVICES=void is allowed, GPUs are assigned by the GPU "
                 f"profile label)",
                 id="NVIDIA_VISIBLE_DEVICES fails even a DAG that asks for no GPU"),
    pytest.param("bad_gpu_resources_without_label.py",
                 f"task 'train' in DAG 'bad_gpu_resources_without_label' {KPO}: container 'base' asks for a GPU "
                 f"without the gpu.platform/profile label; GPU pods must choose a profile: add the label "
                 f"gpu.platform/profile with one of: {KNOWN}",
                 id="GPU container_resources without the label fail the DAG"),
    pytest.param("bad_no_tenant.py",
                 f"task 'train' in DAG 'adhoc_train' {KPO}: no GPU tenant matches namespace 'airflow', dag_id "
                 f"'adhoc_train'; tenants: vision (namespace ml-jobs | namespace airflow + labels team=vision | "
                 f"namespace airflow + dag_id team_vision__*), forecasting (namespace airflow + dag_id nightly_*)",
                 id="a namespace and dag_id of no tenant fail the DAG and list the tenants"),
    pytest.param("bad_privileged.py",
                 f"task 'train' in DAG 'bad_privileged' {KPO}: container 'base' sets securityContext.privileged: "
                 f"true in a GPU pod and would see every GPU of the node; remove securityContext.privileged",
                 id="a privileged GPU container fails the DAG"),
    pytest.param("bad_host_path.py",
                 f"task 'train' in DAG 'bad_host_path' {KPO}: volume 'gpu0' mounts hostPath '/dev/nvidia0' in a "
                 f"GPU pod; a hostPath can hand GPU device nodes, driver files or the device plugin's socket to the "
                 f"pod; use another volume type (hostPaths this policy allows: none)",
                 id="a hostPath to /dev/nvidia0 fails the DAG"),
    pytest.param("bad_node_selector_conflict.py",
                 f"task 'train' in DAG 'bad_node_selector_conflict' {KPO}: nodeSelector nvidia.com/gpu.product is "
                 f"'NVIDIA-H100-80GB-HBM3' on the pod but profile a100-80gb needs 'NVIDIA-A100-SXM4-80GB'; remove "
                 f"it from the pod or choose a profile for that hardware",
                 id="a node selector that contradicts the profile fails the DAG naming both values"),
    pytest.param("bad_kpo_mapped.py",
                 f"task 'sweep' in DAG 'bad_kpo_mapped' {KPO}: gpu.platform/profile 'a100-mig-9g' is not a known "
                 f"GPU profile; known profiles: {KNOWN}",
                 id="a mapped operator is checked on what partial() fixes"),
    pytest.param("bad_task_kubernetes.py",
                 f"task 'train' in DAG 'bad_task_kubernetes' {KPO}: gpu.platform/profile 'a100-40gb' is not a known "
                 f"GPU profile; known profiles: {KNOWN}",
                 id="a task kubernetes decorator is checked like the operator it is"),
    pytest.param("bad_secret_env.py",
                 f"task 'train' in DAG 'bad_secret_env' {KPO}: container 'base' sets env NVIDIA_VISIBLE_DEVICES "
                 f"through valueFrom, which makes the container toolkit expose GPUs the device plugin never allocated; "
                 f"remove it (only NVIDIA_VISIBLE_DEVICES=void is allowed, GPUs are assigned by the GPU profile label)",
                 id="a Secret exposed as NVIDIA_VISIBLE_DEVICES fails the DAG like a plain env var"),
    pytest.param("bad_executor_pod_override.py",
                 "task 'finetune' in DAG 'team_vision__finetune' (KubernetesExecutor pod_override): container "
                 "'base' sets env NVIDIA_VISIBLE_DEVICES='all', which makes the container toolkit expose GPUs the "
                 "device plugin never allocated; remove it (only NVIDIA_VISIBLE_DEVICES=void is allowed, GPUs are "
                 "assigned by the GPU profile label); "
                 "gpu.platform/count 9 exceeds maxCount 8 of profile h100-80gb; ask for 1 to 8",
                 id="a KubernetesExecutor pod_override is checked and every problem is named at once"),
])
def test_a_bad_dag_is_an_import_error_in_the_webhooks_words(parsed, dag_file, message):
    assert parsed["reference"]["import_errors"].get(dag_file) == f"AirflowClusterPolicyViolation: {message}"
    assert dag_file not in parsed["reference"]["loaded"]


@pytest.mark.parametrize("dag_file, dag_ids", [
    pytest.param("good_kpo_h100.py", ["good_kpo_h100"], id="two H100s in a tenant's namespace load"),
    pytest.param("good_kpo_cpu_only.py", ["good_kpo_cpu_only"], id="a CPU-only pod operator loads"),
    pytest.param("good_kpo_mapped.py", ["good_kpo_mapped"], id="a mapped operator with good labels loads"),
    pytest.param("good_kpo_run_time_values.py", ["good_kpo_run_time_values"],
                 id="templates, a namespace known only at run time and quota are skipped not guessed"),
    pytest.param("good_executor_pod_override.py", ["team_vision__embed"],
                 id="a pod_override in the executor's namespace with a tenant's dag_id loads"),
    pytest.param("good_no_kubernetes.py", ["good_no_kubernetes"], id="a DAG without Kubernetes tasks loads"),
    pytest.param("good_kpo_named_pools.py", ["good_kpo_named_pools"], id="GPU tasks that name a pool load"),
])
def test_a_good_dag_loads(parsed, dag_file, dag_ids):
    assert dag_file not in parsed["reference"]["import_errors"]
    assert parsed["reference"]["loaded"][dag_file] == dag_ids


def test_with_the_policy_file_unset_every_dag_loads_and_the_log_says_so_once(parsed):
    assert parsed["off"]["import_errors"] == {}
    assert sorted(parsed["off"]["loaded"]) == ALL_FILES
    assert parsed["log"].count("gpu-webhook parse-time GPU checks are off") == 1


def test_an_unreadable_policy_fails_every_kubernetes_dag_naming_the_file(parsed):
    errors = parsed["unreadable"]["import_errors"]
    missing = parsed["unreadable"]["loaded"]
    assert sorted(errors) == [f for f in ALL_FILES if f != "good_no_kubernetes.py"]
    assert list(missing) == ["good_no_kubernetes.py"]
    for message in errors.values():
        assert message.startswith("AirflowClusterPolicyError: gpu-webhook: the GPU policy [gpu_webhook] policy_file")
        assert "missing.yaml: cannot read the policy file: No such file or directory" in message


def test_enforcement_warn_loads_bad_dags_and_logs_the_webhooks_words(parsed):
    assert parsed["warn"]["import_errors"] == {}
    assert ("[gpu-webhook warn-only] task 'train' in DAG 'bad_unknown_profile' (KubernetesPodOperator pod): "
            "gpu.platform/profile 'h100-8gb' is not a known GPU profile") in parsed["log"]


def test_a_policy_file_replaced_in_place_is_read_again(parsed):
    assert "bad_unknown_profile.py" in parsed["replaced"]["loaded"]


def test_a_tenant_matched_on_the_requester_skips_the_tenant_check_not_the_others(parsed):
    """Who creates the pod is known only to the API server: the webhook decides the tenant then."""
    assert "bad_no_tenant.py" in parsed["requester"]["loaded"]
    assert "is not a known GPU profile" in parsed["requester"]["import_errors"]["bad_unknown_profile.py"]


# --- pools: GPU tasks wait in their tenant's pool (airflow/pools.py) ------------------------------
@pytest.mark.parametrize("task, pool", [
    pytest.param("good_kpo_h100.train", ["gpu-vision", 16],
                 id="two H100s of tenant vision take 16 slots of gpu-vision"),
    pytest.param("good_kpo_mapped.sweep", ["gpu-vision", 2],
                 id="a mapped task of two MIG 1g.10gb slices takes 2 slots, set on what partial fixes"),
    pytest.param("team_vision__embed.embed", ["gpu-vision", 1],
                 id="a KubernetesExecutor pod_override slice of tenant vision by dag_id takes 1 slot"),
    pytest.param("good_kpo_h100.start", ["default_pool", 1], id="a task without a pod keeps its pool"),
    pytest.param("good_kpo_cpu_only.etl", ["default_pool", 1], id="a CPU pod keeps its pool"),
    pytest.param("good_kpo_run_time_values.profile_from_params", ["default_pool", 1],
                 id="a templated profile keeps its pool: the webhook judges the pod"),
    pytest.param("good_kpo_run_time_values.namespace_from_variable", ["default_pool", 1],
                 id="a templated namespace keeps its pool: the tenant is known only at run time"),
    pytest.param("good_kpo_run_time_values.namespace_from_connection", ["default_pool", 1],
                 id="no namespace keeps its pool: the tenant is known only at run time"),
    pytest.param("good_kpo_run_time_values.more_than_the_quota", ["gpu-vision", 40],
                 id="five H100s fit the gpuEquivalent pool; the nvidia.com/gpu line is the webhook's"),
    pytest.param("good_kpo_named_pools.urgent", ["gpu-vision", 8],
                 id="a pool the tenant's airflowPools does not list is replaced by the tenant's pool"),
    pytest.param("good_kpo_named_pools.elsewhere", ["gpu-vision", 1], id="so is any other named pool"),
])
def test_gpu_tasks_are_routed_to_their_tenants_pool_with_their_gpu_weight_as_slots(parsed, task, pool):
    assert parsed["reference"]["pools"][task] == pool


def test_with_assign_pools_false_every_task_keeps_the_pool_its_dag_names(parsed):
    pools = parsed["pools_off"]["pools"]
    assert pools["good_kpo_h100.train"] == ["default_pool", 1]
    assert pools["good_kpo_named_pools.urgent"] == ["vision-urgent", 1]
    assert {p for p, _ in pools.values()} == {"default_pool", "vision-urgent", "etl"}


def test_a_pool_the_tenants_airflow_pools_lists_is_kept_with_the_tasks_gpu_weight(parsed):
    assert parsed["named_pools"]["pools"]["good_kpo_named_pools.urgent"] == ["vision-urgent", 8]
    assert parsed["named_pools"]["pools"]["good_kpo_named_pools.elsewhere"] == ["gpu-vision", 1]


def test_a_pool_smaller_than_the_policy_is_a_warning_when_parsed_not_an_import_error(parsed):
    assert "good_kpo_h100.py" in parsed["named_pools"]["loaded"]
    assert ("[gpu-webhook] task 'train' in DAG 'good_kpo_h100' waits in GPU pool gpu-vision: Airflow pool "
            "'gpu-vision' has 8 slots; the GPU policy gives tenant vision 48") in parsed["log"]
