"""Red team, second pass (pure and render-level): the Helm chart's namespaces and Airflow pool routing.

The ledger and the tenant-facing e2e cases are in tests/e2e/test_redteam2.py. Each test here is
written as the attack; a strict xfail is a hole still open, explained in its docstring.
"""

from __future__ import annotations

import contextlib
import json
import textwrap

import pytest
from helm import Helm, build_helm

from conftest import POLICY_FILE, ROOT, run_with_policy


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(build_helm(), tmp_path_factory.mktemp("helm"))


# ----------------------------------------------------------------------------- the chart's namespaces
@pytest.mark.parametrize("namespace", ["airflow", "ml-jobs"])
def test_the_chart_cannot_be_installed_into_a_namespace_where_tenants_create_gpu_pods(helm, namespace) -> None:
    """The release's namespace is always excluded from both webhooks (the webhook's own pods must
    not wait on it). Installed with ``-n airflow`` (next to Airflow, as people do), that excluded
    the reference policy's tenant namespace: every pod a tenant with ``edit`` creates there got
    GPUs with no profile, quota or security rule, and nothing said so. Now the render fails."""
    done = helm.run("template", "gpu-webhook", str(ROOT / "charts" / "airflow-gpu-webhook"), "--namespace", namespace)
    assert done.returncode != 0, "rendered a namespaceSelector that excludes a tenant namespace"
    assert f"the policy's tenants create GPU pods in \"{namespace}\"" in done.stderr, done.stderr


def test_the_chart_cannot_be_installed_into_default(helm) -> None:
    """``helm install`` without ``--namespace`` puts the release in ``default`` (or the context's
    namespace): ``default`` was then excluded, and whoever may create pods there escaped every rule."""
    done = helm.run("template", "gpu-webhook", str(ROOT / "charts" / "airflow-gpu-webhook"), "--namespace", "default")
    assert done.returncode != 0
    assert "this release is in \"default\"" in done.stderr, done.stderr


def test_excluded_namespaces_cannot_list_a_tenant_namespace(helm) -> None:
    error = helm.template_error("--set", "webhooks.excludedNamespaces={kube-system,ml-jobs}")
    assert "webhooks.excludedNamespaces lists \"ml-jobs\"" in error, error


@pytest.mark.parametrize("ledger, says", [
    pytest.param("ml-jobs", "a namespace whose users may write ConfigMaps", id="a tenant namespace"),
    pytest.param("default", "a namespace whose users may write ConfigMaps", id="default"),
    pytest.param("gpu-webhook", "the release's namespace", id="the release's own namespace"),
])
def test_the_ledger_cannot_live_where_others_write_configmaps(helm, ledger, says) -> None:
    """The webhook trusts every ConfigMap labelled ``gpu.platform/ledger=true`` in the ledger
    namespace (its cache watches them) and the reservations in them. In a tenant's namespace,
    ``edit`` may replace them: erase reservations (over-admission in the window before the pod
    watch sees the pods) or set ``prunedThrough`` past any version (every quota-bound pod of that
    tenant a 503, forever). The chart rendered that without a word; now it refuses."""
    error = helm.template_error("--set", f"trackUsage.ledgerNamespace={ledger}", "--set",
                                "trackUsage.createLedgerNamespace=false")
    assert says in error, error


def test_the_default_render_still_passes_the_namespace_checks(helm) -> None:
    objs = helm.template()
    assert any(o["kind"] == "ValidatingWebhookConfiguration" for o in objs)


