"""A stand-in for the Kubernetes API client as the cluster watches use it (``call_api``, raw
responses): for tests/test_tracker.py and tests/test_wiring.py."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace


class FakeResponse:
    """A urllib3 response as the client's Watch reads it: ``stream``, then ``close`` and ``release_conn``."""

    def __init__(self, body: bytes = b"", stream=None, shutdown=None) -> None:
        self.stream = stream or (lambda *a, **k: iter([body] if body else []))
        self.shutdown = shutdown or (lambda: None)
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def release_conn(self) -> None:
        pass


class FakeApi:
    """call_api for PodWatch: a paged list, then watch streams from a script (each a list of
    events, raw lines as bytes, or an exception: a stream that cannot be opened)."""

    def __init__(self, pods: list[dict], streams: list, nodes: list[dict] | None = None) -> None:
        self.pods, self.streams, self.lists, self.selectors = pods, list(streams), 0, set()
        self.nodes = nodes
        self.list_times: list[float] = []
        self.timeouts: dict[str, object] = {}
        self.responses: list[FakeResponse] = []

    def call_api(self, path, method, query_params, **kw):
        params = dict(query_params)
        self.selectors.add(params.get("labelSelector"))
        kind = "watch" if params.get("watch") == "true" else "list"
        self.timeouts[kind] = kw.get("_request_timeout")
        if path == "/api/v1/nodes" and self.nodes is not None:   # the node watch: its list, then quiet streams
            if kind == "watch":
                time.sleep(0.05)
                return FakeResponse()
            body = {"metadata": {"resourceVersion": "100"}, "items": self.nodes}
            return SimpleNamespace(data=json.dumps(body).encode())
        if kind == "watch":
            if not self.streams:
                time.sleep(0.05)
                return FakeResponse()
            step = self.streams.pop(0)
            if isinstance(step, Exception):
                raise step
            response = FakeResponse(b"".join(e if isinstance(e, bytes) else json.dumps(e).encode() + b"\n"
                                             for e in step))
            self.responses.append(response)
            return response
        self.lists += 1
        self.list_times.append(time.monotonic())
        start, limit = int(params.get("continue") or 0), int(params["limit"])
        more = start + limit < len(self.pods)
        return SimpleNamespace(data=json.dumps({"metadata": {"resourceVersion": "100",
                                                             "continue": str(start + limit) if more else ""},
                                                "items": self.pods[start:start + limit]}).encode())
