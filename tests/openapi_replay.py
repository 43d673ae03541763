"""A replay of OpenAI's documented example responses on 127.0.0.1, and the same examples as a Snapshot.

The examples in tests/openapi_examples/ were extracted from openai/openai-openapi by
tests/extract_openapi_examples.py (see its _source.json for the commit and the repairs). Each endpoint
answers its documented example whatever ids the path names; an endpoint the document does not describe
(the legacy organization object, workload identity federation) answers 404, as for an organization
without it.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import urllib.parse
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

from fake_http import QuietKeepAliveHandler, stop_server

EXAMPLES_DIR = Path(__file__).resolve().parent / "openapi_examples"
ORG_ID = "org-documented-examples"

# (path regex after /v1, example name); the first match wins
ROUTES = [(re.compile(f"^{regex}$"), name) for regex, name in [
    (r"/organization/users", "users"),
    (r"/organization/invites", "invites"),
    (r"/organization/admin_api_keys", "admin_api_keys"),
    (r"/organization/groups", "groups"),
    (r"/organization/roles", "roles"),
    (r"/organization/projects", "projects"),
    (r"/organization/audit_logs", "audit_logs"),
    (r"/organization/certificates", "certificates"),
    (r"/organization/projects/[^/]+/users", "project_users"),
    (r"/organization/projects/[^/]+/service_accounts", "project_service_accounts"),
    (r"/organization/projects/[^/]+/api_keys", "project_api_keys"),
    (r"/projects/[^/]+/roles", "project_roles"),
    (r"/organization/projects/[^/]+/groups", "project_groups"),
    (r"/organization/projects/[^/]+/model_permissions", "model_permissions"),
    (r"/organization/projects/[^/]+/certificates", "project_certificates"),
    (r"/organization/projects/[^/]+/hosted_tool_permissions", "hosted_tool_permissions"),
    (r"/organization/groups/[^/]+/users", "group_users"),
    (r"/organization/groups/[^/]+/roles", "group_roles"),
    (r"/projects/[^/]+/groups/[^/]+/roles", "project_group_roles"),
    (r"/organization/users/[^/]+/roles", "user_roles"),
    (r"/projects/[^/]+/users/[^/]+/roles", "project_user_roles"),
    (r"/organization/projects/[^/]+", "project_object"),
    (r"/organization/groups/[^/]+", "group_object"),
    (r"/organization/users/[^/]+", "user_object"),
]]


def documented_examples() -> dict[str, dict]:
    """Example name -> the documented (repaired) response body."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(EXAMPLES_DIR.glob("[!_]*.json"))}


def documented_values() -> dict[str, dict]:
    """Field -> {"values": [...], "from": where the document names them}."""
    return json.loads((EXAMPLES_DIR / "_values.json").read_text())


def source() -> dict:
    return json.loads((EXAMPLES_DIR / "_source.json").read_text())


class ReplayOpenAI:
    """Serves `examples` (name -> body) at the documented paths; every request is kept in `requests`."""

    def __init__(self, examples: dict[str, dict], admin_key: str) -> None:
        self.examples = copy.deepcopy(examples)
        self.admin_key = admin_key
        self.org = SimpleNamespace(org_id=ORG_ID)  # what conftest.clean_environment reads
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def start(self) -> ReplayOpenAI:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def stop(self) -> None:
        stop_server(self._server)

    def answer(self, path: str, auth: str | None) -> tuple[int, object]:
        with self.lock:
            self.requests.append(path)
        if auth != f"Bearer {self.admin_key}":
            return 401, {"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}}
        for regex, name in ROUTES:
            if regex.match(path) and name in self.examples:
                return 200, self.examples[name]
        return 404, {"error": {"message": f"not documented: {path}", "type": "invalid_request_error"}}

    def _handler(self) -> type[QuietKeepAliveHandler]:
        replay = self

        class Handler(QuietKeepAliveHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = urllib.parse.urlsplit(self.path).path
                path = path[3:] if path.startswith("/v1/") else path
                status, body = replay.answer(path, self.headers.get("Authorization"))
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler
