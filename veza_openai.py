#!/usr/bin/env python3
"""Veza OAA connector for OpenAI.

Reads an OpenAI organization through the OpenAI Admin API (users, roles, projects, service accounts,
API keys, admin keys, invites, groups, custom roles and role assignments), models it as an OAA
Custom Application and pushes it to Veza.

The file reads top to bottom as a pipeline: configuration, reading OpenAI, mapping (pure), pushing,
main. See README.md for the mapping tables, flags and failure behaviour.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import email.utils
import gc
import ipaddress
import json
import logging
import os
import queue
import random
import re
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import requests
from oaaclient.client import OAAClient, OAAClientError, OAAResponseError
from oaaclient.templates import (
    CustomApplication,
    CustomResource,
    LocalUser,
    OAAPermission,
    OAAPropertyType,
)

log = logging.getLogger("veza_openai")

PROVIDER_NAME = "OpenAI"
APPLICATION_TYPE = "OpenAI"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_WORKERS = 8
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 6
MAX_RETRY_WAIT = 60.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

# A plain glyph (not OpenAI's trademark) so the provider is recognisable in Veza's UI.
PROVIDER_ICON_SVG = (
    "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHZpZXdCb3g9IjAgMCAzMiAzMiI+PGNpcmNsZSBjeD0i"
    "MTYiIGN5PSIxNiIgcj0iMTQiIGZpbGw9IiMxMDEwMTAiLz48dGV4dCB4PSIxNiIgeT0iMjEiIGZvbnQtc2l6ZT0iMTQiIGZv"
    "bnQtZmFtaWx5PSJzYW5zLXNlcmlmIiBmaWxsPSIjZmZmIiB0ZXh0LWFuY2hvcj0ibWlkZGxlIj5BSTwvdGV4dD48L3N2Zz4="
)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

class ConfigError(Exception):
    """Every configuration problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Config:
    org_id: str
    openai_api_key: str
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    veza_url: str | None = None
    veza_api_key: str | None = None
    save_json: str | None = None  # file path to write, resolved from --save_json
    dry_run: bool = False
    debug: bool = False
    max_workers: int = DEFAULT_MAX_WORKERS
    max_requests_per_second: float | None = None
    role_assignments: str = "auto"
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    time_scale: float = 1.0  # tests shrink every wait with VEZA_OPENAI_TIME_SCALE

    @property
    def data_source_name(self) -> str:
        return f"{PROVIDER_NAME} - {self.org_id}"

    def secrets(self) -> list[str]:
        return [s for s in (self.openai_api_key, self.veza_api_key) if s]


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veza_openai.py",
        description="Discover an OpenAI organization's access and push it to Veza (OAA). "
        "Secrets come from the environment only: VEZA_API_KEY and OPENAI_API_KEY "
        "(or OPENAI_ADMIN_KEY when OPENAI_API_KEY is unset).",
    )
    parser.add_argument("--veza_url", "--veza-url", dest="veza_url",
                        help="URL of your Veza instance (env: VEZA_URL)")
    parser.add_argument("--openai-org", "--openai_org", dest="openai_org",
                        help="OpenAI organization ID, org-... (env: OPENAI_ORG_ID)")
    parser.add_argument("--openai-base-url", dest="openai_base_url",
                        help=f"OpenAI API base URL (env: OPENAI_BASE_URL, default {DEFAULT_OPENAI_BASE_URL})")
    parser.add_argument("--save_json", "--save-json", dest="save_json", nargs="?", const=".",
                        metavar="PATH",
                        help="also write the payload JSON; PATH is a directory (default: the current one) "
                        "or a .json file (env: none)")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true",
                        help="read and map, write the payload JSON, push nothing; needs no Veza settings")
    parser.add_argument("--debug", action="store_true", help="verbose debug logging (env: none)")
    parser.add_argument("--max-workers", dest="max_workers",
                        help=f"concurrent OpenAI reads (env: OPENAI_MAX_WORKERS, default {DEFAULT_MAX_WORKERS})")
    parser.add_argument("--max-requests-per-second", dest="max_rps",
                        help="hard cap on OpenAI requests per second (env: OPENAI_MAX_REQUESTS_PER_SECOND, "
                        "default: no cap, adaptive pacing on 429)")
    parser.add_argument("--role-assignments", dest="role_assignments",
                        help="per-user role assignment reads: auto, all or none "
                        "(env: OPENAI_ROLE_ASSIGNMENTS, default auto)")
    parser.add_argument("--timeout", dest="timeout",
                        help="seconds to wait for one OpenAI answer "
                        f"(env: OPENAI_TIMEOUT, default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--max-retries", dest="max_retries",
                        help="retries of one OpenAI request on 429/5xx/connection errors "
                        f"(env: OPENAI_MAX_RETRIES, default {DEFAULT_MAX_RETRIES})")
    return parser


