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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fake_http import QuietKeepAliveHandler

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


@dataclass
class Fault:
    """Make matching requests misbehave. `path` is a regex searched in the path after /v1."""

    path: str
    # status|reset|truncate|nonjson|wrong_object|data_not_list|no_cursor|repeat_cursor|overlap|delay-only
    # |drip|endless|gzip_bomb|hook (drip: a byte every `delay` s; endless: body = items per page (1); gzip_bomb: body =
    # decompressed bytes (50 MB); hook: body = callable(fake), called once, then the request is answered normally)
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
]
COMPILED_ROUTES = [(re.compile(f"^{regex}$"), *rest) for regex, *rest in ROUTES]


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
        self.timeline: list[tuple[float, str, int]] = []  # (arrival time.monotonic(), path, status answered)
        self.jitter = 0.0  # extra random latency, up to this many seconds, to shuffle completion order
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak_in_flight = 0
        self.limiter: Any = None  # a fake_limits model: admit(family, now) -> None or 429 headers
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
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
        self._server.shutdown()
        self._server.server_close()

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
            items = self.items(family, match.groupdict(), query)
            if items is None:
                return 404, _error(f"No such object: {path}", None), fault
            return self.page(items, style, default_limit, max_limit, query, fault)
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
        raise AssertionError(family)

    def _user_ids(self) -> set[str]:
        """The organization's user ids, cached until org.users is replaced or changes length."""
        key = (id(self.org.users), len(self.org.users))
        cached = getattr(self, "_user_ids_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, {u.get("id") for u in self.org.users})
            self._user_ids_cache = cached
        return cached[1]

    def page(self, items: list[dict], style: str, default_limit: int, max_limit: int, query: dict[str, str],
             fault: Fault | None) -> tuple[int, dict, Fault | None]:
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
            arrived = time.monotonic()
            if fake.latency or fake.jitter:
                time.sleep(fake.latency + random.uniform(0, fake.jitter))
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
                          org_id: str = "org-bench0001") -> Organization:
    """A large, regular organization for the benchmark (deterministic)."""
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
    return org


def demo_organization() -> Organization:
    """A small organization with every kind of record the connector maps, edge cases included."""
    org = Organization(org_id="org-demo0001")
    org.legacy_organization = {"object": "organization", "id": org.org_id, "title": "Demo", "name": "demo",
                               "personal": False}
    for i in range(250):  # three pages at limit=100
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
    return org


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
