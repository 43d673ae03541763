#!/usr/bin/env python3
"""A fake Veza OAA API over HTTPS on 127.0.0.1, with a throwaway CA from trustme.

It implements the calls oaaclient makes (connection test, provider and data source lookup and
create, provider icon, `:push` with its gzip+base64 body, `:parts` multipart upload) and keeps
every decoded payload. Standalone:

    python tests/fake_veza.py --port 8443 --api-key veza-demo-key --ca-file /tmp/fake-veza-ca.pem
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import ssl
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme
from fake_http import QuietKeepAliveHandler

DEFAULT_API_KEY = "veza-fake-key-0001"


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
        self._parts: dict[str, list[bytes]] = {}
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeVeza:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def payloads(self) -> list[dict]:
        return [push["payload"] for push in self.pushes]

    # --- answering -------------------------------------------------------------------------
    def answer(self, method: str, path: str, query: dict[str, str], body: Any, auth: str | None) -> tuple[int, dict]:
        with self.lock:
            self.requests.append((method, path))
        if auth != f"Bearer {self.api_key}":
            return 401, {"code": "Unauthenticated", "message": "invalid or expired token"}
        parts = path.strip("/").split("/")
        if path == "/api/v1/providers/custom/templates" and method == "GET":
            return 200, {"values": [{"id": "application"}, {"id": "identity_provider"}], "has_more": False}
        if path == "/api/v1/providers/custom":
            if method == "GET":
                return 200, {"values": _filtered(self.providers, query), "has_more": False}
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
            if method == "GET":
                return 200, {"values": _filtered(self.data_sources[provider_id], query), "has_more": False}
            source = {"id": str(uuid.uuid4()), "name": body["name"]}
            with self.lock:
                self.data_sources[provider_id].append(source)
            return 200, {"value": source}
        if len(parts) == 7 and parts[5] == "datasources" and method == "POST":
            provider_id, (source_id, _, operation) = parts[4], parts[6].partition(":")
            if operation == "push":
                if self.push_error:
                    return self.push_error
                raw = body["json_data"]
                data = gzip.decompress(base64.b64decode(raw)) if body.get("compression_type") == "GZIP" else raw
                return self._store(provider_id, source_id, data)
            if operation == "parts":
                return self._parts_operation(provider_id, source_id, body)
        return 404, {"code": "NotFound", "message": f"no route {method} {path}"}

    def _store(self, provider_id: str, source_id: str, data: bytes | str) -> tuple[int, dict]:
        payload = json.loads(data)
        with self.lock:
            self.pushes.append({"provider_id": provider_id, "data_source_id": source_id, "payload": payload})
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

    def data_source_names(self) -> list[str]:
        return [source["name"] for sources in self.data_sources.values() for source in sources]


def _filtered(items: list[dict], query: dict[str, str]) -> list[dict]:
    wanted = query.get("filter")
    if not wanted:
        return list(items)
    prefix = 'name eq "'
    name = wanted[len(prefix):-1] if wanted.startswith(prefix) and wanted.endswith('"') else None
    return [item for item in items if item["name"] == name]


def _handler_for(fake: FakeVeza) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietKeepAliveHandler):
        def _handle(self, method: str) -> None:
            split = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            status, answer = fake.answer(method, split.path, dict(urllib.parse.parse_qsl(split.query)), body,
                                         self.headers.get("authorization"))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._handle("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._handle("POST")

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
