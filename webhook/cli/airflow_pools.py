"""``gpu-webhook airflow-pools``: the Airflow pools the GPU policy implies, printed or applied.

Prints the JSON document ``airflow pools import`` reads (one pool per tenant with a bounded
quota, ``include_deferred: true``); with ``--apply URL`` writes them to a running Airflow through
its REST API instead (create or overwrite; other pools are left alone)::

    gpu-webhook airflow-pools --policy policy.yaml > pools.json && airflow pools import pools.json
    gpu-webhook airflow-pools --policy policy.yaml --apply http://airflow-api-server:8080 --token "$TOKEN"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from ..airflow.pools import import_document, policy_pools
from ..airflow.pools_api import PoolsApi, PoolsApiError, token_for
from ..core.policy import PolicyError, load_policy

__all__ = ["run_airflow_pools"]

USAGE_ERROR = 2
FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpu-webhook airflow-pools", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the policy file (YAML)")
    parser.add_argument("--apply", metavar="URL", help="write the pools to the Airflow API server at URL "
                                                        "(e.g. http://localhost:8080) instead of printing them")
    parser.add_argument("--token", default=os.environ.get("AIRFLOW_API_TOKEN"),
                        help="bearer token for --apply (default: $AIRFLOW_API_TOKEN)")
    parser.add_argument("--username", help="get a token from URL/auth/token with this user (password: "
                                           "$AIRFLOW_API_PASSWORD)")
    return parser


def run_airflow_pools(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    try:
        policy = load_policy(args.policy)
    except PolicyError as err:
        print(f"gpu-webhook: invalid policy:\n{err}", file=sys.stderr)
        return USAGE_ERROR
    pools = policy_pools(policy)
    if not args.apply:
        print(json.dumps(import_document(pools), indent=2))
        return 0
    try:
        token = args.token
        if args.username:
            token = token_for(args.apply, args.username, os.environ.get("AIRFLOW_API_PASSWORD", ""))
        written = PoolsApi(args.apply, token).apply(pools)
    except PoolsApiError as err:
        print(f"gpu-webhook: could not apply the pools: {err}", file=sys.stderr)
        return FAILED
    for pool in pools:
        print(f"{pool.name}: {pool.slots} slots{'' if pool.name in written else ' (NOT written)'}")
    return 0 if {p.name for p in pools} <= set(written) else FAILED
