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
    events, raw lines as bytes, or an exception: a stream that cannot be opened). ``served``:
    path -> items of other watched lists (one page, then quiet streams); a call of the typed
    client that writes (POST, PUT, PATCH, DELETE) is kept in ``writes`` and answered with its body."""

    def __init__(self, pods: list[dict], streams: list, nodes: list[dict] | None = None,
                 served: dict[str, list[dict]] | None = None) -> None:
        self.pods, self.streams, self.lists, self.selectors = pods, list(streams), 0, set()
        self.served = dict(served or {})
        if nodes is not None:
            self.served["/api/v1/nodes"] = nodes
        self.list_times: list[float] = []
        self.timeouts: dict[str, object] = {}
        self.responses: list[FakeResponse] = []
        self.writes: list[tuple[str, str, dict]] = []

    #: What the typed client (``ResourceV1Api(api)``) asks of its ApiClient besides call_api.
    client_side_validation = False

    @staticmethod
    def select_header_accept(accepts):
        return accepts[0]

    @staticmethod
    def select_header_content_type(content_types, method=None, body=None):
        return content_types[0]

    def call_api(self, path, method, *args, query_params=None, **kw):
        if len(args) >= 2:   # the typed client: path_params, query_params, header_params
            path, query_params = path.format(**args[0]), args[1]
        elif args:
            query_params = args[0]
        if method != "GET":
            self.writes.append((method, path, json.loads(json.dumps(kw.get("body") or {}))))
            body = json.loads(json.dumps(kw.get("body") or {}))
            body.setdefault("metadata", {}).update(resourceVersion=str(200 + len(self.writes)), uid=f"uid-{path}")
            return SimpleNamespace(data=json.dumps(body).encode())
        params = dict(query_params or [])
        self.selectors.add(params.get("labelSelector"))
        kind = "watch" if params.get("watch") == "true" else "list"
        self.timeouts[kind] = kw.get("_request_timeout")
        if path in self.served:   # another watch: its list, then quiet streams
            if kind == "watch":
                time.sleep(0.05)
                return FakeResponse()
            body = {"metadata": {"resourceVersion": "100"}, "items": self.served[path]}
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