ORG_ID_RE = re.compile(r"^org-[A-Za-z0-9_-]{1,128}$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_url(value: str, name: str, problems: list[str], *, allow_loopback_http: bool) -> str | None:
    """Return the normalised URL, or None with a problem recorded."""
    if any(ch.isspace() for ch in value) or any(ord(ch) < 32 for ch in value):
        problems.append(f"{name} contains whitespace or control characters")
        return None
    candidate = value if "://" in value else f"https://{value}"
    try:
        parts = urllib.parse.urlsplit(candidate)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        problems.append(f"{name} is not a valid URL")
        return None
    del port
    if not parts.hostname:
        problems.append(f"{name} is not a valid URL (no host)")
        return None
    if parts.username or parts.password:
        problems.append(f"{name} must not contain credentials (user:password@); keys come from the environment")
        return None
    if parts.query or parts.fragment:
        problems.append(f"{name} must not contain a query string or fragment")
        return None
    if parts.scheme == "http" and allow_loopback_http and _is_loopback(parts.hostname):
        pass
    elif parts.scheme != "https":
        problems.append(f"{name} must use https" + (" (http is allowed only for loopback test servers)"
                                                     if allow_loopback_http else ""))
        return None
    return candidate.rstrip("/")


def _check_secret(value: str | None, name: str, problems: list[str]) -> str | None:
    if not value:
        problems.append(f"{name} is not set")
        return None
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        problems.append(f"{name} contains whitespace, a newline or control characters")
        return None
    return value


def _resolve_save_path(value: str, org_id: str | None, problems: list[str]) -> str | None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    default_name = f"openai-{org_id or 'org'}-{stamp}.json"
    if os.path.isdir(value) or not value.lower().endswith(".json"):
        directory, path = value, os.path.join(value, default_name)
    else:
        directory, path = os.path.dirname(value) or ".", value
    if not os.path.isdir(directory):
        problems.append(f"--save_json directory {directory!r} does not exist")
        return None
    try:  # os.access says yes to root even on read-only mounts; a real file says the truth
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:
        problems.append(f"--save_json directory {directory!r} is not writable")
        return None
    return path


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Parse flags and environment into a Config; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    args = build_arg_parser().parse_args(argv)
    problems: list[str] = []

    def setting(flag_value: str | None, env_name: str) -> str | None:
        value = flag_value if flag_value is not None else env.get(env_name)
        return value if value not in (None, "") else None

    org_id = setting(args.openai_org, "OPENAI_ORG_ID")
    if org_id is None:
        problems.append("OPENAI_ORG_ID (or --openai-org) is not set")
    elif not ORG_ID_RE.match(org_id):
        problems.append("OPENAI_ORG_ID (or --openai-org) must look like org-XXXX "
                        "(letters, digits, '-' and '_' after 'org-')")
        org_id = None

    key_name = next((name for name in ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY") if env.get(name)), None)
    openai_key = _check_secret(env.get(key_name) if key_name else None,
                               key_name or "OPENAI_API_KEY (or OPENAI_ADMIN_KEY)", problems)

    base_url = _check_url(setting(args.openai_base_url, "OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL,
                          "OPENAI_BASE_URL (or --openai-base-url)", problems, allow_loopback_http=True)

    veza_url = veza_key = None
    if not args.dry_run:
        raw_veza_url = setting(args.veza_url, "VEZA_URL")
        if raw_veza_url is None:
            problems.append("VEZA_URL (or --veza_url) is not set")
        else:
            veza_url = _check_url(raw_veza_url, "VEZA_URL (or --veza_url)", problems, allow_loopback_http=False)
        veza_key = _check_secret(env.get("VEZA_API_KEY"), "VEZA_API_KEY", problems)

    save_json = args.save_json
    if save_json is None and args.dry_run:
        save_json = "."
    save_path = _resolve_save_path(save_json, org_id, problems) if save_json is not None else None

    def number(flag_value: str | None, env_name: str, label: str, kind: type, default: Any,
               low: float, high: float) -> Any:
        raw = setting(flag_value, env_name)
        if raw is None:
            return default
        try:
            value = kind(raw)
        except ValueError:
            problems.append(f"{label} (env {env_name}) must be a number, got {raw[:20]!r}")
            return default
        if not low <= value <= high:
            problems.append(f"{label} (env {env_name}) must be between {low:g} and {high:g}")
            return default
        return value

    max_workers = number(args.max_workers, "OPENAI_MAX_WORKERS", "--max-workers", int, DEFAULT_MAX_WORKERS, 1, 64)
    max_rps = number(args.max_rps, "OPENAI_MAX_REQUESTS_PER_SECOND", "--max-requests-per-second", float,
                     None, 0.01, 10_000)
    timeout = number(args.timeout, "OPENAI_TIMEOUT", "--timeout", float, DEFAULT_TIMEOUT, 0.05, 600)
    max_retries = number(args.max_retries, "OPENAI_MAX_RETRIES", "--max-retries", int, DEFAULT_MAX_RETRIES, 0, 20)
    time_scale = number(None, "VEZA_OPENAI_TIME_SCALE", "time scale", float, 1.0, 0.0, 1.0)

    role_assignments = (setting(args.role_assignments, "OPENAI_ROLE_ASSIGNMENTS") or "auto").lower()
    if role_assignments not in ("auto", "all", "none"):
        problems.append("--role-assignments (env OPENAI_ROLE_ASSIGNMENTS) must be auto, all or none")

    if problems:
        raise ConfigError(problems)
    return Config(org_id=org_id, openai_api_key=openai_key, openai_base_url=base_url, veza_url=veza_url,
                  veza_api_key=veza_key, save_json=save_path, dry_run=args.dry_run, debug=args.debug,
                  max_workers=max_workers, max_requests_per_second=max_rps, role_assignments=role_assignments,
                  timeout=timeout, max_retries=max_retries, time_scale=time_scale)


class RedactingFormatter(logging.Formatter):
    """Formats records, tracebacks included, with every known secret masked."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        # Masking a blank or tiny "secret" would shred every line; such values fail validation anyway.
        self.secrets = [s for s in secrets if s and len(s.strip()) >= 8]

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self.secrets:
            text = text.replace(secret, "[REDACTED]")
        return text


def configure_logging(debug: bool, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(message)s", secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.setLevel(logging.DEBUG if debug else logging.INFO)


# ---------------------------------------------------------------------------------------------
# Reading OpenAI
# ---------------------------------------------------------------------------------------------

class DiscoveryError(Exception):
    """OpenAI could not be read completely; nothing may be pushed."""


class AccessRefused(DiscoveryError):
    """401/403/404 from OpenAI: the key may not read this, or the organization does not have it."""

    def __init__(self, endpoint: str, status: int, message: str) -> None:
        super().__init__(f"{endpoint}: HTTP {status}: {message}")
        self.endpoint = endpoint
        self.status = status


class Aborted(DiscoveryError):
    """Another read failed; this one stopped early."""


CURSOR_LAST_ID = "last_id"   # after=<last_id>
CURSOR_ITEM_ID = "item_id"   # after=<id of the last item>
CURSOR_NEXT = "next"         # after=<next>


@dataclass(frozen=True)
class Family:
    """One kind of list the connector reads, with how to page it and what to grant when refused."""

    name: str
    path: str
    cursor: str
    limit: int
    item_object: str | None
    grant: str
    params: tuple[tuple[str, str], ...] = ()


FAMILIES = {f.name: f for f in (
    Family("users", "/organization/users", CURSOR_LAST_ID, 100, "organization.user", "Users: Read"),
    Family("invites", "/organization/invites", CURSOR_LAST_ID, 100, "organization.invite", "Invites: Read"),
    Family("projects", "/organization/projects", CURSOR_LAST_ID, 100, "organization.project", "Projects: Read",
           (("include_archived", "true"),)),
    Family("project users", "/organization/projects/{project_id}/users", CURSOR_LAST_ID, 100,
           "organization.project.user", "Projects: Read"),
    Family("project service accounts", "/organization/projects/{project_id}/service_accounts", CURSOR_LAST_ID,
           100, "organization.project.service_account", "Projects: Read"),
    Family("project API keys", "/organization/projects/{project_id}/api_keys", CURSOR_LAST_ID, 100,
           "organization.project.api_key", "API keys: Read", (("owner_project_access", "any"),)),
    Family("admin API keys", "/organization/admin_api_keys", CURSOR_ITEM_ID, 100,
           "organization.admin_api_key", "Admin keys: Read"),
    Family("groups", "/organization/groups", CURSOR_NEXT, 1000, None, "Groups: Read"),
    Family("group users", "/organization/groups/{group_id}/users", CURSOR_NEXT, 1000, None, "Groups: Read"),
    Family("group roles", "/organization/groups/{group_id}/roles", CURSOR_NEXT, 1000, None, "Roles: Read"),
    Family("roles", "/organization/roles", CURSOR_NEXT, 1000, "role", "Roles: Read"),
    Family("project roles", "/projects/{project_id}/roles", CURSOR_NEXT, 1000, "role", "Roles: Read"),
    Family("project groups", "/organization/projects/{project_id}/groups", CURSOR_NEXT, 100, "project.group",
           "Groups: Read"),
    Family("project group roles", "/projects/{project_id}/groups/{group_id}/roles", CURSOR_NEXT, 1000, None,
           "Roles: Read"),
    Family("user roles", "/organization/users/{user_id}/roles", CURSOR_NEXT, 1000, None, "Roles: Read"),
    Family("project user roles", "/projects/{project_id}/users/{user_id}/roles", CURSOR_NEXT, 1000, None,
           "Roles: Read"),
)}

MODEL_PERMISSIONS_PATH = "/organization/projects/{project_id}/model_permissions"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class RequestPacer:
    """Shared pacing for every worker: a 429 slows everyone down, success speeds up slowly."""

    FLOOR_AFTER_THROTTLE = 0.05
    MAX_INTERVAL = 10.0

    def __init__(self, max_rps: float | None, time_scale: float) -> None:
        self._lock = threading.Lock()
        self._scale = time_scale
        self._min_interval = (1.0 / max_rps) if max_rps else 0.0
        self._interval = self._min_interval
        self._next_at = 0.0
        self._paused_until = 0.0

    def acquire(self, stop: threading.Event) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_at, self._paused_until)
            self._next_at = start + self._interval * self._scale
        if start > now:
            stop.wait(start - now)

    def throttled(self, wait: float) -> None:
        with self._lock:
            now = time.monotonic()
            if now >= self._paused_until:  # one slow-down per throttle episode, not one per worker
                self._interval = min(max(self._interval * 2, self.FLOOR_AFTER_THROTTLE), self.MAX_INTERVAL)
            self._paused_until = max(self._paused_until, now + wait * self._scale)

    def succeeded(self) -> None:
        with self._lock:
            if self._interval > self._min_interval:
                self._interval = max(self._min_interval, self._interval * 0.95)
                if self._interval < 0.005 and not self._min_interval:
                    self._interval = 0.0


def _retry_after_seconds(response: requests.Response) -> float | None:
    """The server's requested wait, from retry-after-ms or retry-after (seconds or HTTP date)."""
    raw_ms = response.headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = response.headers.get("retry-after")
    if raw:
        try:
            return max(0.0, float(raw))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
                return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
            except (TypeError, ValueError):
                return None
    return None


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or response.reason or "no message")[:300]


class OpenAIAdminClient:
    """HTTP access to the Admin API: one session, timeouts, bounded retries, shared pacing."""

    def __init__(self, config: Config, session: requests.Session | None = None) -> None:
        self.base_url = config.openai_base_url
        self.timeout = config.timeout
        self.max_retries = config.max_retries
        self.time_scale = config.time_scale
        self.session = session or requests.Session()
        self.session.headers.update({
            "Authorization": f"Bearer {config.openai_api_key}",
            "OpenAI-Organization": config.org_id,
            "User-Agent": "veza-openai-connector",
            "Accept": "application/json",
        })
        # Many workers share the session; the default pool of 10 would make them queue for sockets.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, config.max_workers))
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.pacer = RequestPacer(config.max_requests_per_second, config.time_scale)
        self.stop = threading.Event()
        self._count_lock = threading.Lock()
        self.calls = 0
        self.retries = 0

    def _count(self, retried: bool) -> None:
        with self._count_lock:
            self.calls += 1
            self.retries += retried

    def _backoff(self, attempt: int) -> float:
        return min(MAX_RETRY_WAIT, 0.5 * 2 ** attempt) * random.uniform(0.75, 1.0)

    def get_json(self, path: str, params: dict[str, Any] | None = None, *, retry: bool = True) -> dict:
        """GET one JSON object; retry 408/409/429/5xx and connection faults; raise DiscoveryError."""
        url = self.base_url + path
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Aborted(f"{path}: stopped because another read failed")
            self.pacer.acquire(self.stop)
            self._count(attempt > 0)
            try:
                response = self.session.get(url, params=params, timeout=(min(10.0, self.timeout), self.timeout))
            except requests.RequestException as exc:  # refused, reset, timed out, cut short
                what = "timed out" if isinstance(exc, requests.Timeout) else "connection failed"
                problem = f"{type(exc).__name__} ({what})"
                wait = self._backoff(attempt)
            else:
                status = response.status_code
                if status == 200:
                    self.pacer.succeeded()
                    try:
                        body = response.json()
                    except ValueError:
                        raise DiscoveryError(f"{path}: answer is not JSON (HTTP 200, "
                                             f"{len(response.content)} bytes)") from None
                    if not isinstance(body, dict):
                        raise DiscoveryError(f"{path}: answer is JSON but not an object")
                    return body
                if status in (401, 403, 404):
                    raise AccessRefused(path, status, _error_message(response))
                if status not in RETRYABLE_STATUS:
                    raise DiscoveryError(f"{path}: HTTP {status}: {_error_message(response)}")
                problem = f"HTTP {status}"
                server_wait = _retry_after_seconds(response)
                wait = min(MAX_RETRY_WAIT, server_wait) if server_wait is not None else self._backoff(attempt)
                if status == 429:
                    self.pacer.throttled(wait)
            if not retry or attempt >= self.max_retries:
                raise DiscoveryError(f"{path}: {problem}, gave up after {attempt} retries")
            attempt += 1
            log.info("%s: %s, retry %d/%d in %.1fs", path, problem, attempt, self.max_retries, wait)
            self.stop.wait(wait * self.time_scale)

    def list_all(self, family: Family, **path_args: str) -> list[dict]:
        """Every item of one list, following the family's cursor style to the end."""
        path = family.path.format(**{k: urllib.parse.quote(v, safe="") for k, v in path_args.items()})
        params: dict[str, Any] = {"limit": family.limit, **dict(family.params)}
        items: list[dict] = []
        seen_cursors: set[str] = set()
        while True:
            page = self.get_json(path, params)
            data = page.get("data")
            if page.get("object", "list") != "list":
                raise DiscoveryError(f"{path}: expected a list, got object {str(page.get('object'))[:40]!r}")
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise DiscoveryError(f"{path}: 'data' is not a list of objects")
            if family.item_object:
                for item in data:
                    if item.get("object", family.item_object) != family.item_object:
                        raise DiscoveryError(f"{path}: expected {family.item_object} items, got "
                                             f"{str(item.get('object'))[:40]!r}")
            items.extend(data)
            if not page.get("has_more"):
                return items
            if family.cursor == CURSOR_LAST_ID:
                cursor = page.get("last_id")
            elif family.cursor == CURSOR_NEXT:
                cursor = page.get("next")
            else:
                cursor = data[-1].get("id") if data else None
            if not cursor or not isinstance(cursor, str):
                raise DiscoveryError(f"{path}: has_more is true but the page has no cursor")
            if cursor in seen_cursors:
                raise DiscoveryError(f"{path}: the cursor {cursor[:40]!r} repeats; stopping instead of looping")
            seen_cursors.add(cursor)
            params["after"] = cursor

    def get_model_permissions(self, project_id: str) -> dict | None:
        """A project's model policy, or None when the project has none (404)."""
        path = MODEL_PERMISSIONS_PATH.format(project_id=urllib.parse.quote(project_id, safe=""))
        try:
            return self.get_json(path)
        except AccessRefused as exc:
            if exc.status == 404:
                return None
            raise

    def get_legacy_organization(self, org_id: str) -> dict | None:
        """The older dashboard organization object, if this key may read it; never raises."""
        try:
            return self.get_json(f"/organizations/{urllib.parse.quote(org_id, safe='')}", retry=False)
        except DiscoveryError as exc:
            log.debug("organization object not available: %s", exc)
            return None


@dataclass
class Snapshot:
    """Everything read from OpenAI. A family that is None was left out (see `unavailable`)."""

    org_id: str
    organization: dict | None = None
    users: list[dict] = field(default_factory=list)
    invites: list[dict] | None = None
    projects: list[dict] | None = None
    admin_api_keys: list[dict] | None = None
    groups: list[dict] | None = None
    roles: list[dict] | None = None
    project_users: dict[str, list[dict]] | None = field(default_factory=dict)
    project_service_accounts: dict[str, list[dict]] | None = field(default_factory=dict)
    project_api_keys: dict[str, list[dict]] | None = field(default_factory=dict)
    project_roles: dict[str, list[dict]] | None = field(default_factory=dict)
    project_groups: dict[str, list[dict]] | None = field(default_factory=dict)
    model_permissions: dict[str, dict | None] | None = field(default_factory=dict)
    group_users: dict[str, list[dict]] | None = field(default_factory=dict)
    group_roles: dict[str, list[dict]] | None = field(default_factory=dict)
    project_group_roles: dict[tuple[str, str], list[dict]] | None = field(default_factory=dict)
    user_roles: dict[str, list[dict]] | None = None
    project_user_roles: dict[tuple[str, str], list[dict]] | None = None
    unavailable: dict[str, str] = field(default_factory=dict)


# Snapshot attribute that each family fills; refusing the family sets the attribute to None.
FAMILY_ATTRIBUTE = {
    "invites": "invites", "projects": "projects", "admin API keys": "admin_api_keys", "groups": "groups",
    "roles": "roles", "project users": "project_users", "project service accounts": "project_service_accounts",
    "project API keys": "project_api_keys", "project roles": "project_roles",
    "project groups": "project_groups", "model permissions": "model_permissions",
    "group users": "group_users", "group roles": "group_roles", "project group roles": "project_group_roles",
    "user roles": "user_roles", "project user roles": "project_user_roles",
}

FAMILY_GRANT = {name: family.grant for name, family in FAMILIES.items()}
FAMILY_GRANT["model permissions"] = "Projects: Read"


def has_custom_roles(snapshot: Snapshot) -> bool:
    roles = list(snapshot.roles or [])
    for project_roles in (snapshot.project_roles or {}).values():
        roles.extend(project_roles)
    return any(role.get("predefined_role") is False for role in roles)


class OrganizationReader:
    """Reads every family, fanning per-project and per-principal reads out over a worker pool.

    The main thread owns the snapshot: workers only fetch, and each result is stored under its
    key, so the snapshot (and so the payload) does not depend on the order reads finish in.
    """

    def __init__(self, client: OpenAIAdminClient, config: Config) -> None:
        self.client = client
        self.config = config
        self.snapshot = Snapshot(org_id=config.org_id)
        self._pending: dict[concurrent.futures.Future, tuple[str, Callable[[Any], None]]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._completed: queue.SimpleQueue[concurrent.futures.Future] = queue.SimpleQueue()
        self._waiting_for_roles = 0
        self._project_user_lists_pending = 0
        self.decision: str = ""

    def read(self) -> Snapshot:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.config.max_workers,
                                                     thread_name_prefix="openai-read")
        self._pool = pool
        try:
            self._start()
            # A completion queue, not concurrent.futures.wait(): that rescans every pending future on
            # each call, which is quadratic with the ~10^4 reads of a large organization.
            while self._pending:
                future = self._completed.get()
                family, store = self._pending.pop(future)
                self._finish(family, store, future)
            return self.snapshot
        except BaseException:
            self.client.stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, family: str, fetch: Callable[[], Any], store: Callable[[Any], None]) -> None:
        if family in self.snapshot.unavailable:
            return
        future = self._pool.submit(fetch)
        self._pending[future] = (family, store)
        future.add_done_callback(self._completed.put)

    def _submit_list(self, family: str, store: Callable[[Any], None], **path_args: str) -> None:
        self._submit(family, lambda: self.client.list_all(FAMILIES[family], **path_args), store)

    def _file(self, attribute: str, key: Any) -> Callable[[Any], None]:
        """A store callback filing a result under `key` in one of the snapshot's per-key dicts."""
        return lambda result: getattr(self.snapshot, attribute).__setitem__(key, result)

    def _finish(self, family: str, store: Callable[[Any], None], future: concurrent.futures.Future) -> None:
        try:
            result = future.result()
        except AccessRefused as exc:
            if family == "users" or exc.status == 401:
                raise
            if family not in self.snapshot.unavailable:
                self.snapshot.unavailable[family] = f"HTTP {exc.status} on {exc.endpoint}"
                setattr(self.snapshot, FAMILY_ATTRIBUTE[family], None)
            result = None
        if family in self.snapshot.unavailable:
            # A sibling read of this family was refused; the family is out whole, but what hangs
            # on a finished read must still be scheduled-around (e.g. the role decision counters).
            self._after_skipped(family)
            return
        store(result)

    def _after_skipped(self, family: str) -> None:
        if family in ("roles", "project roles", "projects"):
            self._role_list_done()
        elif family == "project users":
            self._project_user_list_done()

    # --- the dependency graph of reads -----------------------------------------------------
    def _start(self) -> None:
        s = self.snapshot
        self._submit("organization", lambda: self.client.get_legacy_organization(self.config.org_id),
                     lambda org: setattr(s, "organization", org))
        self._submit_list("users", self._store_users)
        self._submit_list("invites", lambda items: setattr(s, "invites", items))
        self._submit_list("admin API keys", lambda items: setattr(s, "admin_api_keys", items))
        self._submit_list("groups", self._store_groups)
        self._waiting_for_roles = 2  # the org roles list, and the projects list (then each project's roles)
        self._submit_list("roles", self._store_roles)
        self._submit_list("projects", self._store_projects)

    def _store_users(self, items: list[dict]) -> None:
        self.snapshot.users = items
        self._maybe_read_role_assignments()

    def _store_roles(self, items: list[dict]) -> None:
        self.snapshot.roles = items
        self._role_list_done()

    def _store_groups(self, items: list[dict]) -> None:
        self.snapshot.groups = items
        for group in unique_by_id(items):
            gid = group["id"]
            self._submit_list("group users", self._file("group_users", gid), group_id=gid)
            self._submit_list("group roles", self._file("group_roles", gid), group_id=gid)

    def _store_projects(self, items: list[dict]) -> None:
        self.snapshot.projects = items
        projects = unique_by_id(items)
        self._waiting_for_roles += len(projects) - 1
        self._project_user_lists_pending = len(projects)
        for project in projects:
            pid = project["id"]
            self._submit_list("project users", lambda r, p=pid: self._store_project_users(p, r), project_id=pid)
            self._submit_list("project service accounts", self._file("project_service_accounts", pid),
                              project_id=pid)
            self._submit_list("project API keys", self._file("project_api_keys", pid), project_id=pid)
            self._submit_list("project roles", lambda r, p=pid: self._store_project_roles(p, r), project_id=pid)
            self._submit_list("project groups", lambda r, p=pid: self._store_project_groups(p, r), project_id=pid)
            self._submit("model permissions", lambda p=pid: self.client.get_model_permissions(p),
                         self._file("model_permissions", pid))
        if not projects:
            self._maybe_read_role_assignments()

    def _store_project_users(self, project_id: str, items: list[dict]) -> None:
        self.snapshot.project_users[project_id] = items
        self._project_user_list_done()

    def _project_user_list_done(self) -> None:
        self._project_user_lists_pending -= 1
        self._maybe_read_role_assignments()

    def _store_project_roles(self, project_id: str, items: list[dict]) -> None:
        self.snapshot.project_roles[project_id] = items
        self._role_list_done()

    def _store_project_groups(self, project_id: str, items: list[dict]) -> None:
        self.snapshot.project_groups[project_id] = items
        for link in items:
            gid = link.get("group_id")
            if isinstance(gid, str) and gid:
                self._submit_list("project group roles", self._file("project_group_roles", (project_id, gid)),
                                  project_id=project_id, group_id=gid)

    def _role_list_done(self) -> None:
        self._waiting_for_roles -= 1
        self._maybe_read_role_assignments()

    def _maybe_read_role_assignments(self) -> None:
        """Per-principal role reads, once the role lists tell whether they can matter."""
        s = self.snapshot
        if self.decision or self._waiting_for_roles > 0 or self._project_user_lists_pending > 0 or not s.users:
            return
        mode = self.config.role_assignments
        if "roles" in s.unavailable:
            self.decision = "skipped: the Roles API is not available to this key"
            return
        if mode == "none":
            self.decision = "skipped: --role-assignments none"
            return
        if mode == "auto" and not has_custom_roles(s):
            self.decision = ("skipped: every role the Roles API lists is predefined "
                             "(--role-assignments auto); use 'all' to read them anyway")
            return
        self.decision = ("reading them: --role-assignments all" if mode == "all" else
                         "reading them: the Roles API lists custom roles (--role-assignments auto)")
        s.user_roles, s.project_user_roles = {}, {}
        for user in unique_by_id(s.users):
            uid = user["id"]
            self._submit_list("user roles", self._file("user_roles", uid), user_id=uid)
        for pid, members in (s.project_users or {}).items():
            for member in unique_by_id(members):
                uid = member["id"]
                self._submit_list("project user roles", self._file("project_user_roles", (pid, uid)),
                                  project_id=pid, user_id=uid)


def unique_by_id(items: Iterable[dict], key: str = "id") -> list[dict]:
    """Items with a usable id, first occurrence kept (pages can overlap)."""
    seen: set[str] = set()
    result = []
    for item in items:
        item_id = item.get(key)
        if isinstance(item_id, str) and item_id and item_id not in seen:
            seen.add(item_id)
            result.append(item)
    return result


# ---------------------------------------------------------------------------------------------
# Mapping (pure: records in, OAA objects out)
# ---------------------------------------------------------------------------------------------

ORG_PERMISSIONS = {
    "Standard API Requests": OAAPermission.DataRead,
    "Read Organization": OAAPermission.MetadataRead,
    "Modify Billing": OAAPermission.MetadataWrite,
    "Manage Members": OAAPermission.MetadataWrite,
}
PROJECT_PERMISSIONS = {
    "Read Project": OAAPermission.MetadataRead,
    "Manage Project Members": OAAPermission.MetadataWrite,
    "Manage Project API Keys": OAAPermission.MetadataWrite,
}
FIXED_ROLES = {  # unique id: (name, permissions)
    "owner": ("Owner", ["Standard API Requests", "Read Organization", "Modify Billing", "Manage Members"]),
    "reader": ("Reader", ["Standard API Requests", "Read Organization"]),
    "project_owner": ("Project Owner", ["Standard API Requests", "Read Project", "Manage Project Members",
                                        "Manage Project API Keys"]),
    "project_member": ("Project Member", ["Standard API Requests", "Read Project"]),
    "admin_api_key": ("Admin API Key", ["Read Organization", "Modify Billing", "Manage Members"]),
}
CANONICAL_BY_VERB = {
    **dict.fromkeys(("read", "list", "view", "get"), OAAPermission.MetadataRead),
    "create": OAAPermission.MetadataCreate,
    **dict.fromkeys(("delete", "remove"), OAAPermission.MetadataDelete),
    **dict.fromkeys(("write", "update", "manage", "admin"), OAAPermission.MetadataWrite),
    **dict.fromkeys(("request", "use", "invoke"), OAAPermission.DataRead),
}


def canonical_permission(permission: str) -> OAAPermission:
    """The OAA canonical permission of an OpenAI permission string, by its last dotted segment."""
    verb = permission.rsplit(".", 1)[-1].strip().lower()
    return CANONICAL_BY_VERB.get(verb, OAAPermission.Uncategorized)


def rfc3339(value: Any) -> str | None:
    """Unix seconds (or an ISO string) as RFC3339 UTC with a Z suffix; None when absent or unusable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            moment = datetime.fromtimestamp(value, tz=timezone.utc)
        elif isinstance(value, str) and value.strip():
            text = value.strip()
            if re.fullmatch(r"\d+(\.\d+)?", text):
                moment = datetime.fromtimestamp(float(text), tz=timezone.utc)
            else:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=timezone.utc)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: Any) -> str | None:
    """A trimmed non-empty string, else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


@dataclass
class MappingResult:
    application: CustomApplication
    warnings: list[str]
    counts: dict[str, int]


class ApplicationBuilder:
    """Builds the CustomApplication from a Snapshot, following oaa-mapping.md."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.app = CustomApplication(name=snapshot.org_id, application_type=APPLICATION_TYPE)
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.counts: dict[str, int] = {}
        self.projects: dict[str, CustomResource] = {}
        self.org_owner_ids: list[str] = []

    def warn(self, message: str, once_key: str | None = None) -> None:
        if once_key is not None:
            if once_key in self._warned:
                return
            self._warned.add(once_key)
        self.warnings.append(message)

    def build(self) -> MappingResult:
        self._define_properties()
        self._define_permissions_and_roles()
        self._map_organization()
        self._map_users()
        self._map_groups()
        self._map_projects()
        self._map_project_members()
        self._map_service_accounts()
        self._map_project_api_keys()
        self._map_admin_api_keys()
        self._map_invites()
        self._map_custom_roles()
        self._map_role_assignments()
        return MappingResult(self.app, self.warnings, self.counts)

    # --- definitions ---------------------------------------------------------------------
    def _define_properties(self) -> None:
        d = self.app.property_definitions
        d.define_application_property("organization_id", OAAPropertyType.STRING)
        d.define_application_property("is_personal", OAAPropertyType.BOOLEAN)
        for name, kind in (("added_at", OAAPropertyType.TIMESTAMP), ("api_key_last_used_at", OAAPropertyType.TIMESTAMP),
                           ("is_scim_managed", OAAPropertyType.BOOLEAN), ("project_id", OAAPropertyType.STRING),
                           ("invite_status", OAAPropertyType.STRING),
                           ("invite_expires_at", OAAPropertyType.TIMESTAMP)):
            d.define_local_user_property(name, kind)
        d.define_local_group_property("group_type", OAAPropertyType.STRING)
        d.define_local_group_property("is_scim_managed", OAAPropertyType.BOOLEAN)
        d.define_local_role_property("predefined_role", OAAPropertyType.BOOLEAN)
        d.define_local_role_property("resource_type", OAAPropertyType.STRING)
        d.define_local_role_property("description", OAAPropertyType.STRING)
        d.define_role_assignment_property("granted_by", OAAPropertyType.STRING)
        for name in ("redacted_value", "project_id", "owner_type"):
            d.define_access_cred_property(name, OAAPropertyType.STRING)
        for name, kind in (("status", OAAPropertyType.STRING), ("created_at", OAAPropertyType.TIMESTAMP),
                           ("archived_at", OAAPropertyType.TIMESTAMP),
                           ("model_permission_mode", OAAPropertyType.STRING),
                           ("model_ids", OAAPropertyType.STRING_LIST)):
            d.define_resource_property("project", name, kind)

    def _define_permissions_and_roles(self) -> None:
        for name, canonical in {**ORG_PERMISSIONS, **PROJECT_PERMISSIONS}.items():
            self.app.add_custom_permission(name, [canonical])
        for role_id, (name, permissions) in FIXED_ROLES.items():
            self.app.add_local_role(name, list(permissions), unique_id=role_id)

    def _role_id(self, value: Any, subject: str, *, project: bool) -> str:
        """The local role id for an org or project role value; unknown values get an empty role, warned once."""
        scope = "project" if project else "organization"
        role = _text(value)
        if role is None:
            self.warn(f"{subject} has no {scope} role; kept without one")
            return ""
        role = role.lower()
        if project and role == "none":
            return ""
        role_id = f"project_{role}" if project else role
        if role in (("owner", "member") if project else ("owner", "reader")):
            return role_id
        if role_id not in self.app.local_roles:
            name = f"Project {role.capitalize()}" if project else role.capitalize()
            self.app.add_local_role(name, [], unique_id=role_id)
        self.warn(f"unknown {scope} role {role!r}: mapped to {role_id!r} with no permissions", f"{scope}:{role}")
        return role_id

    # --- organization and users -----------------------------------------------------------
    def _map_organization(self) -> None:
        self.app.set_property("organization_id", self.snapshot.org_id)
        personal = (self.snapshot.organization or {}).get("personal")
        if isinstance(personal, bool):
            self.app.set_property("is_personal", personal)

    def _map_users(self) -> None:
        for record in unique_by_id(self.snapshot.users):
            nested = record.get("user") if isinstance(record.get("user"), dict) else {}
            email = _text(record.get("email")) or _text(nested.get("email"))
            name = _text(record.get("name")) or _text(nested.get("name")) or email or record["id"]
            user = self.app.add_local_user(name, unique_id=record["id"])
            if email:
                user.email = email
                user.add_identity(email)
            user.created_at = rfc3339(record.get("created")) or rfc3339(record.get("added_at"))
            user.is_active = not (nested.get("banned") is True or nested.get("enabled") is False)
            user.user_type = "service_account" if record.get("is_service_account") is True else "human"
            user.set_property("added_at", rfc3339(record.get("added_at")), ignore_none=True)
            user.set_property("api_key_last_used_at", rfc3339(record.get("api_key_last_used_at")), ignore_none=True)
            if isinstance(record.get("is_scim_managed"), bool):
                user.set_property("is_scim_managed", record["is_scim_managed"])
            role = self._role_id(record.get("role"), f"user {record['id']}", project=False)
            if role:
                user.add_role(role, apply_to_application=True)
                if role == "owner":
                    self.org_owner_ids.append(record["id"])
        self.counts["users"] = len(self.app.local_users)

    def _principal(self, principal_id: str, record: dict, where: str, *, service_account: bool = False) -> LocalUser:
        """The local user for an id, created from what `record` says when the org list lacks it."""
        user = self.app.local_users.get(principal_id)
        if user is not None:
            return user
        email = _text(record.get("email"))
        name = _text(record.get("name")) or email or principal_id
        user = self.app.add_local_user(name, unique_id=principal_id)
        if email:
            user.email = email
            user.add_identity(email)
        user.is_active = True
        user.user_type = "service_account" if service_account else "human"
        kind = "service account" if service_account else "user"
        self.warn(f"{where} names {kind} {principal_id} who is not in the organization user list; "
                  "kept, built from that record")
        return user

    # --- groups --------------------------------------------------------------------------
    def _map_groups(self) -> None:
        s = self.snapshot
        if s.groups is None:
            return
        for record in unique_by_id(s.groups):
            group = self.app.add_local_group(_text(record.get("name")) or record["id"], unique_id=record["id"])
            group.created_at = rfc3339(record.get("created_at"))
            group.set_property("group_type", _text(record.get("group_type")), ignore_none=True)
            if isinstance(record.get("is_scim_managed"), bool):
                group.set_property("is_scim_managed", record["is_scim_managed"])
        memberships = 0
        if s.group_users is not None:
            for group_record in unique_by_id(s.groups):
                gid = group_record["id"]
                for member in unique_by_id(s.group_users.get(gid, [])):
                    user = self._principal(member["id"], member, f"group {gid}")
                    user.add_group(gid)
                    memberships += 1
        self.counts["groups"] = len(self.app.local_groups)
        self.counts["group_memberships"] = memberships

    # --- projects ------------------------------------------------------------------------
    def _map_projects(self) -> None:
        s = self.snapshot
        if s.projects is None:
            return
        for record in unique_by_id(s.projects):
            pid = record["id"]
            project = self.app.add_resource(_text(record.get("name")) or pid, resource_type="project", unique_id=pid)
            project.set_property("status", _text(record.get("status")), ignore_none=True)
            project.set_property("created_at", rfc3339(record.get("created_at")), ignore_none=True)
            project.set_property("archived_at", rfc3339(record.get("archived_at")), ignore_none=True)
            policy = (s.model_permissions or {}).get(pid)
            if isinstance(policy, dict):
                project.set_property("model_permission_mode", _text(policy.get("mode")), ignore_none=True)
                ids = policy.get("model_ids")
                if isinstance(ids, list):
                    project.set_property("model_ids", [str(i) for i in ids])
            self.projects[pid] = project
        # Organization owners own every project, listed or not (OpenAI's rule).
        for owner_id in self.org_owner_ids:
            self.app.local_users[owner_id].add_role(
                "project_owner", resources=list(self.projects.values()),
                assignment_properties={"granted_by": "organization_owner"})
        self.counts["projects"] = len(self.projects)

    def _map_project_members(self) -> None:
        memberships = 0
        for pid, project in self.projects.items():
            for member in unique_by_id((self.snapshot.project_users or {}).get(pid, [])):
                user = self._principal(member["id"], member, f"project {pid}")
                role = self._role_id(member.get("role"), f"project {pid} member {member['id']}", project=True)
                if role:
                    user.add_role(role, resources=[project])
                memberships += 1
        self.counts["project_memberships"] = memberships

    def _map_service_accounts(self) -> None:
        count = 0
        for pid, project in self.projects.items():
            for record in unique_by_id((self.snapshot.project_service_accounts or {}).get(pid, [])):
                account = self.app.local_users.get(record["id"])
                if account is None:
                    account = self.app.add_local_user(_text(record.get("name")) or record["id"], unique_id=record["id"])
                    account.is_active = True
                account.user_type = "service_account"
                account.created_at = account.created_at or rfc3339(record.get("created_at"))
                account.set_property("project_id", pid)
                role = self._role_id(record.get("role"), f"service account {record['id']}", project=True)
                if role:
                    account.add_role(role, resources=[project])
                count += 1
        self.counts["service_accounts"] = count

    # --- credentials ---------------------------------------------------------------------
    def _map_project_api_keys(self) -> None:
        active = inactive = 0
        for pid, project in self.projects.items():
            for record in unique_by_id((self.snapshot.project_api_keys or {}).get(pid, [])):
                if record["id"] in self.app.access_creds:
                    continue
                cred = self.app.add_access_cred(record["id"], _text(record.get("name")) or
                                                _text(record.get("redacted_value")) or record["id"])
                cred.created_at = rfc3339(record.get("created_at")) or ""
                cred.last_used_at = rfc3339(record.get("last_used_at")) or ""
                cred.expires_at = rfc3339(record.get("expires_at")) or ""
                cred.is_active = record.get("owner_project_access") == "active"
                active += cred.is_active
                inactive += not cred.is_active
                cred.set_property("redacted_value", _text(record.get("redacted_value")), ignore_none=True)
                cred.set_property("project_id", pid)
                owner = record.get("owner") if isinstance(record.get("owner"), dict) else {}
                owner_type = _text(owner.get("type"))
                cred.set_property("owner_type", owner_type, ignore_none=True)
                detail = owner.get(owner_type) if owner_type in ("user", "service_account") else None
                if not isinstance(detail, dict) or not _text(detail.get("id")):
                    self.warn(f"project API key {record['id']} has no owner in its record")
                    continue
                holder = self._principal(detail["id"].strip(), detail, f"project API key {record['id']}",
                                         service_account=owner_type == "service_account")
                holder.add_access_cred(record["id"])
                role = self._role_id(detail.get("role"), f"owner of project API key {record['id']}",
                                     project=True)
                if role:
                    cred.add_role(role, resources=[project])
        self.counts["project_api_keys_active"] = active
        self.counts["project_api_keys_inactive"] = inactive

    def _map_admin_api_keys(self) -> None:
        count = 0
        project_keys_read = self.snapshot.projects is not None and self.snapshot.project_api_keys is not None
        for record in unique_by_id(self.snapshot.admin_api_keys or []):
            if record["id"] in self.app.access_creds:
                continue  # the admin list also returns project keys: those stay project keys, once
            redacted = _text(record.get("redacted_value")) or ""
            if not project_keys_read and redacted and not redacted.startswith("sk-admin"):
                # Without the project key lists the id cannot be checked; granting org admin to what is
                # probably a project key would overstate access, so it is left out and said.
                self.warn(f"admin API key list returned {record['id']} ({redacted}), which does not look like "
                          "an admin key; left out because project API keys were not read")
                continue
            cred = self.app.add_access_cred(record["id"], _text(record.get("name")) or
                                            _text(record.get("redacted_value")) or record["id"])
            cred.created_at = rfc3339(record.get("created_at")) or ""
            cred.last_used_at = rfc3339(record.get("last_used_at")) or ""
            cred.expires_at = rfc3339(record.get("expires_at")) or ""
            cred.is_active = True
            cred.set_property("redacted_value", _text(record.get("redacted_value")), ignore_none=True)
            cred.add_role("admin_api_key", apply_to_application=True)
            owner = record.get("owner") if isinstance(record.get("owner"), dict) else {}
            owner_id = _text(owner.get("id"))
            if owner_id:
                holder = self._principal(owner_id, owner, f"admin API key {record['id']}",
                                         service_account=owner.get("type") == "service_account")
                holder.add_access_cred(record["id"])
            else:
                self.warn(f"admin API key {record['id']} has no owner in its record")
            count += 1
        self.counts["admin_api_keys"] = count

    # --- invites -------------------------------------------------------------------------
    def _map_invites(self) -> None:
        pending = 0
        for record in unique_by_id(self.snapshot.invites or []):
            if record.get("status") != "pending":
                continue
            email = _text(record.get("email"))
            invitee = self.app.add_local_user(email or record["id"], identities=[email] if email else None,
                                              unique_id=record["id"])
            invitee.is_active = False
            invitee.set_property("invite_status", "pending")
            invitee.set_property("invite_expires_at", rfc3339(record.get("expires_at")), ignore_none=True)
            role = self._role_id(record.get("role"), f"invite {record['id']}", project=False)
            if role:
                invitee.add_role(role, apply_to_application=True)
            for grant in record.get("projects") or []:
                if not isinstance(grant, dict):
                    continue
                project = self.projects.get(grant.get("id"))
                project_role = self._role_id(grant.get("role"), f"invite {record['id']}", project=True)
                if project is not None and project_role:
                    invitee.add_role(project_role, resources=[project])
                elif project is None and self.snapshot.projects is not None:
                    self.warn(f"invite {record['id']} names project {grant.get('id')} which is not listed")
            pending += 1
        self.counts["invites_pending"] = pending

    # --- custom roles and assignments ------------------------------------------------------
    def _add_role_record(self, record: dict) -> str | None:
        """Define an RBAC role (once) from a role or assignment record; return its id."""
        role_id = _text(record.get("id"))
        if role_id is None:
            return None
        if role_id.lower() in FIXED_ROLES:
            self.warn(f"role id {role_id!r} clashes with a fixed role; the fixed role is kept", f"clash:{role_id}")
            return None
        if role_id in self.app.local_roles:
            return role_id
        permissions = [p for p in record.get("permissions") or [] if isinstance(p, str) and p]
        for permission in permissions:
            if permission not in self.app.custom_permissions:
                self.app.add_custom_permission(permission, [canonical_permission(permission)])
        role = self.app.add_local_role(_text(record.get("name")) or role_id, permissions, unique_id=role_id)
        if isinstance(record.get("predefined_role"), bool):
            role.set_property("predefined_role", record["predefined_role"])
        role.set_property("resource_type", _text(record.get("resource_type")), ignore_none=True)
        role.set_property("description", _text(record.get("description")), ignore_none=True)
        return role_id

    def _map_custom_roles(self) -> None:
        s = self.snapshot
        if s.roles is None:
            return
        before = len(self.app.local_roles)
        for record in unique_by_id(s.roles):
            self._add_role_record(record)
        for pid in self.projects:
            for record in unique_by_id((s.project_roles or {}).get(pid, [])):
                self._add_role_record(record)
        self.counts["roles"] = len(self.app.local_roles) - before

    def _assign(self, identity: Any, assignments: list[dict], project: CustomResource | None) -> int:
        count = 0
        for record in unique_by_id(assignments):
            sources = record.get("assignment_sources") or []
            if any(isinstance(src, dict) and src.get("principal_type") == "group" for src in sources):
                continue  # inherited from a group: Veza derives it from the membership
            role_id = self._add_role_record(record)
            if role_id is None:
                continue
            if project is None:
                identity.add_role(role_id, apply_to_application=True)
            else:
                identity.add_role(role_id, resources=[project])
            count += 1
        return count

    def _map_role_assignments(self) -> None:
        s = self.snapshot
        if s.roles is None:
            return
        count = 0
        if s.groups is not None and s.group_roles is not None:
            for record in unique_by_id(s.groups):
                count += self._assign(self.app.local_groups[record["id"]], s.group_roles.get(record["id"], []), None)
        if s.user_roles is not None:
            for record in unique_by_id(s.users):
                count += self._assign(self.app.local_users[record["id"]], s.user_roles.get(record["id"], []), None)
        for pid, project in self.projects.items():
            if s.groups is not None and s.project_groups is not None and s.project_group_roles is not None:
                for link in unique_by_id(s.project_groups.get(pid, []), key="group_id"):
                    gid = link["group_id"]
                    group = self.app.local_groups.get(gid)
                    if group is None:
                        group = self.app.add_local_group(_text(link.get("group_name")) or gid, unique_id=gid)
                        group.set_property("group_type", _text(link.get("group_type")), ignore_none=True)
                        self.warn(f"project {pid} names group {gid} which is not in the group list; kept")
                    count += self._assign(group, s.project_group_roles.get((pid, gid), []), project)
            if s.project_user_roles is not None and s.project_users is not None:
                for member in unique_by_id(s.project_users.get(pid, [])):
                    user = self.app.local_users[member["id"]]
                    count += self._assign(user, s.project_user_roles.get((pid, member["id"]), []), project)
        self.counts["role_assignments"] = count


def build_application(snapshot: Snapshot) -> MappingResult:
    """Map a Snapshot to a CustomApplication (pure; no I/O)."""
    return ApplicationBuilder(snapshot).build()


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around mapping and payload building.

    They allocate millions of acyclic objects, and every full collection rescans all of them, which
    made 10x the users cost ~17x the time; reference counting still frees everything.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ---------------------------------------------------------------------------------------------
# Pushing
# ---------------------------------------------------------------------------------------------

class PushError(Exception):
    """Veza refused or could not take the payload."""


def describe_veza_error(exc: Exception) -> str:
    if isinstance(exc, OAAResponseError) and exc.status_code in (401, 403):
        return (f"Veza refused the API key (HTTP {exc.status_code}): check VEZA_API_KEY "
                "and that its user may manage OAA providers")
    if isinstance(exc, OAAClientError):
        status = f"HTTP {exc.status_code}: " if exc.status_code else ""
        return f"{status}{exc.error}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def connect_veza(config: Config) -> OAAClient:
    """An OAAClient whose connection and key were just checked."""
    try:
        client = OAAClient(url=config.veza_url, api_key=config.veza_api_key)
    except (OAAClientError, ValueError, requests.RequestException) as exc:
        raise PushError(f"cannot use Veza at {config.veza_url}: {describe_veza_error(exc)}") from None
    return client


def serialize_payload(payload: dict) -> str:
    """The payload as the compact JSON oaaclient pushes (and --save_json writes), byte for byte."""
    return json.dumps(payload, separators=(",", ":"))


def save_payload(document: str, path: str) -> None:
    """Write the pushed JSON atomically, so a half-written file never looks like a snapshot."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".veza_openai-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(document)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def push_document(client: OAAClient, config: Config, document: str) -> list:
    """Push serialized JSON to Veza (provider and data source created when missing); return Veza's warnings.

    This is oaaclient's push_metadata taking a string instead of a dict, so the payload's Python
    objects are gone before the push copies, compresses and encodes it: for 100,000 users that
    keeps peak memory well under 1 GB.
    """
    try:
        provider = client.get_provider(PROVIDER_NAME)
        if not provider:
            log.info("creating Veza provider %r", PROVIDER_NAME)
            client.create_provider(PROVIDER_NAME, custom_template=CustomApplication.TEMPLATE,
                                   base64_icon=PROVIDER_ICON_SVG)
            provider = client.get_provider(PROVIDER_NAME)
        source = client.get_data_source(config.data_source_name, provider["id"])
        if not source:
            log.info("creating Veza data source %r", config.data_source_name)
            client.create_data_source(config.data_source_name, provider["id"])
            source = client.get_data_source(config.data_source_name, provider["id"])
        if len(document) > client.MULTIPART_THRESHOLD_SIZE:
            log.info("payload is %d MB: pushing it in parts", len(document) // 1_000_000)
            response = client.datasource_push_parts(provider["id"], source["id"], document)
        else:
            response = client.datasource_push(provider["id"], source["id"], document)
    except (OAAClientError, requests.RequestException) as exc:
        for detail in getattr(exc, "details", None) or []:
            log.error("Veza: %s", detail)
        raise PushError(f"push to Veza failed: {describe_veza_error(exc)}") from None
    return (response.get("warnings") or []) if isinstance(response, dict) else []


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    outcome: str = "failed"
    counts: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    veza_warnings: int = 0
    calls: int = 0
    retries: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return (f"summary: outcome={self.outcome} {counts}{' ' if counts else ''}warnings={self.warnings} "
                f"veza_warnings={self.veza_warnings} calls={self.calls} retries={self.retries} "
                f"seconds={self.seconds:.1f}")


def _log_unavailable(snapshot: Snapshot) -> None:
    for family, reason in snapshot.unavailable.items():
        log.warning("left out %s (%s): grant the admin key '%s', or the organization does not have it",
                    family, reason, FAMILY_GRANT.get(family, "Read"))


def read_organization(config: Config, summary: RunSummary) -> tuple[Snapshot, str]:
    """Every family from OpenAI, and how the per-user role reads were decided."""
    client = OpenAIAdminClient(config)
    log.info("reading OpenAI organization %s at %s with %d workers", config.org_id, config.openai_base_url,
             config.max_workers)
    reader = OrganizationReader(client, config)
    try:
        snapshot = reader.read()
    except AccessRefused as exc:
        if exc.status in (401, 403):
            raise DiscoveryError(
                f"OpenAI refused the key (HTTP {exc.status} on {exc.endpoint}): OPENAI_API_KEY must be an "
                f"Admin API key (sk-admin-...) of organization {config.org_id}") from None
        raise DiscoveryError(f"OpenAI answered HTTP {exc.status} on {exc.endpoint}: check OPENAI_ORG_ID "
                             "and --openai-base-url") from None
    finally:
        summary.calls, summary.retries = client.calls, client.retries
        client.session.close()
    _log_unavailable(snapshot)
    if snapshot.organization is None:
        log.info("is_personal left unset: the organization object is not readable with this key")
    log.info("read %d users, %s projects, %s groups in %d calls (%d retries)", len(snapshot.users),
             "-" if snapshot.projects is None else len(snapshot.projects),
             "-" if snapshot.groups is None else len(snapshot.groups), client.calls, client.retries)
    return snapshot, reader.decision


def discover(config: Config, summary: RunSummary) -> dict:
    """Read and map; return only the payload, so the records and OAA objects are freed before the push."""
    snapshot, decision = read_organization(config, summary)
    if decision:
        log.info("per-user role assignments %s", decision)
    mapping_started = time.monotonic()
    with cyclic_gc_paused():
        result = build_application(snapshot)
        payload = result.application.get_payload()
    summary.counts = result.counts
    summary.warnings = len(result.warnings)
    for message in result.warnings:
        log.warning("%s", message)
    log.info("mapped %s in %.2fs", " ".join(f"{k}={v}" for k, v in result.counts.items()),
             time.monotonic() - mapping_started)
    return payload


def run(config: Config, summary: RunSummary | None = None) -> RunSummary:
    """Read, map, save and push once. Raises DiscoveryError or PushError; fills `summary` as it goes."""
    summary = summary or RunSummary()
    veza = None
    if not config.dry_run:  # fail fast, before spending OpenAI quota, when Veza cannot take the result
        log.info("connecting to Veza at %s", config.veza_url)
        veza = connect_veza(config)

    document = serialize_payload(discover(config, summary))  # the dict is freed here
    if config.save_json:
        save_payload(document, config.save_json)
        log.info("payload saved to %s (%d bytes)", config.save_json, len(document))
    if config.dry_run:
        summary.outcome = "dry-run"
        return summary

    log.info("pushing to Veza data source %r", config.data_source_name)
    veza_warnings = push_document(veza, config, document)
    for warning in veza_warnings:
        log.warning("Veza: %s", warning)
    summary.veza_warnings = len(veza_warnings)
    summary.outcome = "pushed"
    return summary


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    try:
        config = load_config(argv)
    except ConfigError as exc:
        configure_logging(False, [os.environ.get("OPENAI_API_KEY", ""), os.environ.get("OPENAI_ADMIN_KEY", ""),
                                  os.environ.get("VEZA_API_KEY", "")])
        for problem in exc.problems:
            log.error("configuration error: %s", problem)
        summary = RunSummary(outcome="config-error", seconds=time.monotonic() - started)
        log.error("%s", summary.line())
        return EXIT_CONFIG
    configure_logging(config.debug, config.secrets())
    summary = RunSummary()
    status = EXIT_FAILED
    try:
        run(config, summary)
        status = EXIT_OK
    except (DiscoveryError, PushError) as exc:
        log.error("%s", exc, exc_info=config.debug)
        log.error("nothing was pushed; Veza keeps the previous snapshot")
    except KeyboardInterrupt:
        log.error("interrupted; nothing was pushed")
    except Exception as exc:  # a bug or an unforeseen answer: still one clear line, no partial push
        log.error("unexpected error: %s: %s (run with --debug for the traceback)", type(exc).__name__, exc,
                  exc_info=config.debug)
    summary.seconds = time.monotonic() - started
    log.log(logging.INFO if status == EXIT_OK else logging.ERROR, "%s", summary.line())
    return status


if __name__ == "__main__":
    sys.exit(main())
