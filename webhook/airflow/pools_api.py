"""Airflow's pools through its public REST API (Airflow 3: ``/api/v2/pools``), with the standard library only.

Used by ``gpu-webhook airflow-pools --apply`` (write) and by the cluster policy's parse-time
check (read): a DAG file is parsed in a process without database access, so the pools are read
the way any client reads them. Authentication: a bearer token (``token``), or none where the
API server lets anonymous clients in (``[core] simple_auth_manager_all_admins``); a token comes
from ``POST /auth/token`` (:func:`token_for`).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from .pools import PoolSpec

__all__ = ["PAGE", "PoolsApi", "PoolsApiError", "token_for"]

#: Pools per page when listing (the API's own maximum is ``[api] maximum_page_limit``, 100 by default).
PAGE = 100
TIMEOUT = 10.0


class PoolsApiError(RuntimeError):
    """The API could not be reached, or answered with an error (the message says which)."""


def _call(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")[:500]
        raise PoolsApiError(f"{method} {url}: HTTP {err.code}: {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise PoolsApiError(f"{method} {url}: {err}") from None


def token_for(base_url: str, username: str, password: str) -> str:
    """A bearer token from the API server's ``POST /auth/token`` (the simple and FAB auth managers)."""
    answer = _call("POST", f"{base_url.rstrip('/')}/auth/token", {"username": username, "password": password})
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str):
        raise PoolsApiError(f"POST {base_url}/auth/token: no access_token in the answer")
    return answer["access_token"]


class PoolsApi:
    """The pools of one Airflow API server (``base_url`` like ``http://airflow-api-server:8080``)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/api/v2/pools"
        self.token = token

    def slots(self) -> dict[str, int]:
        """Every pool's name and total slots (``-1``: unlimited, as Airflow says it)."""
        found: dict[str, int] = {}
        offset = 0
        while True:
            page = _call("GET", f"{self.url}?limit={PAGE}&offset={offset}", token=self.token)
            pools = page.get("pools", []) if isinstance(page, dict) else []
            try:
                found.update({str(p["name"]): int(p["slots"]) for p in pools})
                total = int(page.get("total_entries", 0))
            except (KeyError, TypeError, ValueError) as err:
                raise PoolsApiError(f"GET {self.url}: an answer without pool names and slots ({err!r})") from None
            offset += len(pools)   # by position, not by names found: a repeated name cannot loop forever
            if not pools or offset >= total:
                return found

    def apply(self, pools: Iterable[PoolSpec]) -> list[str]:
        """Create or overwrite ``pools`` in one bulk request; the names written. Pools not named are left alone."""
        entities = [p.api_body() for p in pools]
        if not entities:
            return []
        answer = _call("PATCH", self.url, {"actions": [
            {"action": "create", "entities": entities, "action_on_existence": "overwrite"}]}, token=self.token)
        result = answer.get("create", {}) if isinstance(answer, dict) else {}
        if result.get("errors"):
            raise PoolsApiError(f"PATCH {self.url}: {result['errors']}")
        return [str(name) for name in result.get("success", [])]