# ----------------------------------------------------------------------------- Airflow pools
SQUAT = textwrap.dedent("""
    import json
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
    from airflow_gpu_webhook.airflow.policy import task_policy

    # A DAG of tenant forecasting (nightly_ prefix) naming vision's GPU pool with all its slots.
    with DAG("nightly_squat", schedule=None):
        cpu = PythonOperator(task_id="hog", python_callable=lambda: None, pool="gpu-vision", pool_slots=48)
        gpu = KubernetesPodOperator(task_id="unrouted", image="t", namespace="{{ var.value.ns }}", pool="gpu-vision",
                                    pool_slots=48, labels={"gpu.platform/profile": "a100-mig-1g.10gb"})
        own = KubernetesPodOperator(task_id="routed", image="t", namespace="airflow", pool="gpu-vision",
                                    labels={"gpu.platform/profile": "a100-mig-1g.10gb"})
    out = {}
    for task in (cpu, gpu, own):
        try:
            task_policy(task)
            out[task.task_id] = [task.pool, task.pool_slots]
        except Exception as err:
            out[task.task_id] = type(err).__name__
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def squat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    return run_with_policy(SQUAT, tmp_path_factory.mktemp("squat"))


def test_a_routed_gpu_task_naming_another_tenants_pool_goes_to_its_own(squat) -> None:
    """Held: a GPU task the policy can route is charged and pooled as its own tenant, whatever pool it names."""
    assert squat["routed"] == ["gpu-forecasting", 1]


def test_a_task_of_one_tenant_cannot_hold_another_tenants_gpu_pool(squat) -> None:
    """Pools are a queue, and Airflow pools have no owner: any DAG author may name any pool. The
    cluster policy re-routes only the GPU tasks whose tenant it can tell at parse time; every
    other task keeps the pool its DAG names. So a forecasting DAG (or any DAG in the shared
    Airflow) puts a PythonOperator, or a KubernetesPodOperator with a templated namespace, into
    ``gpu-vision`` with ``pool_slots=48`` (the whole pool) and sleeps: every vision GPU task then
    waits in "scheduled" for as long as it likes. The webhook still charges the squatter's pod to
    its own tenant (no quota is stolen, no GPU is handed out), but vision's GPU tasks never start.

    Closed: a task may sit in a policy GPU pool (``gpu-<tenant>``) only when the policy routed it
    there; any other task naming one goes to ``default_pool`` with one slot (a warning in the DAG
    processor log). That also moves a tenant's own unroutable GPU tasks (a templated namespace),
    which the webhook still judges at run time (docs/pools.md)."""
    assert squat["hog"] == ["default_pool", 1]
    assert squat["unrouted"] == ["default_pool", 1]


# ----------------------------------------------------------------------------- the ledger's queue
def test_a_review_whose_caller_went_away_is_not_reserved(tmp_path) -> None:
    """The group commit drops a queued request "whose call the API server gave up on"
    (docs/quota.md), but only a cancelled coroutine counts as given up, and uvicorn never cancels
    a handler when its client disconnects: it only marks the connection. So when the API server's
    5 s timeout expires while a request waits behind its tenant's round (failurePolicy Fail: the
    create is refused), the next round reserved for it anyway: a ghost holding the tenant's quota
    for the grace, and one per timed-out call in a burst. Driven here through the real ASGI app
    and the real QuotaReserver: round 1 is held open, the second request's client disconnects
    while it is queued; it must never reach a round."""
    import asyncio
    import threading

    import orjson

    from airflow_gpu_webhook.cluster.ledger import QuotaReserver
    from airflow_gpu_webhook.core.decision import Decision, Reason
    from airflow_gpu_webhook.core.policy import load_policy
    from airflow_gpu_webhook.server.app import Runtime, create_app

    policy = load_policy(POLICY_FILE)
    release = threading.Event()
    rounds: list[list[str]] = []

    class HeldLedger:
        book = SimpleBook()

        def reserve_many(self, tenant, quota, requests):
            rounds.append([r.pod for r in requests])
            release.wait(5)
            return [Decision.allow(Reason.ADMITTED, tenant=tenant) for _ in requests]

    reserver = QuotaReserver(HeldLedger())  # type: ignore[arg-type]

    app = create_app(Runtime(policy, reserve=reserver))
    # what the validating step decides for an admitted, quota-bound GPU pod of tenant forecasting
    app.steps["/validate"] = lambda review: Decision.allow(Reason.ADMITTED, tenant="forecasting")

    def body(name: str, uid: str) -> bytes:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "airflow", "uid": uid},
               "spec": {"containers": [{"name": "base", "image": "t",
                                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
        return orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                             "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                                         "operation": "CREATE", "namespace": "airflow", "object": pod}})

    async def call(name: str, uid: str, gone: asyncio.Event) -> list[dict]:
        sent: list[dict] = []
        messages = [{"type": "http.request", "body": body(name, uid), "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/validate", "headers": [
            (b"content-type", b"application/json")], "state": {}}
        await app(scope, receive, send)
        return sent

    async def scenario() -> None:
        stay, leave = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(call("p0", "00000000-0000-4000-8000-000000000000", stay))
        while not rounds:
            await asyncio.sleep(0.01)   # round 1 (p0) is in flight and held
        second = asyncio.ensure_future(call("p1", "00000000-0000-4000-8000-000000000001", leave))
        await asyncio.sleep(0.05)       # p1 is queued behind it
        leave.set()                     # the API server gave up on p1's call and closed the connection
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(first, 5)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(second, 5)
        stay.set()

    asyncio.run(scenario())
    assert rounds[0] == ["airflow/p0"]
    assert all("airflow/p1" not in r for r in rounds), f"reserved for a call nobody waits for: {rounds}"


class SimpleBook:
    def holders(self, tenant):
        return []


def test_uvicorn_reports_a_closed_connection_to_a_waiting_reservation() -> None:
    """The fix above rests on uvicorn's behaviour: once the body is read, ``receive()`` returns
    ``http.disconnect`` when the client closes the connection (and the handler is never
    cancelled). Checked against the real uvicorn (httptools, as ``serve`` runs it)."""
    import asyncio
    import socket

    import uvicorn

    from airflow_gpu_webhook.server.app import _unless_disconnected

    outcome: dict[str, object] = {}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()   # the body

        async def forever():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                outcome["cancelled"] = True
                raise

        outcome["result"] = await _unless_disconnected(forever(), receive)

    async def scenario() -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, http="httptools", lifespan="off", log_level="warning"))
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()   # what the API server does when its webhook timeout expires
        for _ in range(200):
            if "result" in outcome:
                break
            await asyncio.sleep(0.01)
        server.should_exit = True
        await serving

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert outcome == {"cancelled": True, "result": None}


# ----------------------------------------------------------------------------- ledger names
@pytest.mark.parametrize("first, second", [
    pytest.param("Vision", "vision", id="case"),
    pytest.param("team_a", "team-a", id="underscore and dash"),
    pytest.param("team.a", "team a", id="dot and space"),
])
def test_two_tenants_never_share_a_quota_ledger(first, second) -> None:
    """The ledger ConfigMap of a tenant is ``gpu-webhook-ledger-`` + its name lower-cased with
    every other character than ``[a-z0-9-]`` made ``-``; tenant names are free strings. Two
    tenants whose names map to one ConfigMap share reservations: each one's unseen reservations
    count against the other (a burst of one refuses the other's pods with "exceeded quota"
    while it holds nothing) and they share one ``prunedThrough``. Their accounting stamps stay
    distinct (``safe_label_value`` adds a hash), so only the ledger merged them, silently. The
    policy now refuses such names, naming both."""
    from airflow_gpu_webhook.core.policy import PolicyError, parse_policy

    data = json.loads(json.dumps(__import__("yaml").safe_load(POLICY_FILE.read_text())))
    data["spec"]["tenants"] = {first: {"match": [{"namespace": "a"}], "quota": {"nvidia.com/gpu": 1}},
                               second: {"match": [{"namespace": "b"}], "quota": {"nvidia.com/gpu": 1}}}
    with pytest.raises((PolicyError, ValueError)) as refused:
        parse_policy(data)
    assert "quota ledger" in str(refused.value) and repr(first) in str(refused.value), str(refused.value)


def test_a_batch_never_spans_a_policy_reload(policy) -> None:
    """Held. Tried: a round of tenant forecasting in flight under quota 5, three requests queued
    behind it, then a reload lowering the quota to 2 and three more requests. Had the next round
    taken all six under the first one's quota, the three judged after the reload would have
    been admitted against 5. The queue splits a batch where the quota changes: the old three go
    under 5 (decided before the reload, as a pod admitted a moment earlier would be), the new
    three are checked against 2 with the old ones counted, and refused."""
    import asyncio
    import threading
    from decimal import Decimal as D

    from test_ledger import QUOTA, ConfigMaps, _ledger, _uid

    from airflow_gpu_webhook.cluster.ledger import QuotaReserver, Reservation

    lowered = {"nvidia.com/gpu": D(2), "gpuEquivalent": D(2)}
    one = {"nvidia.com/gpu": D(1), "gpuEquivalent": D(1)}
    reserver = QuotaReserver(_ledger(ConfigMaps(), policy))
    real = reserver.ledger.reserve_many
    release, batches = threading.Event(), []

    def held(tenant, quota, requests):
        batches.append((dict(quota), [r.pod for r in requests]))
        if len(batches) == 1:
            release.wait(5)
        return real(tenant, quota, requests)

    reserver.ledger.reserve_many = held  # type: ignore[method-assign]

    async def scenario() -> list:
        def ask(i: int, quota: dict) -> asyncio.Future:
            return asyncio.ensure_future(reserver._queued("forecasting", quota, Reservation(_uid(i), f"airflow/p{i}", one)))

        first = ask(0, QUOTA)
        while not batches:
            await asyncio.sleep(0.01)
        before = [ask(i, QUOTA) for i in (1, 2, 3)]
        after = [ask(i, lowered) for i in (4, 5, 6)]   # the reload
        await asyncio.sleep(0.05)
        release.set()
        return [await f for f in (first, *before, *after)]

    decisions = asyncio.run(scenario())
    assert [q["nvidia.com/gpu"] for q, _ in batches] == [D(5), D(5), D(2)]
    assert [pods for _, pods in batches] == [["airflow/p0"], ["airflow/p1", "airflow/p2", "airflow/p3"],
                                              ["airflow/p4", "airflow/p5", "airflow/p6"]]
    assert [d.allowed for d in decisions] == [True] * 4 + [False] * 3


def test_a_failed_certgen_run_leaves_no_service_account_that_may_patch_the_webhooks(helm) -> None:
    """The certgen hook's ServiceAccount may create Secrets in the release's namespace and patch
    both webhook configurations (cluster-scoped: failurePolicy, namespaceSelector, rules,
    clientConfig). Its objects were deleted only on ``hook-succeeded``: a run that failed (an
    image pull, an API hiccup past ``activeDeadlineSeconds``) left the ServiceAccount and its
    ClusterRoleBinding behind, so anyone who may create pods or tokens in the release's
    namespace could run as it and, e.g., widen the mutating webhook to every pod of
    kube-system. Now the ServiceAccount and RBAC also go on ``hook-failed``; the Job stays for
    its log."""
    objs = helm.template()
    hooks = {(o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")
             for o in objs if "helm.sh/hook" in (o["metadata"].get("annotations") or {})
             and o["metadata"]["name"].endswith("-certgen")}
    granted = {k: v for k, v in hooks.items() if k[0] != "Job"}
    assert set(k[0] for k in granted) == {"ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                          "ClusterRoleBinding"}
    assert all("hook-failed" in policy for policy in granted.values()), granted
    assert "hook-failed" not in hooks[("Job", "gpu-webhook-certgen")]
