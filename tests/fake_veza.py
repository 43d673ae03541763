#!/usr/bin/env python3
"""A fake Veza OAA API over HTTPS on 127.0.0.1, with a throwaway CA from trustme.

It implements the calls oaaclient makes (connection test, provider and data source lookup and
create, provider icon, `:push` with its gzip+base64 body, `:parts` multipart upload, saved
assessment queries and reports) and keeps every decoded payload. Knobs for the connector's tests:

- `push_error = (status, body)`: answer every push with that, storing nothing.
- `push_then`: store the pushed payload, then misbehave instead of answering: "reset" (close the
  connection without a word), "502" (a gateway's HTML 502), "nonjson" (200 with an HTML body), or
  "drip" (200 with the right Content-Length, the body one byte every `drip_interval` seconds).
- `team_key = True`: the key may push but not manage: creating a provider or a data source answers
  403. `precreate(provider, data_source)` sets up what such a key needs.
- `user_agents`: the User-Agent header of every request, in order.
- `keep_bodies = True`: `bodies` gets (method, path, Content-Type, raw body) of every request with a body.
- `answer_with[(method, path)] = (status, headers)`: answer every such request with that (e.g. a load
  balancer's 503 with `Retry-After: 3600`); `delays[(method, path)] = seconds` before answering. A third
  element is the body: bytes sent as they are (Content-Type from the headers, else text/html), or JSON.
- `push_answers`: a list of `PushAnswer`; each `:push` takes the first (status, headers, body, and whether the
  payload is stored first) until the list is empty, e.g. a 307 with a Location, a 503 once, an odd 200 body.
- `resets[(method, path)] = n`: the first n such requests get the connection closed without an answer.
- `authorizations`: the Authorization header of every request, in order.
- `endless_providers = n` / `endless_data_sources = n`: that list (the provider or data-source lookup) says
  `has_more` with a fresh page token for ever, n entries a page (0: empty pages), none of the name asked.
- `endless_queries = True`: the saved-query list says `has_more` with a fresh page token for ever.
- `rich_queries = True`: saved queries come back as a real Veza stores them: fields of its own added,
  enums as integers, false/empty values left out (proto3 JSON).

Standalone:

    python tests/fake_veza.py --port 8443 --api-key veza-demo-key --ca-file /tmp/fake-veza-ca.pem
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import socket
import ssl
import struct
import threading
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import trustme
from fake_http import FakeServer, QuietKeepAliveHandler, stop_server

DEFAULT_API_KEY = "veza-fake-key-0001"
PUSH_THEN = ("reset", "502", "nonjson", "drip")
FORBIDDEN = {"code": "PermissionDenied", "message": "the API key's role does not allow this operation"}
GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
HTML_PAGE = b"<!DOCTYPE html><html><body><p>Veza is under maintenance.</p></body></html>"
QUERIES = "/api/v1/assessments/queries"
REPORTS = "/api/preview/assessments/reports"


@dataclass
class PushAnswer:
    """One answer to a `:push` (FakeVeza.push_answers)."""

    status: int = 200
    body: Any = None  # JSON, or bytes sent as they are; None: Veza's usual error body
    headers: dict[str, str] = field(default_factory=dict)
    store: bool = False  # store the pushed payload first (Veza took it, whatever the answer says)


_SERVER_CONTEXTS: dict[int, tuple[trustme.CA, ssl.SSLContext]] = {}


def _server_context(ca: trustme.CA) -> ssl.SSLContext:
    """One TLS context per CA: a certificate for 127.0.0.1 and localhost (made once, not once per fake)."""
    if id(ca) not in _SERVER_CONTEXTS:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        _SERVER_CONTEXTS[id(ca)] = (ca, context)  # keeping the CA keeps its id from being reused
    return _SERVER_CONTEXTS[id(ca)][1]


class FakeVeza:
    def __init__(self, ca: trustme.CA, api_key: str = DEFAULT_API_KEY, port: int = 0) -> None:
        self.api_key = api_key
        self.providers: list[dict] = []
        self.data_sources: dict[str, list[dict]] = {}
        self.pushes: list[dict] = []  # {"provider_id", "data_source_id", "payload"}
        self.requests: list[tuple[str, str]] = []
        self.push_warnings: list[dict] = []
        self.push_error: tuple[int, dict] | None = None  # answer every push with this
        self.icons: dict[str, str] = {}
        self.push_then: str | None = None  # see PUSH_THEN
        self.drip_interval = 1.0  # seconds between body bytes when push_then == "drip"
        self.team_key = False  # creating providers and data sources answers 403
        self.user_agents: list[str | None] = []
        self.keep_bodies = False
        self.bodies: list[tuple[str, str, str | None, bytes]] = []
        self.queries: list[dict] = []  # saved assessment queries
        self.answer_with: dict[tuple[str, str], tuple] = {}  # (status, headers) or (status, headers, body)
        self.push_answers: list[PushAnswer] = []
        self.resets: dict[tuple[str, str], int] = {}
        self.authorizations: list[str | None] = []
        self.endless_providers: int | None = None
        self.endless_data_sources: int | None = None
        self._endless = 0
        self.delays: dict[tuple[str, str], float] = {}
        self.endless_queries = False
        self.rich_queries = False
        self.reports: list[dict] = []  # {"id", "name", "description", "queries": [{"query": id}], ...}
        self._stopping = threading.Event()
        self._parts: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self._local = threading.local()
        self._server = FakeServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._server.socket = _server_context(ca).wrap_socket(self._server.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeVeza:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        stop_server(self._server)

    @property
    def payloads(self) -> list[dict]:
        return [push["payload"] for push in self.pushes]

    # --- answering -------------------------------------------------------------------------
    def precreate(self, provider_name: str, data_source_name: str | None = None,
                  template: str = "application") -> tuple[dict, dict | None]:
        """Create a provider (and a data source under it) as an administrator would, for team-key runs."""
        with self.lock:
            provider = next((p for p in self.providers if p["name"] == provider_name), None)
            if provider is None:
                provider = {"id": str(uuid.uuid4()), "name": provider_name, "custom_template": template}
                self.providers.append(provider)
                self.data_sources[provider["id"]] = []
            source = None
            if data_source_name is not None:
                sources = self.data_sources[provider["id"]]
                source = next((s for s in sources if s["name"] == data_source_name), None)
                if source is None:
                    source = {"id": str(uuid.uuid4()), "name": data_source_name}
                    sources.append(source)
        return provider, source

    def add_system_query(self, name: str) -> dict:
        """A query Veza itself ships (query_type SYSTEM_CREATED), which build_report must not reuse."""
        query = {"id": str(uuid.uuid4()), "name": name, "query_type": "SYSTEM_CREATED"}
        with self.lock:
            self.queries.append(query)
        return query

    def answer(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None) -> tuple[int, dict]:
        status, answer, _ = self.respond(method, path, query, body, auth)
        return status, answer

    def respond(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None,
                user_agent: str | None = None) -> tuple[int, dict, str | None]:
        """(status, JSON answer, misbehaviour): the last is push_then when a push was just stored."""
        with self.lock:
            self.requests.append((method, path))
            self.user_agents.append(user_agent)
            self.authorizations.append(auth)
            reset = self.resets.get((method, path), 0) > 0
            if reset:
                self.resets[(method, path)] -= 1
        if reset:
            return 0, {}, "reset"
        if (method, path) in self.delays:
            self._stopping.wait(self.delays[(method, path)])
        self._local.headers = {}
        if (method, path) in self.answer_with:
            status, self._local.headers, *body = self.answer_with[(method, path)]
            return status, body[0] if body else {"code": "Unavailable", "message": "the service is unavailable"}, None
        status, answer = self._route(method, path, query, body, auth)
        stored = getattr(self._local, "stored", False)
        self._local.stored = False
        return status, answer, (self.push_then if stored else None)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None) -> tuple[int, dict]:
        if auth != f"Bearer {self.api_key}":
            return 401, {"code": "Unauthenticated", "message": "invalid or expired token"}
        if path.startswith(("/api/v1/assessments/", "/api/preview/assessments/")):
            return self._assessments(method, path, query, body)
        parts = path.strip("/").split("/")
        if path == "/api/v1/providers/custom/templates" and method == "GET":
            return 200, {"values": [{"id": "application"}, {"id": "identity_provider"}], "has_more": False}
        if path == "/api/v1/providers/custom":
            if method == "GET" and self.endless_providers is not None:
                return 200, self._endless_page(self.endless_providers, "provider")
            if method == "GET":
                return 200, {"values": _filtered(self.providers, query), "has_more": False}
            if self.team_key:
                return 403, FORBIDDEN
            provider = {"id": str(uuid.uuid4()), "name": body["name"], "custom_template": body["custom_template"]}
            with self.lock:
                self.providers.append(provider)
                self.data_sources[provider["id"]] = []
            return 200, {"value": provider}
        if len(parts) == 5 and parts[4].endswith(":icon") and method == "POST":
            self.icons[parts[4][: -len(":icon")]] = body["icon_base64"]
            return 200, {}
        if len(parts) == 6 and parts[5] == "datasources":
            provider_id = parts[4]
            if provider_id not in self.data_sources:
                return 404, {"code": "NotFound", "message": "provider not found"}
            if method == "GET" and self.endless_data_sources is not None:
                return 200, self._endless_page(self.endless_data_sources, "data-source")
            if method == "GET":
                return 200, {"values": _filtered(self.data_sources[provider_id], query), "has_more": False}
            if self.team_key:
                return 403, FORBIDDEN
            source = {"id": str(uuid.uuid4()), "name": body["name"]}
            with self.lock:
                self.data_sources[provider_id].append(source)
            return 200, {"value": source}
        if len(parts) == 7 and parts[5] == "datasources" and method == "POST":
            provider_id, (source_id, _, operation) = parts[4], parts[6].partition(":")
            if operation == "push":
                with self.lock:
                    planned = self.push_answers.pop(0) if self.push_answers else None
                if planned is not None:
                    return self._planned_push(planned, provider_id, source_id, body)
                if self.push_error:
                    return self.push_error
                raw = body["json_data"]
                data = gzip.decompress(base64.b64decode(raw)) if body.get("compression_type") == "GZIP" else raw
                return self._store(provider_id, source_id, data)
            if operation == "parts":
                return self._parts_operation(provider_id, source_id, body)
        return 404, {"code": "NotFound", "message": f"no route {method} {path}"}

    def _planned_push(self, planned: PushAnswer, provider_id: str, source_id: str, body: Any) -> tuple[int, Any]:
        if planned.store:
            raw = body["json_data"]
            self._store(provider_id, source_id,
                        gzip.decompress(base64.b64decode(raw)) if body.get("compression_type") == "GZIP" else raw)
        self._local.headers = dict(planned.headers)
        if planned.body is None:
            return planned.status, {"code": "Unavailable", "message": "the service is unavailable"}
        return planned.status, planned.body

    def _endless_page(self, entries: int, kind: str) -> dict:
        """A page of `entries` fresh entries, none of the name asked for, that says there is always more."""
        with self.lock:
            values = []
            for _ in range(entries):
                self._endless += 1
                values.append({"id": str(uuid.uuid4()), "name": f"endless-{kind}-{self._endless:06d}",
                               **({"custom_template": "application"} if kind == "provider" else {})})
            self._endless += 1
            return {"values": values, "has_more": True, "next_page_token": f"endless-{self._endless}"}

    def _store(self, provider_id: str, source_id: str, data: bytes | str) -> tuple[int, dict]:
        payload = json.loads(data)
        with self.lock:
            self.pushes.append({"provider_id": provider_id, "data_source_id": source_id, "payload": payload})
        self._local.stored = True
        return 200, {"id": source_id, "warnings": list(self.push_warnings)}

    def _parts_operation(self, provider_id: str, source_id: str, body: dict) -> tuple[int, dict]:
        if self.push_error:
            return self.push_error
        if body["operation"] == "start":
            upload_id = str(uuid.uuid4())
            self._parts[upload_id] = []
            return 200, {"upload_id": upload_id}
        if body["operation"] == "upload":
            self._parts[body["upload_id"]].append(base64.b64decode(body["data"]))
            return 200, {}
        return self._store(provider_id, source_id, b"".join(self._parts.pop(body["upload_id"])))

    # --- saved queries and reports (oaaclient's get/create/delete_query, *_report, add_query_report) ---
    def _assessments(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, dict]:
        with self.lock:
            if path == QUERIES:
                if method == "GET" and self.endless_queries:
                    token = str(int(query.get("page_token") or 0) + 1)
                    return 200, {"values": [], "has_more": True, "next_page_token": token}
                if method == "GET":
                    stored = [_as_veza_stores(q) for q in self.queries] if self.rich_queries else self.queries
                    return 200, _page(stored, query)
                if method == "POST":
                    return self._create(self.queries, body, "query")
            elif path.startswith(QUERIES + "/"):
                found = _by_id(self.queries, path[len(QUERIES) + 1:])
                if found is None:
                    return 404, {"code": "NotFound", "message": "query not found"}
                if method == "GET":
                    return 200, {"value": found}
                if method == "PUT":  # no oaaclient wrapper: client.api_put(f"{QUERIES}/{id}", spec)
                    found.update({key: value for key, value in (body or {}).items() if key != "id"})
                    return 200, {"value": found}
                if method == "DELETE":
                    holders = [r for r in self.reports if {"query": found["id"]} in r["queries"]]
                    if holders and query.get("force", "False").lower() != "true":
                        return 400, {"code": "FailedPrecondition", "message": "query is used by a report"}
                    for report in holders:
                        report["queries"].remove({"query": found["id"]})
                    self.queries.remove(found)
                    return 200, {}
            elif path == REPORTS:
                if method == "GET":
                    return 200, _page(self.reports, query)
                if method == "POST":
                    unknown = self._unknown_queries(body)
                    if unknown:
                        return 400, {"code": "InvalidArgument", "message": f"unknown queries {unknown}"}
                    return self._create(self.reports, body, "report")
            elif path.startswith(REPORTS + "/"):
                report_id, _, rest = path[len(REPORTS) + 1:].partition("/queries/")
                report = _by_id(self.reports, report_id)
                if report is None:
                    return 404, {"code": "NotFound", "message": "report not found"}
                if rest:
                    if method == "PUT":
                        if _by_id(self.queries, rest) is None:
                            return 404, {"code": "NotFound", "message": "query not found"}
                        if {"query": rest} not in report["queries"]:
                            report["queries"].append({"query": rest})
                        return 200, {"value": report}
                elif method == "GET":
                    return 200, {"value": report}
                elif method == "PUT":
                    unknown = self._unknown_queries(body)
                    if unknown:
                        return 400, {"code": "InvalidArgument", "message": f"unknown queries {unknown}"}
                    report.update({key: value for key, value in (body or {}).items() if key != "id"})
                    return 200, {"value": report}
                elif method == "DELETE":
                    self.reports.remove(report)
                    return 200, {}
        return 404, {"code": "NotFound", "message": f"no route {method} {path}"}

    def _unknown_queries(self, body: Any) -> list[str]:
        wanted = [entry.get("query") for entry in (body or {}).get("queries") or []]
        return [qid for qid in wanted if _by_id(self.queries, qid) is None]

    @staticmethod
    def _create(items: list[dict], body: Any, kind: str) -> tuple[int, dict]:
        if not isinstance(body, dict) or not body.get("name"):
            return 400, {"code": "InvalidArgument", "message": f"a {kind} needs a name"}
        item = {**body, "id": str(uuid.uuid4())}
        if kind == "report":
            item["queries"] = [{"query": entry["query"]} for entry in body.get("queries") or []]
        items.append(item)
        return 200, {"value": item}

    def query_names(self) -> list[str]:
        return [query["name"] for query in self.queries]

    def report_queries(self, name: str) -> list[str]:
        """The names of the queries in the report called `name`, in order."""
        report = next(r for r in self.reports if r["name"] == name)
        return [_by_id(self.queries, entry["query"])["name"] for entry in report["queries"]]

    def data_source_names(self) -> list[str]:
        return [source["name"] for sources in self.data_sources.values() for source in sources]


def _filtered(items: list[dict], query: dict[str, str]) -> list[dict]:
    wanted = query.get("filter")
    if not wanted:
        return list(items)
    prefix = 'name eq "'
    name = wanted[len(prefix):-1] if wanted.startswith(prefix) and wanted.endswith('"') else None
    return [item for item in items if item["name"] == name]


VEZA_ENUMS = {"SOURCE_TO_DESTINATION": 1, "SYSTEM_CREATED": 2, "EQ": 1, "OR": 1}


def _as_veza_stores(value: Any, top: bool = True) -> Any:
    """A saved query as a real Veza answers it: its own fields added, enums as integers, defaults left out."""
    if isinstance(value, dict):
        stored = {key: _as_veza_stores(item, False) for key, item in value.items() if item not in (False, "", [], {})}
        if "node_type" in value:
            stored.update(tags_to_get=[], direct_relationship_only=False, count_only=False)
        if top:
            stored.update(created_at="2026-01-01T00:00:00Z", risk_level=0, labels=[], variables=[],
                          include_nodes=True)
        return stored
    if isinstance(value, list):
        return [_as_veza_stores(item, False) for item in value]
    return VEZA_ENUMS.get(value, value) if isinstance(value, str) else value


def _by_id(items: list[dict], item_id: str) -> dict | None:
    return next((item for item in items if item["id"] == item_id), None)


def _page(items: list[dict], query: dict[str, str]) -> dict:
    """One page as Veza lists answer: page_size and an opaque page_token (here an offset)."""
    size = int(query.get("page_size") or 100)
    start = int(query.get("page_token") or 0)
    chunk = list(items[start:start + size])
    more = start + size < len(items)
    return {"values": chunk, "has_more": more, "next_page_token": str(start + size) if more else ""}


def _handler_for(fake: FakeVeza) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietKeepAliveHandler):
        def _handle(self, method: str) -> None:
            split = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if fake.keep_bodies and raw:
                with fake.lock:
                    fake.bodies.append((method, split.path, self.headers.get("Content-Type"), raw))
            body = json.loads(raw) if raw else None
            status, answer, then = fake.respond(method, split.path, dict(urllib.parse.parse_qsl(split.query)), body,
                                                self.headers.get("authorization"), self.headers.get("User-Agent"))
            headers = dict(getattr(fake._local, "headers", None) or {})
            content_type = "application/json"
            if isinstance(answer, bytes):
                data, content_type = answer, headers.pop("Content-Type", "text/html")
            else:
                data = json.dumps(answer).encode()
            if then == "reset":
                # Stored, then gone: no status line, the TCP connection just ends (RST on close).
                self.close_connection = True
                self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.request.shutdown(socket.SHUT_RDWR)
                return
            if then == "502":
                self._send(502, "text/html", GATEWAY_PAGE)
            elif then == "nonjson":
                self._send(200, "text/html", HTML_PAGE)
            elif then == "drip":
                self._send(200, "application/json", data, drip=fake.drip_interval)
            else:
                self._send(status, content_type, data, headers=headers)

        def _send(self, status: int, content_type: str, data: bytes, drip: float | None = None,
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if drip is None:
                self.wfile.write(data)
                return
            for index in range(len(data)):
                if index and fake._stopping.wait(drip):
                    self.close_connection = True
                    return
                try:
                    self.wfile.write(data[index:index + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    self.close_connection = True
                    return

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

        def do_PUT(self) -> None:  # noqa: N802
            self._handle("PUT")

        def do_PATCH(self) -> None:  # noqa: N802
            self._handle("PATCH")

        def do_DELETE(self) -> None:  # noqa: N802
            self._handle("DELETE")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake Veza OAA API over HTTPS on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--ca-file", required=True, help="where to write the CA certificate to trust")
    args = parser.parse_args()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(args.ca_file)
    fake = FakeVeza(ca, api_key=args.api_key, port=args.port).start()
    print(f"fake Veza at {fake.url}; trust it with REQUESTS_CA_BUNDLE={args.ca_file}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
