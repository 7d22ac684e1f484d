"""``gpu-webhook``: serve | review | usage | policy | certs | explain | dra | validate-driver. Thin shell over the core.

Every command exits 2 with one line on stderr for bad input (a policy, a review or a pod
list it cannot use), so scripts and CI can tell "bad input" from "judged".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .. import __version__
from ..cluster.wiring import DEFAULT_GRACE, DEFAULT_LEDGER_NAMESPACE, TOP_HOLDERS
from ..server.reload import DEFAULT_INTERVAL

if TYPE_CHECKING:
    from ..core.policy import Policy

# Each command imports what it needs when it runs (orjson, yaml, the core, the server...), so
# `gpu-webhook --help` and the init container's validate-driver load none of it.

__all__ = ["GRACEFUL_SHUTDOWN_SECONDS", "exposure_warning", "main"]

USAGE_ERROR = 2
#: How long ``serve`` waits on SIGTERM for open connections before closing them: longer than the
#: API server's webhook timeout (5 s), so a review in flight still gets its answer, and well under
#: a pod's default terminationGracePeriodSeconds (30 s).
GRACEFUL_SHUTDOWN_SECONDS = 10


def _fail(message: str) -> NoReturn:
    print(f"gpu-webhook: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def _policy(path: str) -> Policy:
    from ..core.policy import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as err:
        _fail(f"invalid policy:\n{err}")


def exposure_warning(args: argparse.Namespace) -> str | None:
    """Why this ``serve`` can be made to spend quota by a forged review, or None.

    With ``--track-usage`` an admitted review writes a reservation to the ledger; without
    ``--client-ca`` any client that reaches the port can send one (a forged review of a big pod
    holds its tenant's quota until the reservation's grace runs out, and can be sent again).
    """
    if not args.track_usage or args.client_ca:
        return None
    return ("quota reservations can be spent by any client that reaches this port: serve with --client-ca "
            "(the API server's client CA: manifests/components/client-ca) or narrow the NetworkPolicy to the API "
            "server's addresses (docs/security.md)")


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import ssl

    import uvicorn

    from ..cluster.wiring import BENCHMARK_LEDGER_ENV, kube_client, ledger_levers_off, track_usage
    from ..server.app import Runtime, create_app, with_client_certificate
    from ..server.metrics import WebhookMetrics
    from ..server.reload import certificate_reloader, policy_reloader

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    policy = _policy(args.policy)
    for path in (args.tls_cert, args.tls_key):
        if not Path(path).is_file():
            _fail(f"TLS file {path} does not exist (make one with: gpu-webhook certs generate)")
    if args.client_ca and not Path(args.client_ca).is_file():
        _fail(f"client CA file {args.client_ca} does not exist (the CA of the API server's client certificate: "
              f"gpu-webhook certs generate --client; certs/README.md)")
    logging.getLogger("gpu_webhook").info(
        "serving policy %s (%d profiles, %d tenants, enforcement %s) on https://%s:%d; quota counts %s",
        policy.metadata.name, len(policy.spec.profiles), len(policy.spec.tenants), policy.spec.enforcement,
        args.host, args.port, "the cluster's managed pods (watched)" if args.track_usage else "each pod alone")
    if warning := exposure_warning(args):
        logging.getLogger("gpu_webhook").warning(warning)
    metrics = WebhookMetrics()
    tracking = None
    if args.track_usage:
        try:
            levers_off = ledger_levers_off()
        except ValueError as err:
            _fail(str(err))
        if levers_off:
            logging.getLogger("gpu_webhook").warning(
                "%s: the quota ledger runs without %s (a benchmark knob: slower, never less exact)",
                BENCHMARK_LEDGER_ENV, " and ".join(sorted(levers_off)))
        tracking = track_usage(kube_client(args.kubeconfig), policy, metrics, args.ledger_namespace,
                               args.reservation_grace, levers_off)
    if tracking is None:
        runtime = Runtime(policy, metrics=metrics, client_certificate_required=bool(args.client_ca))
    else:
        runtime = Runtime(policy, usage=tracking.usage, ready=tracking.ready, nodes=tracking.nodes,
                          templates=tracking.templates, pod_profiles=tracking.pod_profiles,
                          reserve=tracking.reserve, metrics=metrics,
                          client_certificate_required=bool(args.client_ca))

    def apply_policy(new: Policy) -> None:
        if tracking is not None:
            tracking.apply_policy(new)   # the book first: usage is re-weighed before the runtime judges by it
        runtime.policy = new

    config = uvicorn.Config(
        create_app(runtime), host=args.host, port=args.port, ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key, log_level=args.log_level, access_log=args.access_log, server_header=False,
        proxy_headers=False,  # the API server calls us directly; trust no X-Forwarded-* header
        # Longer than the API server's idle-connection timeout (90 s), so it is never the
        # webhook that closes a kept-alive connection the API server is about to reuse.
        timeout_keep_alive=100,
        # ...so on SIGTERM uvicorn would wait for those idle connections forever: bound it.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        # A client certificate is verified whenever one is presented; the admission routes then
        # refuse connections without one (app.py), while the kubelet's probes need none.
        ssl_cert_reqs=ssl.CERT_OPTIONAL if args.client_ca else ssl.CERT_NONE, ssl_ca_certs=args.client_ca)
    config.load()  # builds config.ssl: the SSLContext the certificate reloader loads new pairs into
    assert config.ssl is not None  # always built: --tls-cert and --tls-key are required
    # No TLS 1.3 session tickets: the API server's webhook client (client-go) keeps no session
    # cache, so it never resumes, and the two tickets OpenSSL makes after every handshake (the
    # session, with the client certificate, encrypted) cost a third of a new connection's CPU
    # here with --client-ca (benchmarks/handshake.py). The API server opens new connections
    # whenever more than 25 calls to one webhook are in flight (client-go's idle pool).
    config.ssl.num_tickets = 0
    if args.client_ca:
        config.http_protocol_class = with_client_certificate(config.http_protocol_class)
    watches = [] if args.reload_interval <= 0 else [
        policy_reloader(Path(args.policy), apply_policy, runtime.metrics.reloaded, args.reload_interval),
        certificate_reloader(config.ssl, Path(args.tls_cert), Path(args.tls_key), runtime.metrics.reloaded,
                             args.reload_interval),
    ]
    # The loop uvicorn itself would pick (uvloop when installed, as it is with this package), not
    # asyncio.run's default loop: the stdlib loop's TLS path cost about half the throughput.
    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_serve_until_stopped(uvicorn.Server(config), watches))
    return 0


async def _serve_until_stopped(server, watches) -> None:
    import asyncio

    loop = type(asyncio.get_running_loop())
    logging.getLogger("gpu_webhook").info("event loop %s.%s, HTTP protocol %s", loop.__module__, loop.__qualname__,
                                          server.config.http_protocol_class.__name__)
    tasks = [asyncio.create_task(watch.run()) for watch in watches]
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()


def _read_json(source: str, what: str) -> Any:
    import orjson

    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
        return orjson.loads(data)
    except OSError as err:
        _fail(f"cannot read {what} {source}: {err.strerror}")
    except orjson.JSONDecodeError as err:
        _fail(f"{what} {source} is not valid JSON: {err}")


def _cluster_pods(source: str | None) -> list[dict[str, Any]]:
    if source is None:
        return []
    pod_list = _read_json(source, "pod list")
    items = pod_list.get("items") if isinstance(pod_list, dict) else None
    if not isinstance(items, list):
        _fail(f"pod list {source} has no items: expected the output of kubectl get pods -o json")
    return [p for p in items if isinstance(p, dict)]


def _review(args: argparse.Namespace) -> int:
    from ..core.pod import metadata
    from ..core.quota import usage_from_pods
    from ..server.admission import review_chain
    from ..server.review import BadReview, parse_review, review_response

    policy = _policy(args.policy)
    source = args.file
    body = sys.stdin.buffer.read() if source == "-" else _read_bytes(source)
    try:
        request = parse_review(body)
    except BadReview as bad:
        _fail(f"{source}: {bad.message}")
    pod_name = metadata(request.object or {}).get("name") or ""
    usage = usage_from_pods(_cluster_pods(args.cluster_pods), policy, skip=(request.namespace, pod_name))
    decision = review_chain(request, policy, usage)
    sys.stdout.write(json.dumps(review_response(request.uid, decision), indent=2) + "\n")
    return 0


def _read_bytes(source: str) -> bytes:
    try:
        return Path(source).read_bytes()
    except OSError as err:
        _fail(f"cannot read {source}: {err.strerror}")


def _usage(args: argparse.Namespace) -> int:
    from ..cluster.tracker import PodWatch, UsageBook
    from ..cluster.usage_report import usage_table
    from ..cluster.wiring import kube_client

    policy = _policy(args.policy)
    if args.tenant and args.tenant not in policy.spec.tenants:
        _fail(f"no tenant {args.tenant!r} in the policy; tenants: {', '.join(policy.spec.tenants)}")
    book = UsageBook(policy)
    try:
        PodWatch(kube_client(args.kubeconfig), book).list_once()
    except Exception as err:  # noqa: BLE001 - any client or config failure is one line for the operator
        _fail(f"cannot list the cluster's pods: {err}")
    print(usage_table(policy, book, args.tenant, args.top))
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    policy = _policy(args.file)
    print(f"{args.file}: valid policy {policy.metadata.name!r}: profiles {', '.join(policy.spec.profiles)}; "
          f"tenants {', '.join(policy.spec.tenants) or 'none'}; enforcement {policy.spec.enforcement}")
    return 0


def _policy_schema(_: argparse.Namespace) -> int:
    from ..core.policy import policy_schema

    print(json.dumps(policy_schema(), indent=2))
    return 0


def _policy_conditions(args: argparse.Namespace) -> int:
    from .conditions import helm_values, render

    print((helm_values if args.helm_values else render)(_policy(args.file)), end="")
    return 0


def _certs_generate(args: argparse.Namespace) -> int:
    from .certs import generate, generate_client

    try:
        files = generate(Path(args.out), args.service, args.namespace, args.dns_name, args.ip, force=args.force)
        client = generate_client(Path(args.out), force=args.force) if args.client else None
    except (FileExistsError, ValueError) as err:
        _fail(str(err))
    if client is not None:
        print(f"wrote {client.ca_cert}, {client.ca_key}, {client.cert}, {client.key}: serve --client-ca "
              f"{client.ca_cert}, and the API server presents {client.cert} (certs/README.md)")
    print(f"wrote {files.ca_cert}, {files.ca_key}, {files.cert}, {files.key} (keys mode 0600)")
    print("next: the Secret and caBundle from these files: see certs/README.md (kubectl apply -k "
          "manifests/overlays/self-managed, or gpu-webhook certs inject for manifests rendered elsewhere)")
    return 0


def _certs_inject(args: argparse.Namespace) -> int:
    import yaml

    from .certs import ca_bundle, inject_ca_bundle, load_documents

    try:
        bundle = ca_bundle(Path(args.ca))
    except (OSError, ValueError) as err:
        _fail(f"cannot use CA {args.ca}: {err}")
    for name in args.files:
        try:
            docs = load_documents(Path(name))
        except (OSError, yaml.YAMLError) as err:
            _fail(f"cannot read {name}: {err}")
        if not inject_ca_bundle(docs, bundle, args.url):
            _fail(f"{name} has no MutatingWebhookConfiguration or ValidatingWebhookConfiguration")
        text = yaml.safe_dump_all(docs, sort_keys=False)
        if args.in_place:
            Path(name).write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text if len(args.files) == 1 else f"---\n{text}")
    return 0


def _certs_ensure(args: argparse.Namespace) -> int:
    """The chart's certgen hook Job (airflow_gpu_webhook.cluster.certgen)."""
    import datetime as dt
    import tempfile

    from kubernetes import client

    from ..cluster.certgen import ServingPair, Target, ensure
    from ..cluster.wiring import kube_client
    from .certs import generate

    def make_pair() -> ServingPair:
        with tempfile.TemporaryDirectory() as out:
            files = generate(Path(out) / "certs", args.service, args.namespace, args.dns_name)
            return ServingPair(files.ca_cert.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())

    api = kube_client(args.kubeconfig)
    target = Target(args.namespace, args.service, args.secret, args.webhook_configuration)
    outcome = ensure(client.CoreV1Api(api), client.AdmissionregistrationV1Api(api), target, make_pair,
                     renew_before=dt.timedelta(days=args.renew_before_days))
    print(*outcome.report(target), sep="\n")
    return 0


