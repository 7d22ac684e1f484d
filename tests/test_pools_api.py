"""Airflow's pools through its REST API: paging, the bulk write, and every failure as PoolsApiError.

The real API server is driven by tests/e2e/test_airflow_pools.py; here a stand-in answers what
the case says, so paging and broken answers can be shown to end (and to end clearly)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from airflow_gpu_webhook.airflow.pools import PoolSpec
from airflow_gpu_webhook.airflow.pools_api import PoolsApi, PoolsApiError

from serve import send_json

Answer = Callable[[str, int, Any], tuple[int, Any]]


@pytest.fixture
def stand_in() -> Iterator[Callable[[Answer], tuple[str, list]]]:
    """Start a stand-in whose ``answer(method, offset, body)`` gives (status, JSON); returns its URL
    and the list of requests it saw."""
    servers = []

    def start(answer: Answer) -> tuple[str, list]:
        seen: list = []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, method: str) -> None:
                query = parse_qs(urlsplit(self.path).query)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                seen.append((method, self.path, body, self.headers.get("Authorization")))
                send_json(self, *reversed(answer(method, int(query.get("offset", ["0"])[0]), body)))

            def do_GET(self) -> None:
                self._answer("GET")

            def do_PATCH(self) -> None:
                self._answer("PATCH")

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _pools(first: int, count: int) -> list[dict[str, Any]]:
    return [{"name": f"p{i}", "slots": i} for i in range(first, first + count)]


def test_every_page_is_read_until_the_total(stand_in):
    url, seen = stand_in(lambda method, offset, body: (200, {"pools": _pools(offset, min(100, 250 - offset)),
                                                              "total_entries": 250}))
    slots = PoolsApi(url, token="t0k").slots()
    assert len(slots) == 250 and slots["p249"] == 249
    assert [path for _, path, _, _ in seen] == [f"/api/v2/pools?limit=100&offset={o}" for o in (0, 100, 200)]
    assert {auth for *_, auth in seen} == {"Bearer t0k"}


def test_a_server_repeating_its_first_page_cannot_loop_forever(stand_in):
    url, seen = stand_in(lambda method, offset, body: (200, {"pools": _pools(0, 100), "total_entries": 250}))
    assert len(PoolsApi(url).slots()) == 100
    assert len(seen) == 3, "paged by position: three pages of 100 reach the total of 250"


BROKEN = [
    pytest.param(lambda m, o, b: (500, {"detail": "db down"}), "HTTP 500", id="an error status names it"),
    pytest.param(lambda m, o, b: (200, {"pools": [{"slots": 3}], "total_entries": 1}), "without pool names",
                 id="a pool without a name"),
    pytest.param(lambda m, o, b: (200, {"pools": [{"name": "a", "slots": "many"}], "total_entries": 1}),
                 "without pool names", id="slots that are not a number"),
]


@pytest.mark.parametrize("answer, words", BROKEN)
def test_a_broken_answer_is_a_pools_api_error(stand_in, answer, words):
    url, _ = stand_in(answer)
    with pytest.raises(PoolsApiError, match=words):
        PoolsApi(url).slots()


def test_an_unreachable_api_is_a_pools_api_error():
    with pytest.raises(PoolsApiError, match=r"127\.0\.0\.1:9"):
        PoolsApi("http://127.0.0.1:9").slots()


def test_apply_writes_every_pool_in_one_bulk_request(stand_in):
    url, seen = stand_in(lambda m, o, body: (200, {"create": {"success": [e["name"] for e in
                                                                         body["actions"][0]["entities"]]}}))
    pools = [PoolSpec("gpu-vision", "vision", 48, "GPU quota of tenant vision")]
    assert PoolsApi(url).apply(pools) == ["gpu-vision"]
    method, _, body, _ = seen[0]
    assert method == "PATCH"
    assert body == {"actions": [{"action": "create", "action_on_existence": "overwrite", "entities": [
        {"name": "gpu-vision", "slots": 48, "description": "GPU quota of tenant vision", "include_deferred": True}]}]}


def test_apply_reports_the_errors_the_api_returns(stand_in):
    url, _ = stand_in(lambda m, o, b: (200, {"create": {"success": [], "errors": [{"error": "bad slots"}]}}))
    with pytest.raises(PoolsApiError, match="bad slots"):
        PoolsApi(url).apply([PoolSpec("gpu-vision", "vision", 48, "d")])
