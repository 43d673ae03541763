#!/usr/bin/env python3
"""A fake OpenAI Admin API on 127.0.0.1: documented shapes, each endpoint's cursor style, fault injection.

Used by the tests in-process (`FakeOpenAI`), and standalone by the demo and the benchmark:

    python tests/fake_openai.py --port 8089 --admin-key sk-admin-demo-key
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import random
import re
import socket
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from fake_http import FakeServer, QuietKeepAliveHandler, stop_server

DEFAULT_ADMIN_KEY = "sk-admin-fake-key-0001"
BASE_TIME = 1_700_000_000


@dataclass
class Organization:
    """The records the fake serves, as the Admin API returns them."""

    org_id: str = "org-fake0001"
    users: list[dict] = field(default_factory=list)
    invites: list[dict] = field(default_factory=list)
    projects: list[dict] = field(default_factory=list)
    project_users: dict[str, list[dict]] = field(default_factory=dict)
    service_accounts: dict[str, list[dict]] = field(default_factory=dict)
    api_keys: dict[str, list[dict]] = field(default_factory=dict)
    admin_api_keys: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)
    group_users: dict[str, list[dict]] = field(default_factory=dict)
    group_roles: dict[str, list[dict]] = field(default_factory=dict)
    roles: list[dict] = field(default_factory=list)
    project_roles: dict[str, list[dict]] = field(default_factory=dict)
    project_groups: dict[str, list[dict]] = field(default_factory=dict)
    project_group_roles: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    user_roles: dict[str, list[dict]] = field(default_factory=dict)
    project_user_roles: dict[tuple[str, str], list[dict]] = field(default_factory=dict)
    model_permissions: dict[str, dict] = field(default_factory=dict)
    legacy_organization: dict | None = None  # GET /v1/organizations/{id}; None answers 403
    audit_logs: list[dict] = field(default_factory=list)  # any order: served newest first
    workload_identity_providers: list[dict] = field(default_factory=list)
    federation_rules: dict[str, list[dict]] = field(default_factory=dict)  # provider id -> its rules
    certificates: list[dict] = field(default_factory=list)  # organization level, without the PEM
    project_certificates: dict[str, list[dict]] = field(default_factory=dict)  # without the PEM
    certificate_contents: dict[str, str] = field(default_factory=dict)  # certificate id -> PEM
    certificate_content_in_lists: bool = False  # True: lists carry certificate_details.content (not in the SDK)
    hosted_tool_permissions: dict[str, dict] = field(default_factory=dict)  # project id -> tool -> {enabled}


@dataclass
class Fault:
    """Make matching requests misbehave. `path` is a regex searched in the path after /v1."""

    path: str
    # status|reset|truncate|nonjson|wrong_object|data_not_list|no_cursor|repeat_cursor|overlap|delay-only
    # |drip|endless|gzip_bomb|hook|raw (drip: a byte every `delay` s; endless: body = items per page (1);
    # gzip_bomb: body = decompressed bytes (50 MB); hook: body = callable(fake), called once, then the request is
    # answered normally; raw: body = bytes sent as they are, with `status`, as JSON: e.g. nesting too deep for
    # json.dumps to write)
    kind: str = "status"
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    delay: float = 0.0
    times: int | None = 1  # None: every matching request
    skip: int = 0  # let this many matching requests through first
    seen: int = 0


# (path regex, family, cursor style, default limit, max limit)
ROUTES = [
    (r"/organization/users", "users", "last_id", 20, 100),
    (r"/organization/invites", "invites", "last_id", 20, 100),
    (r"/organization/projects", "projects", "last_id", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/users", "project users", "last_id", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/service_accounts", "project service accounts", "last_id", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/api_keys", "project API keys", "last_id", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/groups", "project groups", "next", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/model_permissions", "model permissions", None, 0, 0),
    (r"/organization/admin_api_keys", "admin API keys", "item_id", 20, 100),
    (r"/organization/groups", "groups", "next", 100, 1000),
    (r"/organization/groups/(?P<group_id>[^/]+)/users", "group users", "next", 100, 1000),
    (r"/organization/groups/(?P<group_id>[^/]+)/roles", "group roles", "next", 1000, 1000),
    (r"/organization/roles", "roles", "next", 1000, 1000),
    (r"/organization/users/(?P<user_id>[^/]+)/roles", "user roles", "next", 1000, 1000),
    (r"/projects/(?P<project_id>[^/]+)/roles", "project roles", "next", 1000, 1000),
    (r"/projects/(?P<project_id>[^/]+)/groups/(?P<group_id>[^/]+)/roles", "project group roles", "next", 1000, 1000),
    (r"/projects/(?P<project_id>[^/]+)/users/(?P<user_id>[^/]+)/roles", "project user roles", "next", 1000, 1000),
    (r"/organizations/(?P<org_id>[^/]+)", "organization", None, 0, 0),
    (r"/organization/audit_logs", "audit logs", "last_id", 20, 100),
    (r"/organization/workload_identity_providers", "workload identity providers", "item_id", 20, 100),
    (r"/organization/workload_identity_providers/(?P<provider_id>[^/]+)/federation_rules", "federation rules",
     "item_id", 20, 100),
    (r"/organization/certificates", "certificates", "last_id", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/certificates", "project certificates", "last_id", 20, 100),
    (r"/organization/projects/(?P<project_id>[^/]+)/hosted_tool_permissions", "hosted tool permissions", None, 0, 0),
    # one object by id (the SDK's retrieve); the connector asks them only to tell a deleted entity from a 404'd list
    (r"/organization/projects/(?P<object_id>[^/]+)", "project", None, 0, 0),
    (r"/organization/users/(?P<object_id>[^/]+)", "user", None, 0, 0),
    (r"/organization/groups/(?P<object_id>[^/]+)", "group", None, 0, 0),
    (r"/organization/workload_identity_providers/(?P<object_id>[^/]+)", "workload identity provider", None, 0, 0),
]
OBJECT_LISTS = {"project": "projects", "user": "users", "group": "groups",
                "workload identity provider": "workload_identity_providers"}
COMPILED_ROUTES = [(re.compile(f"^{regex}$"), *rest) for regex, *rest in ROUTES]


# `next`-style lists whose `after` the SDK documents as an item id: the fake takes either.
ITEM_ID_AFTER = {"groups", "group users", "project groups"}


def encode_next(index: int) -> str:
    """An opaque `next` cursor that is not an item id, so a reader that guesses the cursor fails."""
    return "cur_" + base64.urlsafe_b64encode(f"offset:{index}".encode()).decode().rstrip("=")


def decode_next(cursor: str) -> int | None:
    try:
        raw = base64.urlsafe_b64decode(cursor[4:] + "=" * (-len(cursor[4:]) % 4)).decode()
        return int(raw.split(":", 1)[1]) if cursor.startswith("cur_") and raw.startswith("offset:") else None
    except (ValueError, IndexError):
        return None


class FakeOpenAI:
    """Serve an Organization over HTTP on 127.0.0.1 until stop()."""

    def __init__(self, org: Organization, admin_key: str = DEFAULT_ADMIN_KEY, latency: float = 0.0,
                 port: int = 0) -> None:
        self.org = org
        self.admin_key = admin_key
        self.latency = latency
        self.faults: list[Fault] = []
        self.refused: dict[str, int] = {}  # family -> 403 or 404
        self.requests: list[tuple[str, dict]] = []
        self.user_agents: list[str | None] = []  # the User-Agent of every request, in order
        self.authorizations: list[str | None] = []  # the Authorization header of every request, in order
        self.timeline: list[tuple[float, str, int]] = []  # (arrival time.monotonic(), path, status answered)
        self.jitter = 0.0  # extra random latency, up to this many seconds, to shuffle completion order
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.limiter: Any = None  # a fake_limits model: admit(family, now) -> None or 429 headers
        self._server = FakeServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        stop_server(self._server)

    def calls(self, pattern: str = "") -> int:
        """How many requests had a path matching `pattern` (regex search)."""
        with self.lock:
            return sum(1 for path, _ in self.requests if re.search(pattern, path))

    # --- answering -------------------------------------------------------------------------
    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if re.search(fault.path, path):
                    fault.seen += 1
                    if fault.seen <= fault.skip:
                        continue
                    if fault.times is not None and fault.seen - fault.skip > fault.times:
                        continue
                    return fault
        return None

    def answer(self, path: str, query: dict[str, str], auth: str | None) -> tuple[int, dict, Fault | None]:
        with self.lock:
            self.requests.append((path, query))
        if auth != f"Bearer {self.admin_key}":
            return 401, _error("Incorrect API key provided.", "invalid_api_key"), None
        for regex, family, style, default_limit, max_limit in COMPILED_ROUTES:
            match = regex.match(path)
            if not match:
                continue
            if self.limiter is not None:
                throttled = self.limiter.admit(family, time.monotonic())
                if throttled is not None:
                    body = _error(f"Rate limit reached for {family}. Please try again later.", "rate_limit_exceeded")
                    return 429, body, Fault(path, status=429, headers=dict(throttled), body=body)
            fault = self.take_fault(path)
            if fault is not None and fault.kind == "hook":
                with self.lock:
                    callback, fault.body = fault.body, None  # once, even with times=None
                if callback is not None:
                    callback(self)
                fault = None
            if family in self.refused:
                status = self.refused[family]
                return status, _error(f"{family}: {'insufficient permissions' if status == 403 else 'not found'}",
                                      None), fault
            if family == "organization":
                if self.org.legacy_organization is None:
                    return 403, _error("This key cannot read the organization object.", None), fault
                return 200, self.org.legacy_organization, fault
            if family == "model permissions":
                policy = self.org.model_permissions.get(match["project_id"])
                if policy is None:
                    return 404, _error("No model permissions for this project.", None), fault
                return 200, {"object": "project.model_permissions", **policy}, fault
            if family in OBJECT_LISTS:
                found = [r for r in getattr(self.org, OBJECT_LISTS[family]) if r.get("id") == match["object_id"]]
                if not found:
                    return 404, _error(f"No such {family}: {match['object_id']}", None), fault
                return 200, found[0], fault
            if family == "hosted tool permissions":
                known = match["project_id"] in {p["id"] for p in self.org.projects}
                tools = self.org.hosted_tool_permissions.get(match["project_id"]) if known else None
                if tools is None:  # an unknown project, or one the fake was given no permissions for
                    return 404, _error(f"No such object: {path}", None), fault
                return 200, tools, fault
            problem = _query_problem(family, query)
            if problem is not None:
                return 400, _error(problem, "invalid_request"), fault
            items = self.items(family, match.groupdict(), query)
            if items is None:
                return 404, _error(f"No such object: {path}", None), fault
            return self.page(items, style, default_limit, max_limit, query, fault,
                             id_cursor_ok=family in ITEM_ID_AFTER)
        return 404, _error(f"Unknown path {path}", None), None

    def items(self, family: str, ids: dict[str, str], query: dict[str, str]) -> list[dict] | None:
        org = self.org
        pid, gid, uid = ids.get("project_id"), ids.get("group_id"), ids.get("user_id")
        project_ids = {p["id"] for p in org.projects}
        if pid is not None and pid not in project_ids:
            return None
        if family == "users":
            return org.users
        if family == "invites":
            return org.invites
        if family == "projects":
            if query.get("include_archived") == "true":
                return org.projects
            return [p for p in org.projects if p.get("status") != "archived"]
        if family == "project users":
            return org.project_users.get(pid, [])
        if family == "project service accounts":
            return org.service_accounts.get(pid, [])
        if family == "project API keys":
            access = query.get("owner_project_access", "active")
            keys = org.api_keys.get(pid, [])
            return keys if access == "any" else [k for k in keys if k.get("owner_project_access") == access]
        if family == "project groups":
            return org.project_groups.get(pid, [])
        if family == "admin API keys":
            return org.admin_api_keys
        if family == "groups":
            return org.groups
        if family == "group users":
            return org.group_users.get(gid, []) if gid in {g["id"] for g in org.groups} else None
        if family == "group roles":
            return org.group_roles.get(gid, []) if gid in {g["id"] for g in org.groups} else None
        if family == "roles":
            return org.roles
        if family == "user roles":
            return org.user_roles.get(uid, []) if uid in self._user_ids() else None
        if family == "project roles":
            return org.project_roles.get(pid, [])
        if family == "project group roles":
            return org.project_group_roles.get((pid, gid), [])
        if family == "project user roles":
            members = {m.get("id") for m in org.project_users.get(pid, [])}
            return org.project_user_roles.get((pid, uid), []) if uid in members or uid in self._user_ids() else None
        if family == "audit logs":
            return _audit_logs(org.audit_logs, query)
        if family == "workload identity providers":
            return _ordered(org.workload_identity_providers, query)
        if family == "federation rules":
            provider_id = ids.get("provider_id")
            if provider_id not in {p["id"] for p in org.workload_identity_providers}:
                return None
            rules = org.federation_rules.get(provider_id, [])
            if query.get("service_account_id") is not None:
                rules = [r for r in rules if r["service_account_id"] == query["service_account_id"]]
            return _ordered(rules, query)
        if family == "certificates":
            return _ordered(self._with_content(org.certificates), query)
        if family == "project certificates":
            return _ordered(self._with_content(org.project_certificates.get(pid, [])), query)
        raise AssertionError(family)

    def _user_ids(self) -> set[str]:
        """The organization's user ids, cached until org.users is replaced or changes length."""
        key = (id(self.org.users), len(self.org.users))
        cached = getattr(self, "_user_ids_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, {u.get("id") for u in self.org.users})
            self._user_ids_cache = cached
        return cached[1]

    def _with_content(self, certificates: list[dict]) -> list[dict]:
        """Certificates as listed: the SDK's list model has no `content`, unless the org says to leak it."""
        if not self.org.certificate_content_in_lists:
            return certificates
        return [{**c, "certificate_details": {**c["certificate_details"],
                                              "content": self.org.certificate_contents.get(c["id"])}}
                for c in certificates]

    def page(self, items: list[dict], style: str, default_limit: int, max_limit: int, query: dict[str, str],
             fault: Fault | None, id_cursor_ok: bool = False) -> tuple[int, dict, Fault | None]:
        if fault is not None and fault.kind == "endless":
            return 200, _endless_page(items, style, fault), fault
        try:
            limit = int(query.get("limit", default_limit))
        except ValueError:
            return 400, _error("limit must be an integer", "invalid_limit"), fault
        if not 1 <= limit <= max_limit:
            return 400, _error(f"limit must be between 1 and {max_limit}", "invalid_limit"), fault
        after = query.get("after")
        start = 0
        if fault is not None and fault.kind == "repeat_cursor":
            after = None  # the fault answers its own cursor with the same page again
        if after is not None:
            if style == "next":
                start = decode_next(after)
                keys = [item.get("id", item.get("group_id")) for item in items] if id_cursor_ok else []
                if start is None and after in keys:  # the SDK documents `after` as an item id for these
                    start = keys.index(after) + 1
                if start is None:
                    return 400, _error("invalid cursor", "invalid_cursor"), fault
            else:
                ids = [item.get("id") for item in items]
                if after not in ids:
                    return 400, _error("invalid cursor", "invalid_cursor"), fault
                start = ids.index(after) + 1
            if fault is not None and fault.kind == "overlap":
                start = max(0, start - 1)
        data = items[start:start + limit]
        has_more = start + limit < len(items)
        body: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
        if style == "last_id":
            body["first_id"] = data[0]["id"] if data else None
            body["last_id"] = data[-1]["id"] if data else None
        elif style == "next":
            body["next"] = encode_next(start + limit) if has_more else None
        return 200, body, fault


def _error(message: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _repeated(raw_query: str) -> dict[str, list[str]]:
    """Every `name[]` key with all its values, in order (`dict(parse_qsl(...))` keeps only the last)."""
    values: dict[str, list[str]] = {}
    for key, value in urllib.parse.parse_qsl(raw_query):
        if key.endswith("[]"):
            values.setdefault(key, []).append(value)
    return values


def _values(query: dict, name: str) -> list[str] | None:
    """A list filter sent as `name[]=a&name[]=b` (the SDK's brackets format) or a single `name=a`."""
    value = query.get(f"{name}[]", query.get(name))
    if value is None:
        return None
    return list(value) if isinstance(value, list) else [value]


EFFECTIVE_AT_BOUNDS = {"gt": int.__gt__, "gte": int.__ge__, "lt": int.__lt__, "lte": int.__le__}


def _query_problem(family: str, query: dict) -> str | None:
    """Why the API would answer 400 to these query parameters, or None."""
    if family == "audit logs":
        for bound in EFFECTIVE_AT_BOUNDS:
            value = query.get(f"effective_at[{bound}]")
            if value is not None and not re.fullmatch(r"-?\d+", str(value)):
                return f"effective_at[{bound}] must be an integer (Unix seconds)"
    if query.get("order") not in (None, "asc", "desc") and family in ORDERED_FAMILIES:
        return "order must be asc or desc"
    return None


# lists that take `order` (by created_at)
ORDERED_FAMILIES = {"workload identity providers", "federation rules", "certificates", "project certificates"}


def _ordered(items: list[dict], query: dict) -> list[dict]:
    """`order=asc|desc` by created_at, desc when omitted (ties keep their stored order)."""
    if query.get("order", "desc") == "asc":
        return sorted(items, key=lambda item: item["created_at"])
    return sorted(items, key=lambda item: -item["created_at"])


def _audit_logs(events: list[dict], query: dict) -> list[dict]:
    """The events the filters keep, newest first (by effective_at, then id, both descending)."""
    types = _values(query, "event_types")
    actors = _values(query, "actor_ids")
    emails = _values(query, "actor_emails")
    project_ids = _values(query, "project_ids")
    resource_ids = _values(query, "resource_ids")
    bounds = [(EFFECTIVE_AT_BOUNDS[b], int(query[f"effective_at[{b}]"])) for b in EFFECTIVE_AT_BOUNDS
              if f"effective_at[{b}]" in query]
    kept = []
    for event in events:
        if types is not None and event["type"] not in types:
            continue
        if any(not compare(event["effective_at"], bound) for compare, bound in bounds):
            continue
        actor = event.get("actor") or {}
        session_user = (actor.get("session") or {}).get("user") or {}
        key = actor.get("api_key") or {}
        actor_ids = {session_user.get("id"), key.get("id"), (key.get("user") or {}).get("id"),
                     (key.get("service_account") or {}).get("id")} - {None}
        actor_emails = {session_user.get("email"), (key.get("user") or {}).get("email")} - {None}
        if actors is not None and not actor_ids & set(actors):
            continue
        if emails is not None and not actor_emails & set(emails):
            continue
        if project_ids is not None and (event.get("project") or {}).get("id") not in project_ids:
            continue
        if resource_ids is not None and (event.get(event["type"]) or {}).get("id") not in resource_ids:
            continue
        kept.append(event)
    return sorted(kept, key=lambda e: (e["effective_at"], e["id"]), reverse=True)


_ENDLESS = itertools.count()


def _endless_page(items: list[dict], style: str | None, fault: Fault) -> dict:
    """Fresh items and a fresh cursor every time, whatever `after` says (fault.body items, default 1)."""
    template = items[0] if items else {}
    data = []
    for _ in range(fault.body if isinstance(fault.body, int) else 1):
        fresh = f"endless-{next(_ENDLESS):08d}"
        data.append({**template, "id": fresh, **({"group_id": fresh} if "group_id" in template else {})})
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": True}
    if style == "last_id":
        body["first_id"], body["last_id"] = data[0]["id"], data[-1]["id"]
    elif style == "next":
        body["next"] = encode_next(10_000_000 + next(_ENDLESS))
    return body


_BOMBS: dict[int, bytes] = {}
_BOMB_LOCK = threading.Lock()


def gzip_bomb(size: int) -> bytes:
    """gzip bytes that decompress to `size` bytes: the start of a JSON list, then spaces (cached)."""
    with _BOMB_LOCK:
        if size not in _BOMBS:
            packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: a gzip wrapper
            head = b'{"object":"list","data":['[:size]
            parts, left = [packer.compress(head)], size - len(head)
            chunk = b" " * (1 << 20)
            while left > 0:
                parts.append(packer.compress(chunk[:min(left, len(chunk))]))
                left -= len(chunk)
            parts.append(packer.flush())
            _BOMBS[size] = b"".join(parts)
        return _BOMBS[size]


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietKeepAliveHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with fake.lock:
                fake.in_flight += 1
                fake.peak_in_flight = max(fake.peak_in_flight, fake.in_flight)
            try:
                self._answer()
            finally:
                with fake.lock:
                    fake.in_flight -= 1

        def _answer(self) -> None:
            split = urllib.parse.urlsplit(self.path)
            path = split.path[3:] if split.path.startswith("/v1/") else split.path
            query = dict(urllib.parse.parse_qsl(split.query))
            query.update(_repeated(split.query))
            arrived = time.monotonic()
            if fake.latency or fake.jitter:
                time.sleep(fake.latency + random.uniform(0, fake.jitter))
            with fake.lock:
                fake.user_agents.append(self.headers.get("User-Agent"))
                fake.authorizations.append(self.headers.get("Authorization"))
            status, body, fault = fake.answer(path, query, self.headers.get("Authorization"))
            with fake.lock:
                fake.timeline.append((arrived, path, fault.status if fault and fault.kind == "status" else status))
            headers: dict[str, str] = {}
            if fault is not None:
                if fault.delay and fault.kind != "drip":
                    time.sleep(fault.delay)
                if fault.kind == "reset":
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    return
                if fault.kind == "status":
                    status, headers = fault.status, dict(fault.headers)
                    body = fault.body if fault.body is not None else _error(f"injected {fault.status}", None)
                elif fault.kind == "nonjson":
                    self._send(200, b"<html>upstream error</html>", {"Content-Type": "text/html"})
                    return
                elif fault.kind == "drip":
                    self._drip(status, json.dumps(body).encode(), fault.delay)
                    return
                elif fault.kind == "gzip_bomb":
                    self._send(200, gzip_bomb(int(fault.body or 50_000_000)), {"Content-Encoding": "gzip"})
                    return
                elif fault.kind == "raw":
                    self._send(fault.status, fault.body, dict(fault.headers))
                    return
                elif fault.kind == "truncate":
                    raw = json.dumps(body).encode()
                    self._send(200, raw[: len(raw) // 2], {})
                    return
                elif fault.kind == "wrong_object" and isinstance(body.get("data"), list) and body["data"]:
                    body = {**body, "data": [{**item, "object": "organization.something_else"}
                                             for item in body["data"]]}
                elif fault.kind == "data_not_list":
                    body = {**body, "data": {"oops": True}}
                elif fault.kind == "no_cursor":
                    body = {**body, "has_more": True, "last_id": None, "next": None}
                elif fault.kind == "repeat_cursor":
                    after = query.get("after")
                    body = {**body, "has_more": True, "last_id": after or "cursor-repeat",
                            "next": after or "cursor-repeat"}
                    if body.get("data"):
                        body["data"] = body["data"][:1]
            self._send(status, json.dumps(body).encode(), headers)

        def _drip(self, status: int, raw: bytes, interval: float) -> None:
            """A correct Content-Length, then the body one byte every `interval` seconds."""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            try:
                for i in range(len(raw)):
                    self.wfile.write(raw[i:i + 1])
                    self.wfile.flush()
                    time.sleep(interval)
            except OSError:  # the client gave up
                self.close_connection = True

        def _send(self, status: int, raw: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(raw)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

    return Handler


# ---------------------------------------------------------------------------------------------
# Organizations to serve
# ---------------------------------------------------------------------------------------------

def _role_record(role_id: str, name: str, permissions: list[str], predefined: bool, resource_type: str,
                 description: str | None = None) -> dict:
    return {"object": "role", "id": role_id, "name": name, "permissions": permissions,
            "predefined_role": predefined, "resource_type": resource_type, "description": description}


def _assignment(role: dict, sources: list[dict] | None = None) -> dict:
    record = {k: v for k, v in role.items() if k != "object"}
    if sources is not None:
        record["assignment_sources"] = sources
    return record


def generate_organization(users: int = 20_000, projects: int = 2_000, members: int = 10, service_accounts: int = 2,
                          keys: int = 5, groups: int = 50, group_members: int = 20, custom_roles: bool = False,
                          org_id: str = "org-bench0001", login_every: int = 0, wif_every: int = 0,
                          certificates: int = 0, hosted_tools: bool = False, admin_keys: int = 0,
                          org_role_holders: int = 0) -> Organization:
    """A large, regular organization for the benchmark (deterministic, except audit times follow the clock).

    The access-review families are off by default (empty lists; hosted tools 404), so the benchmark's
    numbers do not move unless asked:
    - `login_every=K`: audit events (see `_generated_audit_logs`): for every Kth user, login.succeeded at
      now-(1 + i % 60) days and at now-(100 + i % 60) days plus a logout.succeeded; for the first key of every
      Kth project, api_key.created (scopes) and a newer api_key.updated. About 3*users/K + 2*projects/K events.
    - `wif_every=N`: one enabled provider `wip_bench` with one rule per Nth project (ceil(projects/N) rules),
      for the project's first service account (or `svc_missing` when it has none), restricted (two scopes)
      and service_account_default alternately; one disabled provider `wip_bench_off` without rules.
    - `certificates=C`: one organization certificate and C certificates per project (projects*C), the
      first of each project active.
    - `hosted_tools`: every project answers hosted tool permissions (mcp on even projects, web_search on
      every third, the rest off).
    - `admin_keys=N`: N admin API keys `key_admin_000`..., owned in turn by the organization owners (every 500th
      user).
    - `org_role_holders=M`: a custom organization role `role-custom-org-analyst` (Roles API, not predefined; it
      makes `--role-assignments auto` read every user's roles) held by M users spread evenly over the user list:
      they are the members of group `group_org_analysts`, which holds the role (group roles are read whatever
      `--role-assignments` says), and each one's user roles list it with that group as its source.
    """
    org = Organization(org_id=org_id)
    for i in range(users):
        org.users.append({"object": "organization.user", "id": f"user-{i:06d}", "name": f"User {i}",
                          "email": f"user{i}@example.com", "role": "owner" if i % 500 == 0 else "reader",
                          "added_at": BASE_TIME + i})
    for p in range(projects):
        pid = f"proj_{p:05d}"
        org.projects.append({"object": "organization.project", "id": pid, "name": f"Project {p}",
                             "created_at": BASE_TIME + p, "archived_at": None, "status": "active"})
        org.project_users[pid] = [
            {"object": "organization.project.user", "id": f"user-{(p * members + m) % max(users, 1):06d}",
             "name": "", "email": "", "role": "owner" if m == 0 else "member", "added_at": BASE_TIME}
            for m in range(members)]
        for m in org.project_users[pid]:
            user = org.users[int(m["id"][5:])]
            m["name"], m["email"] = user["name"], user["email"]
        org.service_accounts[pid] = [
            {"object": "organization.project.service_account", "id": f"svc_{p:05d}_{s}", "name": f"bot {s}",
             "role": "member", "created_at": BASE_TIME} for s in range(service_accounts)]
        org.api_keys[pid] = []
        for k in range(keys):
            owner = org.project_users[pid][k % members] if members else None
            org.api_keys[pid].append({
                "object": "organization.project.api_key", "id": f"key_{p:05d}_{k}", "name": f"key {k}",
                "redacted_value": f"sk-...{p:04d}{k}", "created_at": BASE_TIME, "last_used_at": None,
                "expires_at": None, "owner_project_access": "active",
                "owner": {"type": "user", "user": {"id": owner["id"], "email": owner["email"],
                                                   "name": owner["name"], "role": owner["role"],
                                                   "created_at": BASE_TIME}} if owner else {}})
        org.project_roles[pid] = [_role_record(f"role-api-project-member__api-project__{pid}", "member",
                                               ["api.project.read"], True, "api.project")]
    for g in range(groups):
        gid = f"group_{g:04d}"
        org.groups.append({"id": gid, "name": f"Group {g}", "created_at": BASE_TIME, "group_type": "group",
                           "is_scim_managed": True})
        org.group_users[gid] = [{"id": f"user-{(g * group_members + m) % max(users, 1):06d}",
                                 "name": f"User {(g * group_members + m) % max(users, 1)}", "email": None}
                                for m in range(group_members)]
    org.roles = [_role_record(f"role-api-organization-owner__api-organization__{org_id}", "owner",
                              ["api.organization.read", "api.organization.update"], True, "api.organization")]
    if custom_roles:
        org.roles.append(_role_record("role-custom-auditor", "Auditor", ["api.organization.read"], False,
                                      "api.organization"))
    if login_every:
        org.audit_logs = _generated_audit_logs(org, login_every, int(time.time()))
    if wif_every:
        org.workload_identity_providers = [
            _wif_provider("wip_bench", "Bench CI", "https://token.actions.githubusercontent.com", "api://openai",
                          True, BASE_TIME),
            _wif_provider("wip_bench_off", "Bench CI (old)", "https://ci.example.com", "openai", False,
                          BASE_TIME + 1)]
        rules = []
        for p, project in enumerate(org.projects[::wif_every]):
            accounts = org.service_accounts.get(project["id"]) or [{"id": "svc_missing"}]
            permissions = ({"type": "restricted", "scopes": ["api.model.request", "api.files.read"]} if p % 2 == 0
                           else {"type": "service_account_default"})
            rules.append(_federation_rule(f"wifr_{project['id']}", "wip_bench", project["id"], accounts[0]["id"],
                                          {"repository": f"acme/{project['id']}", "ref": "refs/heads/main"},
                                          permissions, BASE_TIME + p, name=f"deploy {project['id']}"))
        org.federation_rules = {"wip_bench": rules, "wip_bench_off": []}
    if certificates:
        org.certificates = [_certificate("cert_org", "organization.certificate", "Org CA", True, BASE_TIME,
                                         BASE_TIME, BASE_TIME + 365 * DAY)]
        for project in org.projects:
            org.project_certificates[project["id"]] = [
                _certificate(f"cert_{project['id']}_{c}", "organization.project.certificate", f"cert {c}", c == 0,
                             BASE_TIME + c, BASE_TIME, BASE_TIME + 365 * DAY) for c in range(certificates)]
    if hosted_tools:
        org.hosted_tool_permissions = {project["id"]: _hosted_tools(mcp=p % 2 == 0, web_search=p % 3 == 0)
                                       for p, project in enumerate(org.projects)}
    owners = [user for user in org.users if user["role"] == "owner"]
    for n in range(admin_keys if owners else 0):
        owner = owners[n % len(owners)]
        org.admin_api_keys.append({
            "object": "organization.admin_api_key", "id": f"key_admin_{n:03d}", "name": f"admin key {n}",
            "redacted_value": f"sk-admin...{n:04d}", "created_at": BASE_TIME + n, "last_used_at": None,
            "expires_at": None, "owner": {"type": "user", "object": "organization.user", "id": owner["id"],
                                          "name": owner["name"], "created_at": BASE_TIME, "role": "owner"}})
    if org_role_holders and users:
        analyst = _role_record("role-custom-org-analyst", "Analyst",
                               ["api.organization.read", "api.usage.read", "api.files.read", "api.responses.read"],
                               False, "api.organization", "Reads usage, files and responses everywhere")
        org.roles.append(analyst)
        step = max(users // org_role_holders, 1)
        holders = org.users[::step][:org_role_holders]
        org.groups.append({"id": "group_org_analysts", "name": "Analysts", "created_at": BASE_TIME,
                           "group_type": "group", "is_scim_managed": True})
        org.group_users["group_org_analysts"] = [{"id": h["id"], "name": h["name"], "email": h["email"]}
                                                 for h in holders]
        org.group_roles["group_org_analysts"] = [_assignment(analyst)]
        for holder in holders:
            org.user_roles[holder["id"]] = [
                _assignment(analyst, [{"principal_id": "group_org_analysts", "principal_type": "group"}])]
    return org


def _generated_audit_logs(org: Organization, every: int, now: int) -> list[dict]:
    """Logins of every `every`th user (latest now-(1 + i % 60) days, one more outside a 90-day window), key scopes
    for the first key of every `every`th project (created now-30d, updated now-(2 + p % 20) days)."""
    events: list[dict] = []

    def add(event_type: str, at: int, actor: dict, details: dict | None = None, project: dict | None = None) -> None:
        events.append(_event(f"audit_log-{len(events):07d}", event_type, at, actor, details, project))

    for i, user in enumerate(org.users[::every]):
        actor = _session(user["id"], user.get("email"))
        add("login.succeeded", now - (100 + i % 60) * DAY, actor)
        add("login.succeeded", now - (1 + i % 60) * DAY, actor)
        add("logout.succeeded", now - (1 + i % 60) * DAY + 600, actor)
    for p, project in enumerate(org.projects[::every]):
        keys = org.api_keys.get(project["id"]) or []
        if not keys:
            continue
        owner = keys[0].get("owner", {}).get("user") or {}
        actor = _session(owner.get("id", "user-unknown"), owner.get("email"))
        scope = {"id": project["id"], "name": project["name"]}
        add("api_key.created", now - 30 * DAY, actor, {"id": keys[0]["id"], "data": {"scopes": ["api.model.request"]}},
            scope)
        add("api_key.updated", now - (2 + p % 20) * DAY, actor,
            {"id": keys[0]["id"], "changes_requested": {"scopes": ["api.model.request", "api.files.write"]}}, scope)
    return events


def demo_organization() -> Organization:
    """A small organization with every kind of record the connector maps, edge cases included."""
    org = Organization(org_id="org-demo0001")
    org.legacy_organization = {"object": "organization", "id": org.org_id, "title": "Demo", "name": "demo",
                               "personal": False}
    for i in range(120):  # two pages at limit=100
        org.users.append({"object": "organization.user", "id": f"user-{i:04d}", "name": f"Demo User {i}",
                          "email": f"demo{i}@example.com", "role": "reader", "added_at": BASE_TIME + i})
    org.users[0].update(role="owner", created=BASE_TIME - 100, is_scim_managed=True, api_key_last_used_at=BASE_TIME)
    org.users[1] = {"object": "organization.user", "id": "user-0001", "added_at": BASE_TIME, "role": "reader",
                    "user": {"object": "user", "id": "user-0001", "email": " nested@example.com ",
                             "name": "Nested Only", "enabled": False}}
    org.users[2].update(role="auditor")
    org.users[3].update(email=None, name=None)
    org.users[4].update(is_service_account=True, name="Org Service Bot")
    org.users[5]["user"] = {"object": "user", "id": "user-0005", "banned": True}
    org.projects = [
        {"object": "organization.project", "id": "proj_alpha", "name": "Alpha", "created_at": BASE_TIME,
         "archived_at": None, "status": "active"},
        {"object": "organization.project", "id": "proj_beta", "name": "Beta", "created_at": BASE_TIME,
         "archived_at": BASE_TIME + 50, "status": "archived"},
    ]
    org.project_users = {
        "proj_alpha": [
            {"object": "organization.project.user", "id": "user-0010", "name": "Demo User 10",
             "email": "demo10@example.com", "role": "owner", "added_at": BASE_TIME},
            {"object": "organization.project.user", "id": "user-0011", "name": "Demo User 11",
             "email": "demo11@example.com", "role": "member", "added_at": BASE_TIME},
            {"object": "organization.project.user", "id": "user-ghost", "name": "Ghost Member",
             "email": "ghost@example.com", "role": "member", "added_at": BASE_TIME},
        ],
        "proj_beta": [
            {"object": "organization.project.user", "id": "user-0012", "name": "Demo User 12",
             "email": "demo12@example.com", "role": "viewer", "added_at": BASE_TIME},
        ],
    }
    org.service_accounts = {
        "proj_alpha": [
            {"object": "organization.project.service_account", "id": "svc_deploy", "name": "deploy-bot",
             "role": "owner", "created_at": BASE_TIME},
            {"object": "organization.project.service_account", "id": "svc_idle", "name": "idle-bot",
             "role": "none", "created_at": BASE_TIME},
        ],
    }

    def key(kid: str, owner: dict, access: str = "active", name: str = "key") -> dict:
        return {"object": "organization.project.api_key", "id": kid, "name": name,
                "redacted_value": f"sk-...{kid[-4:]}", "created_at": BASE_TIME, "last_used_at": BASE_TIME + 10,
                "expires_at": None, "owner_project_access": access, "owner": owner}

    user_owner = {"type": "user", "user": {"id": "user-0011", "email": "demo11@example.com", "name": "Demo User 11",
                                           "role": "member", "created_at": BASE_TIME}}
    gone_owner = {"type": "user", "user": {"id": "user-0020", "email": "demo20@example.com", "name": "Demo User 20",
                                           "role": "member", "created_at": BASE_TIME}}
    sa_owner = {"type": "service_account", "service_account": {"id": "svc_deploy", "name": "deploy-bot",
                                                               "role": "owner", "created_at": BASE_TIME}}
    org.api_keys = {"proj_alpha": [key("key_user1", user_owner), key("key_svc1", sa_owner, name=""),
                                   key("key_gone", gone_owner, access="inactive")]}
    org.admin_api_keys = [
        {"object": "organization.admin_api_key", "id": "key_admin1", "name": "Veza read-only",
         "redacted_value": "sk-admin...abcd", "created_at": BASE_TIME, "last_used_at": BASE_TIME + 5,
         "expires_at": None, "owner": {"type": "user", "object": "organization.user", "id": "user-0000",
                                       "name": "Demo User 0", "created_at": BASE_TIME, "role": "owner"}},
        {"object": "organization.admin_api_key", "id": "key_user1", "name": "key",
         "redacted_value": "sk-...ser1", "created_at": BASE_TIME,
         "owner": {"type": "user", "id": "user-0011", "name": "Demo User 11"}},
    ]
    org.invites = [
        {"object": "organization.invite", "id": "invite-pending", "email": "new@example.com", "role": "reader",
         "status": "pending", "created_at": BASE_TIME, "expires_at": BASE_TIME + 86400, "accepted_at": None,
         "projects": [{"id": "proj_alpha", "role": "member"}]},
        {"object": "organization.invite", "id": "invite-accepted", "email": "demo7@example.com", "role": "reader",
         "status": "accepted", "created_at": BASE_TIME, "expires_at": BASE_TIME + 86400,
         "accepted_at": BASE_TIME + 10, "projects": []},
        {"object": "organization.invite", "id": "invite-expired", "email": "late@example.com", "role": "owner",
         "status": "expired", "created_at": BASE_TIME, "expires_at": BASE_TIME + 1, "accepted_at": None,
         "projects": []},
    ]
    custom = _role_record("role-custom-billing", "Billing Auditor",
                          ["api.organization.billing.read", "api.organization.projects.create",
                           "api.organization.keys.delete", "api.organization.members.manage",
                           "api.model.request", "api.organization.frobnicate"], False, "api.organization",
                          "Reads billing")
    org_owner = _role_record(f"role-api-organization-owner__api-organization__{org.org_id}", "owner",
                             ["api.organization.read", "api.organization.update"], True, "api.organization")
    project_custom = _role_record("role-custom-proj-deployer", "Deployer", ["api.project.deployments.write"],
                                  False, "api.project")
    org.roles = [org_owner, custom]
    org.project_roles = {"proj_alpha": [project_custom], "proj_beta": []}
    org.groups = [
        {"id": "group_eng", "name": "Engineering", "created_at": BASE_TIME, "group_type": "group",
         "is_scim_managed": True},
        {"id": "group_fin", "name": "Finance", "created_at": BASE_TIME, "group_type": "tenant_group",
         "is_scim_managed": False},
    ]
    org.group_users = {
        "group_eng": [{"id": "user-0010", "name": "Demo User 10", "email": "demo10@example.com"},
                      {"id": "user-0011", "name": "Demo User 11", "email": "demo11@example.com"},
                      {"id": "user-scim-only", "name": "Scim Only", "email": "scim@example.com"}],
        "group_fin": [{"id": "user-0012", "name": "Demo User 12", "email": None}],
    }
    org.group_roles = {"group_fin": [_assignment(custom)]}
    org.user_roles = {
        "user-0012": [_assignment(custom, [{"principal_id": "group_fin", "principal_type": "group"}])],
        "user-0013": [_assignment(custom, [])],
    }
    org.project_groups = {"proj_alpha": [{"object": "project.group", "group_id": "group_eng",
                                          "group_name": "Engineering", "group_type": "group",
                                          "project_id": "proj_alpha", "created_at": BASE_TIME}]}
    org.project_group_roles = {("proj_alpha", "group_eng"): [_assignment(project_custom)]}
    org.project_user_roles = {("proj_alpha", "user-0011"): [_assignment(project_custom)]}
    org.model_permissions = {"proj_alpha": {"mode": "allow_list", "model_ids": ["gpt-4o", "gpt-4o-mini"]}}
    org.audit_logs = demo_audit_logs(int(time.time()))
    github = _wif_provider("wip_github", "GitHub Actions", "https://token.actions.githubusercontent.com",
                           "api://openai", True, BASE_TIME + 100)
    legacy = _wif_provider("wip_legacy", "Old GitLab", "https://gitlab.example.com", "openai", False,
                           BASE_TIME + 200, jwks={"keys": []})
    legacy["attribute_transformations"] = [{"attribute": "repo", "expression": "claims.project_path"}]
    org.workload_identity_providers = [github, legacy]
    org.federation_rules = {
        "wip_github": [
            _federation_rule("wifr_deploy_main", "wip_github", "proj_alpha", "svc_deploy",
                             {"repository": "acme/app", "ref": "refs/heads/main"},
                             {"type": "restricted", "scopes": ["api.model.request", "api.files.read"]},
                             BASE_TIME + 110, name="deploy from main"),
            _federation_rule("wifr_unknown_sa", "wip_github", "proj_alpha", "svc_unknown",
                             {"repository_owner": "acme", "run_attempt": 1, "pull_request": False},
                             {"type": "service_account_default"}, BASE_TIME + 120),
        ],
        "wip_legacy": [
            _federation_rule("wifr_legacy_deploy", "wip_legacy", "proj_alpha", "svc_deploy",
                             {"project_path": "acme/app"}, {"type": "service_account_default"}, BASE_TIME + 210,
                             name="legacy deploy"),
        ],
    }
    org.certificates = [_certificate("cert_org_root", "organization.certificate", "Corporate root CA", True,
                                     BASE_TIME + 300, BASE_TIME, BASE_TIME + 3 * 365 * DAY)]
    org.project_certificates = {"proj_alpha": [
        _certificate("cert_alpha_mtls", "organization.project.certificate", "alpha mTLS client", False,
                     BASE_TIME + 400, BASE_TIME + 400, BASE_TIME + 400 + 90 * DAY)]}
    org.certificate_contents = {cid: f"-----BEGIN CERTIFICATE-----\nFAKEPEM{cid}\n-----END CERTIFICATE-----\n"
                                for cid in ("cert_org_root", "cert_alpha_mtls")}
    org.hosted_tool_permissions = {
        "proj_alpha": _hosted_tools(mcp=True, web_search=True),
        "proj_beta": _hosted_tools(),
    }
    return org


EFFECTIVE_ACCESS_ORG = "org-access0001"


def effective_access_organization() -> Organization:
    """A small organization where access arrives along every path OpenAI grants it (the mapping spec's
    "Effective access"), each path on a principal of its own. proj_main is the project under review:

    - user-owner: an organization owner (user list), not listed in any project; key_owner in proj_main (its
      record trims the owner to an id); admin key key_admin.
    - user-rolesowner: `reader` in the user list, assigned the predefined organization owner role directly
      (user roles). user-grpowner: member of group_owners, which holds that predefined role (group roles).
    - user-lead: proj_main `owner` (project users) and the custom project role Deployer directly (project user
      roles); key_lead's record says `{"type": "user", "user": {"id": ...}}`, without the role.
    - user-dev: proj_main `member`, its predefined project member role listed again in project user roles,
      member of group_viewers (predefined project viewer role on proj_main); key_dev's record owner is
      `{"id": ...}` only (public fixtures).
    - user-plain: member of group_viewers only. user-outsider: a reader with no other access.
    - user-auditor: proj_main `member`, the custom organization role Org Auditor directly (user roles);
      key_auditor in proj_main. user-finance: proj_side `member`, member of group_fin, which holds Org
      Auditor (group roles); key_finance in proj_side.
    - svc_none: a proj_main service account with role `none` (OpenAI's recommended pattern), member of
      group_deployers, which holds Deployer on proj_main (project groups); its key key_svc_none and federation
      rule wifr_svc_none.

    The Roles API lists predefined roles as OpenAI does: by flag, by id pattern, or both (the organization's
    reader and proj_side's project member carry no `predefined_role` at all), in both id formats. Role
    assignments (user roles, project user roles) are read only with `--role-assignments all` (or `auto`).
    """
    org = Organization(org_id=EFFECTIVE_ACCESS_ORG)
    people = [("user-owner", "owner"), ("user-rolesowner", "reader"), ("user-grpowner", "reader"),
              ("user-lead", "reader"), ("user-dev", "reader"), ("user-plain", "reader"),
              ("user-outsider", "reader"), ("user-auditor", "reader"), ("user-finance", "reader")]
    for n, (uid, role) in enumerate(people):
        name = uid.split("-", 1)[1].capitalize()
        org.users.append({"object": "organization.user", "id": uid, "name": name, "email": f"{uid}@example.com",
                          "role": role, "added_at": BASE_TIME + n})
    org.projects = [
        {"object": "organization.project", "id": pid, "name": name, "created_at": BASE_TIME, "archived_at": None,
         "status": "active"} for pid, name in (("proj_main", "Main"), ("proj_side", "Side"))]

    def member(uid: str, role: str) -> dict:
        return {"object": "organization.project.user", "id": uid, "name": uid.split("-", 1)[1].capitalize(),
                "email": f"{uid}@example.com", "role": role, "added_at": BASE_TIME}

    org.project_users = {"proj_main": [member("user-lead", "owner"), member("user-dev", "member"),
                                       member("user-auditor", "member")],
                         "proj_side": [member("user-finance", "member")]}
    org.service_accounts = {"proj_main": [{"object": "organization.project.service_account", "id": "svc_none",
                                           "name": "deploy-bot", "role": "none", "created_at": BASE_TIME}],
                            "proj_side": []}

    def key(kid: str, owner: dict) -> dict:
        return {"object": "organization.project.api_key", "id": kid, "name": kid.replace("_", " "),
                "redacted_value": f"sk-proj-...{kid[-4:]}", "created_at": BASE_TIME, "last_used_at": None,
                "expires_at": None, "owner_project_access": "active", "owner": owner}

    def user_owner(uid: str, role: str) -> dict:
        return {"type": "user", "user": {"id": uid, "email": f"{uid}@example.com", "name": uid, "role": role,
                                         "created_at": BASE_TIME}}

    org.api_keys = {
        "proj_main": [
            key("key_svc_none", {"type": "service_account", "service_account": {
                "id": "svc_none", "name": "deploy-bot", "role": "none", "created_at": BASE_TIME}}),
            key("key_dev", {"id": "user-dev"}),  # trimmed as in public fixtures
            key("key_lead", {"type": "user", "user": {"id": "user-lead"}}),  # no role in the record
            key("key_auditor", user_owner("user-auditor", "member")),
            key("key_owner", {"type": "user", "user": {"id": "user-owner"}}),
        ],
        "proj_side": [key("key_finance", user_owner("user-finance", "member"))],
    }
    org.admin_api_keys = [
        {"object": "organization.admin_api_key", "id": "key_admin", "name": "Automation", "redacted_value":
         "sk-admin...main", "created_at": BASE_TIME, "last_used_at": None, "expires_at": None,
         "owner": {"type": "user", "object": "organization.user", "id": "user-owner", "name": "Owner",
                   "created_at": BASE_TIME, "role": "owner"}}]

    def predefined(role_id: str, name: str, permissions: list[str], resource_type: str,
                   flag: object = True) -> dict:
        record = _role_record(role_id, name, permissions, True, resource_type)
        if flag is Ellipsis:
            del record["predefined_role"]
        else:
            record["predefined_role"] = flag
        return record

    org_owner = predefined(f"role-api-organization-owner__api-organization__{EFFECTIVE_ACCESS_ORG}", "owner",
                           ["api.organization.read", "api.organization.update"], "api.organization")
    org_reader = predefined(f"role-api-organization-reader__api-organization__{EFFECTIVE_ACCESS_ORG}", "reader",
                            ["api.organization.read"], "api.organization", flag=Ellipsis)  # known by its id
    auditor = _role_record("role-org-auditor", "Org Auditor",
                           ["api.files.read", "api.responses.write", "api.all.read", "api.groups.read",
                            "api.organization.projects.api_keys.write", "api.widgets.read"], False,
                           "api.organization", "Reads files and responses in every project")
    main_owner = predefined("role-api-project-owner__api-project__proj_main", "owner",
                            ["api.model.request", "api.project.read", "api.project.write"], "api.project")
    main_member = predefined("role-api-project-member__api-project__proj_main", "member",
                             ["api.model.request", "api.project.read"], "api.project")
    main_viewer = predefined("role-api-project-viewer__api-project__proj_main", "viewer", ["api.project.read"],
                             "api.project")
    deployer = _role_record("role-custom-deployer", "Deployer",
                            ["api.model.request", "api.files.write", "api.fine_tuning.jobs.read"], False, "api.project",
                            "Deploys fine-tuned models")
    side_owner = predefined("role-api-project-owner", "owner", ["api.project.admin"], "api.project")
    side_member = predefined("role-api-project-member", "member", ["api.files.read", "api.model.request"],
                             "api.project", flag=Ellipsis)  # the other id format, known by its id
    org.roles = [org_owner, org_reader, auditor]
    org.project_roles = {"proj_main": [main_owner, main_member, main_viewer, deployer],
                         "proj_side": [side_owner, side_member]}
    org.groups = [{"id": gid, "name": name, "created_at": BASE_TIME, "group_type": "group", "is_scim_managed": False}
                  for gid, name in (("group_owners", "Owners"), ("group_fin", "Finance"),
                                    ("group_deployers", "Deployers"), ("group_viewers", "Viewers"))]
    org.group_users = {
        "group_owners": [{"id": "user-grpowner", "name": "Grpowner", "email": "user-grpowner@example.com"}],
        "group_fin": [{"id": "user-finance", "name": "Finance", "email": "user-finance@example.com"}],
        "group_deployers": [{"id": "svc_none", "name": "deploy-bot", "email": None}],
        "group_viewers": [{"id": "user-dev", "name": "Dev", "email": "user-dev@example.com"},
                          {"id": "user-plain", "name": "Plain", "email": "user-plain@example.com"}],
    }
    org.group_roles = {"group_owners": [_assignment(org_owner)], "group_fin": [_assignment(auditor)]}

    def through(group_id: str) -> list[dict]:
        return [{"principal_id": group_id, "principal_type": "group"}]

    def itself(user_id: str) -> list[dict]:
        return [{"principal_id": user_id, "principal_type": "user"}]

    org.user_roles = {
        "user-rolesowner": [_assignment(org_owner, itself("user-rolesowner"))],
        "user-grpowner": [_assignment(org_owner, through("group_owners"))],
        "user-auditor": [_assignment(auditor, itself("user-auditor"))],
        "user-finance": [_assignment(auditor, through("group_fin"))],
    }
    org.project_groups = {"proj_main": [
        {"object": "project.group", "group_id": gid, "group_name": name, "group_type": "group",
         "project_id": "proj_main", "created_at": BASE_TIME}
        for gid, name in (("group_deployers", "Deployers"), ("group_viewers", "Viewers"))]}
    org.project_group_roles = {("proj_main", "group_deployers"): [_assignment(deployer)],
                               ("proj_main", "group_viewers"): [_assignment(main_viewer)]}
    org.project_user_roles = {("proj_main", "user-lead"): [_assignment(deployer, itself("user-lead"))],
                              ("proj_main", "user-dev"): [_assignment(main_member, itself("user-dev"))]}
    org.workload_identity_providers = [_wif_provider("wip_ci", "CI", "https://token.actions.githubusercontent.com",
                                                     "api://openai", True, BASE_TIME)]
    org.federation_rules = {"wip_ci": [_federation_rule("wifr_svc_none", "wip_ci", "proj_main", "svc_none",
                                                        {"repository": "acme/app"}, {"type": "service_account_default"},
                                                        BASE_TIME + 1, name="deploy from CI")]}
    return org


HOSTED_TOOLS = ("code_interpreter", "file_search", "image_generation", "mcp", "web_search")


def _hosted_tools(**enabled: bool) -> dict:
    return {tool: {"enabled": enabled.get(tool, False)} for tool in HOSTED_TOOLS}


def _certificate(cert_id: str, kind: str, name: str | None, active: bool, created_at: int, valid_at: int,
                 expires_at: int) -> dict:
    return {"object": kind, "id": cert_id, "name": name, "active": active, "created_at": created_at,
            "certificate_details": {"valid_at": valid_at, "expires_at": expires_at}}


def _wif_provider(provider_id: str, name: str, issuer: str, audience: str, enabled: bool, created_at: int,
                  jwks: dict | None = None) -> dict:
    verification = ({"type": "uploaded_jwks", "jwks": jwks} if jwks is not None else
                    {"type": "discovery", "discovery_url": f"{issuer}/.well-known/openid-configuration"})
    return {"object": "organization.workload_identity_provider", "id": provider_id, "name": name,
            "description": None, "issuer": issuer, "audience": audience, "enabled": enabled, "type": "oidc",
            "attribute_transformations": [], "verification": verification, "created_at": created_at,
            "updated_at": created_at}


def _federation_rule(rule_id: str, provider_id: str, project_id: str, service_account_id: str,
                     matchers: dict, permissions: dict, created_at: int, name: str | None = None,
                     enabled: bool = True) -> dict:
    return {"object": "organization.workload_identity_federation_rule", "id": rule_id, "name": name,
            "description": None, "enabled": enabled, "project_id": project_id,
            "service_account_id": service_account_id, "workload_identity_provider_id": provider_id,
            "attribute_matchers": matchers, "permissions": permissions, "created_at": created_at,
            "updated_at": created_at}


DAY = 86_400


def _session(user_id: str, email: str | None, ip_address: str = "203.0.113.7") -> dict:
    return {"type": "session", "session": {"user": {"id": user_id, "email": email}, "ip_address": ip_address}}


def _event(event_id: str, event_type: str, effective_at: int, actor: dict, details: dict | None = None,
           project: dict | None = None) -> dict:
    event = {"id": event_id, "type": event_type, "effective_at": effective_at, "actor": actor,
             event_type: details if details is not None else {}}
    if project is not None:
        event["project"] = project
    return event


def demo_audit_logs(now: int) -> list[dict]:
    """Audit events relative to `now` (the connector's lookback window is counted back from the clock).

    Logins: user-0010 at now-2d, now-10d and now-200d (latest now-2d); user-0011 at now-5d (and a newer
    login.failed at now-1d that a type filter must drop); user-0000 at now-1d; user-0012 only at now-200d
    (outside a 90-day window); user-9999, not an organization user, at now-3d. Key scopes: key_user1
    created at now-30d with ["api.model.request"], updated at now-4d (by an admin key) to
    ["api.model.request", "api.files.write"]; key_svc1 created at now-20d with
    ["api.model.request", "api.responses.write"]; key_gone created at now-120d with ["api.files.read"].
    Other types: logout.succeeded (user-0010, now-2d+1h) and project.created (proj_beta, now-6d).
    """
    alpha = {"id": "proj_alpha", "name": "Alpha"}
    admin_key_actor = {"type": "api_key", "api_key": {"id": "key_admin1", "type": "user",
                                                      "user": {"id": "user-0000", "email": "demo0@example.com"}}}
    return [
        _event("audit_log-demo001", "login.succeeded", now - 200 * DAY, _session("user-0010", "demo10@example.com")),
        _event("audit_log-demo002", "login.succeeded", now - 10 * DAY, _session("user-0010", "demo10@example.com")),
        _event("audit_log-demo003", "login.succeeded", now - 2 * DAY, _session("user-0010", "demo10@example.com")),
        _event("audit_log-demo004", "logout.succeeded", now - 2 * DAY + 3600,
               _session("user-0010", "demo10@example.com")),
        _event("audit_log-demo005", "login.succeeded", now - 5 * DAY,
               _session("user-0011", "demo11@example.com", "198.51.100.23")),
        _event("audit_log-demo006", "login.failed", now - 1 * DAY, _session("user-0011", "demo11@example.com"),
               {"error_code": "invalid_password", "error_message": "Wrong password"}),
        _event("audit_log-demo007", "login.succeeded", now - 1 * DAY, _session("user-0000", "demo0@example.com")),
        _event("audit_log-demo008", "login.succeeded", now - 200 * DAY, _session("user-0012", "demo12@example.com")),
        _event("audit_log-demo009", "login.succeeded", now - 3 * DAY, _session("user-9999", "former@example.com")),
        _event("audit_log-demo010", "api_key.created", now - 30 * DAY, _session("user-0011", "demo11@example.com"),
               {"id": "key_user1", "data": {"scopes": ["api.model.request"]}}, alpha),
        _event("audit_log-demo011", "api_key.updated", now - 4 * DAY, admin_key_actor,
               {"id": "key_user1", "changes_requested": {"scopes": ["api.model.request", "api.files.write"]}},
               alpha),
        _event("audit_log-demo012", "api_key.created", now - 20 * DAY, _session("user-0010", "demo10@example.com"),
               {"id": "key_svc1", "data": {"scopes": ["api.model.request", "api.responses.write"]}}, alpha),
        _event("audit_log-demo013", "api_key.created", now - 120 * DAY, _session("user-0020", "demo20@example.com"),
               {"id": "key_gone", "data": {"scopes": ["api.files.read"]}}, alpha),
        _event("audit_log-demo014", "project.created", now - 6 * DAY, _session("user-0000", "demo0@example.com"),
               {"id": "proj_beta", "data": {"name": "Beta", "title": "Beta"}}, {"id": "proj_beta", "name": "Beta"}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI Admin API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--admin-key", default=DEFAULT_ADMIN_KEY)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    parser.add_argument("--generate", action="store_true", help="serve a generated large organization")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--projects", type=int, default=2_000)
    parser.add_argument("--ready-file", help="write the base URL here once listening")
    args = parser.parse_args()
    org = generate_organization(args.users, args.projects) if args.generate else demo_organization()
    fake = FakeOpenAI(org, admin_key=args.admin_key, latency=args.latency, port=args.port).start()
    print(f"fake OpenAI Admin API for {org.org_id} at {fake.base_url}", flush=True)
    if args.ready_file:
        with open(args.ready_file, "w") as handle:
            handle.write(fake.base_url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