def _validate_driver(argv: list[str]) -> int:
    from ..validator.cli import run_as_program

    run_as_program(argv)  # exits itself: hard after a timeout, as a hung driver call may never return
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu-webhook", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpu-webhook {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTPS admission webhook")
    serve.add_argument("--policy", required=True, help="the policy file (YAML)")
    serve.add_argument("--tls-cert", required=True, help="serving certificate (PEM)")
    serve.add_argument("--tls-key", required=True, help="serving key (PEM)")
    serve.add_argument("--client-ca", help="require, on /mutate and /validate, a client certificate signed by this CA "
                                           "(PEM): the API server's, see certs/README.md (default: none required)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8443, help="port to listen on (default 8443)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every HTTP request (off: one line per denial)")
    serve.add_argument("--track-usage", action="store_true",
                       help="charge quota against the cluster's running GPU pods (list+watch; /readyz waits for it)")
    serve.add_argument("--kubeconfig", help="kubeconfig for --track-usage (default: in-cluster, else ~/.kube/config)")
    serve.add_argument("--ledger-namespace", default=DEFAULT_LEDGER_NAMESPACE,
                       help=f"where the quota ledger ConfigMaps live (default {DEFAULT_LEDGER_NAMESPACE}, "
                            "as the manifests)")
    serve.add_argument("--reservation-grace", type=float, default=DEFAULT_GRACE,
                       help=f"seconds before a quota reservation whose pod no watch has seen is checked with a "
                            f"GET and dropped if the pod was never created (default {DEFAULT_GRACE:g}; must exceed "
                            f"the time other validating webhooks take after this one)")
    serve.add_argument("--reload-interval", type=float, default=DEFAULT_INTERVAL,
                       help=f"seconds between checks of the policy and certificate files for changes (default "
                            f"{DEFAULT_INTERVAL:g}; 0: never)")
    serve.set_defaults(run=_serve)

    review = commands.add_parser("review", help="judge an AdmissionReview offline (mutation, then validation)")
    review.add_argument("--policy", required=True)
    review.add_argument("--cluster-pods", help="a PodList (kubectl get pods -A -o json) to count tenants' usage from")
    review.add_argument("file", nargs="?", default="-", help="the AdmissionReview (default: stdin)")
    review.set_defaults(run=_review)

    usage = commands.add_parser("usage", help="each tenant's quota lines, usage and top holders, from the cluster")
    usage.add_argument("--policy", required=True)
    usage.add_argument("--tenant", help="only this tenant")
    usage.add_argument("--top", type=int, default=TOP_HOLDERS,
                       help=f"how many holders to list per tenant (default {TOP_HOLDERS})")
    usage.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    usage.set_defaults(run=_usage)

    policy = commands.add_parser("policy", help="check a policy file or print its JSON Schema")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate a policy file")
    check.add_argument("file")
    check.set_defaults(run=_policy_check)
    policy_commands.add_parser("schema", help="print the policy's JSON Schema").set_defaults(run=_policy_schema)
    conditions = policy_commands.add_parser(
        "conditions", help="print the webhook configurations (CEL matchConditions) for a policy file")
    conditions.add_argument("file")
    conditions.add_argument("--helm-values", action="store_true",
                            help="print them as the Helm chart's webhooks.matchConditions value instead")
    conditions.set_defaults(run=_policy_conditions)

    certs = commands.add_parser("certs", help="make a CA and serving certificate; put the CA into manifests")
    certs_commands = certs.add_subparsers(dest="certs_command", required=True)
    gen = certs_commands.add_parser("generate", help="write ca.crt ca.key tls.crt tls.key")
    gen.add_argument("--out", required=True, help="directory to write into")
    gen.add_argument("--service", required=True, help="the webhook's Service name")
    gen.add_argument("--namespace", required=True, help="the webhook's namespace")
    gen.add_argument("--dns-name", action="append", default=[], help="extra DNS SAN (repeatable)")
    gen.add_argument("--ip", action="append", default=[], help="extra IP SAN (repeatable)")
    gen.add_argument("--client", action="store_true",
                     help="also write a client CA and the API server's client certificate "
                          "(client-ca.crt, apiserver-client.crt/.key) for serve --client-ca")
    gen.add_argument("--force", action="store_true", help="replace existing files")
    gen.set_defaults(run=_certs_generate)
    inject = certs_commands.add_parser("inject", help="set caBundle in webhook configuration manifests")
    inject.add_argument("--ca", required=True, help="the CA certificate (ca.crt)")
    inject.add_argument("--url", help="call the webhook at this https base URL instead of the Service")
    inject.add_argument("--in-place", action="store_true", help="rewrite the files instead of printing")
    inject.add_argument("files", nargs="+")
    inject.set_defaults(run=_certs_inject)

    ensure = certs_commands.add_parser(
        "ensure", help="in the cluster (the Helm chart's certgen Job): create or renew the serving Secret when "
                       "missing or expiring, and write its CA into both webhook configurations' caBundle")
    for flag in ("--namespace", "--service", "--secret", "--webhook-configuration"):
        ensure.add_argument(flag, required=True)
    ensure.add_argument("--dns-name", action="append", default=[], help="extra DNS SAN (repeatable)")
    ensure.add_argument("--renew-before-days", type=int, default=30)
    ensure.add_argument("--kubeconfig", help="default: in-cluster, else ~/.kube/config")
    ensure.set_defaults(run=_certs_ensure)

    # Listed for --help only: main() hands their arguments to their own parsers.
    commands.add_parser("validate-driver", help="check the node's NVIDIA driver and GPUs (the init container)")
    commands.add_parser("explain", help="what a task with a GPU profile label will get, from the policy")
    commands.add_parser("airflow-pools", help="the Airflow pools the policy implies (pools import JSON, or --apply)")
    commands.add_parser("dra", help="DRA profiles: `dra templates` prints the ResourceClaimTemplates the tenants' "
                                    "namespaces need")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["validate-driver"]:
        return _validate_driver(argv[1:])
    if argv[:1] == ["explain"]:
        from .explain import run_explain

        return run_explain(argv[1:])
    if argv[:1] == ["airflow-pools"]:
        from .airflow_pools import run_airflow_pools

        return run_airflow_pools(argv[1:])
    if argv[:1] == ["dra"]:
        from .claim_templates import run_dra

        return run_dra(argv[1:])
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
