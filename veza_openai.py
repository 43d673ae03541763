#!/usr/bin/env python3
"""Veza OAA connector for OpenAI.

Reads an OpenAI organization through the OpenAI Admin API (users, roles, projects, service accounts,
API keys, admin keys, invites, groups, custom roles and role assignments, activity, federated
workloads, certificates and hosted tools), models it as an OAA Custom Application and pushes it to Veza.

The sections follow the data: errors; options (one table); logging; HTTP (one GET, its whole answer);
the catalogue (every family declared once); records (what a field means); pacing (per endpoint);
the scheduler (requests, knowing no family by name); the read plan (what to read and what each answer
means, from the catalogue); the snapshot; mapping (pure: snapshot in, OAA objects out); Veza (push and
report); main. README.md has the mapping tables, the flags and the failure behaviour this code promises.
"""

from __future__ import annotations

import argparse
import binascii
import contextlib
import copy
import email.utils
import enum
import gc
import gzip
import heapq
import io
import ipaddress
import json
import logging
import math
import os
import queue
import random
import re
import signal
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

import requests
from oaaclient.client import OAAClient, OAAClientError, OAAResponseError
from oaaclient.structures import CaseInsensitiveDict
from oaaclient.templates import (
    AccessCred,
    CustomApplication,
    CustomResource,
    LocalGroup,
    LocalUser,
    OAAPermission,
    OAAPropertyType,
)
from requests.packages.urllib3.exceptions import HTTPError as TransportError  # raised by raw.read1
from requests.packages.urllib3.exceptions import InsecureRequestWarning
from requests.packages.urllib3.exceptions import TimeoutError as TransportTimeout
from requests.packages.urllib3.util.retry import Retry

__version__ = "1.2.1"
USER_AGENT = f"veza-openai-connector/{__version__}"

log = logging.getLogger("veza_openai")

PROVIDER_NAME = "OpenAI"
APPLICATION_TYPE = "OpenAI"
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"


class ExitStatus(enum.IntEnum):
    """What the process tells cron, Docker or Kubernetes (README: Exit status)."""

    OK = 0            # pushed; with --dry-run: read, mapped and written
    FAILED = 1        # nothing pushed, or the push's outcome is unknown (the log says which)
    CONFIG = 2        # configuration error; no request was sent (argparse uses 2 as well)
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as shells report it
    TERMINATED = 143   # SIGTERM (docker stop, Kubernetes, systemd): 128 + 15


# --- defaults an operator can change (README: Configuration) ---------------------------------
DEFAULT_MAX_WORKERS = 8            # hides latency on large organizations; each endpoint is paced on its own anyway
DEFAULT_TIMEOUT = 30.0             # seconds for one whole OpenAI answer; a page is a few hundred KB at most
DEFAULT_MAX_RETRIES = 6            # 5xx and transport faults: 0.5+1+2+4+8+16 s of backoff, then the run fails
DEFAULT_MAX_THROTTLE_WAIT = 900.0  # 429s are retried this long per request: 15 refills of a 60 s window
DEFAULT_ROLE_ASSIGNMENTS = "auto"
DEFAULT_ACTIVITY_DAYS = 90         # logins and key scopes from the audit log of the last 90 days; 0 turns it off

# --- bounds on what a configuration may say ------------------------------------------------------
MAX_SECRET_LENGTH = 4096           # real keys are ~200 characters; a 100 KB "key" is a pasted file
MIN_SECRET_LENGTH_TO_MASK = 8      # masking a blank or tiny value would shred every log line; such keys fail anyway

# --- how requests are paced and retried (README: Rate limits) --------------------------------
CONNECT_TIMEOUT_CAP = 10.0     # a TCP connect slower than this is a dead host, whatever --timeout says
BACKOFF_FIRST = 0.5            # first 5xx backoff in seconds; it doubles per retry
BACKOFF_JITTER = (0.75, 1.0)   # spread retries of concurrent workers apart
MAX_SERVER_WAIT = 60.0         # a retry-after longer than this is capped: the refill window is ~60 s
PROBE_FIRST_WAIT = 0.5         # after a 429 with no hint, first probe of the endpoint after this many seconds
PROBE_MAX_WAIT = 5.0           # probes double up to this, so a refill is seen at most ~5 s late
REFILL_LEAD = 0.9              # once an endpoint's refill time is known, start probing at 90% of it
WINDOW_PRECISION = 0.02        # a learned window is probed at its last refill once known to within 2%
SLOW_START_DONE = 16            # after a hinted 429, requests in flight grow back one per success up to this
LEARNED_WINDOW_MIN = 10.0      # a refill slower than this is a window worth remembering; faster ones are probed
WINDOW_SECONDS = 60.0          # --max-requests-per-minute-per-endpoint counts over a sliding minute
MIN_ESTIMATE_SAMPLE = 20       # successful calls before their rate is trusted for a time-left estimate
HINT_FLOOR = 0.1               # a retry hint below this is obeyed as this, doubling per repeat: see _request_wait
SHARED_EVIDENCE_SPAN = 10.0    # 429s on this many endpoints within this many seconds...
SHARED_EVIDENCE_ENDPOINTS = 3  # ...each the first 429 of an endpoint that had just started, mean one limit for all
PACE_CUT = 0.9                 # a 429 cuts a pace by 10%, or to the rate seen to get through when that is lower
PACE_UNMEASURED_CUT = 0.7      # a 429 with too few successes since the last to measure cuts the pace by 30%
PACE_MAX_CUT = 0.5             # one 429 never cuts a pace below half of what it was
PACE_KEEPING_UP = 0.6          # a pace rises only while successes since the last 429 came at 60% of it...
PACE_PROBE_UP = 0.005          # ...by 0.5% per success, while it is what holds requests back
PACE_PROBE_SPEEDUP = 100       # ...and 0.5% more for every 100 successes since the last 429
PACE_MIN_SAMPLE = 8            # successes needed before the rate seen between two 429s is trusted
PACE_SETTLED_AFTER = 3         # a pace cut by this many 429s is near its limit: a prior for other endpoints' first pace
PRIOR_MARGIN = 0.25            # past an allowance another endpoint had, requests go one at a time for 25% more
WATCHDOG_GRACE = 2.0           # an answer still not whole this long after --timeout is abandoned
PROGRESS_INTERVAL = 30.0       # seconds between progress lines on a long run
MIN_PROGRESS_INTERVAL = 1.0    # even when tests shrink time, no more than one progress line a second

# --- what a server can make the connector do (README: Failure behaviour) -----------------------
MAX_PAGES_PER_LIST = 10_000        # 1,000,000 users at 100 a page; more is a server that never stops
MAX_AUDIT_LOG_PAGES = 500          # 50,000 events: logins are optional, never worth hours of one sequential chain
MAX_ANSWER_BYTES = 32 * 1024 * 1024  # decompressed; a real page is well under 1 MB
# One list's answers together. 100,000 users in the API's full record shape are ~37 MB (~120 MB as Python
# objects; the documented peak for that organization is 748 MB): this leaves room for ~170,000 users, while
# a list that never ends stops at a few hundred MB of records, inside the 1 GiB the manifest allows.
MAX_LIST_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024
VEZA_CHECK_TIMEOUT = 10.0          # the first Veza connection check fails fast instead of oaaclient's ~2.5 min

RETRYABLE_STATUS = frozenset({408, 409, 429})  # and every 5xx, as the official SDK does

# A plain glyph (not OpenAI's trademark) so the provider is recognisable in Veza's UI.
PROVIDER_ICON_SVG = (
    "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciIHZpZXdCb3g9IjAgMCAzMiAzMiI+PGNpcmNsZSBjeD0i"
    "MTYiIGN5PSIxNiIgcj0iMTQiIGZpbGw9IiMxMDEwMTAiLz48dGV4dCB4PSIxNiIgeT0iMjEiIGZvbnQtc2l6ZT0iMTQiIGZv"
    "bnQtZmFtaWx5PSJzYW5zLXNlcmlmIiBmaWxsPSIjZmZmIiB0ZXh0LWFuY2hvcj0ibWlkZGxlIj5BSTwvdGV4dD48L3N2Zz4="
)


# ---------------------------------------------------------------------------------------------
# Errors: what ends a run, and how main() reports each
# ---------------------------------------------------------------------------------------------

class ConfigError(Exception):
    """Every configuration problem found, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class DiscoveryError(Exception):
    """OpenAI could not be read completely; nothing may be pushed."""


class PushError(Exception):
    """Veza refused or could not take the payload; `reached_veza` says whether it may have arrived anyway."""

    def __init__(self, message: str, *, reached_veza: bool = False) -> None:
        super().__init__(message)
        self.reached_veza = reached_veza


class Stopped(BaseException):
    """A signal asked the run to stop (SIGTERM or Ctrl-C); like KeyboardInterrupt, not an Exception."""

    def __init__(self, signal_name: str, status: ExitStatus) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.status = status


# ---------------------------------------------------------------------------------------------
# Options: one table makes the parser, the environment lookup, the bounds and the help text
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Option:
    """One setting a user can give: its flags, its environment variable, its kind, bounds and help."""

    dest: str                        # the Config field it fills
    flags: tuple[str, ...]           # command-line spellings, the first one shown in messages; () for env only
    env: str | None                  # its environment variable; None: command line only
    help: str
    kind: type | None = None         # int or float: a number within low..high; None: text
    default: Any = None
    low: float = 0
    high: float = 0
    choices: tuple[str, ...] = ()    # a word from this list, compared case-insensitively
    switch: bool = False             # a flag without a value; its variable says true or false
    bare_value: str | None = None    # the value a flag given without one takes (--save_json alone)
    unset_means: str = ""            # what leaving it unset means, for --help, when it has no default value

    @property
    def label(self) -> str:
        """How messages name it: its flag and variable, as a user may have set either."""
        if not self.flags:
            return self.env or self.dest
        return f"{self.flags[0]} (env {self.env})" if self.env else self.flags[0]

    def help_text(self) -> str:
        default = f", default: {self.unset_means}" if self.unset_means else "" if self.default in (None, False) \
            else f", default {self.default:g}" if isinstance(self.default, float) else f", default {self.default}"
        return f"{self.help} (env: {self.env or 'none'}{default})"


OPTIONS = (
    Option("veza_url", ("--veza_url", "--veza-url"), "VEZA_URL", "URL of your Veza instance"),
    Option("org_id", ("--openai-org", "--openai_org"), "OPENAI_ORG_ID", "OpenAI organization ID, org-..."),
    Option("openai_base_url", ("--openai-base-url",), "OPENAI_BASE_URL", "OpenAI API base URL",
           default=DEFAULT_OPENAI_BASE_URL),
    Option("save_json", ("--save_json", "--save-json"), None, "also write the payload JSON; PATH is a directory "
           "(default: the current one) or a .json file", bare_value="."),
    Option("dry_run", ("--dry-run",), None, "read and map, write the payload JSON, push nothing; needs no Veza "
           "settings", switch=True),
    Option("debug", ("--debug",), None, "verbose debug logging", switch=True),
    Option("log_format", ("--log-format",), "LOG_FORMAT", "text or json: one JSON object per line, for log "
           "shippers", choices=("text", "json"), default="text"),
    Option("create_report", ("--create-report",), "VEZA_CREATE_REPORT", "after the push, create or update the "
           "Veza report 'OpenAI access review'", switch=True),
    Option("max_workers", ("--max-workers",), "OPENAI_MAX_WORKERS", "concurrent OpenAI requests", int,
           DEFAULT_MAX_WORKERS, 1, 64),  # more would only queue on the Admin API's per-endpoint limits
    Option("max_requests_per_second", ("--max-requests-per-second",), "OPENAI_MAX_REQUESTS_PER_SECOND",
           "hard cap on all OpenAI requests per second", float, None, 0.01, 10_000, unset_means="no cap"),
    Option("max_requests_per_minute_per_endpoint", ("--max-requests-per-minute-per-endpoint",),
           "OPENAI_MAX_RPM_PER_ENDPOINT", "cap on requests per minute to each Admin API endpoint, for an "
           "organization whose limits are known", int, None, 1, 100_000,
           unset_means="none, each endpoint's limit is learned from its answers"),
    Option("role_assignments", ("--role-assignments",), "OPENAI_ROLE_ASSIGNMENTS", "per-user role assignment "
           "reads: auto, all or none", choices=("auto", "all", "none"), default=DEFAULT_ROLE_ASSIGNMENTS),
    Option("activity_days", ("--activity-days",), "OPENAI_ACTIVITY_DAYS", "days of audit log read for last "
           "logins and API key scopes; 0 reads none", int, DEFAULT_ACTIVITY_DAYS, 0, 3650),  # the log keeps less
    Option("timeout", ("--timeout",), "OPENAI_TIMEOUT", "seconds to wait for one whole OpenAI answer", float,
           DEFAULT_TIMEOUT, 0.05, 600),  # an answer slower than 10 minutes is a dead server
    Option("max_retries", ("--max-retries",), "OPENAI_MAX_RETRIES", "retries of one OpenAI request on 5xx and "
           "connection errors", int, DEFAULT_MAX_RETRIES, 0, 20),  # 20 doublings of backoff is already hours
    Option("max_throttle_wait", ("--max-throttle-wait",), "OPENAI_MAX_THROTTLE_WAIT", "seconds one OpenAI "
           "request may keep being answered 429 before the run fails", float, DEFAULT_MAX_THROTTLE_WAIT, 0.1,
           86_400),
    Option("max_run_time", ("--max-run-time",), "OPENAI_MAX_RUN_TIME", "seconds the whole run (reading, push and "
           "report) may take before it stops", float, None, 1, 7 * 86_400, unset_means="no limit"),
    # Tests shrink every wait with it; not in --help.
    Option("time_scale", (), "VEZA_OPENAI_TIME_SCALE", "time scale", float, 1.0, 0.0, 1.0),
)
OPTION = {option.dest: option for option in OPTIONS}
# The environment variables that hold secrets, directly or by naming a file (as Docker and Kubernetes mount them).
SECRET_VARIABLES = ("OPENAI_ADMIN_KEY", "OPENAI_API_KEY", "VEZA_API_KEY")
# OpenAI key kinds that are certainly not Admin keys: the Admin API answers them 401 after the run began.
NON_ADMIN_KEY_PREFIXES = {"sk-proj-": "a project key", "sk-svcacct-": "a service account key"}


@dataclass(frozen=True)
class Config:
    org_id: str
    openai_api_key: str
    openai_base_url: str = DEFAULT_OPENAI_BASE_URL
    veza_url: str | None = None
    veza_api_key: str | None = None
    save_json_path: str | None = None  # the file --save_json writes, resolved up front
    dry_run: bool = False
    debug: bool = False
    max_workers: int = DEFAULT_MAX_WORKERS
    max_requests_per_second: float | None = None
    max_requests_per_minute_per_endpoint: int | None = None
    role_assignments: str = DEFAULT_ROLE_ASSIGNMENTS
    activity_days: int = DEFAULT_ACTIVITY_DAYS
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    max_throttle_wait: float = DEFAULT_MAX_THROTTLE_WAIT
    max_run_time: float | None = None
    create_report: bool = False
    log_format: str = "text"
    openai_key_source: str = "OPENAI_API_KEY"  # the variable the key came from, for the log
    time_scale: float = 1.0  # tests shrink every wait with VEZA_OPENAI_TIME_SCALE
    notes: tuple[str, ...] = ()  # warnings about settings that were usable once corrected (logged at start)

    @property
    def data_source_name(self) -> str:
        return f"{PROVIDER_NAME} - {self.org_id}"

    def secrets(self) -> list[str]:
        return [s for s in (self.openai_api_key, self.veza_api_key) if s]


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a flag it rejects is a configuration error like any other (one line, a summary, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError([f"{message} (see --help)"])


def build_arg_parser(options: Iterable[Option] = OPTIONS) -> ArgumentParser:
    parser = ArgumentParser(
        prog="veza_openai.py",
        description="Discover an OpenAI organization's access and push it to Veza (OAA). "
        "Secrets come from the environment only: VEZA_API_KEY, and OPENAI_ADMIN_KEY or OPENAI_API_KEY "
        "(the admin key wins when both are set); each may instead name a file with VEZA_API_KEY_FILE, "
        "OPENAI_ADMIN_KEY_FILE, OPENAI_API_KEY_FILE.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for option in options:
        add_option(parser, option)
    return parser


def add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    """The option's flags, if it has any. Values stay text: load_config checks them, naming flag and variable."""
    if not option.flags:
        return
    if option.switch:
        parser.add_argument(*option.flags, dest=option.dest, action="store_true", default=None,
                            help=option.help_text())
    elif option.bare_value is not None:
        parser.add_argument(*option.flags, dest=option.dest, nargs="?", const=option.bare_value, metavar="PATH",
                            help=option.help_text())
    else:
        parser.add_argument(*option.flags, dest=option.dest, help=option.help_text(),
                            metavar=option.flags[0].lstrip("-").upper().replace("-", "_"))


def unquoted(value: str, name: str, notes: list[str]) -> str:
    """`value` without one pair of surrounding quotes, noted: `docker run --env-file` keeps quotes literally."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        notes.append(f"{name} is wrapped in quotes, which docker --env-file and some secret stores keep as part "
                     "of the value; the quotes were removed (write the value unquoted)")
        return value[1:-1]
    return value


def flag_and_env_values(args: argparse.Namespace, env: Mapping[str, str],
                        notes: list[str]) -> dict[str, str | bool | None]:
    """Each option's raw value: the flag when given, else its environment variable; None when neither is."""
    values: dict[str, str | bool | None] = {}
    for option in OPTIONS:
        value = getattr(args, option.dest, None)
        if value is None and option.env:
            value = env.get(option.env)
            value = unquoted(value, option.env, notes) if value else value
        values[option.dest] = None if value in (None, "") else value
    return values


def checked_value(option: Option, raw: str | bool | None, problems: list[str]) -> Any:
    """A number within its bounds, a word from its choices, a switch's truth; the default when not given."""
    if raw is None:
        return option.default
    if option.switch:
        if isinstance(raw, bool):
            return raw
        word = raw.strip().lower()
        if word not in ("true", "false", "1", "0", "yes", "no"):
            problems.append(f"{option.env} must be true or false")
            return option.default
        return word in ("true", "1", "yes")
    if option.kind is not None:
        try:
            value = option.kind(raw.strip())
        except ValueError:
            problems.append(f"{option.label} must be a number, got {raw[:20]!r}")
            return option.default
        if not option.low <= value <= option.high:
            problems.append(f"{option.label} must be between {option.low:g} and {option.high:g}")
            return option.default
        return value
    if option.choices:
        word = raw.strip().lower()
        if word not in option.choices:
            problems.append(f"{option.label} must be {', '.join(option.choices[:-1])} or {option.choices[-1]}")
            return option.default
        return word
    return raw


ORG_ID_RE = re.compile(r"org-[A-Za-z0-9_-]{1,128}")


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def has_control_characters(text: str) -> bool:
    """Whitespace or control characters: never part of a key, an id or a URL (a pasted newline, say)."""
    return any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _check_url(value: str, name: str, problems: list[str], *, allow_loopback_http: bool,
               allow_path: bool) -> str | None:
    """Return the normalised URL (scheme lower-cased, no trailing slash), or None with a problem recorded."""
    if has_control_characters(value):
        problems.append(f"{name} contains whitespace or control characters")
        return None
    candidate = value if "://" in value else f"https://{value}"
    try:
        parts = urllib.parse.urlsplit(candidate)
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        problems.append(f"{name} is not a valid URL")
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname:
        problems.append(f"{name} is not a valid URL (no host)")
        return None
    if parts.username or parts.password:
        problems.append(f"{name} must not contain credentials (user:password@); keys come from the environment")
        return None
    if parts.query or parts.fragment:
        problems.append(f"{name} must not contain a query string or fragment")
        return None
    if not allow_path and parts.path.strip("/"):
        problems.append(f"{name} must be the instance's address only (https://host), not a page such as "
                        f"{parts.path[:40]!r}")
        return None
    if scheme == "http" and allow_loopback_http and _is_loopback(parts.hostname):
        pass
    elif scheme != "https":
        problems.append(f"{name} must use https" + (" (http is allowed only for loopback test servers)"
                                                     if allow_loopback_http else ""))
        return None
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, "", "")).rstrip("/")


def _check_secret(value: str | None, name: str, problems: list[str]) -> str | None:
    if not value:
        if not any(problem.startswith(name) for problem in problems):
            problems.append(f"{name} is not set")
        return None
    if len(value) > MAX_SECRET_LENGTH:
        problems.append(f"{name} is {len(value):,} characters long; an API key is a few hundred at most")
        return None
    if has_control_characters(value):
        problems.append(f"{name} contains whitespace, a newline or control characters")
        return None
    if not value.isascii():
        problems.append(f"{name} contains non-ASCII characters; API keys are plain ASCII (a copy-paste slip?)")
        return None
    return value


def _shown_path(path: str) -> str:
    """A secret file's path as messages show it: only an absolute path, which cannot be a key pasted by mistake."""
    return repr(path) if path.startswith("/") and not has_control_characters(path) else "the file it names"


def read_secret_file(path: str, file_variable: str, problems: list[str]) -> str | None:
    """The content of a secret file, trailing newlines dropped; None with a problem that never shows the content.

    Only a regular file is read: a FIFO would block before signal handling starts (as PID 1 only SIGKILL
    would end it), and a device or directory is a mistake. A value that looks like a key is said to be one.
    """
    if path.startswith("sk-"):
        problems.append(f"{file_variable} holds what looks like an API key, not a file path; put the key in "
                        f"{file_variable.removesuffix('_FILE')} instead, or in a file that {file_variable} names")
        return None
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except (OSError, ValueError) as exc:
        problems.append(f"{file_variable}: cannot read {_shown_path(path)} "
                        f"({getattr(exc, 'strerror', None) or type(exc).__name__})")
        return None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        problems.append(f"{file_variable}: {_shown_path(path)} is not a regular file (a FIFO, device or "
                        "directory); name the file that holds the key")
        return None
    with open(descriptor, "rb", closefd=True) as handle:
        raw = handle.read(MAX_SECRET_LENGTH + 2)
    try:
        value = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        problems.append(f"{file_variable}: {_shown_path(path)} is not UTF-8 text")
        return None
    if not value:
        problems.append(f"{file_variable}: {_shown_path(path)} is empty")
        return None
    return value


def _secret_setting(env: Mapping[str, str], name: str, problems: list[str],
                    notes: list[str]) -> tuple[str | None, str | None]:
    """A secret from `name`, or from the file `name`_FILE names (as Docker and Kubernetes mount secrets).

    Returns (value, the variable it came from); (None, None) when neither is set. One trailing newline
    (or several) of a file is dropped; the file's content never reaches a message.
    """
    file_name = f"{name}_FILE"
    direct, path = env.get(name), env.get(file_name)
    if direct and path:
        problems.append(f"{name} and {file_name} are both set; set only one")
        return None, name
    if not path:
        return (unquoted(direct, name, notes), name) if direct else (None, None)
    value = read_secret_file(path, file_name, problems)
    return (unquoted(value, file_name, notes) if value else None), file_name


def mask_key(key: str) -> str:
    """Enough of a key to tell which one it is (its kind and last four characters), never the key."""
    kind = next((prefix for prefix in ("sk-admin-", "sk-proj-", "sk-svcacct-", "sk-") if key.startswith(prefix)), "")
    # Four characters of a secret part shorter than 16 would give too much of it away.
    return f"{kind}...{key[-4:]}" if len(key) - len(kind) >= 16 else f"{kind}..."


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
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    if len(os.path.basename(path).encode()) > name_max:
        problems.append(f"--save_json file name is longer than the {name_max} bytes this file system allows")
        return None
    try:  # os.access says yes to root even on read-only mounts; a real file says the truth
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError:
        problems.append(f"--save_json directory {directory!r} is not writable (the container runs as uid 10001)")
        return None
    return path


def unknown_arguments_problem(extras: list[str]) -> str:
    """Name unknown flags, never the values beside them: a key pasted on the command line must not be echoed."""
    flags = [arg.partition("=")[0][:60] for arg in extras if arg.startswith("-")]
    values = len(extras) - len(flags)
    if flags:
        message = f"unrecognized arguments: {', '.join(flags[:5])}" + (f" and {values} value(s), not shown"
                                                                        if values else "")
    else:
        message = f"unexpected argument(s) on the command line ({values}, not shown); every setting is a flag"
    if any(arg.startswith("sk-") or "key" in arg.lower() or "token" in arg.lower() for arg in extras):
        message += ("; secrets are read from the environment only (OPENAI_API_KEY or OPENAI_ADMIN_KEY, "
                    "VEZA_API_KEY, or their _FILE variants), never from the command line")
    return message + " (see --help)"


def _org_id(raw: str | None, problems: list[str]) -> str | None:
    if raw is None:
        problems.append("OPENAI_ORG_ID (or --openai-org) is not set")
    elif not ORG_ID_RE.fullmatch(raw):
        problems.append("OPENAI_ORG_ID (or --openai-org) must look like org-XXXX "
                        "(letters, digits, '-' and '_' after 'org-', nothing else, no trailing newline)")
    else:
        return raw
    return None


def _openai_key(env: Mapping[str, str], problems: list[str], notes: list[str]) -> tuple[str | None, str | None]:
    """The OpenAI key and the variable it came from. The admin key wins: a shell may hold a project key in
    OPENAI_API_KEY for other tools, and the official SDK reads an admin key from OPENAI_ADMIN_KEY."""
    for name in ("OPENAI_ADMIN_KEY", "OPENAI_API_KEY"):
        value, source = _secret_setting(env, name, problems, notes)
        if source:
            key = _check_secret(value, source, problems)
            kind = next((kind for prefix, kind in NON_ADMIN_KEY_PREFIXES.items() if key and key.startswith(prefix)),
                        None)
            if kind:
                problems.append(f"{source} holds {kind} ({mask_key(key)}), which the Admin API refuses: use an Admin "
                                "API key (sk-admin-...), created by an organization owner under Settings > "
                                "Organization > Admin keys")
                key = None
            return key, source
    problems.append("OPENAI_API_KEY (or OPENAI_ADMIN_KEY, or either's _FILE variant) is not set")
    return None, None


def _veza_settings(raw_url: str | None, env: Mapping[str, str], problems: list[str],
                   notes: list[str]) -> tuple[str | None, str | None]:
    url = None
    if raw_url is None:
        problems.append("VEZA_URL (or --veza_url) is not set")
    else:
        url = _check_url(raw_url, "VEZA_URL (or --veza_url)", problems, allow_loopback_http=False, allow_path=False)
    value, source = _secret_setting(env, "VEZA_API_KEY", problems, notes)
    if env.get("VEZA_UNSAFE_HTTPS", "").strip().lower() == "true":
        notes.append("VEZA_UNSAFE_HTTPS=true: Veza's TLS certificate is not verified (for test instances only)")
    return url, _check_secret(value, source or "VEZA_API_KEY", problems)


def load_config(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Parse flags and environment into a Config; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    args, extras = build_arg_parser().parse_known_args(argv)
    problems: list[str] = [unknown_arguments_problem(extras)] if extras else []
    notes: list[str] = []
    raw = flag_and_env_values(args, env, notes)
    settings = {option.dest: checked_value(option, raw[option.dest], problems) for option in OPTIONS}
    dry_run = bool(settings["dry_run"])

    org_id = _org_id(raw["org_id"], problems)
    openai_key, key_source = _openai_key(env, problems, notes)
    base_url = _check_url(settings["openai_base_url"], "OPENAI_BASE_URL (or --openai-base-url)", problems,
                          allow_loopback_http=True, allow_path=True)
    veza_url, veza_key = (None, None) if dry_run else _veza_settings(raw["veza_url"], env, problems, notes)
    save_json = settings["save_json"] if settings["save_json"] is not None else "." if dry_run else None
    save_path = _resolve_save_path(save_json, org_id, problems) if save_json is not None else None

    if problems:
        raise ConfigError(problems)
    del settings["save_json"]  # resolved into save_json_path
    return Config(**{**settings, "org_id": org_id, "openai_api_key": openai_key, "openai_base_url": base_url,
                     "veza_url": veza_url, "veza_api_key": veza_key, "save_json_path": save_path,
                     "dry_run": dry_run, "debug": bool(settings["debug"]),
                     "create_report": bool(settings["create_report"]) and not dry_run,
                     "openai_key_source": key_source, "notes": tuple(notes)})


def log_format_asked(argv: list[str] | None, env: Mapping[str, str]) -> str:
    """The log format a run asked for, even when its configuration is wrong (so its errors ship as JSON too).

    Parsed by the same parser rules as the run (abbreviations included), with everything else ignored.
    """
    parser = ArgumentParser(add_help=False)
    add_option(parser, OPTION["log_format"])
    try:
        asked, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        value = asked.log_format
    except (ConfigError, SystemExit):
        value = None
    value = (value or env.get("LOG_FORMAT") or "").strip().strip("\"'").lower()
    return "json" if value == "json" else "text"


# ---------------------------------------------------------------------------------------------
# Logging: one line per record, control characters escaped, secrets masked
# ---------------------------------------------------------------------------------------------

# Control characters (and the Unicode ones that reorder or break lines) from a server could forge
# log lines or hide text on a terminal; they are shown escaped instead.
_UNSAFE_IN_LOGS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Anything shaped like an OpenAI key is masked in every line, known or not: a key put in the wrong variable,
# typed as a flag, or quoted back by a server.
_KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{12,}")


def escape_for_log(text: str) -> str:
    """`text` with control characters shown as escapes (\\n, \\x1b, \\u202e), safe on one log line."""
    def escaped(match: re.Match) -> str:
        char = match.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char) or (
            f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return _UNSAFE_IN_LOGS.sub(escaped, text)


class RedactingFormatter(logging.Formatter):
    """One line per record, control characters escaped, every known secret masked (tracebacks too)."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self.secrets = [s for s in secrets if s and len(s.strip()) >= MIN_SECRET_LENGTH_TO_MASK]

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's naming)
        record.message = escape_for_log(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 (logging's naming)
        # A traceback keeps its lines, each indented and escaped: an exception message from a server
        # cannot start a line that looks like a log record.
        return "\n".join(f"  | {escape_for_log(line)}" for line in super().formatException(ei).splitlines())

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[REDACTED]")
        return _KEY_LIKE.sub(lambda match: f"[REDACTED {mask_key(match.group())}]", text)

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(super().format(record))


class JsonFormatter(RedactingFormatter):
    """One JSON object per line: time, level, message, and the record's `fields` (stage counts, summary)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__("%(message)s", secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                 .replace("+00:00", "Z"), "level": record.levelname, "message": record.getMessage()}
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        for name, value in entry.items():  # masked before JSON escapes a quote or backslash inside a secret
            if isinstance(value, str):
                entry[name] = self.redact(value)
        return json.dumps(entry, default=str)  # ASCII-only: control and bidi characters come out escaped


def log_with_fields(level: int, fields: dict[str, Any], message: str, *args: Any) -> None:
    """A log line whose numbers are also fields of the JSON log format."""
    log.log(level, message, *args, extra={"fields": fields})


def configure_logging(debug: bool, secrets: Iterable[str] = (), log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    secrets = list(secrets)
    handler.setFormatter(JsonFormatter(secrets) if log_format == "json" else
                         RedactingFormatter("%(asctime)s %(levelname)s %(message)s", secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    # Python warnings (a library's deprecation, say) become log lines in the same format, never raw text;
    # urllib3's per-request warning under VEZA_UNSAFE_HTTPS is said once, at the start, instead.
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=InsecureRequestWarning)


def secrets_in_environment(env: Mapping[str, str]) -> list[str]:
    """The secrets the environment holds, for masking before the configuration is known. (A key put in a
    _FILE variable by mistake is never echoed: read_secret_file shows only absolute paths.)"""
    return [env.get(name, "") for name in SECRET_VARIABLES]


# ---------------------------------------------------------------------------------------------
# HTTP: one GET to the Admin API, its whole answer within a deadline
# ---------------------------------------------------------------------------------------------

def _retry_after_seconds(response: requests.Response) -> float | None:
    """The server's requested wait, from retry-after-ms or retry-after (seconds or HTTP date)."""
    seconds = None
    raw_ms = response.headers.get("retry-after-ms")
    raw = response.headers.get("retry-after")
    try:
        if raw_ms:
            seconds = float(raw_ms) / 1000.0
        elif raw:
            try:
                seconds = float(raw)
            except ValueError:
                when = email.utils.parsedate_to_datetime(raw)
                seconds = (when - datetime.now(timezone.utc)).total_seconds()
    except (TypeError, ValueError):
        return None
    # Zero, a date already past, or nan is no hint (as the official SDK treats it): acting on it would
    # resend at once, as fast as the connection allows, until the throttle deadline.
    if seconds is None or not 0 < seconds < float("inf"):
        return None
    return seconds


def _error_message(body: Any, fallback: str) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message or fallback or "no message")[:300]


@dataclass
class Answer:
    """What one HTTP request got: a status and a JSON body, or why there is none."""

    status: int                      # 0: no HTTP answer (refused, reset, timed out)
    body: Any = None
    problem: str = ""                # for a failure: what went wrong, for the log ("HTTP 503", "Timeout ...")
    detail: str = ""                 # the server's error message, when it sent one
    server_wait: float | None = None  # retry-after / retry-after-ms
    should_retry: bool | None = None  # x-should-retry, when the server says
    fatal: bool = False              # retrying cannot help (an answer over the size cap)
    size: int = 0                    # bytes of the body, decompressed


class SharedStrings:
    """A json.loads object_pairs_hook giving equal strings (keys and values) of every page one str object.

    The records are the same dicts (same keys, values and order; a repeated key keeps its last value, as
    json.loads does), in less memory: every page repeats its keys and enums, and a user's id, name and email
    come again in project member lists, key owners, group members and audit events (measured: ~60 MB less
    at 100,000 users). The table lives as long as the client, i.e. only while reading. Safe from several
    threads: setdefault is atomic.
    """

    def __init__(self) -> None:
        self.strings: dict[str, str] = {}

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        shared = self.strings.setdefault
        record = {}
        for key, value in pairs:
            if isinstance(value, str):
                value = shared(value, value)
            elif isinstance(value, list):
                value = [shared(item, item) if isinstance(item, str) else item for item in value]
            record[shared(key, key)] = value
        return record


class BearerToken(requests.auth.AuthBase):
    """An API key sent as `Authorization: Bearer`, given as requests' `auth`.

    As a header alone it would lose to a ~/.netrc entry for the same host: requests replaces the header
    with that entry's Basic credentials whenever a request has no `auth` of its own.
    """

    def __init__(self, key: str) -> None:
        self._key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._key}"
        return request


class OpenAIAdminClient:
    """HTTP access to the Admin API: one session, one GET at a time per call, whole answers within a deadline.

    It never sleeps or retries: the reader decides when each request goes, so one endpoint's limit
    never holds a worker that another endpoint could use.
    """

    def __init__(self, config: Config, session: requests.Session | None = None) -> None:
        self.base_url = config.openai_base_url
        self.timeout = config.timeout
        self.session = session or requests.Session()
        self.session.auth = BearerToken(config.openai_api_key)
        self.session.headers.update({
            "OpenAI-Organization": config.org_id,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        })
        # Workers share the session; the default pool of 10 connections would make them queue for sockets.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, config.max_workers))
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        # A proxy from HTTP_PROXY would see the admin key of a loopback (test) server in clear text.
        host = urllib.parse.urlsplit(self.base_url).hostname
        self.proxies = {"http": None, "https": None, "all": None} if _is_loopback(host) else None
        self.shared_strings = SharedStrings()

    def get(self, path: str, params: dict[str, Any] | None = None) -> Answer:
        """One GET; the body is read whole within --timeout and MAX_ANSWER_BYTES (decompressed)."""
        started = time.monotonic()
        try:
            with self.session.get(self.base_url + path, params=params, stream=True, proxies=self.proxies,
                                  timeout=(min(CONNECT_TIMEOUT_CAP, self.timeout), self.timeout)) as response:
                raw = read_whole_answer(response, started + self.timeout)
        except AnswerTooLarge as exc:
            return Answer(0, problem=str(exc), fatal=True)
        except (requests.RequestException, TransportError, OSError) as exc:  # refused, reset, timed out, cut short
            what = "timed out" if isinstance(exc, (requests.Timeout, TransportTimeout)) else "connection failed"
            return Answer(0, problem=f"{type(exc).__name__} ({what})")
        try:
            body = json.loads(raw, object_pairs_hook=self.shared_strings) if raw else None
        except ValueError:
            body = None
            if response.status_code == 200:
                return Answer(200, problem=f"answer is not JSON (HTTP 200, {len(raw)} bytes)", fatal=True)
        hint = response.headers.get("x-should-retry", "").strip().lower()
        return Answer(response.status_code, body, size=len(raw), problem=f"HTTP {response.status_code}",
                      detail=_error_message(body, response.reason),
                      server_wait=_retry_after_seconds(response),
                      should_retry={"true": True, "false": False}.get(hint))


class AnswerTooLarge(requests.RequestException):
    """An answer larger than any real page: a broken or hostile server."""


def read_whole_answer(response: requests.Response, deadline: float, limit: int | None = None) -> bytes:
    """The decompressed body, or an exception once it passes `deadline` or `limit` bytes.

    requests bounds only the gap between two bytes; a body dripped one byte a second would never
    time out, and a small gzip body can decompress to gigabytes.
    """
    limit = limit or MAX_ANSWER_BYTES
    chunks: list[bytes] = []
    size = 0
    while True:
        # read1 returns what one socket read brings, so a dripping body meets the deadline check
        chunk = response.raw.read1(READ_CHUNK_BYTES, decode_content=True)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"answer larger than {limit // (1024 * 1024)} MB decompressed; stopped reading")
        if time.monotonic() > deadline:
            raise requests.Timeout("the whole answer took longer than the timeout")
        chunks.append(chunk)
    body = b"".join(chunks)
    # Marked as read, so closing the response hands the connection back to the pool for keep-alive.
    response._content, response._content_consumed = body, True
    return body


# ---------------------------------------------------------------------------------------------
# The catalogue: every family the connector reads, declared once
# ---------------------------------------------------------------------------------------------

CURSOR_LAST_ID = "last_id"   # after=<last_id of the page>
CURSOR_ITEM_ID = "item_id"   # after=<id of the last item>
CURSOR_NEXT = "next"         # after=<next of the page>


class Kind(enum.Enum):
    """The entity a per-entity family is read for. A 404 on its list may mean it was deleted during the run;
    its own object (when it has one) says whether it was, and what is left out with it is said in the log."""

    PROJECT = ("project", "project_object", "left out with its members, service accounts, keys and roles")
    GROUP = ("group", "group_object", "left out with its memberships and role grants")
    USER = ("user", "user_object", "left out with its memberships, keys and role assignments")
    PROVIDER = ("provider", "provider_object", "its federation rules are left out")
    # Links between two entities have no object of their own to ask.
    PROJECT_GROUP = ("project group", None, "its role grants on the project are left out")
    PROJECT_MEMBER = ("project member", None, "its role assignments on the project are left out")

    def __init__(self, label: str, object_family: str | None, when_deleted: str) -> None:
        self.label, self.object_family, self.when_deleted = label, object_family, when_deleted


class On404(enum.Enum):
    """What a 404 on a family's read means (a required family's 404 fails the run)."""

    LEAVE_OUT = "the organization does not have this family: left out whole, warned"
    ENTITY = "the entity it is read for may have been deleted: settled by asking the entity itself"
    NO_SETTINGS = "the project has no such settings: left unset"
    EXISTENCE = "the entity itself answered: it was deleted"


@dataclass(frozen=True)
class Family:
    """One kind of record the connector reads: everything that varies from one family to another.

    The reader knows no family by name: where a family is read from (`parent`), what it waits for
    (`after_role_decision`), what its answers mean (`on_404`, `optional`, `empty_when_archived`) and how
    far it may go (`page_cap`, `cut_at_cap`) are all said here.
    """

    name: str                        # also the Snapshot attribute its result is filed in
    label: str
    path: str                        # placeholders are filled from the key (in order) or the organization id
    grant: str                       # what the admin key needs, named when the family is refused
    cursor: str | None = None        # None: one object, not a list
    page_size: int = 0               # the largest page the endpoint serves
    item_object: str | None = None   # the `object` every item must carry, when the API names one
    params: tuple[tuple[str, str | tuple[str, ...]], ...] = ()  # a tuple value is sent as repeated keys
    per: Kind | None = None          # the entity it is read for, once per entity
    parent: str | None = None        # the family whose items it is read for (None: read at the start)
    parent_id_field: str = "id"      # the field of the parent's items that names the entity
    item_id_field: str = "id"
    next_falls_back_to_item_id: bool = False  # the SDK documents `after` as an item id for this list
    on_404: On404 | None = None      # None: ENTITY when read per entity, else LEAVE_OUT
    required: bool = False           # refused or missing, the run fails: no push without it
    optional: str | None = None      # what is left unset when it cannot be read; the run goes on
    settings: bool = False           # an answer of another shape goes to the mapping, which warns
    empty_when_archived: bool = False  # OpenAI documents a 400 "when project is archived": an empty list
    role_list: bool = False          # lists roles: `--role-assignments auto` decides on these
    after_role_decision: bool = False  # read only once the role assignment reads are decided on
    activity_window: bool = False    # read back to the activity window's start, newest first
    page_cap: int | None = None      # None: MAX_AUDIT_LOG_PAGES for a list cut at its cap, else MAX_PAGES_PER_LIST
    cut_at_cap: bool = False         # at the page or byte cap, keep what was read (warned) instead of failing

    @property
    def max_pages(self) -> int:
        return self.page_cap or (MAX_AUDIT_LOG_PAGES if self.cut_at_cap else MAX_PAGES_PER_LIST)

    @property
    def not_found(self) -> On404:
        return self.on_404 or (On404.ENTITY if self.per else On404.LEAVE_OUT)

    def path_for(self, key: Any, org_id: str) -> str:
        """The path of one read: placeholders filled from the key, in order (the organization id for org_id)."""
        names = re.findall(r"{(\w+)}", self.path)
        values = [org_id] if names == ["org_id"] else [key] if isinstance(key, str) else list(key or ())
        return self.path.format(**{name: urllib.parse.quote(value, safe="") for name, value in zip(names, values)})


# One read of the audit log brings all three: logins for last_login_at, key creations and updates for scopes.
AUDIT_EVENT_TYPES = ("login.succeeded", "api_key.created", "api_key.updated")

# In dispatch order: when several endpoints may send, the first listed goes first.
FAMILY_LIST = [
    Family(name="organization", label="organization object", path="/organizations/{org_id}",
           grant="(dashboard-style keys only)", optional="is_personal"),
    Family(name="users", label="users", path="/organization/users", grant="Users: Read", cursor=CURSOR_LAST_ID,
           page_size=100, item_object="organization.user", required=True),
    # The audit log is read newest first, one sequential chain: listed early so its next page goes first.
    Family(name="audit_logs", label="audit logs", path="/organization/audit_logs", grant="Audit logs: Read",
           cursor=CURSOR_LAST_ID, page_size=100, params=(("event_types[]", AUDIT_EVENT_TYPES),),
           activity_window=True, cut_at_cap=True),
    Family(name="invites", label="invites", path="/organization/invites", grant="Invites: Read",
           cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.invite"),
    Family(name="admin_api_keys", label="admin API keys", path="/organization/admin_api_keys",
           grant="Admin keys: Read", cursor=CURSOR_ITEM_ID, page_size=100, item_object="organization.admin_api_key"),
    Family(name="groups", label="groups", path="/organization/groups", grant="Groups: Read", cursor=CURSOR_NEXT,
           page_size=1000, next_falls_back_to_item_id=True),
    Family(name="roles", label="roles", path="/organization/roles", grant="Roles: Read", cursor=CURSOR_NEXT,
           page_size=1000, item_object="role", role_list=True),
    Family(name="projects", label="projects", path="/organization/projects", grant="Projects: Read",
           cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.project",
           params=(("include_archived", "true"),)),
    # The maximum page size of both workload identity lists is undocumented; 100 is what every sibling allows.
    Family(name="workload_identity_providers", label="workload identity providers",
           path="/organization/workload_identity_providers", grant="Workload identity: Read", cursor=CURSOR_ITEM_ID,
           page_size=100, item_object="organization.workload_identity_provider"),
    Family(name="certificates", label="certificates", path="/organization/certificates", grant="Certificates: Read",
           cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.certificate"),
    Family(name="project_users", label="project users", path="/organization/projects/{project_id}/users",
           grant="Projects: Read", cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.project.user",
           per=Kind.PROJECT, parent="projects", empty_when_archived=True),
    Family(name="project_service_accounts", label="project service accounts",
           path="/organization/projects/{project_id}/service_accounts", grant="Projects: Read",
           cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.project.service_account",
           per=Kind.PROJECT, parent="projects", empty_when_archived=True),
    Family(name="project_api_keys", label="project API keys", path="/organization/projects/{project_id}/api_keys",
           grant="API keys: Read", cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.project.api_key",
           params=(("owner_project_access", "any"),), per=Kind.PROJECT, parent="projects"),
    Family(name="project_roles", label="project roles", path="/projects/{project_id}/roles", grant="Roles: Read",
           cursor=CURSOR_NEXT, page_size=1000, item_object="role", per=Kind.PROJECT, parent="projects",
           role_list=True),
    # The maximum page size of project groups is undocumented; 100 is what every sibling list allows.
    Family(name="project_groups", label="project groups", path="/organization/projects/{project_id}/groups",
           grant="Groups: Read", cursor=CURSOR_NEXT, page_size=100, item_object="project.group", per=Kind.PROJECT,
           parent="projects", item_id_field="group_id", next_falls_back_to_item_id=True),
    Family(name="model_permissions", label="model permissions",
           path="/organization/projects/{project_id}/model_permissions", grant="Projects: Read", per=Kind.PROJECT,
           parent="projects", on_404=On404.NO_SETTINGS, settings=True),
    Family(name="project_certificates", label="project certificates",
           path="/organization/projects/{project_id}/certificates", grant="Certificates: Read",
           cursor=CURSOR_LAST_ID, page_size=100, item_object="organization.project.certificate", per=Kind.PROJECT,
           parent="projects"),
    Family(name="hosted_tool_permissions", label="hosted tool permissions",
           path="/organization/projects/{project_id}/hosted_tool_permissions", grant="Projects: Read",
           per=Kind.PROJECT, parent="projects", on_404=On404.NO_SETTINGS, settings=True),
    Family(name="group_users", label="group users", path="/organization/groups/{group_id}/users",
           grant="Groups: Read", cursor=CURSOR_NEXT, page_size=1000, per=Kind.GROUP, parent="groups",
           next_falls_back_to_item_id=True),
    Family(name="group_roles", label="group roles", path="/organization/groups/{group_id}/roles",
           grant="Roles: Read", cursor=CURSOR_NEXT, page_size=1000, per=Kind.GROUP, parent="groups"),
    Family(name="project_group_roles", label="project group roles",
           path="/projects/{project_id}/groups/{group_id}/roles", grant="Roles: Read", cursor=CURSOR_NEXT,
           page_size=1000, per=Kind.PROJECT_GROUP, parent="project_groups", parent_id_field="group_id"),
    Family(name="federation_rules", label="federation rules",
           path="/organization/workload_identity_providers/{provider_id}/federation_rules",
           grant="Workload identity: Read", cursor=CURSOR_ITEM_ID, page_size=100,
           item_object="organization.workload_identity_federation_rule", per=Kind.PROVIDER,
           parent="workload_identity_providers"),
    Family(name="user_roles", label="user roles", path="/organization/users/{user_id}/roles", grant="Roles: Read",
           cursor=CURSOR_NEXT, page_size=1000, per=Kind.USER, parent="users", after_role_decision=True),
    Family(name="project_user_roles", label="project user roles", path="/projects/{project_id}/users/{user_id}/roles",
           grant="Roles: Read", cursor=CURSOR_NEXT, page_size=1000, per=Kind.PROJECT_MEMBER, parent="project_users",
           after_role_decision=True),
    # One object by id, asked only to tell a deleted entity from a list its organization lacks (Kind).
    Family(name="project_object", label="project", path="/organization/projects/{project_id}",
           grant="Projects: Read", on_404=On404.EXISTENCE),
    Family(name="group_object", label="group", path="/organization/groups/{group_id}", grant="Groups: Read",
           on_404=On404.EXISTENCE),
    Family(name="user_object", label="user", path="/organization/users/{user_id}", grant="Users: Read",
           on_404=On404.EXISTENCE),
    Family(name="provider_object", label="workload identity provider",
           path="/organization/workload_identity_providers/{provider_id}", grant="Workload identity: Read",
           on_404=On404.EXISTENCE),
]
FAMILIES = {family.name: family for family in FAMILY_LIST}
FAMILY_INDEX = {family.name: index for index, family in enumerate(FAMILY_LIST)}
CHILDREN = {name: [family for family in FAMILY_LIST if family.parent == name] for name in FAMILIES}
STARTING_FAMILIES = [family for family in FAMILY_LIST if family.parent is None and family.not_found != On404.EXISTENCE]


# ---------------------------------------------------------------------------------------------
# Records: what the fields of a record from OpenAI mean (ids, times, text)
# ---------------------------------------------------------------------------------------------

# Go's zero time: what a server written in Go sends for "never set". As a date it would be an expiry
# 2,000 years past (a key shown expired) or a login that never happened, so it is unset, not a date.
GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)


def _moment(value: Any) -> datetime | None:
    """Unix seconds (number or digits) or an ISO string as an aware UTC datetime; None when absent or unusable."""
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
        moment = moment.astimezone(timezone.utc)
    except (ValueError, OverflowError, OSError):  # nan, inf, out of range, not a date
        return None
    return None if moment == GO_ZERO_TIME else moment


def rfc3339(value: Any) -> str | None:
    """Unix seconds (or an ISO string) as RFC3339 UTC with a Z suffix and a four-digit year; None when absent
    or unusable (Go's zero time included)."""
    moment = _moment(value)
    if moment is None:
        return None
    # strftime("%Y") does not pad years before 1000 on Linux ("892-07-31..."), which is not RFC3339.
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


def epoch_seconds(value: Any) -> float | None:
    """The same value as Unix seconds, for comparing times as numbers (strings sort "892-..." after "2026-...")."""
    moment = _moment(value)
    return None if moment is None else moment.timestamp()


def _text(value: Any) -> str | None:
    """A trimmed non-empty string, else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _shape(value: Any) -> str:
    """A value from a server as short JSON, for a warning about its shape."""
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def usable_id(value: Any) -> bool:
    """A non-blank string that is valid Unicode: a lone surrogate ("\\ud800" in JSON) fits no URL or payload."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unique_by_id(items: Iterable[Any], key: str = "id",
                 problem: Callable[[str], None] | None = None) -> list[dict]:
    """Items with a usable string id, first occurrence kept, compared case-insensitively as Veza does.

    The same id on two pages is normal (pages overlap) and silent; a record without a usable id, or
    whose id differs from another only in case, is told to `problem` when given.
    """
    seen: dict[str, str] = {}
    result = []
    for item in items:
        item_id = item.get(key) if isinstance(item, dict) else None
        if not usable_id(item_id):
            if problem:
                shown = ascii(item_id) if isinstance(item_id, str) and item_id.strip() else type(item_id).__name__
                problem(f"has no usable {key} ({shown}); skipped")
            continue
        first = seen.get(item_id.casefold())
        if first is None:
            seen[item_id.casefold()] = item_id
            result.append(item)
        elif first != item_id and problem:
            problem(f"ids {first!r} and {item_id!r} differ only in case; Veza treats ids case-insensitively, so "
                    "only the first is kept")
    return result


def ids_of(items: Iterable[dict], key: str = "id") -> list[str]:
    """The usable ids of `items`, first occurrence kept (pages can overlap; ids compare case-insensitively)."""
    return [item[key] for item in unique_by_id(items, key)]


def project_is_archived(record: dict) -> bool:
    """A project record that says it is archived (status `archived`, or an `archived_at` time)."""
    status = _text(record.get("status"))
    return (status is not None and status.lower() == "archived") or rfc3339(record.get("archived_at")) is not None


# ---------------------------------------------------------------------------------------------
# Pacing: what each endpoint allows, learned from its answers
# ---------------------------------------------------------------------------------------------

class LimitPriors:
    """What the endpoints already throttled say about the others of the same API, shared by every pacer.

    An endpoint's first 429 costs every request it had in flight, and with no hint the probes until its
    window comes round. Endpoints of one API tend to share limit shapes, so an endpoint that has had no
    429 yet sends the request past an allowance another endpoint had (and 25% more) one at a time: if it
    has the same allowance, one request is refused, not all in flight. An endpoint's first pace starts no
    faster than one another endpoint settled at after a few 429s. With no hint, an endpoint's first window
    is probed once at 0.5 s (a fast refill is still seen); then, while another endpoint's first window
    begun earlier has gone 10 s or more without refilling, it does not probe (with windows alike its own
    cannot have refilled either); once an endpoint learned a window, the next probe waits until shortly
    before that window. Pure bookkeeping.
    """

    def __init__(self) -> None:
        self.allowances: set[int] = set()   # successes endpoints had before their own first 429
        self.window_seconds: float | None = None  # the first window learned with no hint: burst start to refill
        # endpoint -> (its first burst's start, its latest refused probe after it), while it waits for a first refill
        self.first_windows: dict[str, tuple[float, float]] = {}
        self.paces: dict[str, ObservedPace] = {}  # endpoint -> its own pace, once it has one
        # learned allowance -> (when an endpoint last asked whether it grew and was refused, which endpoint)
        self.growth_refused: dict[int, tuple[float, str]] = {}
        self.growth_found: dict[int, float] = {}  # learned allowance -> when an endpoint found it had grown

    def settled_pace(self, path: str) -> float | None:
        """The fastest pace another endpoint keeps after its 429s have cut it a few times (it found its limit)."""
        return max((pace.rate for other, pace in self.paces.items() if other != path and pace.settled), default=None)

    def earliest_refill(self, path: str, started: float, window_min: float) -> float | None:
        """How long after `started` another endpoint's first window, begun no later, is known not to have
        refilled, once that is `window_min` or more (a window, not a bucket refilling in moments): with windows
        alike, this one's cannot have refilled either, so its probes wait that long."""
        return max((floor for other, (begun, floor) in self.first_windows.items()
                    if other != path and begun <= started and floor >= window_min), default=None)

    def note_first_throttle(self, successes: int) -> None:
        if successes >= 2:  # one or none: a shared limit, or a single request allowed; no shape to go by
            self.allowances.add(successes)

    def note_window(self, seconds: float) -> None:
        if self.window_seconds is None:
            self.window_seconds = seconds

    def note_growth_asked(self, path: str, allowance: int, now: float, grew: bool) -> None:
        if grew:
            self.growth_found[allowance] = now
        else:
            self.growth_refused[allowance] = (now, path)

    def growth_asked_lately(self, path: str, allowance: int, window_start: float, window: float) -> bool:
        """Whether another endpoint with the same allowance asked whether it grew, was refused, within a window
        before this endpoint's window began or since, and no endpoint found it grown since, early enough in
        this window to spend more in it: this one need not ask in this window."""
        refused_at, by = self.growth_refused.get(allowance, (None, path))
        if refused_at is None or by == path or refused_at <= window_start - window:
            return False
        found = self.growth_found.get(allowance)
        return found is None or not refused_at < found < window_start + window / 2

    def in_flight_allowed(self, sent: int, succeeded: int) -> int | None:
        """How many requests an endpoint that had no 429 yet may have in flight (None: no limit from here): past
        an allowance seen elsewhere, one, as the next may be the one past it; from a quarter more on, one more
        per success, so a limit a little larger (a bucket refilling meanwhile) costs a 429 or two, not every
        request in flight."""
        caps = [1 + max(0, succeeded - math.floor(allowance * (1 + PRIOR_MARGIN)))
                for allowance in self.allowances if sent >= allowance]
        return min(caps, default=None)


class EndpointPacer:
    """What one endpoint (path template) allows, learned from its answers; pure bookkeeping on `now`.

    Its own first 429 starts an ObservedPace (just under the rate that gets through, probing upward),
    not the hint: spacing requests by the wait made a window that sends `retry-after` take three times
    its bound. A 429 with retry-after(-ms) blocks the endpoint that long; the requests in flight then
    grow back from one, one more per success, so the moment the wait ends brings no burst of 429s. A 429
    with no hint blocks the endpoint and sends one probe at a time, 0.5 s, 1 s, ... up to 5 s apart; a
    refill within moments (a bucket) then paces it no faster than its latest refused probe allowed.
    When the refill, counted from the 429, took 10 s or more (a window: the Admin API's are about a
    minute), the allowance is remembered and the pace dropped: later bursts stop at that many requests
    plus one that asks whether it grew (when that one gets through the allowance is learned again, and
    past twice the old one requests go one at a time). The window, timed from send to
    send, is longer than the latest refused probe and at most the last refill: the next probe goes
    halfway between, or at the last refill once they are within 2%, so after a few windows a window
    costs at most the one 429 that asks, and is met within about 2% of its length. What other endpoints
    learned helps too (LimitPriors). --max-requests-per-minute-per-endpoint caps each endpoint over a
    sliding minute.
    """

    def __init__(self, path: str, time_scale: float = 1.0, max_per_minute: int | None = None,
                 priors: LimitPriors | None = None) -> None:
        self.path = path
        self.priors = priors or LimitPriors()
        self.sent = 0
        self.grown_from: int | None = None  # the allowance before it grew, until the new one is learned
        self.probe_sent_at: float | None = None  # the probe out now (one at most)
        self.window_floor: float | None = None    # a learned window is longer than this: a probe this late was refused
        self.answered_otherwise = 0    # answers that were neither a page nor a 429: they spent an allowance too
        self.allowance_seen_elsewhere = False  # its first 429 came after exactly an allowance another endpoint had
        self.held_by_leader = False  # its first window's probe waited for another endpoint's refill, not its own
        self.scale = time_scale
        self.max_per_minute = max_per_minute
        self.in_flight = 0
        self.blocked_until = 0.0
        self.probing = False           # after a 429: one request at a time until one succeeds
        self.hintless = False          # the current throttle came without a retry hint
        self.probe_wait = PROBE_FIRST_WAIT
        self.burst_started: float | None = None  # when the current allowance began to be spent
        self.burst_successes = 0
        self.sent_in_burst = 0
        self.refill_seconds: float | None = None  # from a burst's first request to its refill, last seen
        self.refill_wait: float | None = None     # from the 429 that ended that burst to its refill: a window's is long
        self.exhausted_at: float | None = None    # the 429 that ended the current burst
        self.last_refused_probe_at: float | None = None  # the latest refused probe since, when it was sent
        self.refill_burst: int | None = None       # the successes that allowance held
        self.first_throttled_at: float | None = None
        self.succeeded_since_throttled = 0
        self.in_flight_cap: int | None = None  # after a hinted 429: grows by one per success (slow start)
        self.throttled = 0
        self.succeeded = 0
        self.recent_sends: deque[float] = deque()
        self.last_successes: deque[float] = deque(maxlen=2)
        self.last_throttled_at: float | None = None
        self.pace = ObservedPace(time_scale)  # from this endpoint's own 429s, until a window is learned
        self.last_hint: tuple[float, int] | None = None  # a precise hint's 429: the moment it named, successes then

    def window_known(self) -> bool:
        """Whether this endpoint's own allowance per window has been learned (its 429s are its own)."""
        return self._allowance_known()

    def _allowance_known(self) -> bool:
        return bool(self.refill_burst and self.refill_seconds and self.refill_wait
                    and self.refill_wait >= LEARNED_WINDOW_MIN * self.scale)

    def _window_timed(self) -> bool:
        """Whether this endpoint's window length is known: its allowance is, or was until it grew (a limit that
        grows keeps its window: the new allowance's first window is probed for at the old one's refill)."""
        return self._allowance_known() or bool(self.grown_from and self.refill_seconds and self.refill_wait
                                                and self.refill_wait >= LEARNED_WINDOW_MIN * self.scale)

    def _allowance_spent(self) -> bool:
        """The remembered allowance and one more are sent: that one asks whether the allowance grew. Not
        asked when another endpoint with the same allowance was just refused asking it (LimitPriors)."""
        if self.probing or not self._allowance_known():
            return False
        asks = not self.priors.growth_asked_lately(self.path, self.refill_burst, self.burst_started,
                                                   self.refill_seconds)
        return self.sent_in_burst > self.refill_burst - (0 if asks else 1)

    def ready_at(self, now: float) -> float:
        """The earliest time the next request may go (inf while a probe is out)."""
        if self.probing and self.in_flight:
            return float("inf")
        at = max(now, self.blocked_until)
        if self._enough_in_flight():
            return float("inf")
        if self._allowance_spent():  # probe shortly before the remembered window comes round again
            if self.in_flight:
                return float("inf")
            at = max(at, self.burst_started + self._refill_offset())
        else:
            follower_at = self._follower_probe_at()
            self.held_by_leader = self.held_by_leader or follower_at > at
            at = max(at, follower_at)
        if self.max_per_minute:
            window = WINDOW_SECONDS * self.scale
            while self.recent_sends and self.recent_sends[0] <= now - window:
                self.recent_sends.popleft()
            if len(self.recent_sends) >= self.max_per_minute:
                at = max(at, self.recent_sends[-self.max_per_minute] + window)
        paced = self.pace.ready_at(now)
        if paced > at:  # asked only while this endpoint has requests waiting: the pace holds them back
            self.pace.held_back = True
        return max(at, paced)

    def _follower_probe_at(self) -> float:
        """In a first hintless window, after its own first probe was refused: no probe while another endpoint's
        first window, begun no earlier, is known not to have refilled (checked again after each of its probes,
        which come at most PROBE_MAX_WAIT apart); when it refills, its window is this one's prior. An endpoint
        refused right after the very allowance another had is shaped like it: it follows that one from its
        first 429 on, however short the other's wait so far, and once a window is learned it probes first
        shortly before that window."""
        if not (self.probing and self.hintless and self.refill_seconds is None):
            return 0.0
        alike = self.allowance_seen_elsewhere
        if self.window_floor is None and not alike:
            return 0.0
        window_min = 0.0 if alike else LEARNED_WINDOW_MIN * self.scale
        leader = self.priors.earliest_refill(self.path, self.burst_started, window_min)
        if leader is not None:
            return self.burst_started + leader + 2 * PROBE_MAX_WAIT * self.scale
        if alike and self.window_floor is None and self.priors.window_seconds:
            return self.burst_started + REFILL_LEAD * self.priors.window_seconds
        return 0.0

    def _enough_in_flight(self) -> bool:
        if self.refill_burst and self.in_flight >= self.refill_burst:
            return True  # no more at once than the last refill let through
        if self.in_flight_cap is not None and self.in_flight >= self.in_flight_cap:
            return True
        if self.in_flight and self.grown_from:  # a grown window may have doubled: past that, one at a time
            doubled = 2 * self.grown_from
            return self.sent_in_burst >= doubled and self.burst_successes <= doubled * (1 + PRIOR_MARGIN)
        # before its first 429, the request past an allowance another endpoint had goes alone, then more grow back
        if self.throttled or not self.in_flight:
            return False
        allowed = self.priors.in_flight_allowed(self.sent, self.succeeded + self.answered_otherwise)
        return allowed is not None and self.in_flight >= allowed

    def on_send(self, now: float) -> bool:
        """Count a request going out; True when it is a probe (one request that tests for a refill)."""
        if self._allowance_spent():
            self.probing, self.hintless = True, True
        if self.probing:
            self.probe_sent_at = now
        self.in_flight += 1
        self.sent += 1
        if self.max_per_minute:
            self.recent_sends.append(now)
        if self.burst_started is None:
            self.burst_started = now
        self.sent_in_burst += 1
        self.pace.on_send(now)
        return self.probing

    def just_started(self) -> bool:
        """No 429 yet and at most one answer (a page, a 404, ...: each spent an allowance): a 429 now is not
        this endpoint's own allowance running out (unless it allows a single request), so it points at a
        shared limit. (An endpoint that spent its own allowance earlier, even long ago, may still be waiting
        for its window: no evidence.)"""
        return self.throttled == 0 and self.succeeded + self.answered_otherwise <= 1

    def forget_throttle(self) -> None:
        """Undo what a 429 that turned out to be the shared limit's made this endpoint do."""
        self.blocked_until, self.probing, self.hintless = 0.0, False, False
        self.probe_wait, self.in_flight_cap = PROBE_FIRST_WAIT, None
        self.pace.stop()
        self.priors.first_windows.pop(self.path, None)

    def on_shared_throttle(self, now: float) -> None:
        """A 429 put down to the shared limit: counted here, and nothing else about this endpoint changes."""
        self.in_flight -= 1
        self.throttled += 1
        self.last_throttled_at = now
        if self.first_throttled_at is None:
            self.first_throttled_at = now

    def on_other_answer(self) -> None:
        """An answer that is neither a page nor a 429 (a refusal, a fault): it no longer counts as in flight."""
        self.in_flight -= 1
        self.answered_otherwise += 1

    def on_success(self, now: float, probe: bool) -> None:
        self.in_flight -= 1
        self.succeeded += 1
        self.last_successes.append(now)
        self.pace.on_success(now)
        if self.first_throttled_at is not None:
            self.succeeded_since_throttled += 1
        if self.in_flight_cap is not None:
            self.in_flight_cap = None if self.in_flight_cap >= SLOW_START_DONE else self.in_flight_cap + 1
        if not (probe and self.probing):
            self.burst_successes += 1
            if self._allowance_known() and self.burst_successes > self.refill_burst:
                # the allowance grew: spend it until a 429 says how far, then learn it again
                self.priors.note_growth_asked(self.path, self.refill_burst, now, grew=True)
                self.grown_from, self.refill_burst = self.refill_burst, None
            return
        # The allowance came back: remember how much it held and how long it took (hintless limits only).
        # Send times, not answer times: a window starts when its first request arrives, so measured from the
        # answers a learned window would grow by a round trip each time it is waited for.
        sent = self.probe_sent_at if self.probe_sent_at is not None else now
        self.priors.first_windows.pop(self.path, None)
        if self.hintless and self.burst_started is not None and self.burst_successes:
            same_window = self._allowance_known() and self.burst_successes == self.refill_burst
            self.refill_seconds = sent - self.burst_started
            self.refill_burst = self.burst_successes
            refill_wait = sent - (self.exhausted_at if self.exhausted_at is not None else self.burst_started)
            # a window learned before stays one when the 429 that ended this burst came late in it
            late_in_window = same_window and self.refill_seconds >= LEARNED_WINDOW_MIN * self.scale
            self.refill_wait = max(refill_wait, self.refill_wait) if late_in_window else refill_wait
            if not self.held_by_leader and refill_wait < LEARNED_WINDOW_MIN * self.scale:
                self._pace_below_refill(sent)
            if self.held_by_leader and self.priors.window_seconds is None:
                self.refill_wait = 0.0  # it waited for the other's refill, a bucket's: how long says nothing
            self.held_by_leader = False
            if self.window_floor is not None and self.window_floor >= self.refill_seconds:
                self.window_floor = None  # the window changed: what was refused before says nothing now
            if self._allowance_known():
                self.pace.stop()  # a window: its allowance is spent at once, then waited for
                self.priors.note_window(self.refill_seconds)
        self.grown_from = None
        self.probing = self.hintless = False
        self.probe_wait = PROBE_FIRST_WAIT
        self.burst_started, self.burst_successes, self.sent_in_burst = sent, 1, 1

    def on_throttled(self, now: float, probe: bool, server_wait: float | None, sent_at: float = 0.0,
                     *, says_rate: bool = True) -> None:
        self._learn_from_throttle(now, probe, server_wait, sent_at, says_rate)
        if server_wait is not None:  # the server said how long: that, then the pace learned
            self.blocked_until = max(self.blocked_until, now + min(server_wait, MAX_SERVER_WAIT) * self.scale)
            if says_rate:  # then one request at a time, one more per success: no herd at the moment
                self.in_flight_cap = 1
            return
        if self.probing and not probe:
            return  # an answer to a request sent before the first 429: already handled
        if probe:
            wait = self._after_refused_probe(now, sent_at or now)
        else:
            self.probe_wait = PROBE_FIRST_WAIT
            wait = self.probe_wait * self.scale
            self.exhausted_at, self.last_refused_probe_at = now, None
            if self._window_timed() and self.burst_started is not None:
                wait = max(wait, self.burst_started + self._refill_offset() - now)
        self.probing, self.hintless = True, True
        self.blocked_until = max(self.blocked_until, now + wait)

    def _learn_from_throttle(self, now: float, probe: bool, server_wait: float | None, sent_at: float,
                             says_rate: bool) -> None:
        """What a 429 says about the limit: the allowance before the first, the pace, that it has not grown."""
        self.in_flight -= 1
        if self.throttled == 0 and says_rate:
            answered = self.succeeded + self.answered_otherwise
            self.allowance_seen_elsewhere = answered in self.priors.allowances
            self.priors.note_first_throttle(answered)
        self.throttled += 1
        self.last_throttled_at = now
        if says_rate and not probe and not self._allowance_known():  # a probe's 429 says only "not yet"
            self._learn_pace(now, sent_at)
        if server_wait is not None and says_rate and not float(server_wait).is_integer():
            self._pace_from_hints(now, server_wait)
        if self.first_throttled_at is None:
            self.first_throttled_at = now
        if not probe and self._allowance_known():  # the request past the allowance: it has not grown
            self.priors.note_growth_asked(self.path, self.refill_burst, now, grew=False)

    def _after_refused_probe(self, now: float, sent_at: float) -> float:
        """How long after a refused probe the next goes: twice the last wait (up to 5 s); with a learned window,
        at the longest it took (it was at most that); with a window expected, not before shortly before it."""
        self.last_refused_probe_at = sent_at
        self.probe_wait = min(self.probe_wait * 2, PROBE_MAX_WAIT)
        wait = self.probe_wait * self.scale
        if self.burst_started is None:
            return wait
        if self.refill_seconds is None or self._allowance_known():  # not while a grown allowance is found again
            self.window_floor = max(self.window_floor or 0.0, sent_at - self.burst_started)
        if self.refill_seconds is None:
            self.priors.first_windows[self.path] = (self.burst_started, self.window_floor)
        if self._window_timed():
            ceiling_at = self.burst_started + self.refill_seconds
            return ceiling_at - now if self.window_floor < self.refill_seconds and ceiling_at > now else wait
        window = self._window_seconds_expected()
        if window:
            wait = max(wait, self.burst_started + REFILL_LEAD * window - now)
        return wait

    def _refill_offset(self) -> float:
        """When, from a burst's first request, to probe for a learned window's refill: the window is longer
        than the latest refused probe and at most the last refill, so halfway between, or at the last refill
        once the two are within 2%; 90% of it before any probe was refused."""
        ceiling, floor = self.refill_seconds, self.window_floor
        if floor is None or floor >= ceiling:
            return REFILL_LEAD * ceiling
        if ceiling - floor <= WINDOW_PRECISION * ceiling:
            return ceiling
        return (floor + ceiling) / 2

    def _window_seconds_expected(self) -> float | None:
        """A window this endpoint had before its allowance grew, else one another endpoint had: after a
        first probe at 0.5 s, the next waits until shortly before it."""
        if self.refill_seconds and self.refill_wait and self.refill_wait >= LEARNED_WINDOW_MIN * self.scale:
            return self.refill_seconds
        return self.priors.window_seconds

    def _learn_pace(self, now: float, sent_at: float) -> None:
        if self.pace.active:
            self.pace.on_throttled(now, sent_at)
        elif self.burst_started is not None:  # the first 429: start at the rate this endpoint's burst got through
            burst_rate = max(self.burst_successes, 1) / max(now - self.burst_started, 1e-3)
            settled = self.priors.settled_pace(self.path)  # or, when lower, the pace another endpoint settled at
            self.pace.start(now, min(burst_rate, settled) if settled else burst_rate)
            self.priors.paces[self.path] = self.pace

    def _pace_below_refill(self, probe_sent: float) -> None:
        """A limit that refilled in moments (a bucket): no request got through until the latest refused probe,
        so, until its pace has settled, it goes no faster than one request in that time. The pace a first 429
        starts from is the burst's, far too fast; cutting it step by step cost a 429 a step. (Settled, it is
        left alone: a short window that refills all at once would hold it far below its limit every window.)
        The probe took what had refilled: the next request goes a pace's interval after it, not at once."""
        refused, exhausted = self.last_refused_probe_at, self.exhausted_at
        if refused is not None and exhausted is not None and refused > exhausted and not self.pace.settled:
            self.pace.no_faster_than(1 / (refused - exhausted))
        self.pace.next_after(probe_sent)

    def _pace_from_hints(self, now: float, hint: float) -> None:
        """Two precise hints measure the limit: each 429 says when the next request may get through, and the
        successes between two such moments are what the limit let through in that time (a token bucket's rate,
        a window's allowance over its length). The pace goes no faster than that: one 429 and the next settle
        it, where cutting step by step from a burst's rate cost a 429 per step."""
        due = now + hint * self.scale
        if self.last_hint is not None and self.pace.active:
            due_before, succeeded_before = self.last_hint
            got_through = self.succeeded - succeeded_before
            if got_through and due > due_before:
                self.pace.no_faster_than(got_through / (due - due_before))
        self.last_hint = (due, self.succeeded)

    def requests_per_second(self, now: float | None = None) -> float | None:
        """The rate this endpoint allows: learned from a window, capped, or (given `now`) seen since its
        first 429; None while it has not limited the run."""
        if self.refill_seconds and self.refill_burst:
            return self.refill_burst / self.refill_seconds
        if self.max_per_minute:
            return self.max_per_minute / (WINDOW_SECONDS * self.scale or 1e-9)
        if now is not None and self.first_throttled_at is not None and now > self.first_throttled_at:
            return max(self.succeeded_since_throttled, 1) / (now - self.first_throttled_at)
        return None


class ObservedPace:
    """A pace learned from 429s: send just under the rate that gets through, and probe upward slowly.

    Off until `start`. Then requests go 1/rate apart. A 429 (of a request sent since the last one) cuts
    the rate by 10%, or, when it was far above the rate of successes since the last 429, down to that
    (never below half: part of that time may have had little to send); with too few successes since
    the last 429 to measure, by 30%. Each success raises it 0.5% while the pace is what holds requests
    back and successes keep up with it, faster the longer no 429 came, so a limit that grows is found
    again (twice the rate in about 100 successes) and one 429 comes every few dozen reads at most.
    Pure bookkeeping on `now` (real seconds).
    """

    def __init__(self, time_scale: float = 1.0) -> None:
        self.scale = time_scale
        self.rate: float | None = None   # requests per (real) second
        self.next_send = 0.0
        self.measure_from = 0.0
        self.measured = 0                # successes since measure_from
        self.held_back = False           # a request was ready but waited for this pace since the last success
        self.throttled = 0

    @property
    def active(self) -> bool:
        return self.rate is not None

    def start(self, now: float, rate: float) -> None:
        self.rate, self.next_send = max(rate, self.slowest_rate()), now
        self.measure_from, self.measured = now, 0

    def slowest_rate(self) -> float:
        """One request per refill window (MAX_SERVER_WAIT): a run of 429s never cuts a pace below it. A slower
        pace would park the endpoint, and a request that is never sent never meets --max-throttle-wait."""
        return 1.0 / (MAX_SERVER_WAIT * self.scale) if self.scale > 0 else 0.0

    def stop(self) -> None:
        self.rate = None

    @property
    def settled(self) -> bool:
        """Cut by a few 429s: near its limit (a prior for other endpoints' first pace)."""
        return self.active and self.throttled >= PACE_SETTLED_AFTER

    def no_faster_than(self, rate: float) -> None:
        """What the limit was seen to allow: the pace goes no faster (and never below the slowest)."""
        if self.active:
            self.rate = max(min(self.rate, rate), self.slowest_rate())

    def next_after(self, sent: float) -> None:
        """A request sent at `sent` took what had refilled: the next goes a whole interval after it."""
        if self.active:
            self.next_send = max(self.next_send, sent + 1 / self.rate)

    def ready_at(self, now: float) -> float:
        return max(now, self.next_send) if self.active else now

    def on_send(self, now: float) -> None:
        if self.active:  # a send that went late leaves credit for one more: a busy loop's lateness is not lost
            interval = 1.0 / self.rate
            self.next_send = max(now - interval, self.next_send) + interval

    def on_success(self, now: float) -> None:
        self.measured += 1
        if self.active and self.held_back and self._keeping_pace(now):
            # faster the longer no 429 came: a limit that grew is found in a few hundred successes, not thousands
            self.rate *= 1 + PACE_PROBE_UP * (1 + self.measured / PACE_PROBE_SPEEDUP)
        self.held_back = False

    def _keeping_pace(self, now: float) -> bool:
        """Whether the successes since the last 429 came at nearly the pace: only then is it the pace that
        holds requests back (not the workers, or a lull between stages), and worth raising."""
        elapsed = now - self.measure_from
        return (self.measured >= PACE_MIN_SAMPLE and elapsed > 0
                and self.measured / elapsed >= PACE_KEEPING_UP * self.rate)

    def on_throttled(self, now: float, sent_at: float) -> None:
        """Pace at what got through since the last 429; the 429 of a request sent before that is old news."""
        self.throttled += 1
        if not self.active or sent_at < self.measure_from:
            return
        elapsed = now - self.measure_from
        if self.measured < PACE_MIN_SAMPLE or elapsed <= 0:
            self.rate *= PACE_UNMEASURED_CUT
        elif self.rate * PACE_CUT > self.measured / elapsed:  # far above what got through: down to that
            self.rate = max(self.rate * PACE_MAX_CUT, self.measured / elapsed)
        else:
            self.rate *= PACE_CUT
        self.rate = max(self.rate, self.slowest_rate())
        self.measure_from, self.measured = now, 0

    def pause_for(self, now: float, hint: float | None, whole_seconds: bool) -> None:
        """A precise hint says nothing may go before it; a whole-second one may be rounded up by a second."""
        if hint is not None and self.active:
            precise = hint - 1.0 if whole_seconds else hint
            if precise > 0:
                self.next_send = max(self.next_send, now + precise * self.scale)


class SharedPacer(ObservedPace):
    """An organization-wide limit, once the 429s show one: all requests together at an ObservedPace.

    It is off until 429s arrive within SHARED_EVIDENCE_SPAN on SHARED_EVIDENCE_ENDPOINTS endpoints that
    had each just started (at most one success and no 429 of their own before): a limit per endpoint
    lets an endpoint's first requests through, a shared one refuses them once the others spent it.
    It starts at the rate of successes since the first of those 429s. A precise hint then also pauses
    every request for its length: the shared allowance is empty until then.
    """

    def __init__(self, time_scale: float = 1.0) -> None:
        super().__init__(time_scale)
        self.evidence: dict[str, float] = {}  # endpoint -> when it got its first 429 right after starting
        self.last_429: dict[str, float] = {}  # endpoint -> its latest 429, whoever's limit it was
        self.recent_successes: deque[float] = deque()  # all endpoints, within the span, until active

    def owns(self, endpoint: str, now: float) -> bool:
        """Whether a 429 on `endpoint`, while a shared limit is known, is that limit's (True) or the endpoint's
        own: a second 429 within the span, with no other endpoint refused in between, is the endpoint's."""
        previous = self.last_429.get(endpoint)
        if previous is None or previous <= now - SHARED_EVIDENCE_SPAN * self.scale:
            return True
        return any(at > previous for e, at in self.last_429.items() if e != endpoint)

    def on_success(self, now: float) -> None:
        super().on_success(now)
        if not self.active:  # kept only to measure the rate when the limit turns out to be shared
            self.recent_successes.append(now)
            while self.recent_successes and self.recent_successes[0] <= now - SHARED_EVIDENCE_SPAN * self.scale:
                self.recent_successes.popleft()

    def note_evidence(self, endpoint: str, now: float) -> bool:
        """Record an endpoint's first 429 right after it started; True when that makes the limit shared."""
        span = SHARED_EVIDENCE_SPAN * self.scale
        self.evidence = {e: at for e, at in self.evidence.items() if at > now - span}
        self.evidence[endpoint] = now
        if len(self.evidence) < SHARED_EVIDENCE_ENDPOINTS:
            return False
        first = min(self.evidence.values())
        self.start(now, max(sum(1 for at in self.recent_successes if at >= first), 1) / max(now - first, span / 5))
        self.recent_successes.clear()
        return True


# ---------------------------------------------------------------------------------------------
# The scheduler: every GET when its endpoint allows it (knows no OpenAI family by name)
# ---------------------------------------------------------------------------------------------

@dataclass
class ListRead:
    """Every page of one list (or one single object) of one family for one entity."""

    family: Family
    key: Any                      # where the result is filed: None, an id, or an (id, id) pair
    path: str
    on_done: Callable[[ListRead, Any], None]
    items: list[dict] = field(default_factory=list)
    pages: int = 0
    size: int = 0                 # answer bytes read so far (decompressed)
    seen_cursors: set[str] = field(default_factory=set)
    last_sent: float = 0.0  # when its latest request went out: the entity existed then if it answered


@dataclass
class Request:
    """One GET the reader wants: the next page of a ListRead."""

    read: ListRead
    params: dict[str, Any]
    attempt: int = 0                      # 5xx and transport retries so far
    throttled_since: float | None = None  # the first 429 this request got
    throttles: int = 0                    # 429s in a row this request got
    probe: bool = False
    not_before: float = 0.0               # a throttled request's next attempt, at the earliest
    ticket: int = 0
    sent_at: float = 0.0


@dataclass(frozen=True)
class Refusal:
    """A 400, 401, 403 or 404: what the read plan decides on (a refused key, a missing family, a deleted entity)."""

    status: int
    endpoint: str
    detail: str

    def __str__(self) -> str:
        return f"{self.endpoint}: HTTP {self.status}: {self.detail}"


class Verdict(enum.Enum):
    PAGE = "a page (or object) to take"
    THROTTLED = "429: the same request again when its endpoint allows"
    REFUSED = "400/401/403/404: the read plan decides what it means"
    RETRY = "a transient fault: the same request again after a backoff"
    FAILED = "retrying cannot help"


def classify(answer: Answer) -> Verdict:
    """What one answer means for its request, from the answer alone (pure)."""
    if answer.status == 200 and not answer.fatal:
        return Verdict.PAGE
    if answer.status == 429 and answer.should_retry is not False:
        return Verdict.THROTTLED
    if answer.status in (401, 403, 404) or (answer.status == 400 and answer.should_retry is not True):
        return Verdict.REFUSED
    retryable = answer.status == 0 or answer.status >= 500 or answer.status in RETRYABLE_STATUS
    if answer.should_retry is not None:
        retryable = answer.should_retry
    return Verdict.RETRY if retryable and not answer.fatal else Verdict.FAILED


def check_page(family: Family, body: dict, path: str, limit: Any) -> list[dict]:
    """The items of one list page, or DiscoveryError when the page is not what the endpoint documents."""
    data = body.get("data")
    if body.get("object", "list") != "list":
        raise DiscoveryError(f"{path}: expected a list, got object {str(body.get('object'))[:40]!r}")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise DiscoveryError(f"{path}: 'data' is not a list of objects")
    if family.item_object:
        for item in data:
            if item.get("object", family.item_object) != family.item_object:
                raise DiscoveryError(f"{path}: expected {family.item_object} items, got "
                                     f"{str(item.get('object'))[:40]!r}")
    if isinstance(limit, int) and len(data) > limit:
        raise DiscoveryError(f"{path}: a page of {len(data):,} items answered a request for at most {limit}; "
                             "a server that ignores the page size cannot be read safely, so the run stops")
    return data


def next_cursor(family: Family, body: dict, data: list[dict], path: str) -> str:
    """The `after` of the next page, by the family's cursor style; DiscoveryError when there is none."""
    if family.cursor == CURSOR_LAST_ID:
        cursor = body.get("last_id")
    elif family.cursor == CURSOR_NEXT:
        cursor = body.get("next")
        if not cursor and family.next_falls_back_to_item_id and data:
            cursor = data[-1].get(family.item_id_field)
            log.debug("%s: has_more without next; continuing after the last item's id", path)
    else:
        cursor = data[-1].get("id") if data else None
    if not cursor or not isinstance(cursor, str):
        raise DiscoveryError(f"{path}: has_more is true but the page has no cursor")
    return cursor


class WorkerPool:
    """Daemon threads doing one GET each; a stuck one is abandoned, never waited for at exit or Ctrl-C."""

    def __init__(self, client: OpenAIAdminClient, size: int, done: queue.SimpleQueue) -> None:
        self.client = client
        self.done = done
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.threads = 0
        for _ in range(size):
            self.add_thread()

    def add_thread(self) -> None:
        self.threads += 1
        threading.Thread(target=self._work, name=f"openai-read-{self.threads}", daemon=True).start()

    def submit(self, ticket: int, path: str, params: dict[str, Any] | None) -> None:
        self.work.put((ticket, path, params))

    def _work(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            ticket, path, params = job
            try:
                answer = self.client.get(path, params)
            except Exception as exc:  # a bug must not leave the reader waiting for an answer
                answer = Answer(0, problem=f"{type(exc).__name__}: {exc}", fatal=True)
            self.done.put((ticket, answer))

    def close(self) -> None:
        for _ in range(self.threads):
            self.work.put(None)


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ReadPlanCalls(Protocol):
    """What the scheduler asks of the read plan."""

    def refused(self, read: ListRead, refusal: Refusal) -> None: ...
    def failed(self, read: ListRead, message: str) -> None: ...
    def cut(self, read: ListRead) -> None: ...
    def is_left_out(self, family: Family) -> bool: ...


class SchedulerProgress:
    """How far the reading got and how long the rest should take, from a Scheduler's counters and pacers:
    the progress lines, the time-left estimate and the slowest endpoint (kept apart from the sending)."""

    def _progress_interval(self) -> float:
        return max(MIN_PROGRESS_INTERVAL, PROGRESS_INTERVAL * self.scale)

    def _slowest_endpoint(self) -> str:
        now = time.monotonic()
        rated = [(pacer.requests_per_second(now), pacer.path) for name, pacer in self.pacers.items()
                 if pacer.throttled and pacer.requests_per_second(now)]
        if not rated:
            return ""
        rate, path = min(rated)
        return f"{path} at about {rate * 60:.1f} requests a minute"

    def _observed_call_rate(self, now: float) -> float | None:
        """Successful calls a (real) second since the run began; None before there are enough to go by."""
        succeeded = sum(pacer.succeeded for pacer in self.pacers.values())
        if succeeded < MIN_ESTIMATE_SAMPLE or now <= self.started:
            return None
        return succeeded / (now - self.started)

    def slowest_rate_for(self, names: list[str]) -> float | None:
        """The slowest rate these endpoints were seen to get, or the shared pace, or every call's so far; None
        before any rate is seen (then no estimate is printed: never a guess)."""
        now = time.monotonic()
        rates = [rate for rate in (self.pacers[name].requests_per_second(now) for name in names) if rate]
        overall = self._observed_call_rate(now)
        if self.shared.active:
            rates.append(self.shared.rate)
        elif overall:
            rates.append(overall)
        return min(rates) if rates else None

    def estimate_seconds_left(self) -> float | None:
        """Every open read at a rate observed: the longest of all of them at the rate calls have succeeded so far
        (or at the shared pace), and each throttled endpoint's open reads at the rate it allows. None (no
        estimate printed) before enough calls have succeeded to have a rate."""
        now = time.monotonic()
        still_open = sum(self.open_reads.values())
        overall = self._observed_call_rate(now)
        if overall is None:
            return None
        estimates = [still_open / overall]
        if self.shared.active:
            estimates.append(still_open / self.shared.rate)
        for name, pacer in self.pacers.items():
            pending = self.open_reads[name]
            rate = pacer.requests_per_second(now)
            if pending and rate:
                estimates.append(pending / rate)
        return max(estimates)

    def _log_progress(self) -> None:
        self.next_progress = time.monotonic() + self._progress_interval()
        pending = ", ".join(f"{self.labels[n]} {self.finished_reads[n]}/{self.finished_reads[n] + c}"
                            for n, c in self.open_reads.items() if c)
        slowest = f"; slowest endpoint {self._slowest_endpoint()}" if self._slowest_endpoint() else ""
        if self.shared.active:
            slowest += ("; a limit shared by every endpoint, all requests paced at about "
                        f"{self.shared.rate * 60 * self.scale:.1f} a minute")
        left = self.estimate_seconds_left()
        done, still_open = sum(self.finished_reads.values()), sum(self.open_reads.values())
        log_with_fields(logging.INFO, {"stage": "progress", "reads_done": done, "reads_open": still_open,
                                       "calls": self.calls, "throttled": self.throttled,
                                       "seconds_left_estimate": None if left is None else round(left)},
                        "progress: %d reads done, %d open (%s); %d calls, %d answered 429%s; %s", done, still_open,
                        pending, self.calls, self.throttled, slowest,
                        "no rate seen yet to estimate the time left" if left is None else
                        f"about {_format_duration(left)} left for the reads known so far at the rate seen")


class Scheduler(SchedulerProgress):
    """Sends each GET when its endpoint's pacer allows it, takes the answers, follows the pages.

    A worker only ever carries out one GET; a continuation page or a throttled request goes back to
    the front of its endpoint's queue, a 5xx retry to a backoff heap, so one endpoint's limit never
    holds a worker another endpoint could use. What an answer means for the organization (a refused
    family, a deleted entity) is the read plan's to decide.
    """

    def __init__(self, client: OpenAIAdminClient, config: Config, families: Iterable[Family],
                 deadline: float | None = None) -> None:
        self.client = client
        self.config = config
        self.deadline = deadline  # time.monotonic() when --max-run-time ends the whole run; None: from run()
        self.scale = config.time_scale
        self.plan: ReadPlanCalls | None = None
        families = list(families)
        self.labels = {family.name: family.label for family in families}
        priors = LimitPriors()  # what one endpoint's limit says about the others'
        self.pacers = {family.name: EndpointPacer(family.path, config.time_scale,
                                                  config.max_requests_per_minute_per_endpoint, priors)
                       for family in families}
        self.shared = SharedPacer(config.time_scale)  # one limit for every endpoint, once 429s show there is one
        self.queues: dict[str, deque[Request]] = {family.name: deque() for family in families}
        self.delayed: list[tuple[float, int, Request]] = []   # 5xx backoff: (due, ticket, request)
        self.in_flight: dict[int, Request] = {}
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.pool: WorkerPool | None = None
        self.tickets = 0
        self.open_reads: dict[str, int] = {family.name: 0 for family in families}
        self.finished_reads: dict[str, int] = {family.name: 0 for family in families}
        self.next_global_send = 0.0
        self.calls = self.retries = self.throttled = 0
        self.started = 0.0
        self.next_progress = 0.0

    def add(self, read: ListRead, params: dict[str, Any]) -> None:
        """Queue the first page of a read."""
        self.open_reads[read.family.name] += 1
        self.queues[read.family.name].append(Request(read, params))

    def finish(self, read: ListRead, result: Any) -> None:
        self.open_reads[read.family.name] -= 1
        self.finished_reads[read.family.name] += 1
        read.on_done(read, result)

    def drop_waiting(self, family: Family) -> None:
        """Finish, with no result, every read of a family that was left out while it waited."""
        waiting = self.queues[family.name]
        while waiting:  # nothing more of a refused family is worth a call
            self.finish(waiting.pop().read, None)

    def start(self, plan: ReadPlanCalls) -> None:
        self.plan = plan
        self.pool = WorkerPool(self.client, self.config.max_workers, self.done)
        self.started = time.monotonic()
        if self.deadline is None and self.config.max_run_time:
            self.deadline = self.started + self.config.max_run_time
        self.next_progress = self.started + self._progress_interval()

    def close(self) -> None:
        if self.pool:
            self.pool.close()

    def run_until_read(self) -> None:
        """Send what may go, take what comes back, until every read scheduled so far is done."""
        while any(self.open_reads.values()):
            now = time.monotonic()
            self._check_run_time(now)
            self._abandon_stuck_requests(now)
            self._dispatch(now)
            try:
                ticket, answer = self.done.get(timeout=self._seconds_until_next_event(time.monotonic()))
            except queue.Empty:
                pass
            else:
                self._take(ticket, answer)
            if time.monotonic() >= self.next_progress:
                self._log_progress()

    def _check_run_time(self, now: float) -> None:
        limit = self.config.max_run_time
        if limit and self.deadline is not None and now > self.deadline:
            slowest = self._slowest_endpoint()
            raise DiscoveryError(f"reading took longer than --max-run-time {limit:g}s with "
                                 f"{sum(self.open_reads.values())} reads still open"
                                 + (f"; the slowest endpoint is {slowest}" if slowest else ""))

    def _abandon_stuck_requests(self, now: float) -> None:
        """An answer that never completes (a stuck socket) is given up on, and its worker replaced."""
        limit = self.config.timeout + min(WATCHDOG_GRACE, self.config.timeout)
        for ticket, request in list(self.in_flight.items()):
            if now - request.sent_at > limit:
                del self.in_flight[ticket]
                self.pool.add_thread()
                self._answered(request, Answer(0, problem="Timeout (no whole answer within the timeout)"), now)

    def _dispatch(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            request = heapq.heappop(self.delayed)[2]
            if self.plan.is_left_out(request.read.family):
                self.finish(request.read, None)  # its family was left out while it waited to be retried
            else:
                self.queues[request.read.family.name].appendleft(request)
        while len(self.in_flight) < self.config.max_workers and self.next_global_send <= now:
            request = self._next_ready_request(now)
            if request is None:
                return
            self._send(request, now)

    def _next_ready_request(self, now: float) -> Request | None:
        # Families in a fixed order, so the same organization is read the same way every time.
        for name, waiting in self.queues.items():
            if waiting and self.pacers[name].ready_at(now) <= now:
                if self.shared.ready_at(now) > now:
                    self.shared.held_back = True
                    return None
                return waiting.popleft()
        return None

    def _send(self, request: Request, now: float) -> None:
        if self.config.max_requests_per_second:
            interval = self.scale / self.config.max_requests_per_second
            self.next_global_send = max(now, self.next_global_send) + interval
        self.tickets += 1
        request.ticket, request.sent_at = self.tickets, now
        request.read.last_sent = now
        request.probe = self.pacers[request.read.family.name].on_send(now)
        self.shared.on_send(now)
        self.in_flight[request.ticket] = request
        self.calls += 1
        self.pool.submit(request.ticket, request.read.path, request.params)

    def _seconds_until_next_event(self, now: float) -> float:
        wake = [self.next_progress]
        if self.delayed:
            wake.append(self.delayed[0][0])
        if len(self.in_flight) < self.config.max_workers:  # else only an answer can free a worker
            endpoint_ready = min((self.pacers[name].ready_at(now) for name, waiting in self.queues.items()
                                  if waiting), default=float("inf"))
            # A request goes when its endpoint, the shared pace and --max-requests-per-second all allow it:
            # waking when only the endpoint would is a busy loop.
            wake.append(max(endpoint_ready, self.shared.ready_at(now), self.next_global_send))
        if self.in_flight:
            oldest = min(r.sent_at for r in self.in_flight.values())
            wake.append(oldest + self.config.timeout + min(WATCHDOG_GRACE, self.config.timeout))
        # Capped so a signal or --max-run-time is noticed within a second even when nothing happens.
        return min(1.0, max(0.0, min(wake) - now))

    # --- answers ----------------------------------------------------------------------------
    def _take(self, ticket: int, answer: Answer) -> None:
        request = self.in_flight.pop(ticket, None)
        if request is not None:  # else: abandoned by the watchdog and already retried
            self._answered(request, answer, time.monotonic())

    def _answered(self, request: Request, answer: Answer, now: float) -> None:
        read, pacer = request.read, self.pacers[request.read.family.name]
        if self.plan.is_left_out(read.family):  # left out meanwhile: whatever came back, it is moot
            pacer.on_other_answer()
            self.finish(read, None)
            return
        verdict = classify(answer)
        if verdict is Verdict.PAGE:
            pacer.on_success(now, request.probe)
            self.shared.on_success(now)
            request.throttled_since, request.throttles = None, 0
            self._take_page(request, answer)
        elif verdict is Verdict.THROTTLED:
            self._throttled(request, answer, now)
        elif verdict is Verdict.REFUSED:
            pacer.on_other_answer()
            self.plan.refused(read, Refusal(answer.status, read.path, answer.detail))
        elif verdict is Verdict.RETRY:
            pacer.on_other_answer()
            self._retry(request, answer, now)
        else:
            pacer.on_other_answer()
            self.plan.failed(read, f"{read.path}: {answer.problem}" + (f": {answer.detail}" if answer.detail else ""))

    def _throttled(self, request: Request, answer: Answer, now: float) -> None:
        """A 429: the same request again, first in its endpoint's queue, once its pacer allows."""
        read, pacer = request.read, self.pacers[request.read.family.name]
        self._put_throttle_down(request, answer.server_wait, now)
        self.throttled += 1
        request.throttled_since = request.throttled_since or now
        waited = now - request.throttled_since
        if waited > self.config.max_throttle_wait:
            self.plan.failed(read, f"{read.path}: still HTTP 429 (rate limited) after waiting {waited:.1f}s "
                                   f"(--max-throttle-wait {self.config.max_throttle_wait:g}s)"
                                   + (f"; this endpoint allowed about {pacer.refill_burst} requests per "
                                      f"{pacer.refill_seconds:.0f}s" if pacer.refill_seconds else ""))
            return
        # The first 429 of an endpoint is news; the rest show in the progress lines and with --debug.
        log.log(logging.INFO if pacer.throttled == 1 else logging.DEBUG,
                "%s: HTTP 429, pausing %s for %.1fs (%s)", read.path, pacer.path,
                max(0.0, pacer.blocked_until - now, request.not_before - now) / (self.scale or 1),
                "the server's retry-after" if answer.server_wait is not None else "no retry-after: probing")
        heapq.heappush(self.delayed, (request.not_before, request.ticket, request))

    def _put_throttle_down(self, request: Request, hint: float | None, now: float) -> None:
        """A 429: whose limit it was (the endpoint's or one shared by all), and when this request may go again."""
        name = request.read.family.name
        pacer, shared = self.pacers[name], self.shared
        request.throttles += 1
        wait = self._request_wait(request, hint)
        request.not_before = now + wait * self.scale
        if hint is not None and hint < HINT_FLOOR:  # not a pace anyone can keep: a short pause, doubling per repeat
            pacer.on_throttled(now, request.probe, wait, says_rate=False)
        elif shared.active and not request.probe and not pacer.window_known() and shared.owns(name, now):
            pacer.on_shared_throttle(now)
            shared.pause_for(now, hint, whole_seconds=hint is not None and float(hint).is_integer())
            shared.on_throttled(now, request.sent_at)
            log.debug("%s: HTTP 429 from the shared limit; all requests now paced at %.2f a second",
                      request.read.path, shared.rate)
        else:
            evidence = not shared.active and pacer.just_started()
            pacer.on_throttled(now, request.probe, hint, request.sent_at)
            if evidence and shared.note_evidence(name, now):
                log.info("HTTP 429 on %d endpoints at once: pacing all requests together at about %.1f a "
                         "minute, probing upward", SHARED_EVIDENCE_ENDPOINTS, shared.rate * 60 * self.scale)
                for endpoint in shared.evidence:
                    self.pacers[endpoint].forget_throttle()
        shared.last_429[name] = now

    @staticmethod
    def _request_wait(request: Request, hint: float | None) -> float:
        """The least wait (unscaled seconds) before a throttled request goes again: the hint (capped at
        MAX_SERVER_WAIT) as a lower bound; a hint below HINT_FLOOR is the floor, doubling with each 429 in a
        row up to PROBE_MAX_WAIT, so a tiny hint never turns into a flood; no hint, the floor (the endpoint's
        probing, or the shared pace, decides the rest)."""
        if hint is None:
            return HINT_FLOOR
        if hint < HINT_FLOOR:
            return min(PROBE_MAX_WAIT, HINT_FLOOR * 2 ** (request.throttles - 1))
        return min(hint, MAX_SERVER_WAIT)

    def _retry(self, request: Request, answer: Answer, now: float) -> None:
        """A transient fault: the same request after an exponential backoff (or the server's wait)."""
        path = request.read.path
        if request.attempt >= self.config.max_retries:
            self.plan.failed(request.read, f"{path}: {answer.problem}, gave up after {request.attempt} retries")
            return
        request.attempt += 1
        self.retries += 1
        if answer.server_wait is not None:
            wait = min(MAX_SERVER_WAIT, answer.server_wait)
        else:
            wait = min(MAX_SERVER_WAIT, BACKOFF_FIRST * 2 ** (request.attempt - 1)) * random.uniform(*BACKOFF_JITTER)
        log.info("%s: %s, retry %d/%d in %.1fs", path, answer.problem, request.attempt,
                 self.config.max_retries, wait)
        heapq.heappush(self.delayed, (now + wait * self.scale, request.ticket, request))

    def _take_page(self, request: Request, answer: Answer) -> None:
        read, family, path, body = request.read, request.read.family, request.read.path, answer.body
        if not isinstance(body, dict):
            if family.settings:  # the mapping warns and leaves the settings unset
                self.finish(read, body)
            else:
                self.plan.failed(read, f"{path}: answer is JSON but not an object")
            return
        if family.cursor is None:
            self.finish(read, body)
            return
        data = check_page(family, body, path, request.params.get("limit"))
        read.items.extend(data)
        read.pages += 1
        read.size += answer.size
        if not body.get("has_more"):
            self.finish(read, read.items)
            return
        if family.cut_at_cap and (read.pages >= family.max_pages or read.size > MAX_LIST_BYTES):
            self.plan.cut(read)
            return
        if read.size > MAX_LIST_BYTES:
            raise DiscoveryError(f"{path}: still has_more after {read.size / 2**20:.3g} MB in {read.pages:,} pages, "
                                 f"past the {MAX_LIST_BYTES / 2**20:.3g} MB bound on one list; no real organization "
                                 "is that large, so the read stops")
        if read.pages >= family.max_pages:
            raise DiscoveryError(f"{path}: still has_more after {family.max_pages:,} pages; no real organization "
                                 "is that large, so the server is looping")
        cursor = next_cursor(family, body, data, path)
        if cursor in read.seen_cursors:
            raise DiscoveryError(f"{path}: the cursor {cursor[:40]!r} repeats; stopping instead of looping")
        read.seen_cursors.add(cursor)
        self.queues[family.name].appendleft(Request(read, {**request.params, "after": cursor}))



# ---------------------------------------------------------------------------------------------
# The read plan: what to read, in what order, and what each answer means (from the catalogue)
# ---------------------------------------------------------------------------------------------

NOT_FOUND = object()  # the result of an entity's own object read that answered 404
ROLE_LISTS = [family for family in FAMILY_LIST if family.role_list]
# The role decision waits for every role list, and so for the lists they are read for.
ROLE_DECISION_WAITS_FOR = {family.name for family in ROLE_LISTS} | {f.parent for f in ROLE_LISTS if f.parent}


def has_custom_roles(role_lists: Iterable[list[dict]]) -> bool:
    return any(role.get("predefined_role") is False for roles in role_lists for role in roles
               if isinstance(role, dict))


def decide_role_assignment_reads(mode: str, roles_refused: bool, custom_roles_seen: bool,
                                 role_lists_pending: int) -> tuple[bool | None, str]:
    """Whether to read per-user and per-project-member roles: (True/False, why), or (None, "") until known.

    `auto` reads them as soon as any role list shows a custom role, and skips them only once every
    role list has been read and none does.
    """
    if roles_refused:
        return False, "skipped: the Roles API is not available to this key"
    if mode == "none":
        return False, "skipped: --role-assignments none"
    if mode == "all":
        return True, "reading them: --role-assignments all"
    if custom_roles_seen:
        return True, "reading them: the Roles API lists custom roles (--role-assignments auto)"
    if role_lists_pending > 0:
        return None, ""
    return False, ("skipped: every role the Roles API lists is predefined "
                   "(--role-assignments auto); use 'all' to read them anyway")


class ReadPlan:
    """Reads every family of the catalogue into a Snapshot, the scheduler doing the requests.

    The order of reads follows the catalogue: the families without a parent first, then each family
    for every item of its parent as that list arrives (`list_done`), the role assignment reads once
    `decide_role_assignment_reads` says so. A 404 on one entity's list is settled at the end by asking
    the entity itself. Only the main thread touches the snapshot, and every result is filed under its
    key, so the payload does not depend on the order answers arrive in.
    """

    def __init__(self, config: Config, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        self.snapshot = Snapshot(org_id=config.org_id)
        self.not_found: dict[str, list[tuple[Any, str, float]]] = {}  # family -> [(entity key, endpoint, when)]
        self.found: dict[Kind, dict[Any, float]] = {}  # entity kind -> key -> latest send of a read that found it
        self.exists: dict[tuple[Kind, Any], bool | None] = {}  # (kind, key) -> its own object answered 200/404
        self.existence_unknown: dict[tuple[Kind, Any], str] = {}  # (kind, key) -> why its object could not say
        self.unseen: set[int] = set()  # reads that answered 404: they say nothing about their entity existing
        self.archived: set[str] = set()  # entities their list says are archived (their members' lists answer 400)
        self.role_decision: bool | None = None
        self.role_decision_reason = ""
        self.held: list[tuple[Family, Any, list[dict]]] = []  # reads that wait for the role decision
        self.custom_roles_seen = False  # kept as each role list comes, not rescanned (5,000 projects' lists)
        self.estimate_logged = False

    def read(self) -> Snapshot:
        """Read everything; raise DiscoveryError (or Stopped) as soon as a complete snapshot is impossible."""
        self.scheduler.start(self)
        try:
            for family in STARTING_FAMILIES:
                self._start(family)
            self.scheduler.run_until_read()
            self._ask_whether_gone()
            self._settle_not_found()
            return self.snapshot
        finally:
            self.scheduler.close()

    def _start(self, family: Family) -> None:
        params = None
        if family.activity_window:
            if not self.config.activity_days:
                return
            self.snapshot.activity_since = int(time.time()) - self.config.activity_days * 86_400
            params = {"effective_at[gte]": str(self.snapshot.activity_since)}
        self._read(family, None, self.list_done, params)

    def _read(self, family: Family, key: Any, on_done: Callable[[ListRead, Any], None],
              params: dict[str, Any] | None = None) -> None:
        """Queue every page of one list (or one object); `params` are added to the family's own."""
        if family.name in self.snapshot.unavailable:
            return
        query: dict[str, Any] = {**dict(family.params), **(params or {})}
        if family.cursor:
            query["limit"] = family.page_size
        self.scheduler.add(ListRead(family, key, family.path_for(key, self.config.org_id), on_done), query)

    # --- a list is in: file it, read what hangs on it ---------------------------------------
    def list_done(self, read: ListRead, result: Any) -> None:
        family, key = read.family, read.key
        if family.per and key is not None and id(read) not in self.unseen:
            seen = self.found.setdefault(family.per, {})
            seen[key] = max(seen.get(key, read.last_sent), read.last_sent)
        if family.name in self.snapshot.unavailable:
            result = None
        self.snapshot.file(family, key, result)
        if family.activity_window and result is not None:
            self._log_activity_read(read, result)
        if result is not None:
            self._read_children(family, key, result)
        if family.role_list and result is not None:
            self.custom_roles_seen = self.custom_roles_seen or has_custom_roles([result])
        if family.name in ROLE_DECISION_WAITS_FOR:
            self._decide_role_reads()

    def _read_children(self, family: Family, key: Any, items: list[dict]) -> None:
        """Each family read for this one's items, once per item (held back while the role decision is open)."""
        if any(child.empty_when_archived for child in CHILDREN[family.name]):
            self.archived |= {record["id"] for record in unique_by_id(items) if project_is_archived(record)}
        for child in CHILDREN[family.name]:
            if child.after_role_decision and self.role_decision is None:
                self.held.append((child, key, items))
            elif not child.after_role_decision or self.role_decision:
                self._read_each(child, key, items)

    def _read_each(self, child: Family, parent_key: Any, items: list[dict]) -> None:
        if child.after_role_decision and not FAMILIES[child.parent].parent and not self.estimate_logged:
            self.estimate_logged = True  # once the top-level list it hangs on (users) is in
            self._log_role_read_estimate(child, len(ids_of(items, child.parent_id_field)))
        for item_id in ids_of(items, child.parent_id_field):
            self._read(child, item_id if parent_key is None else (parent_key, item_id), self.list_done)

    def _log_activity_read(self, read: ListRead, items: list[dict]) -> None:
        s = self.snapshot
        if s.activity_window_days is None:
            s.activity_window_days = self.config.activity_days
        log.info("read %d audit log events (logins and API key changes of the last %d days) in %d call%s",
                 len(items), s.activity_window_days, read.pages, "" if read.pages == 1 else "s")

    def cut(self, read: ListRead) -> None:
        """Stop a newest-first list at its cap: what was read is each user's latest login and each key's
        latest scopes, back to the last event read; older ones are missing, so the window is shortened."""
        s = self.snapshot
        # The last event with a usable time: one odd record (NaN, a string) must not stop the run.
        oldest = next((at for at in map(epoch_seconds, (event.get("effective_at") for event in reversed(read.items)))
                       if at is not None), None)
        days = self.config.activity_days
        if oldest is not None and s.activity_since is not None:
            now = s.activity_since + days * 86_400
            s.activity_window_days = max(0, min(days, int((now - oldest) // 86_400)))
        else:
            s.activity_window_days = 0
        log.warning("audit log: stopped after %d pages (%d events); logins and API key scope changes older than %s "
                    "are missing, so activity_window_days is %d instead of %d; use a shorter --activity-days",
                    read.pages, len(read.items), rfc3339(oldest) or "the last event read", s.activity_window_days,
                    days)
        self.scheduler.finish(read, read.items)

    # --- the role assignment reads: decided once the role lists say so ---------------------
    def _decide_role_reads(self) -> None:
        if self.role_decision is not None:
            return
        s = self.snapshot
        if any(self.scheduler.open_reads[family.name] for family in ROLE_LISTS if not family.per):
            return  # whether the Roles API is refused is known first, whatever a project's role list says
        pending = sum(self.scheduler.open_reads[name] for name in ROLE_DECISION_WAITS_FOR)
        refused = any(family.name in s.unavailable for family in ROLE_LISTS if not family.per)
        decision, reason = decide_role_assignment_reads(self.config.role_assignments, refused, self.custom_roles_seen,
                                                        pending)
        if decision is None:
            return
        self.role_decision, self.role_decision_reason = decision, reason
        log.info("per-user role assignments %s", reason)
        held, self.held = self.held, []
        if not decision:
            return
        for family in FAMILY_LIST:
            if family.after_role_decision:
                setattr(s, family.name, {})
        for child, key, items in held:
            self._read_each(child, key, items)

    def _log_role_read_estimate(self, family: Family, top_level: int) -> None:
        """Logged once the top-level list the role reads hang on (users) is in: the count, and the time only
        when there is an observed rate to count it at (an estimate or none, never a guess)."""
        s = self.snapshot
        nested = sum(len(ids_of(items, other.parent_id_field)) for other in FAMILY_LIST
                     if other.after_role_decision and FAMILIES[other.parent].parent
                     for items in (getattr(s, other.parent) or {}).values())
        rate = self.scheduler.slowest_rate_for([other.name for other in FAMILY_LIST if other.after_role_decision])
        estimate = (f"; at the rate seen so far that is at least {_format_duration((top_level + nested) / rate)}"
                    if rate else "")
        log.info("role assignment reads: %d users and %d project members so far, one call each%s", top_level,
                 nested, estimate)

    # --- refusals and failures ----------------------------------------------------------------
    def is_left_out(self, family: Family) -> bool:
        return family.name in self.snapshot.unavailable

    def refused(self, read: ListRead, refusal: Refusal) -> None:
        """400/401/403/404: the key may not read this, the organization lacks it, or the entity is gone."""
        family, finish = read.family, self.scheduler.finish
        if refusal.status == 400:
            if family.empty_when_archived and (read.key in self.archived or "archived" in refusal.detail.lower()):
                # OpenAI documents this 400 "when project is archived": an archived project has no members.
                log.info("%s: HTTP 400 for archived %s %s; read as an empty list", read.path, family.per.label,
                         read.key)
                finish(read, [])
            else:
                self.failed(read, str(refusal))
        elif family.not_found is On404.EXISTENCE and refusal.status != 401:
            # Only the entity's own 404 says it is gone; a 403 leaves the question open.
            finish(read, NOT_FOUND if refusal.status == 404 else refusal)
        elif family.optional:  # asked of dashboard-style keys only; never fails the run
            log.debug("%s not available: %s", family.label, refusal)
            finish(read, None)
        elif refusal.status == 404 and family.not_found in (On404.NO_SETTINGS, On404.ENTITY):
            if family.not_found is On404.ENTITY:  # maybe deleted during the run: settled once all is read
                self.not_found.setdefault(family.name, []).append((read.key, refusal.endpoint, time.monotonic()))
            self.unseen.add(id(read))
            finish(read, None)
        elif refusal.status == 401 or (refusal.status == 403 and family.required):
            raise DiscoveryError(
                f"OpenAI refused the key (HTTP {refusal.status} on {refusal.endpoint}): the key from "
                f"{self.config.openai_key_source} must be an Admin API key (sk-admin-...) of organization "
                f"{self.config.org_id}")
        elif family.required:  # 404: this organization, or this API, is not what the settings name
            raise DiscoveryError(f"OpenAI answered HTTP 404 on {refusal.endpoint}: check OPENAI_ORG_ID and "
                                 "--openai-base-url")
        else:
            self.leave_out(family, f"HTTP {refusal.status} on {refusal.endpoint}")
            finish(read, None)

    def failed(self, read: ListRead, message: str) -> None:
        """A read that cannot complete: the run fails, except for an optional family (left unset, warned)."""
        if read.family.optional:
            log.warning("%s left unset: the %s could not be read (%s)", read.family.optional, read.family.label,
                        message)
            self.scheduler.finish(read, None)
            return
        raise DiscoveryError(message)

    def leave_out(self, family: Family, reason: str) -> None:
        if family.name in self.snapshot.unavailable:
            return
        self.snapshot.unavailable[family.name] = reason
        setattr(self.snapshot, family.name, None)
        self.scheduler.drop_waiting(family)

    # --- entities that may have been deleted during the run -------------------------------------
    def _ask_whether_gone(self) -> None:
        """Ask for the object itself (project, group, user, provider) whose list answered 404.

        Its 404 says it was deleted during the run; a 200 says it is there, so the list's family is what
        this organization lacks. One object per family is asked first, which settles a missing family
        (404 on every project) in one call; only then the others, one call per entity that 404'd.
        """
        for first_round in (True, False):
            wanted: dict[tuple[Kind, Any], None] = {}
            for name, misses in self._not_found_in_catalogue_order():
                kind = FAMILIES[name].per
                if name in self.snapshot.unavailable or kind.object_family is None:
                    continue
                unasked = [(kind, key) for key, _, _ in misses if (kind, key) not in self.exists]
                wanted.update(dict.fromkeys(unasked[:1] if first_round else unasked))
            for kind, key in wanted:
                self.exists[(kind, key)] = None
                self._read(FAMILIES[kind.object_family], key,
                           lambda _, result, k=(kind, key): self._note_existence(k, result))
            self.scheduler.run_until_read()
            for name, misses in self._not_found_in_catalogue_order():
                kind = FAMILIES[name].per
                there = next((key for key, _, _ in misses if self.exists.get((kind, key)) is True), None)
                if there is not None:
                    self.leave_out(FAMILIES[name], f"HTTP 404 on {misses[0][1]}, while {kind.label} {there} exists")

    def _not_found_in_catalogue_order(self) -> list[tuple[str, list[tuple[Any, str, float]]]]:
        """The 404s by family in catalogue order, not in the order answers came: the same log every run."""
        return [(name, sorted(misses, key=lambda miss: str(miss[0])))
                for name, misses in sorted(self.not_found.items(), key=lambda entry: FAMILY_INDEX[entry[0]])]

    def _note_existence(self, kind_and_key: tuple[Kind, Any], result: Any) -> None:
        self.exists[kind_and_key] = True if isinstance(result, dict) else False if result is NOT_FOUND else None
        if isinstance(result, Refusal):
            self.existence_unknown[kind_and_key] = f"HTTP {result.status} on {result.endpoint}"

    def _settle_not_found(self) -> None:
        """Entities their own object says are gone (404) are deleted; nothing else is. Where the object could
        not say (403, or never answered), the entity may exist: its family is left out. A link between two
        entities has no object: a 404 on every link of a family is the family missing (with several links,
        or with one that another read found after the 404), else that link is gone."""
        for name, misses in self._not_found_in_catalogue_order():
            family = FAMILIES[name]
            if name in self.snapshot.unavailable:
                continue
            kind = family.per
            gone = [(key, endpoint) for key, endpoint, _ in misses if self.exists.get((kind, key)) is False]
            unsure = [(key, endpoint, when) for key, endpoint, when in misses if self.exists.get((kind, key)) is None]
            self.snapshot.deleted.extend((kind, key, endpoint) for key, endpoint in gone)
            if unsure and kind.object_family is not None:
                # It may exist: an open question is the family rule, never a silent drop.
                key, endpoint, _ = unsure[0]
                asked = self.existence_unknown.get((kind, key), "its object was not read")
                self.leave_out(family, f"HTTP 404 on {endpoint}, and whether {kind.label} {key} still exists "
                                       f"is unknown ({asked})")
                continue
            seen = self.found.get(kind, {})
            alive_after = any(seen.get(key, float("-inf")) > when for key, _, when in unsure)
            finished = self.scheduler.finished_reads[name]
            if unsure and not gone and finished == len(misses) and (len(unsure) > 1 or alive_after):
                self.leave_out(family, f"HTTP 404 on every {kind.label} ({misses[0][1]}, ...)")
                continue
            for key, endpoint, _ in unsure:  # a link between two entities: its own list is all there is to ask
                self.snapshot.deleted.append((kind, key, endpoint))


# ---------------------------------------------------------------------------------------------
# The snapshot: everything read, the boundary between reading and mapping
# ---------------------------------------------------------------------------------------------

class Snapshot:
    """Everything read from OpenAI: one attribute per catalogue family, named like it.

    A top-level family holds its records (None: left out, or not read); a per-entity family holds
    {entity key: records} (None: left out). The role assignment families stay None unless they are read.
    """

    def __init__(self, org_id: str, *, activity_since: int | None = None, activity_window_days: int | None = None,
                 unavailable: dict[str, str] | None = None, read_at: float | None = None,
                 deleted: list[tuple[Kind, Any, str]] | None = None, **results: Any) -> None:
        unknown = set(results) - set(FAMILIES)
        if unknown:
            raise TypeError(f"Snapshot has no family {', '.join(sorted(unknown))}")
        self.org_id = org_id
        for family in FAMILY_LIST:
            if family.not_found is not On404.EXISTENCE:
                setattr(self, family.name, results[family.name] if family.name in results else self.empty(family))
        self.activity_since = activity_since            # Unix seconds the audit log was read from
        self.activity_window_days = activity_window_days  # the days it covers (fewer when cut at its cap)
        self.unavailable = unavailable if unavailable is not None else {}  # family name -> why it was left out
        self.read_at = read_at if read_at is not None else time.time()  # "expired" is judged at this time
        self.deleted = deleted if deleted is not None else []  # (entity kind, key, endpoint)

    @staticmethod
    def empty(family: Family) -> Any:
        """A family's value before it is read: what the mapping sees when nothing came."""
        if family.required:
            return []
        return {} if family.per and not family.after_role_decision else None

    def file(self, family: Family, key: Any, result: Any) -> None:
        """File one read's result where its family lives: the family's attribute, or under the key of the
        entity it was read for (a list refused for one entity files nothing)."""
        if family.per is None:
            setattr(self, family.name, result)
            return
        target = getattr(self, family.name)
        if target is not None and result is not None:
            target[key] = result


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
    # OpenAI's rule: organization owners own every project, listed or not; its own role, so a listed owner
    # (`project_owner`) is still told apart from the implicit one.
    "project_owner_via_organization": ("Project Owner (organization owner)",
                                       ["Standard API Requests", "Read Project", "Manage Project Members",
                                        "Manage Project API Keys"]),
    "project_member": ("Project Member", ["Standard API Requests", "Read Project"]),
    # OpenAI's RBAC guide gives project viewers read access.
    "project_viewer": ("Project Viewer", ["Read Project"]),
    "admin_api_key": ("Admin API Key", ["Read Organization", "Modify Billing", "Manage Members"]),
}
ORG_ROLE_VALUES = {"owner": "owner", "reader": "reader", "member": "reader"}  # invite docs say "owner or member"
PROJECT_ROLE_VALUES = {"owner": "project_owner", "member": "project_member", "viewer": "project_viewer"}
# An unknown role value never shows less than what every holder of a role there has: reading it.
UNKNOWN_ORG_ROLE_PERMISSIONS = FIXED_ROLES["reader"][1]
UNKNOWN_PROJECT_ROLE_PERMISSIONS = ["Read Project"]
KEY_ACCESS_VALUES = ("active", "inactive")
KEY_OWNER_TYPES = ("user", "service_account")
PROJECT_STATUSES = ("active", "archived")
SOURCE_PRINCIPAL_TYPES = ("user", "group")
HOSTED_TOOLS = ("code_interpreter", "file_search", "image_generation", "mcp", "web_search")
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


@dataclass
class MappingResult:
    application: CustomApplication
    warnings: list[str]
    counts: dict[str, int]
    notes: list[tuple[int, str]] = field(default_factory=list)  # (log level, message) lines that are no warning


class MappingContext:
    """What every mapping step shares: the application being built, its warnings and notes, each list read
    once (deduplicated, deleted entities dropped), and the one place each kind of identity is made."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.app = CustomApplication(name=snapshot.org_id, application_type=APPLICATION_TYPE)
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self.counts: dict[str, int] = {}
        self.notes: list[tuple[int, str]] = []
        self.deleted: dict[Kind, set] = {}
        for kind, key, endpoint in snapshot.deleted:
            self.deleted.setdefault(kind, set()).add(key)
            self.warn(f"{kind.label} {key if isinstance(key, str) else ' in '.join(reversed(key))} was deleted "
                      f"during the run (HTTP 404 on {endpoint}): {kind.when_deleted}", f"deleted:{kind.label}:{key}")
        # Each list deduplicated once, deleted entities dropped.
        s = snapshot
        self._role_ids_from_api: set[str] | None = None
        self._generated_roles: dict[tuple[str, str], str] = {}
        self._groups_not_in_payload: dict[str, int] = {}  # group id -> role assignments given directly instead
        self._warned_values: set[tuple[str, str]] = set()
        self._project_lists: dict[tuple[str, str, str | None], list[dict]] = {}
        self.user_records = self._records("organization user", s.users, Kind.USER)
        self.group_records = self._records("group", s.groups or [], Kind.GROUP)
        self.project_records = self._records("project", s.projects or [], Kind.PROJECT)
        self.project_by_id = {record["id"]: record for record in self.project_records}

    def warn(self, message: str, once_key: str | None = None) -> None:
        if once_key is not None:
            if once_key in self._warned:
                return
            self._warned.add(once_key)
        self.warnings.append(message)

    def _flag(self, record: dict, name: str, subject: str) -> bool | None:
        """A boolean field: true, false, or None when absent or not a boolean (then warned once, as unknown)."""
        value = record.get(name)
        if value is None or isinstance(value, bool):
            return value
        self.warn(f"{subject} has {name} {_shape(value)}, not true or false; treated as unknown",
                  f"flag:{subject}:{name}")
        return None

    def warn_value(self, field_name: str, value: Any, what_then: str) -> None:
        """Warn once per field and value about a value the mapping does not know."""
        shown = None if value is None else str(value)[:60]
        if (field_name, shown) not in self._warned_values:
            self._warned_values.add((field_name, shown))
            self.warn(f"missing {field_name}: {what_then}" if shown is None
                      else f"unknown {field_name} {shown!r}: {what_then}")

    def _records(self, what: str, items: Iterable[Any], kind: Kind | None = None, key: str = "id") -> list[dict]:
        """Usable records (unique_by_id, its problems warned once), entities deleted during the run dropped."""
        def warn(problem: str) -> None:
            message = f"a {what} record {problem}" if problem.startswith("has no") else f"{what} {problem}"
            self.warn(message, message)
        gone = self.deleted.get(kind, set()) if kind else set()
        return [item for item in unique_by_id(items, key, warn) if item[key] not in gone]

    def _project_list(self, family: str, pid: str, kind: Kind | None = Kind.USER) -> list[dict]:
        """One project's records of a per-project family, deduplicated, deleted principals dropped (once)."""
        key = (family, pid, kind)
        if key not in self._project_lists:
            self._project_lists[key] = self._records(f"project {pid} {FAMILIES[family].label}",
                                                     (getattr(self.snapshot, family) or {}).get(pid, []), kind)
        return self._project_lists[key]

    def _is_deleted_user(self, principal_id: Any) -> bool:
        return principal_id in self.deleted.get(Kind.USER, ())

    def _expired(self, record: dict) -> bool:
        """Whether the key's `expires_at` was already past when the read started (absent: it does not expire)."""
        expires = epoch_seconds(record.get("expires_at"))
        return expires is not None and expires < self.snapshot.read_at

    def _new_local_user(self, unique_id: str, name: str, *, email: str | None = None, identity: str | None = None,
                        is_active: bool, user_type: str | None = None) -> LocalUser:
        """The one place a local user is made: organization users, principals other lists name, service
        accounts and invites all have a name, an optional email and identity, and whether they are active."""
        user = self.app.add_local_user(name, unique_id=unique_id)
        if email:
            user.email = email
        if identity:
            user.add_identity(identity)
        user.is_active = is_active
        if user_type:
            user.user_type = user_type
        return user

    def _get_or_add_principal(self, principal_id: str, record: dict, where: str, *,
                              service_account: bool = False) -> LocalUser:
        """The local user for an id, created (with a warning) from what `record` says when the org list lacks it."""
        user = self.app.local_users.get(principal_id)
        if user is not None:
            return user
        email = _text(record.get("email"))
        user = self._new_local_user(principal_id, _text(record.get("name")) or email or principal_id, email=email,
                                    identity=email, is_active=True,
                                    user_type="service_account" if service_account else "human")
        kind = "service account" if service_account else "user"
        self.warn(f"{where} names {kind} {principal_id} who is not in the organization user list; "
                  "kept, built from that record")
        return user

    def _new_group(self, record: dict, id_field: str = "id", name_field: str = "name") -> LocalGroup:
        """A local group from a group record, or from a project's link to a group (`group_id`, `group_name`)."""
        group = self.app.add_local_group(_text(record.get(name_field)) or record[id_field],
                                         unique_id=record[id_field])
        group.set_property("group_type", _text(record.get("group_type")), ignore_none=True)
        return group

    def _new_credential(self, unique_id: str, name: str, created_at: Any, *, is_active: bool) -> AccessCred:
        """The one place an access credential is made: API keys, admin keys and federation rules."""
        cred = self.app.add_access_cred(unique_id, name)
        cred.created_at = rfc3339(created_at) or ""
        cred.is_active = is_active
        return cred


class RoleMapping(MappingContext):
    """Roles: the fixed ones, the role of an org or project role value, the Roles API's roles and their
    assignments (README: Permissions and roles, Role assignments)."""

    def _define_permissions_and_roles(self) -> None:
        for name, canonical in {**ORG_PERMISSIONS, **PROJECT_PERMISSIONS}.items():
            self.app.add_custom_permission(name, [canonical])
        for role_id, (name, permissions) in FIXED_ROLES.items():
            self.app.add_local_role(name, list(permissions), unique_id=role_id)

    def _api_role_ids(self) -> set[str]:
        """Every role id the Roles API named (roles lists and assignments), case-folded."""
        if self._role_ids_from_api is None:
            s = self.snapshot
            lists = [s.roles or [], *(s.project_roles or {}).values(), *(s.group_roles or {}).values(),
                     *(s.user_roles or {}).values(), *(s.project_group_roles or {}).values(),
                     *(s.project_user_roles or {}).values()]
            self._role_ids_from_api = {record["id"].casefold() for records in lists for record in records
                                       if isinstance(record, dict) and isinstance(record.get("id"), str)}
        return self._role_ids_from_api

    def _role_for_value(self, value: Any, subject: str, *, project: bool) -> str:
        """The local role id for an org or project role value; "" when there is no role.

        A value the mapping does not know gets a role of its own with the floor of its scope (Reader's
        permissions, or Read Project), created and warned about once per value.
        """
        scope = "project" if project else "organization"
        role = _text(value)
        if role is None:
            self.warn(f"{subject} has no {scope} role; kept without one")
            return ""
        role = role.lower()
        if project and role == "none":
            return ""
        known = (PROJECT_ROLE_VALUES if project else ORG_ROLE_VALUES).get(role)
        if known:
            return known
        if (scope, role) not in self._generated_roles:
            self._generated_roles[(scope, role)] = self._add_generated_role(role, project)
        return self._generated_roles[(scope, role)]

    def _add_generated_role(self, role: str, project: bool) -> str:
        wanted = f"project_{role}" if project else role
        role_id = self._free_role_id(wanted, f"project_role_{role}" if project else f"organization_{role}")
        name = f"Project {role.capitalize()}" if project else role.capitalize()
        permissions = UNKNOWN_PROJECT_ROLE_PERMISSIONS if project else UNKNOWN_ORG_ROLE_PERMISSIONS
        self.app.add_local_role(name, list(permissions), unique_id=role_id)
        floor = "Read Project" if project else "Reader's permissions"
        scope = "project" if project else "organization"
        taken = "" if role_id == wanted else f" ({wanted!r} is the id of another role)"
        self.warn(f"unknown {scope} role {role!r}: mapped to {role_id!r}{taken} with {floor}")
        return role_id

    def _free_role_id(self, wanted: str, fallback: str) -> str:
        """`wanted`, or else `fallback` (numbered if need be): never the id of a fixed, Roles API or other role."""
        taken = {role_id.casefold() for role_id in (*FIXED_ROLES, *self.app.local_roles)} | self._api_role_ids()
        candidate, number = wanted, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = fallback if number == 2 else f"{fallback}_{number - 1}"
        return candidate

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
        raw = record.get("permissions")
        if isinstance(raw, str):
            self.warn(f"role {role_id} lists its permissions as one string, not a list; read as one permission",
                      f"permissions:{role_id}")
            raw = [raw]
        elif raw is not None and not isinstance(raw, list):
            self.warn(f"role {role_id} has permissions of type {type(raw).__name__}; read as none",
                      f"permissions:{role_id}")
            raw = []
        permissions = [p for p in raw or [] if isinstance(p, str) and p]
        for permission in permissions:
            if permission not in self.app.custom_permissions:
                self.app.add_custom_permission(permission, [canonical_permission(permission)])
        role = self.app.add_local_role(_text(record.get("name")) or role_id, permissions, unique_id=role_id)
        if isinstance(record.get("predefined_role"), bool):
            role.set_property("predefined_role", record["predefined_role"])
        role.set_property("resource_type", _text(record.get("resource_type")), ignore_none=True)
        role.set_property("description", _text(record.get("description")), ignore_none=True)
        return role_id

    def _map_custom_roles(self, projects: dict[str, CustomResource]) -> None:
        s = self.snapshot
        if s.roles is None:
            return
        before = len(self.app.local_roles)
        for record in self._records("role", s.roles):
            self._add_role_record(record)
        for pid in projects:
            for record in self._project_list("project_roles", pid, kind=None):
                self._add_role_record(record)
        self.counts["roles"] = len(self.app.local_roles) - before

    def _assign(self, identity: Any, assignments: list[dict], project: CustomResource | None,
                member: LocalUser | None = None) -> int:
        """Give `identity` each role of its assignment records; a member's role that arrives through its
        groups in the payload is left to them."""
        count = 0
        for record in self._records("role assignment", assignments):
            role_id = self._add_role_record(record)
            if role_id is None:
                continue
            if member is not None and self._arrives_through_groups(record, role_id, member, project):
                continue
            if project is None:
                identity.add_role(role_id, apply_to_application=True)
            else:
                identity.add_role(role_id, resources=[project])
            count += 1
        return count

    def _arrives_through_groups(self, record: dict, role_id: str, member: LocalUser,
                                project: CustomResource | None) -> bool:
        """True only when every assignment source is a group in the payload that holds this role (there)
        and lists this member; anything else is a direct assignment, so access is never understated."""
        sources = record.get("assignment_sources")
        if not isinstance(sources, list) or not sources:
            return False
        through = True
        for source in sources:
            source = _dict(source)
            kind = _text(source.get("principal_type"))
            if kind is not None and kind.lower() not in SOURCE_PRINCIPAL_TYPES:
                self.warn_value("assignment source principal_type", kind, "read as a direct assignment")
            if kind is None or kind.lower() != "group":
                through = False
                continue
            group_id = _text(source.get("principal_id")) or ""
            group = self.app.local_groups.get(group_id) if group_id else None
            if group is None:
                self._groups_not_in_payload[group_id] = self._groups_not_in_payload.get(group_id, 0) + 1
                through = False
                continue
            held = group.role_assignments.get(role_id)
            holds = bool(held) and (held["apply_to_application"] if project is None
                                    else project.resource_key in held["resources"])
            through = through and holds and group_id in (member.groups or ())
        return through

    def _warn_groups_not_in_payload(self) -> None:
        if not self._groups_not_in_payload:
            return
        missing = sorted(self._groups_not_in_payload)
        why = "groups were left out" if self.snapshot.groups is None else "not in the group list, or deleted"
        self.warn(f"{sum(self._groups_not_in_payload.values())} role assignments name groups that are not in the "
                  f"payload ({why}: {', '.join(g or '(no id)' for g in missing[:5])}"
                  f"{', ...' if len(missing) > 5 else ''}); those roles are given to the users directly")

    def _map_role_assignments(self, projects: dict[str, CustomResource]) -> None:
        """Roles API assignments: groups' and users' on the application, then each project's groups and members."""
        s = self.snapshot
        if s.roles is None:
            return
        count = 0
        if s.groups is not None and s.group_roles is not None:
            for record in self.group_records:
                count += self._assign(self.app.local_groups[record["id"]], s.group_roles.get(record["id"], []), None)
        if s.user_roles is not None:
            for record in self.user_records:
                user = self.app.local_users[record["id"]]
                count += self._assign(user, s.user_roles.get(record["id"], []), None, member=user)
        for pid, project in projects.items():
            if s.groups is not None and s.project_groups is not None and s.project_group_roles is not None:
                count += self._assign_project_groups(pid, project)
            if s.project_user_roles is not None and s.project_users is not None:
                count += self._assign_project_members(pid, project)
        self._warn_groups_not_in_payload()
        self.counts["role_assignments"] = count

    def _assign_project_groups(self, pid: str, project: CustomResource) -> int:
        """Each group the project lists gets its roles there (a group missing from the group list is kept)."""
        count = 0
        gone_links = self.deleted.get(Kind.PROJECT_GROUP, set())
        for link in self._records(f"project {pid} group", self.snapshot.project_groups.get(pid, []), Kind.GROUP,
                                  key="group_id"):
            gid = link["group_id"]
            if (pid, gid) in gone_links:
                continue
            group = self.app.local_groups.get(gid)
            if group is None:
                group = self._new_group(link, "group_id", "group_name")
                self.warn(f"project {pid} names group {gid} which is not in the group list; kept")
            count += self._assign(group, self.snapshot.project_group_roles.get((pid, gid), []), project)
        return count

    def _assign_project_members(self, pid: str, project: CustomResource) -> int:
        count = 0
        gone_members = self.deleted.get(Kind.PROJECT_MEMBER, set())
        for member in self._project_list("project_users", pid):
            if (pid, member["id"]) in gone_members:
                continue
            user = self.app.local_users[member["id"]]
            count += self._assign(user, self.snapshot.project_user_roles.get((pid, member["id"]), []), project,
                                  member=user)
        return count


class PrincipalMapping(RoleMapping):
    """Who: the organization, its users, groups, projects with their members and service accounts, and
    pending invites (README: Users, Projects, Groups, Invites)."""

    def _map_organization(self) -> None:
        self.app.set_property("organization_id", self.snapshot.org_id)
        personal = _dict(self.snapshot.organization).get("personal")
        if isinstance(personal, bool):
            self.app.set_property("is_personal", personal)

    def _add_user(self, record: dict) -> LocalUser:
        """A local user from an organization user record."""
        nested = _dict(record.get("user"))
        email = _text(record.get("email")) or _text(nested.get("email"))
        name = _text(record.get("name")) or _text(nested.get("name")) or email or record["id"]
        subject = f"user {record['id']}"
        # Unknown (a string "false", 1) is not false: active, so access is never understated, and warned.
        banned = self._flag(nested, "banned", subject)
        user = self._new_local_user(record["id"], name, email=email, identity=email,
                                    is_active=not (banned is True or self._flag(nested, "enabled", subject) is False))
        user.created_at = rfc3339(record.get("created")) or rfc3339(record.get("added_at"))
        # banned and banned_at are independent: an unbanned user with an old banned_at is not deactivated
        user.deactivated_at = rfc3339(nested.get("banned_at")) if banned is True else None
        user.user_type = "service_account" if record.get("is_service_account") is True else "human"
        user.set_property("added_at", rfc3339(record.get("added_at")), ignore_none=True)
        user.set_property("api_key_last_used_at", rfc3339(record.get("api_key_last_used_at")), ignore_none=True)
        if isinstance(record.get("is_scim_managed"), bool):
            user.set_property("is_scim_managed", record["is_scim_managed"])
        return user

    def _map_users(self) -> list[LocalUser]:
        """Organization users with their org role; returns the owners (who own every project)."""
        owners = []
        for record in self.user_records:
            user = self._add_user(record)
            role = self._role_for_value(record.get("role"), f"user {record['id']}", project=False)
            if role:
                user.add_role(role, apply_to_application=True)
                if role == "owner":
                    owners.append(user)
        self.counts["users"] = len(self.app.local_users)
        return owners

    def _map_groups(self) -> None:
        s = self.snapshot
        if s.groups is None:
            return
        for record in self.group_records:
            group = self._new_group(record)
            group.created_at = rfc3339(record.get("created_at"))
            if isinstance(record.get("is_scim_managed"), bool):
                group.set_property("is_scim_managed", record["is_scim_managed"])
        memberships = 0
        if s.group_users is not None:
            for group_record in self.group_records:
                gid = group_record["id"]
                for member in self._records(f"group {gid} member", s.group_users.get(gid, []), Kind.USER):
                    self._get_or_add_principal(member["id"], member, f"group {gid}").add_group(gid)
                    memberships += 1
        self.counts["groups"] = len(self.app.local_groups)
        self.counts["group_memberships"] = memberships

    def _map_projects(self, owners: list[LocalUser]) -> dict[str, CustomResource]:
        """Project resources by id; organization owners get the implicit ownership of every one."""
        s = self.snapshot
        projects: dict[str, CustomResource] = {}
        if s.projects is None:
            return projects
        for record in self.project_records:
            pid = record["id"]
            project = self.app.add_resource(_text(record.get("name")) or pid, resource_type="project", unique_id=pid)
            status = _text(record.get("status"))
            if status is not None and status.lower() not in PROJECT_STATUSES:
                self.warn_value("project status", status, "read as not archived (its keys stay active)")
            project.set_property("status", status, ignore_none=True)
            project.set_property("created_at", rfc3339(record.get("created_at")), ignore_none=True)
            project.set_property("archived_at", rfc3339(record.get("archived_at")), ignore_none=True)
            policy = (s.model_permissions or {}).get(pid)
            if policy is not None and not isinstance(policy, dict):
                self.warn(f"project {pid} model permissions are {_shape(policy)}, not an object; "
                          "model_permission_mode and model_ids left unset")
            elif isinstance(policy, dict):
                project.set_property("model_permission_mode", _text(policy.get("mode")), ignore_none=True)
                ids = policy.get("model_ids")
                if isinstance(ids, list):
                    project.set_property("model_ids", [str(i) for i in ids])
            self._map_hosted_tools(project, (s.hosted_tool_permissions or {}).get(pid))
            projects[pid] = project
        # Organization owners own every project, listed or not (OpenAI's rule).
        for owner in owners:
            owner.add_role("project_owner_via_organization", resources=list(projects.values()))
        self.counts["projects"] = len(projects)
        return projects

    def _map_hosted_tools(self, project: CustomResource, tools: Any) -> None:
        """`<tool>_enabled` from {"<tool>": {"enabled": bool}}; any other shape is warned and left unset."""
        pid = project.unique_id
        if tools is None:
            return
        if not isinstance(tools, dict):
            self.warn(f"project {pid} hosted tool permissions are {_shape(tools)}, not an object; every "
                      "*_enabled property left unset")
            return
        if not any(tool in tools for tool in HOSTED_TOOLS):
            self.warn(f"project {pid} hosted tool permissions {_shape(tools)} name none of the tools "
                      f"{', '.join(HOSTED_TOOLS)}; every *_enabled property left unset")
            return
        for tool in HOSTED_TOOLS:
            setting = tools.get(tool)
            enabled = setting.get("enabled") if isinstance(setting, dict) else None
            if isinstance(enabled, bool):
                project.set_property(f"{tool}_enabled", enabled)
            elif setting is not None:
                self.warn(f"project {pid} hosted tool {tool} is {_shape(setting)}, not {{\"enabled\": true or "
                          f"false}}; {tool}_enabled left unset")

    def _map_project_members(self, projects: dict[str, CustomResource]) -> None:
        memberships = 0
        for pid, project in projects.items():
            for member in self._project_list("project_users", pid):
                user = self._get_or_add_principal(member["id"], member, f"project {pid}")
                role = self._role_for_value(member.get("role"), f"project {pid} member {member['id']}", project=True)
                if role:
                    user.add_role(role, resources=[project])
                memberships += 1
        self.counts["project_memberships"] = memberships

    def _map_service_accounts(self, projects: dict[str, CustomResource]) -> None:
        count = 0
        for pid, project in projects.items():
            for record in self._project_list("project_service_accounts", pid, kind=None):
                account = self.app.local_users.get(record["id"]) or self._new_local_user(
                    record["id"], _text(record.get("name")) or record["id"], is_active=True)
                account.user_type = "service_account"
                account.created_at = account.created_at or rfc3339(record.get("created_at"))
                account.set_property("project_id", pid)
                role = self._role_for_value(record.get("role"), f"service account {record['id']}", project=True)
                if role:
                    account.add_role(role, resources=[project])
                count += 1
        self.counts["service_accounts"] = count

    def _map_invites(self, projects: dict[str, CustomResource]) -> None:
        pending = 0
        for record in self._records("invite", self.snapshot.invites or []):
            status = _text(record.get("status"))
            if status in ("accepted", "expired"):
                continue  # accepted ones are users already; expired ones grant nothing
            if status != "pending":
                self.warn_value("invite status", status, "kept as a pending invite (it may still be accepted)")
            if record["id"] in self.app.local_users:
                self.warn(f"invite {record['id']} has the id of an existing user; the invite is left out")
                continue
            email = _text(record.get("email"))
            invitee = self._new_local_user(record["id"], email or record["id"], identity=email, is_active=False)
            invitee.set_property("invite_status", status, ignore_none=True)
            invitee.set_property("invite_expires_at", rfc3339(record.get("expires_at")), ignore_none=True)
            role = self._role_for_value(record.get("role"), f"invite {record['id']}", project=False)
            if role:
                invitee.add_role(role, apply_to_application=True)
            grants = record.get("projects")
            for grant in grants if isinstance(grants, list) else []:
                if not isinstance(grant, dict):
                    continue
                project = projects.get(grant.get("id")) if isinstance(grant.get("id"), str) else None
                project_role = self._role_for_value(grant.get("role"), f"invite {record['id']}", project=True)
                if project is not None and project_role:
                    invitee.add_role(project_role, resources=[project])
                elif project is None and self.snapshot.projects is not None:
                    self.warn(f"invite {record['id']} names project {grant.get('id')} which is not listed")
            pending += 1
        self.counts["invites_pending"] = pending


class CredentialMapping(PrincipalMapping):
    """What they hold and did: project and admin API keys, activity from the audit log, workload identity
    federation rules and certificates (README: Credentials, Certificates)."""

    def _add_credential(self, record: dict, *, is_active: bool, unique_id: str | None = None) -> AccessCred:
        """An access credential from a project or admin API key record."""
        cred = self._new_credential(unique_id or record["id"], _text(record.get("name")) or
                                    _text(record.get("redacted_value")) or record["id"], record.get("created_at"),
                                    is_active=is_active)
        cred.last_used_at = rfc3339(record.get("last_used_at")) or ""
        cred.expires_at = rfc3339(record.get("expires_at")) or ""
        cred.set_property("redacted_value", _text(record.get("redacted_value")), ignore_none=True)
        return cred

    def _project_key_is_active(self, record: dict, project_archived: bool) -> bool:
        """Not active when its owner lost project access, it expired, or its project is archived.

        A record without `owner_project_access` (older API versions) is active: unknown is never "inactive".
        """
        access = record.get("owner_project_access")
        if access is not None and access not in KEY_ACCESS_VALUES:
            self.warn_value("owner_project_access", access, "read as active unless expired or archived")
        return access != "inactive" and not self._expired(record) and not project_archived

    def _key_owner(self, record: dict) -> tuple[str | None, dict, bool]:
        """(owner id, the owner's record, is it a service account) of a key record.

        A project key nests its owner (`owner.user` or `owner.service_account`, as `owner.type` says); an
        admin key's owner is flat (`owner.id`). Either shape is read on either kind of key, whatever `type`
        says, so an odd or missing `type` never loses the owner.
        """
        owner = _dict(record.get("owner"))
        owner_type = _text(owner.get("type"))
        if owner_type is not None and owner_type not in KEY_OWNER_TYPES:
            self.warn_value("API key owner type", owner_type, "the owner is read from the record's shape")
        for kind in dict.fromkeys([owner_type, *KEY_OWNER_TYPES]):
            if kind in KEY_OWNER_TYPES and isinstance(owner.get(kind), dict):
                return _text(owner[kind].get("id")), owner[kind], kind == "service_account"
        if any(kind in owner for kind in KEY_OWNER_TYPES):
            return None, {}, False  # nested, but not an object: no owner to read
        return _text(owner.get("id")), owner, owner_type == "service_account"

    def _map_project_api_keys(self, projects: dict[str, CustomResource]) -> set[str]:
        """Project keys as credentials of their owners, with the owner's project role; returns their ids."""
        key_ids: set[str] = set()
        active = inactive = 0
        for pid, project in projects.items():
            archived = project_is_archived(self.project_by_id[pid])
            for record in self._project_list("project_api_keys", pid, kind=None):
                if record["id"] in self.app.access_creds:
                    self.warn(f"project API key {record['id']} is listed in project {pid} and in another project; "
                              "kept once, under the first", f"key twice:{record['id']}")
                    continue
                owner_id, owner, service_account = self._key_owner(record)
                if self._is_deleted_user(owner_id):
                    continue
                cred = self._add_credential(record, is_active=self._project_key_is_active(record, archived))
                key_ids.add(record["id"])
                active += cred.is_active
                inactive += not cred.is_active
                cred.set_property("project_id", pid)
                cred.set_property("owner_type", _text(_dict(record.get("owner")).get("type")), ignore_none=True)
                if owner_id is None:
                    self.warn(f"project API key {record['id']} has no owner in its record")
                    continue
                holder = self._get_or_add_principal(owner_id, owner, f"project API key {record['id']}",
                                                    service_account=service_account)
                holder.add_access_cred(record["id"])
                role = self._role_for_value(owner.get("role"), f"owner of project API key {record['id']}",
                                            project=True)
                if role:
                    cred.add_role(role, resources=[project])
        self.counts["project_api_keys_active"] = active
        self.counts["project_api_keys_inactive"] = inactive
        return key_ids

    def _admin_key_id(self, record: dict, redacted: str) -> str | None:
        """The unique id an admin-list entry is pushed under; None when it is a project key, or not an admin key.

        The admin list has been seen to return project keys: such an entry is that project key, once. OpenAI's
        own examples use one id in both lists, so an entry whose value says admin (`sk-admin`) is kept too.
        """
        key_id = record["id"]
        is_admin_value = redacted.startswith("sk-admin")
        if key_id in self.app.access_creds:
            if redacted and not is_admin_value:
                return None  # a project key already read: the caller counts it
            unique_id = f"admin_api_key:{key_id}"
            number = 1
            while unique_id in self.app.access_creds:
                number += 1
                unique_id = f"admin_api_key:{key_id}:{number}"
            other = _text(self.app.access_creds[key_id].properties.get("redacted_value")) or "no value"
            self.warn(f"admin API key {key_id} ({redacted or 'no value'}) has the id of project API key {key_id} "
                      f"({other}); both are kept, the admin key as {unique_id}")
            return unique_id
        if redacted and not is_admin_value:
            # A project key whose project list was not read (refused, or the project deleted mid-run):
            # granting it organization admin would overstate access, so it is left out and said.
            self.warn(f"admin API key list returned {key_id} ({redacted}), which does not look like "
                      "an admin key and is not a project key that was read; left out")
            return None
        return key_id

    def _map_admin_api_keys(self) -> None:
        count = 0
        project_keys_listed: list[str] = []
        for record in self._records("admin API key", self.snapshot.admin_api_keys or []):
            already_read = record["id"] in self.app.access_creds
            unique_id = self._admin_key_id(record, _text(record.get("redacted_value")) or "")
            if unique_id is None:
                if already_read:
                    project_keys_listed.append(record["id"])
                continue
            owner_id, owner, service_account = self._key_owner(record)
            if self._is_deleted_user(owner_id):
                continue  # said by the deletion warning
            cred = self._add_credential(record, is_active=not self._expired(record), unique_id=unique_id)
            cred.add_role("admin_api_key", apply_to_application=True)
            if owner_id:
                holder = self._get_or_add_principal(owner_id, owner, f"admin API key {record['id']}",
                                                    service_account=service_account)
                holder.add_access_cred(unique_id)
            else:
                self.warn(f"admin API key {record['id']} has no owner in its record")
            count += 1
        if project_keys_listed:
            ids = project_keys_listed
            entries = "1 entry is a project API key" if len(ids) == 1 else f"{len(ids)} entries are project API keys"
            self.notes.append((logging.INFO, f"admin API key list: {entries} already read "
                                             f"({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}); kept once, "
                                             "as project keys"))
        self.counts["admin_api_keys"] = count

    def _audit_activity(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        """(user id -> latest login, project key id -> scopes of its newest scope-setting event) in the window."""
        # Times compare as numbers: as text, a year-892 login ("0892-..." or worse "892-...") could win.
        since = epoch_seconds(self.snapshot.activity_since)
        since = float("-inf") if since is None else since
        logins: dict[str, float] = {}
        newest: dict[str, tuple[tuple[float, str], list[str]]] = {}
        for event in self.snapshot.audit_logs or []:
            kind = event.get("type") if isinstance(event, dict) else None
            at = epoch_seconds(event.get("effective_at")) if kind else None
            if at is None or at < since:  # the server filters by type and time; a server that did not is checked
                continue
            if kind == "login.succeeded":
                user_id = _text(_dict(_dict(_dict(event.get("actor")).get("session")).get("user")).get("id"))
                if user_id and at > logins.get(user_id, float("-inf")):
                    logins[user_id] = at
            elif kind in ("api_key.created", "api_key.updated"):
                details = _dict(event.get(kind))  # the details sit under a key named like the type
                key_id = _text(details.get("id"))
                # The schema puts an update's scopes in changes_requested, OpenAI's own example in data: both.
                holders = ("data",) if kind == "api_key.created" else ("changes_requested", "data")
                scopes = next((_dict(details.get(holder)).get("scopes") for holder in holders
                               if isinstance(_dict(details.get(holder)).get("scopes"), list)), None)
                if key_id is None or scopes is None:
                    continue  # e.g. an update that renamed the key: it says nothing about scopes
                rank = (at, str(event.get("id") or ""))
                if key_id not in newest or rank > newest[key_id][0]:
                    newest[key_id] = (rank, [scope for scope in scopes if isinstance(scope, str)])
        return ({user_id: rfc3339(at) for user_id, at in logins.items()},
                {key_id: scopes for key_id, (_, scopes) in newest.items()})

    def _map_activity(self, project_keys: set[str]) -> None:
        s = self.snapshot
        if s.audit_logs is None:
            return
        self.app.set_property("activity_window_days", s.activity_window_days)
        logins, scopes = self._audit_activity()
        users = {record["id"] for record in self.user_records}
        for user_id in sorted(logins):
            if user_id in users:
                self.app.local_users[user_id].last_login_at = logins[user_id]
            else:
                self.notes.append((logging.DEBUG, f"audit log: login by {user_id}, who is not in the organization "
                                                  "user list; ignored"))
        keys = sorted(key_id for key_id in scopes if key_id in project_keys)
        for key_id in keys:
            # An empty list means all permissions (OpenAI's key docs): unrestricted, no scopes to show.
            cred = self.app.access_creds[key_id]
            cred.set_property("scopes_restricted", bool(scopes[key_id]))
            if scopes[key_id]:
                cred.set_property("scopes", scopes[key_id])
        self.counts["logins"] = len(users & set(logins))
        self.counts["key_scopes"] = len(keys)

    def _service_account_roles(self, projects: dict[str, CustomResource]) -> dict[tuple[str, str], Any]:
        """(project id, service account id) -> its role value, from the project service account lists."""
        return {(pid, record["id"]): record.get("role") for pid in projects
                for record in self._project_list("project_service_accounts", pid, kind=None)}

    def _map_federation_rules(self, projects: dict[str, CustomResource]) -> None:
        s = self.snapshot
        if s.workload_identity_providers is None or s.federation_rules is None:
            return
        accounts_read = s.projects is not None and s.project_service_accounts is not None
        if not accounts_read:
            self.warn("federation rules are kept without holders or project roles: project service accounts "
                      "were not read")
        roles = self._service_account_roles(projects) if accounts_read else {}
        count = 0
        for provider in self._records("workload identity provider", s.workload_identity_providers, Kind.PROVIDER):
            provider_id = provider["id"]
            rules = self._records(f"workload identity provider {provider_id} federation rule",
                                  s.federation_rules.get(provider_id, []))
            for rule in rules:
                if rule["id"] in self.app.access_creds:
                    self.warn(f"federation rule {rule['id']} has the id of another credential; left out")
                    continue
                # Unknown (not a boolean) is warned and counts as enabled: access is never understated.
                enabled = (self._flag(rule, "enabled", f"federation rule {rule['id']}") is not False and
                           self._flag(provider, "enabled", f"workload identity provider {provider_id}") is not False)
                cred = self._new_credential(rule["id"], _text(rule.get("name")) or rule["id"], rule.get("created_at"),
                                            is_active=enabled)
                cred.set_property("issuer", _text(provider.get("issuer")), ignore_none=True)
                cred.set_property("audience", _text(provider.get("audience")), ignore_none=True)
                cred.set_property("workload_identity_provider_id", provider_id)
                project_id = _text(rule.get("project_id"))
                cred.set_property("project_id", project_id, ignore_none=True)
                matchers = rule.get("attribute_matchers")
                if isinstance(matchers, dict):
                    cred.set_property("attribute_matchers", sorted(f"{key}={_matcher_value(value)}"
                                                                   for key, value in matchers.items()))
                elif matchers is not None:
                    self.warn(f"federation rule {rule['id']} has attribute_matchers of type "
                              f"{type(matchers).__name__}, not an object; left unset")
                permissions = _dict(rule.get("permissions"))
                permission_type = _text(permissions.get("type"))
                cred.set_property("permission_type", permission_type, ignore_none=True)
                if permission_type == "restricted" and isinstance(permissions.get("scopes"), list):
                    cred.set_property("scopes", [scope for scope in permissions["scopes"] if isinstance(scope, str)])
                if accounts_read:
                    self._hold_federation_rule(rule, cred, projects.get(project_id) if project_id else None,
                                               project_id, roles)
                count += 1
        self.counts["federation_rules"] = count

    def _hold_federation_rule(self, rule: dict, cred: AccessCred, project: CustomResource | None,
                              project_id: str | None, roles: dict[tuple[str, str], Any]) -> None:
        """The rule's service account holds it, and it gets that account's role on the rule's project."""
        account_id = _text(rule.get("service_account_id"))
        holder = self.app.local_users.get(account_id) if account_id else None
        if holder is not None and holder.user_type != "service_account":
            self.warn(f"federation rule {rule['id']} names {account_id} as its service account, but that id is a "
                      "human user's; kept without a holder or project role")
            return
        if holder is None:
            self.warn(f"federation rule {rule['id']} names service account {account_id} which is not listed; "
                      "kept without a holder or project role")
            return
        holder.add_access_cred(rule["id"])
        if project is None:
            self.warn(f"federation rule {rule['id']} names project {project_id} which is not listed; kept without "
                      "a project role")
            return
        if (project_id, account_id) not in roles:
            self.warn(f"federation rule {rule['id']}: service account {account_id} is not listed in project "
                      f"{project_id}; kept without a project role")
            return
        role = self._role_for_value(roles[(project_id, account_id)], f"service account {account_id}", project=True)
        if role:
            cred.add_role(role, resources=[project])

    def _map_certificates(self, projects: dict[str, CustomResource]) -> None:
        s = self.snapshot
        if s.certificates is None and (s.projects is None or s.project_certificates is None):
            return
        count = 0
        for record in self._records("certificate", s.certificates or []):
            if record["id"] in self.app.resources:
                self.warn(f"certificate {record['id']} has the id of a project; left out")
                continue
            self._add_certificate(self.app.add_resource, record)
            count += 1
        for pid, project in projects.items():
            for record in self._project_list("project_certificates", pid, kind=None):
                self._add_certificate(project.add_sub_resource, record)
                count += 1
        self.counts["certificates"] = count

    @staticmethod
    def _add_certificate(add: Callable[..., CustomResource], record: dict) -> None:
        """A certificate resource: whether it is active and when it is valid; never its PEM `content`."""
        certificate = add(_text(record.get("name")) or record["id"], resource_type="certificate",
                          unique_id=record["id"])
        if isinstance(record.get("active"), bool):
            certificate.set_property("active", record["active"])
        details = _dict(record.get("certificate_details"))
        certificate.set_property("valid_at", rfc3339(details.get("valid_at")), ignore_none=True)
        certificate.set_property("expires_at", rfc3339(details.get("expires_at")), ignore_none=True)


class ApplicationBuilder(CredentialMapping):
    """Builds the CustomApplication from a Snapshot, following the README's mapping tables."""

    def build(self) -> MappingResult:
        """The mapping steps in payload order; each returns what a later step needs."""
        self._define_properties()
        self._define_permissions_and_roles()
        self._map_organization()
        owners = self._map_users()
        self._map_groups()
        projects = self._map_projects(owners)
        self._map_project_members(projects)
        self._map_service_accounts(projects)
        project_keys = self._map_project_api_keys(projects)
        self._map_admin_api_keys()
        self._map_invites(projects)
        self._map_custom_roles(projects)
        self._map_role_assignments(projects)
        self._map_activity(project_keys)
        self._map_federation_rules(projects)
        self._map_certificates(projects)
        return MappingResult(self.app, self.warnings, self.counts, self.notes)

    def _define_properties(self) -> None:
        d = self.app.property_definitions
        d.define_application_property("organization_id", OAAPropertyType.STRING)
        d.define_application_property("is_personal", OAAPropertyType.BOOLEAN)
        d.define_application_property("activity_window_days", OAAPropertyType.NUMBER)
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
        for name in ("redacted_value", "project_id", "owner_type", "issuer", "audience",
                     "workload_identity_provider_id", "permission_type"):
            d.define_access_cred_property(name, OAAPropertyType.STRING)
        for name in ("scopes", "attribute_matchers"):
            d.define_access_cred_property(name, OAAPropertyType.STRING_LIST)
        d.define_access_cred_property("scopes_restricted", OAAPropertyType.BOOLEAN)
        for name, kind in (("status", OAAPropertyType.STRING), ("created_at", OAAPropertyType.TIMESTAMP),
                           ("archived_at", OAAPropertyType.TIMESTAMP),
                           ("model_permission_mode", OAAPropertyType.STRING),
                           ("model_ids", OAAPropertyType.STRING_LIST)):
            d.define_resource_property("project", name, kind)
        for tool in HOSTED_TOOLS:
            d.define_resource_property("project", f"{tool}_enabled", OAAPropertyType.BOOLEAN)
        d.define_resource_property("certificate", "active", OAAPropertyType.BOOLEAN)
        for name in ("valid_at", "expires_at"):
            d.define_resource_property("certificate", name, OAAPropertyType.TIMESTAMP)


def _matcher_value(value: Any) -> str:
    """An attribute matcher's value as text: strings as they are, anything else as JSON (true, 1, null)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def _memory_mb() -> tuple[float | None, float]:
    """(resident now, peak resident so far) of this process in MiB; resident now is None without /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if line.startswith(("VmRSS:", "VmHWM:")))
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        try:
            import resource  # Unix only; ru_maxrss is KB on Linux
        except ImportError:
            return None, 0.0
        return None, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log_memory(stage: str) -> None:
    """With --debug: memory after each stage, so a pod's limit can be sized (tests/benchmark.py --memory)."""
    if log.isEnabledFor(logging.DEBUG):
        now, peak = _memory_mb()
        log_with_fields(logging.DEBUG, {"stage": "memory", "after": stage, "resident_mib": now and round(now),
                                        "peak_mib": round(peak)},
                        "memory after %s: %s MiB resident, peak %d MiB", stage,
                        "?" if now is None else f"{now:.0f}", peak)


def build_application(snapshot: Snapshot) -> MappingResult:
    """Map a Snapshot to a CustomApplication (pure: no I/O, no logging; the caller logs warnings and notes)."""
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

def describe_veza_error(exc: BaseException) -> str:
    if isinstance(exc, OAAResponseError) and exc.status_code in (401, 403):
        return (f"Veza refused the API key (HTTP {exc.status_code}): check VEZA_API_KEY "
                "and that its user may manage OAA providers")
    if isinstance(exc, OAAClientError):
        status = f"HTTP {exc.status_code}: " if exc.status_code else ""
        return f"{status}{exc.error}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _veza_verify() -> bool:
    # oaaclient's own switch for test instances with self-signed certificates
    return os.getenv("VEZA_UNSAFE_HTTPS", "").lower() != "true"


def check_veza(config: Config) -> None:
    """One quick request: is Veza there, and does it take the key? Fails in seconds, not oaaclient's minutes."""
    url = f"{config.veza_url}/api/v1/providers/custom/templates"
    try:
        started = time.monotonic()
        with requests.get(url, auth=BearerToken(config.veza_api_key), headers={"user-agent": USER_AGENT},
                          timeout=VEZA_CHECK_TIMEOUT, verify=_veza_verify(), stream=True) as response:
            read_whole_answer(response, started + VEZA_CHECK_TIMEOUT)
    except requests.exceptions.SSLError as exc:
        # TLS-inspecting proxies and private CAs are common where this runs; "not reachable" would send the
        # operator after DNS and firewalls instead.
        what = ("its TLS certificate could not be verified" if "CERTIFICATE_VERIFY_FAILED" in str(exc)
                else "the TLS handshake failed")
        raise PushError(f"cannot use Veza at {config.veza_url}: {what}. If a TLS-inspecting proxy or a private CA "
                        "signs it, set REQUESTS_CA_BUNDLE to that CA's certificate file (PEM)") from None
    except (requests.RequestException, TransportError, OSError) as exc:
        raise PushError(f"cannot use Veza at {config.veza_url}: {type(exc).__name__} (not reachable within "
                        f"{VEZA_CHECK_TIMEOUT:g}s; check VEZA_URL, DNS, proxy and TLS)") from None
    if response.status_code in (401, 403):
        raise PushError(f"cannot use Veza at {config.veza_url}: Veza refused the API key "
                        f"(HTTP {response.status_code}): check VEZA_API_KEY and that its user may manage OAA "
                        "providers")


class RunDeadlineReached(requests.Timeout):
    """--max-run-time ended the run while Veza was being called."""


class VezaRetry(Retry):
    """oaaclient's retries (urllib3's Retry) with every wait bounded: a Retry-After is capped at `max_wait`
    (urllib3 would sleep an hour for `Retry-After: 3600`), no wait runs past the run's deadline, and no retry
    starts after it."""

    max_wait: float = MAX_SERVER_WAIT
    backoff_cap: float = 30.0  # oaaclient's own cap on its exponential backoff
    deadline: float | None = None

    def new(self, **kw: Any) -> VezaRetry:
        retry = super().new(**kw)
        retry.max_wait, retry.backoff_cap, retry.deadline = self.max_wait, self.backoff_cap, self.deadline
        return retry

    def _bounded(self, seconds: float) -> float:
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        return min(seconds, self.max_wait)

    def get_retry_after(self, response: Any) -> float | None:
        seconds = super().get_retry_after(response)
        return None if seconds is None else self._bounded(seconds)

    def get_backoff_time(self) -> float:
        return self._bounded(min(super().get_backoff_time(), self.backoff_cap))

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or (self.deadline is not None and time.monotonic() >= self.deadline)


def bound_veza_retries(client: OAAClient, time_scale: float, deadline: float | None) -> None:
    """oaaclient's retry policy (OAA_API_RETRIES, its backoff and status list), each wait bounded (VezaRetry)."""
    session = client._http_adapter
    policy = session.get_adapter("https://").max_retries
    retry = VezaRetry(total=policy.total, backoff_factor=policy.backoff_factor * time_scale,
                      status_forcelist=policy.status_forcelist)
    retry.max_wait, retry.deadline = MAX_SERVER_WAIT * time_scale, deadline
    retry.backoff_cap = getattr(policy, "backoff_max", VezaRetry.backoff_cap) * time_scale
    adapter = requests.adapters.HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)


def bound_veza_answers(client: OAAClient, seconds: float, deadline: float | None = None) -> None:
    """Make every Veza answer arrive whole within `seconds` after its headers, as OpenAI's answers do, and
    every call end by the run's deadline.

    oaaclient 1.2.0 sends every call through the requests.Session in `_http_adapter`, whose timeout
    only bounds the gap between two bytes.
    """
    session = client._http_adapter
    send = session.request

    def request(method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs["stream"] = True
        whole_by = time.monotonic() + seconds
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunDeadlineReached("--max-run-time reached")
            kwargs["timeout"] = min(float(kwargs.get("timeout") or left), left)
            whole_by = min(whole_by, deadline)
        response = send(method, url, **kwargs)
        try:
            read_whole_answer(response, whole_by)
        except (TransportError, OSError) as exc:
            raise requests.ConnectionError(f"the answer broke off: {type(exc).__name__}") from None
        finally:
            response.close()
        return response

    session.request = request


class EncodedJSON:
    """A Veza request body already encoded exactly as requests encodes `json=`, handed through oaaclient's
    api_post (whose error handling and answer parsing we keep) and sent as those bytes by send_encoded_json."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def send_encoded_json(client: OAAClient) -> None:
    """oaaclient sends every body as `json=`; an EncodedJSON goes out as its bytes, as application/json."""
    session = client._http_adapter
    send = session.request

    def request(method: str, url: str, **kwargs: Any) -> requests.Response:
        body = kwargs.get("json")
        if isinstance(body, EncodedJSON):
            kwargs["json"], kwargs["data"] = None, body.data
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Content-Type": "application/json"}
        return send(method, url, **kwargs)

    session.request = request


class PrecheckedOAAClient(OAAClient):
    """oaaclient's client without its constructor's connection test: check_veza has just made the same
    call, bounded as a whole; oaaclient's would bound only the gaps between bytes, at OAA_API_TIMEOUT."""

    def _test_connection(self) -> None:
        pass


def connect_veza(config: Config, deadline: float | None = None) -> OAAClient:
    """An OAAClient whose connection and key were just checked, every call and retry bounded by `deadline`."""
    check_veza(config)
    try:
        client = PrecheckedOAAClient(url=config.veza_url, api_key=config.veza_api_key)
    except (OAAClientError, ValueError, requests.RequestException) as exc:
        raise PushError(f"cannot use Veza at {config.veza_url}: {describe_veza_error(exc)}") from None
    client.update_user_agent(extra=USER_AGENT)
    client._http_adapter.auth = BearerToken(config.veza_api_key)  # the header oaaclient sets, safe from ~/.netrc
    bound_veza_retries(client, config.time_scale, deadline)
    bound_veza_answers(client, float(client._api_timeout), deadline)
    send_encoded_json(client)
    return client


# CustomApplication.get_payload()'s lists of one entry per entity: (key in the payload's application, attribute).
_ENTITY_LISTS = (("local_users", "local_users"), ("local_groups", "local_groups"), ("local_roles", "local_roles"),
                 ("local_access_creds", "access_creds"), ("local_agents", "local_agents"),
                 ("local_models", "local_models"), ("resources", "resources"))
# CustomApplication.get_identity_to_permissions()'s identities, in its order.
_IDENTITIES = ("local_users", "local_groups", "idp_identities", "access_creds", "local_agents")
# The many: freed one by one as they are written, their identity_to_permissions entries kept encoded.
_FREED_AS_WRITTEN = ("local_users", "access_creds")
_ENTRIES_PER_CHUNK = 1000  # entries encoded and joined at once, then cut into pieces
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(..., separators=(",", ":"))


class PayloadJSON:
    """The payload JSON, ASCII bytes kept as pieces of PIECE_BYTES.

    Once the records are freed, their memory stays with Python's small-object allocator (blocks of at most
    512 bytes; an arena goes back to the system only when all of it is free, and the objects built from the
    records keep most arenas partly used). A bytes object of PIECE_BYTES is 510 bytes, so the pieces reuse
    that memory; one 76 MB buffer would come on top of it (measured: 100 MB more at 100,000 users).
    """

    PIECE_BYTES = 477  # + 33 bytes of bytes-object header: 510, within the small-object limit of 512

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self._pending = bytearray()
        self._size = 0

    def write(self, data: bytes) -> None:
        self._size += len(data)
        view, piece = memoryview(data), self.PIECE_BYTES
        if self._pending:
            room = piece - len(self._pending)
            self._pending += view[:room]
            view = view[room:]
            if len(self._pending) < piece:
                return
            self.pieces.append(bytes(self._pending))
            self._pending = bytearray()
        whole = len(view) - len(view) % piece
        self.pieces.extend(bytes(view[start:start + piece]) for start in range(0, whole, piece))
        self._pending += view[whole:]

    def close(self) -> PayloadJSON:
        if self._pending:
            self.pieces.append(bytes(self._pending))
            self._pending = bytearray()
        return self

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return self.slice(0, self._size)

    def slice(self, start: int, end: int) -> bytes:
        """Bytes start to end (as bytes(self)[start:end]), copied once."""
        end = min(end, self._size)
        if start >= end:
            return b""
        piece = self.PIECE_BYTES
        first, last = start // piece, (end - 1) // piece
        return b"".join(memoryview(self.pieces[index])[max(start - index * piece, 0):end - index * piece]
                        for index in range(first, last + 1))


class _ListWriter:
    """Writes the entries of one JSON list, comma-separated, to a PayloadJSON (the brackets are the caller's)."""

    def __init__(self, out: PayloadJSON) -> None:
        self.out = out
        self.empty = True
        self._chunk: list[str] = []

    def add(self, entry: dict) -> None:
        self._chunk.append(_encode(entry))
        if len(self._chunk) == _ENTRIES_PER_CHUNK:
            self.flush()

    def add_encoded(self, entries: _ListWriter) -> None:
        """Entries another writer has already encoded, handed over piece by piece (each freed once copied)."""
        self.flush()
        if entries.empty:
            return
        if not self.empty:
            self.out.write(b",")
        pieces, self.empty = entries.out.pieces, False
        pieces.reverse()
        while pieces:
            self.out.write(pieces.pop())

    def flush(self) -> None:
        if self._chunk:
            self.out.write((b"" if self.empty else b",") + ",".join(self._chunk).encode("ascii"))
            self._chunk, self.empty = [], False


def serialize_application(app: CustomApplication) -> PayloadJSON:
    """json.dumps(app.get_payload(), separators=(",", ":")) as ASCII bytes, byte for byte, built one entity at a
    time. The payload dict (as large again as the objects, ~110 MB for 100,000 users) never exists, and the users
    and credentials are taken out of `app` and freed as they are written, so the JSON reuses their memory.

    The skeleton (property definitions, permissions, the application's own fields) is oaaclient's own
    get_payload() of a copy of `app` without entities; each entity list is then written entity by entity, as
    get_payload() would list them, where the skeleton has a placeholder.
    """
    placeholder = f"entities-{os.urandom(16).hex()}-"  # cannot occur in the skeleton's own strings
    out = PayloadJSON()
    held: dict[str, _ListWriter] = {}  # identity_to_permissions entries of the entities already freed
    # re.split with a group: literal JSON, attribute, literal JSON, ..., literal JSON
    for index, piece in enumerate(re.split(f'"{re.escape(placeholder)}(\\w+)"', _skeleton_json(app, placeholder))):
        if index % 2 == 0:
            out.write(piece.encode("ascii"))
        else:
            out.write(b"[")
            _write_entity_list(_ListWriter(out), app, piece, held)
            out.write(b"]")
    return out.close()


def _skeleton_json(app: CustomApplication, placeholder: str) -> str:
    """oaaclient's payload of `app` without its entities, each entity list a placeholder string naming it."""
    skeleton_app = copy.copy(app)  # shallow: the entities themselves are neither copied nor changed
    for attribute in {attribute for _, attribute in _ENTITY_LISTS} | set(_IDENTITIES):
        setattr(skeleton_app, attribute, CaseInsensitiveDict())
    skeleton = skeleton_app.get_payload()
    lists = [(skeleton["applications"][0], key, attribute) for key, attribute in _ENTITY_LISTS]
    lists.append((skeleton, "identity_to_permissions", "identity_to_permissions"))
    for holder, key, attribute in lists:
        if holder.get(key) != []:  # not oaaclient 1.2.0's payload shape: never push one missing entities
            raise RuntimeError(f"oaaclient's payload has no empty {key!r} list to fill")
        holder[key] = placeholder + attribute
    return _encode(skeleton)


def _write_entity_list(writer: _ListWriter, app: CustomApplication, attribute: str,
                       held: dict[str, _ListWriter]) -> None:
    """One entity list of the payload; the many (users, credentials) are freed as they are written, their
    identity_to_permissions entries kept encoded in `held` until that list is written."""
    if attribute == "identity_to_permissions":
        for identities in _IDENTITIES:
            if identities in held:
                writer.add_encoded(held.pop(identities))
                continue
            for identity in getattr(app, identities).values():
                _add_identity_to_permissions(writer, identity, app.name)
    elif attribute in _FREED_AS_WRITTEN:
        entities, entries = getattr(app, attribute), _ListWriter(PayloadJSON())
        for key in list(entities):
            entity = entities.pop(key)
            writer.add(entity.to_dict())
            _add_identity_to_permissions(entries, entity, app.name)
        entries.flush()
        entries.out.close()
        held[attribute] = entries
    else:
        for entity in getattr(app, attribute).values():
            writer.add(entity.to_dict())
    writer.flush()


def _add_identity_to_permissions(writer: _ListWriter, identity: Any, application_name: str) -> None:
    """An identity's entry, when CustomApplication.get_identity_to_permissions() would list it."""
    entry = identity.get_identity_to_permissions(application_name=application_name)
    if "application_permissions" in entry or "role_assignments" in entry:
        writer.add(entry)


def save_payload(document: PayloadJSON, path: str) -> None:
    """Write the pushed JSON atomically, so a half-written file never looks like a snapshot."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".veza_openai-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.writelines(document.pieces)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _may_not_create(what: str) -> Iterator[None]:
    """A key that may push but not create (a Veza team key) gets a message saying what to do, not "refused"."""
    try:
        yield
    except OAAResponseError as exc:
        if exc.status_code != 403:
            raise
        raise PushError(f"Veza refused to create {what} (HTTP 403): this API key may not create providers or data "
                        "sources. Create them once with a key that may (e.g. an administrator's: run the connector "
                        "once with it), or grant this key's user that right; later runs need only push rights") \
            from None


@dataclass
class PushProgress:
    """How far a push got: once the payload upload began, Veza may have it whatever the answer says."""

    upload_started: bool = False


def push_payload(client: OAAClient, config: Config, payload_json: PayloadJSON, progress: PushProgress,
                 deadline: float | None = None) -> list:
    """Push serialized JSON to Veza (provider and data source created when missing); return Veza's warnings.

    This is oaaclient's push_metadata taking the JSON instead of a dict, and sending what its datasource_push
    or datasource_push_parts would send, byte for byte and request by request, without their copies of the
    payload (see _push_whole and _push_in_parts).
    """
    try:
        provider = client.get_provider(PROVIDER_NAME)
        if not provider:
            log.info("creating Veza provider %r", PROVIDER_NAME)
            with _may_not_create(f"the provider {PROVIDER_NAME!r} (template application)"):
                client.create_provider(PROVIDER_NAME, custom_template=CustomApplication.TEMPLATE,
                                       base64_icon=PROVIDER_ICON_SVG)
            provider = client.get_provider(PROVIDER_NAME)
        source = client.get_data_source(config.data_source_name, provider["id"])
        if not source:
            log.info("creating Veza data source %r", config.data_source_name)
            with _may_not_create(f"the data source {config.data_source_name!r} under provider {PROVIDER_NAME!r}"):
                client.create_data_source(config.data_source_name, provider["id"])
            source = client.get_data_source(config.data_source_name, provider["id"])
        progress.upload_started = True
        if len(payload_json) > client.MULTIPART_THRESHOLD_SIZE:
            log.info("payload is %d MB: pushing it in parts", len(payload_json) // 1_000_000)
            response = _push_in_parts(client, provider["id"], source["id"], payload_json)
        else:
            response = _push_whole(client, provider["id"], source["id"], payload_json)
    except (OAAClientError, requests.RequestException) as exc:
        for detail in getattr(exc, "details", None) or []:
            log.error("Veza: %s", detail)
        # A 4xx with Veza's own error body is a refusal; anything else after the upload began may
        # have been stored (a reset or a proxy's 502 after Veza took the body).
        refused = isinstance(exc, OAAResponseError) and 400 <= (exc.status_code or 0) < 500
        late = deadline is not None and time.monotonic() >= deadline
        raise PushError(f"push to Veza did not finish within --max-run-time {config.max_run_time:g}s" if late else
                        f"push to Veza failed: {describe_veza_error(exc)}",
                        reached_veza=progress.upload_started and not refused) from None
    return (response.get("warnings") or []) if isinstance(response, dict) else []


_BASE64_TEXT = f"base64-{os.urandom(16).hex()}"  # where _with_base64 puts the base64 text in a request body
_BASE64_STEP = 3 * 1024 * 1024  # bytes encoded at a time; a multiple of 3, so the pieces join into one encoding


def _with_base64(fields: dict, blocks: Iterable[bytes]) -> EncodedJSON:
    """The JSON body requests sends for `fields` whose _BASE64_TEXT value is base64.b64encode(b"".join(blocks))
    .decode(), with the base64 written straight into the body: oaaclient and requests hold it as bytes, then as
    str, then inside the JSON str, then as the body bytes. Base64 needs no escaping, so the bytes are the same.
    Every block but the last must be a multiple of 3 bytes long, so their encodings join into the whole's."""
    head, tail = requests.compat.json.dumps(fields, allow_nan=False).encode("utf-8").split(
        f'"{_BASE64_TEXT}"'.encode("ascii"))
    body = io.BytesIO()
    body.write(head + b'"')
    for block in blocks:
        body.write(binascii.b2a_base64(block, newline=False))
    body.write(b'"' + tail)
    return EncodedJSON(body.getvalue())


def _gzip(payload_json: PayloadJSON) -> bytes:
    """gzip.compress(bytes(payload_json)), byte for byte but for the time of compression in its header (the
    same header, level and deflate stream), compressed from the pieces a few MB at a time: no whole copy."""
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=9) as archive:
        for start in range(0, len(payload_json), _BASE64_STEP):
            archive.write(payload_json.slice(start, start + _BASE64_STEP))
    return compressed.getvalue()


def _push_whole(client: OAAClient, provider_id: str, source_id: str, payload_json: PayloadJSON) -> Any:
    """oaaclient 1.2.0's datasource_push (compression on, no options): the gzip of the JSON, base64, in one call."""
    compressed = _gzip(payload_json)
    encoded_size = sys.getsizeof("") + 4 * math.ceil(len(compressed) / 3)  # its sys.getsizeof(base64 str)
    if encoded_size > client.MAX_PAYLOAD_SIZE:
        raise OAAClientError("OVERSIZE", message=f"Payload size exceeds maximum size of 100MB: {encoded_size:,} "
                             "bytes, compression enabled: True")
    body = _with_base64({"id": provider_id, "data_source_id": source_id, "json_data": _BASE64_TEXT,
                         "compression_type": "GZIP"}, [compressed])
    del compressed
    return client.api_post(f"/api/v1/providers/custom/{provider_id}/datasources/{source_id}:push", body)


def _push_in_parts(client: OAAClient, provider_id: str, source_id: str, payload_json: PayloadJSON) -> Any:
    """oaaclient 1.2.0's datasource_push_parts: start, each DEFAULT_PART_SIZE bytes of the JSON base64 in an
    upload, complete; one part's body in memory at a time, encoded from the pieces a few MB at a time."""
    url = f"/api/v1/providers/custom/{provider_id}/datasources/{source_id}:parts"
    upload_id = client.api_post(url, {"operation": "start"}, None).get("upload_id")
    if not upload_id:
        raise OAAClientError(error="BadResponse", message="Start multipart push did not returl an upload ID")
    part_size, sequence_id = client.DEFAULT_PART_SIZE, 0
    for start in range(0, len(payload_json), part_size):
        end = min(start + part_size, len(payload_json))
        sequence_id += 1
        blocks = (payload_json.slice(block, min(block + _BASE64_STEP, end))
                  for block in range(start, end, _BASE64_STEP))
        body = _with_base64({"operation": "upload", "upload_id": upload_id, "sequence_number": sequence_id,
                             "data": _BASE64_TEXT}, blocks)
        client.api_post(url, body, None)
        del body
    return client.api_post(url, {"operation": "complete", "upload_id": upload_id, "sequence_count": sequence_id},
                           None)


# ---------------------------------------------------------------------------------------------
# The Veza report (--create-report)
# ---------------------------------------------------------------------------------------------

# Veza names the entities of an OAA custom application OAA.<application_type>.<kind>, resources
# OAA.<application_type>.<resource_type>.Resource, and queries custom properties as customprop_<name>
# (the node types Veza's community connectors' report files use, e.g. OAA.Github.User).
REPORT_NAME = "OpenAI access review"
REPORT_DESCRIPTION = ("Who administers the OpenAI organization, its admin keys, inactive users who still hold "
                      "roles, pending invites, projects whose tools reach outside, and federated workloads.")
_USER = f"OAA.{APPLICATION_TYPE}.User"
_CRED, _ROLE = f"OAA.{APPLICATION_TYPE}.AccessCred", f"OAA.{APPLICATION_TYPE}.Role"
_PROJECT = f"OAA.{APPLICATION_TYPE}.project.Resource"


def _nodes(node_type: str, **equals: Any) -> dict:
    node: dict[str, Any] = {"node_type": node_type}
    if equals:
        node["condition_expression"] = {"specs": [{"fn": "EQ", "property": name, "value": value}
                                                  for name, value in equals.items()]}
    return {"nodes": [node]}


def _query(name: str, description: str, source: dict, **rest: Any) -> dict:
    return {"name": f"OpenAI {name}", "description": description, "query_type": "SOURCE_TO_DESTINATION",
            "source_node_types": source, **rest}


# Only conditions Veza's query model is known to take (equality, permissions, relations). "Never used",
# "no expiry" and "no login for N days" need null and relative-date conditions whose JSON Veza does not
# document publicly; the README says how to add them in the Query Builder.
REPORT_QUERIES = [
    _query("organization owners", "Users holding the organization's Owner role (members and billing)",
           _nodes(_USER), relates_to_exp={"specs": [{"node_types": _nodes(_ROLE, name="Owner")}]}),
    _query("admin API keys", "Credentials holding the organization-wide Admin API Key role", _nodes(_CRED),
           relates_to_exp={"specs": [{"node_types": _nodes(_ROLE, name="Admin API Key")}]}),
    _query("inactive users holding roles", "Deactivated or banned users, and pending invites, with any role",
           _nodes(_USER, is_active=False), relates_to_exp={"specs": [{"node_types": _nodes(_ROLE)}]}),
    _query("pending invites", "Invitations not yet accepted, with the roles they grant",
           _nodes(_USER, customprop_invite_status="pending")),
    _query("projects with MCP enabled", "Projects whose settings let models call MCP servers",
           _nodes(_PROJECT, customprop_mcp_enabled=True)),
    _query("projects with web search enabled", "Projects whose settings let models search the web",
           _nodes(_PROJECT, customprop_web_search_enabled=True)),
    _query("federated workloads with restricted scopes", "Workload identity federation rules (restricted)",
           _nodes(_CRED, customprop_permission_type="restricted")),
    _query("federated workloads with service account permissions",
           "Workload identity federation rules acting with their service account's full permissions",
           _nodes(_CRED, customprop_permission_type="service_account_default")),
]


MAX_VEZA_LIST_PAGES = 100  # 25,000 saved queries or reports at oaaclient's 250 a page; more is a looping server


def veza_list(client: OAAClient, path: str, **params: Any) -> list[dict]:
    """Every entry of a paged Veza list, at most MAX_VEZA_LIST_PAGES pages: oaaclient's own loop
    (get_queries, get_reports) follows `has_more` for ever."""
    params["page_size"] = client.DEFAULT_PAGE_SIZE
    values: list[dict] = []
    tokens: set[str] = set()
    for _ in range(MAX_VEZA_LIST_PAGES):
        answer = client._perform_request("GET", path, params=params)
        page = answer.get("values") if isinstance(answer, dict) else None
        if not isinstance(page, list):
            raise ValueError(f"{path}: Veza's answer has no list of values")
        values.extend(entry for entry in page if isinstance(entry, dict))
        if not answer.get("has_more"):
            return values
        token = answer.get("next_page_token")
        if not isinstance(token, str) or not token or token in tokens:
            raise ValueError(f"{path}: has_more without a new next_page_token; stopped instead of looping")
        tokens.add(token)
        params["page_token"] = token
    raise ValueError(f"{path}: still has_more after {MAX_VEZA_LIST_PAGES} pages; stopped instead of looping")


def _same_as_sent(stored: Any, sent: Any) -> bool:
    """Whether Veza's stored value says what we sent: only the fields we sent are compared (Veza adds its
    own), a field Veza leaves out equals a default we sent (false, 0, "", empty: proto3 JSON omits them),
    and an integer where we sent an enum name (e.g. "SOURCE_TO_DESTINATION") counts as that name."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            _same_as_sent(stored[key], value) if key in stored else not value for key, value in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(
            _same_as_sent(a, b) for a, b in zip(stored, sent))
    if isinstance(sent, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", sent) and type(stored) is int:
        return True
    return type(stored) is type(sent) and stored == sent


def create_or_update_report(client: OAAClient) -> str:
    """Make Veza's report and its saved queries match REPORT_QUERIES; return what changed.

    Found by name, so a second run changes nothing. (oaaclient's build_report never updates a query's
    definition nor adds new queries to an existing report, so this does it with the client's calls.)
    """
    changed = created = False
    existing = {q.get("name"): q for q in veza_list(client, "/api/v1/assessments/queries",
                                                    include_inactive_queries=True)
                if q.get("query_type") != "SYSTEM_CREATED"}
    query_ids = []
    for definition in REPORT_QUERIES:
        query = existing.get(definition["name"])
        if query is None:
            query = client.create_query(definition)
            changed = True
        elif not _same_as_sent(query, definition):
            client.api_put(f"/api/v1/assessments/queries/{query['id']}", {**definition, "id": query["id"]})
            changed = True
        query_ids.append(query["id"])
    reports = veza_list(client, "/api/preview/assessments/reports", include_inactive_reports=True,
                        include_inactive_queries=True)
    report = next((r for r in reports if r.get("name") == REPORT_NAME), None)
    if report is None:
        client.create_report({"name": REPORT_NAME, "description": REPORT_DESCRIPTION,
                              "queries": [{"query": query_id} for query_id in query_ids]})
        created = True
    else:
        present = {entry.get("query") for entry in client.get_report_by_id(report["id"]).get("queries") or []}
        for query_id in query_ids:
            if query_id not in present:
                client.add_query_report(report["id"], query_id)
                changed = True
    return "created" if created else "updated" if changed else "unchanged"


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    outcome: str = "failed"
    counts: dict[str, int] = field(default_factory=dict)
    warnings: int = 0  # every warning line the run logged (WarningCounter)
    left_out: str = ""  # the families left out (refused, or missing from the organization), comma-separated
    veza_warnings: int = 0
    throttled: int = 0
    calls: int = 0
    retries: int = 0
    seconds: float = 0.0
    report: str = ""  # with --create-report: created, updated, unchanged or failed

    def fields(self) -> dict[str, Any]:
        return {"outcome": self.outcome, **self.counts, "warnings": self.warnings, "left_out": self.left_out,
                "veza_warnings": self.veza_warnings, "throttled": self.throttled, "calls": self.calls,
                "retries": self.retries, "seconds": round(self.seconds, 1),
                **({"report": self.report} if self.report else {}), "version": __version__}

    def line(self) -> str:
        return "summary: " + " ".join(f"{k}={f'{v:.1f}' if k == 'seconds' else v}" for k, v in self.fields().items())

    def log(self, level: int) -> None:
        log_with_fields(level, {"summary": True, **self.fields()}, "%s", self.line())


class WarningCounter(logging.Handler):
    """Counts the warning lines the connector logs, so the summary's `warnings=` misses none."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(logging.WARNING)
        self.summary = summary

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.WARNING:
            self.summary.warnings += 1


@contextlib.contextmanager
def warnings_counted(summary: RunSummary) -> Iterator[None]:
    counter = WarningCounter(summary)
    log.addHandler(counter)
    try:
        yield
    finally:
        log.removeHandler(counter)


def _log_unavailable(snapshot: Snapshot) -> None:
    for name, reason in snapshot.unavailable.items():
        family = FAMILIES[name]
        log.warning("left out %s (%s): grant the admin key '%s', or the organization does not have it",
                    family.label, reason, family.grant)


def read_organization(config: Config, summary: RunSummary, deadline: float | None = None) -> tuple[Snapshot, str]:
    """Every family from OpenAI, and how the per-user role reads were decided."""
    client = OpenAIAdminClient(config)
    log.info("reading OpenAI organization %s at %s with %d workers", config.org_id, config.openai_base_url,
             config.max_workers)
    reader = Scheduler(client, config, FAMILY_LIST, deadline)
    plan = ReadPlan(config, reader)
    try:
        snapshot = plan.read()
    finally:
        summary.calls, summary.retries, summary.throttled = reader.calls, reader.retries, reader.throttled
        client.session.close()
    summary.left_out = ",".join(sorted(snapshot.unavailable))
    _log_unavailable(snapshot)
    if snapshot.organization is None:
        log.info("is_personal left unset: the organization object is not readable with this key")
    log_with_fields(logging.INFO, {"stage": "read", "users": len(snapshot.users),
                                   "projects": None if snapshot.projects is None else len(snapshot.projects),
                                   "groups": None if snapshot.groups is None else len(snapshot.groups),
                                   "calls": reader.calls, "retries": reader.retries, "throttled": reader.throttled},
                    "read %d users, %s projects, %s groups in %d calls (%d retries, %d answered 429)",
                    len(snapshot.users), "-" if snapshot.projects is None else len(snapshot.projects),
                    "-" if snapshot.groups is None else len(snapshot.groups), reader.calls, reader.retries,
                    reader.throttled)
    return snapshot, plan.role_decision_reason


def discover(config: Config, summary: RunSummary, deadline: float | None = None) -> PayloadJSON:
    """Read, map and serialise; return only the payload JSON.

    Each stage's input is freed once the next has it: the records once the objects are built, the
    objects once they are serialised. The payload dict never exists (serialize_application).
    """
    snapshot, _ = read_organization(config, summary, deadline)
    # The finished reader is in reference cycles (its callbacks) and holds every record: only the cyclic
    # collector frees it, and that is paused from here on. ~0.1 s at 100,000 users.
    gc.collect()
    log_memory("reading")
    mapping_started = time.monotonic()
    with cyclic_gc_paused():
        result = build_application(snapshot)
        del snapshot  # the records: only the objects are needed from here on
        log_memory("mapping")
        summary.counts = result.counts
        for level, message in result.notes:
            log.log(level, "%s", message)
        for message in result.warnings:
            log.warning("%s", message)
        payload_json = serialize_application(result.application)
        del result
    seconds = time.monotonic() - mapping_started
    log_memory("serialising")
    log_with_fields(logging.INFO, {"stage": "mapped", **summary.counts, "seconds": round(seconds, 2)},
                    "mapped %s in %.2fs", " ".join(f"{k}={v}" for k, v in summary.counts.items()), seconds)
    return payload_json


def run(config: Config, summary: RunSummary | None = None, progress: PushProgress | None = None,
        deadline: float | None = None) -> RunSummary:
    """Read, map, save and push once, by `deadline` (--max-run-time) when given. Raises DiscoveryError or
    PushError; fills `summary` as it goes."""
    summary = summary or RunSummary()
    with warnings_counted(summary):
        return _run_counted(config, summary, progress or PushProgress(), deadline)


def _run_counted(config: Config, summary: RunSummary, progress: PushProgress,
                 deadline: float | None) -> RunSummary:
    veza = None
    if not config.dry_run:  # fail fast, before spending OpenAI quota, when Veza cannot take the result
        log.info("connecting to Veza at %s", config.veza_url)
        veza = connect_veza(config, deadline)

    payload_json = discover(config, summary, deadline)
    if config.save_json_path:
        try:
            save_payload(payload_json, config.save_json_path)
        except OSError as exc:
            raise PushError(f"could not write the payload to {config.save_json_path}: {exc.strerror or exc} "
                            "(full disk?); not pushing a snapshot that --save_json could not keep") from None
        log.info("payload saved to %s (%d bytes)", config.save_json_path, len(payload_json))
        log_memory("saving")
    if config.dry_run:
        summary.outcome = "dry-run"
        return summary

    log.info("pushing to Veza data source %r", config.data_source_name)
    veza_warnings = push_payload(veza, config, payload_json, progress, deadline)
    log_memory("pushing")
    summary.outcome = "pushed"  # settled when Veza answered: a later signal or failure changes only report=
    summary.veza_warnings = len(veza_warnings)
    for warning in veza_warnings:
        log.warning("Veza: %s", warning)
    if config.create_report:
        try:
            summary.report = create_or_update_report(veza)
            log.info("Veza report %r %s (%d queries)", REPORT_NAME, summary.report, len(REPORT_QUERIES))
        except Exception as exc:  # Veza's refusal or an odd answer: the push stands either way
            # The snapshot is in Veza; a report that could not be made is said loudly but does not undo it.
            summary.report = "failed"
            late = deadline is not None and time.monotonic() >= deadline
            log.error("Veza report %r not created or updated: %s", REPORT_NAME,
                      f"--max-run-time {config.max_run_time:g}s reached" if late else describe_veza_error(exc))
    return summary


@dataclass
class SignalState:
    finished: bool = False  # once the outcome is decided, a late signal no longer interrupts the summary
    stopping: bool = False  # the first signal is being handled: a second one (a double Ctrl-C) changes nothing


@contextlib.contextmanager
def stop_on_signals() -> Iterator[SignalState]:
    """SIGTERM (docker stop, Kubernetes, systemd) and SIGINT (Ctrl-C) stop the run, raising Stopped.

    Installing a handler matters most as PID 1 in a container, where a signal with no handler is
    ignored: without it `docker stop` waits 10 s and kills the run mid-push.
    """
    state = SignalState()
    names = {signal.SIGTERM: ("SIGTERM", ExitStatus.TERMINATED), signal.SIGINT: ("Ctrl-C (SIGINT)",
                                                                                 ExitStatus.INTERRUPTED)}

    def stop(signum: int, frame: Any) -> None:
        if not state.finished and not state.stopping:
            state.stopping = True
            raise Stopped(*names[signal.Signals(signum)])

    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {signum: signal.signal(signum, stop) for signum in names}
    try:
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _log_what_veza_has(config: Config, maybe_stored: bool) -> None:
    if maybe_stored:
        log.error("outcome unknown: Veza may have received the payload; check data source %r in Veza before "
                  "the next run", config.data_source_name)
    else:
        log.error("nothing was pushed; Veza keeps the previous snapshot")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    try:
        config = load_config(argv)
    except ConfigError as exc:
        configure_logging(False, secrets_in_environment(os.environ), log_format_asked(argv, os.environ))
        for problem in exc.problems:
            log.error("configuration error: %s", problem)
        summary = RunSummary(outcome="config-error", seconds=time.monotonic() - started)
        summary.log(logging.ERROR)
        return ExitStatus.CONFIG
    configure_logging(config.debug, config.secrets(), config.log_format)
    log.info("veza_openai %s; OpenAI key from %s (%s)", __version__, config.openai_key_source,
             mask_key(config.openai_api_key))
    for note in config.notes:
        log.warning("configuration: %s", note)
    summary = RunSummary(warnings=len(config.notes))  # run() counts the warning lines that follow
    progress = PushProgress()
    status = ExitStatus.FAILED
    deadline = started + config.max_run_time if config.max_run_time else None  # the whole run, push and report
    with stop_on_signals() as signals:
        try:
            run(config, summary, progress, deadline)
            signals.finished = True  # pushed: a late signal must not turn that into "interrupted"
            status = ExitStatus.OK
        except (DiscoveryError, PushError) as exc:
            log.error("%s", exc, exc_info=config.debug)
            maybe_stored = getattr(exc, "reached_veza", False)
            _log_what_veza_has(config, maybe_stored)
            if maybe_stored:
                summary.outcome = "unknown"
        except (KeyboardInterrupt, Stopped) as exc:
            name, status = ((exc.signal_name, exc.status) if isinstance(exc, Stopped)
                            else ("Ctrl-C (SIGINT)", ExitStatus.INTERRUPTED))
            if summary.outcome == "pushed":  # Veza had answered the push: only the report was cut short
                summary.report = "interrupted"
                log.error("stopped by %s while creating the Veza report; the push had completed", name)
            else:
                summary.outcome = "unknown" if progress.upload_started else "interrupted"
                log.error("stopped by %s", name)
                _log_what_veza_has(config, progress.upload_started)
        except Exception as exc:  # a bug or an unforeseen answer: still one clear line, no partial push
            log.error("unexpected error: %s: %s (run with --debug for the traceback)", type(exc).__name__, exc,
                      exc_info=config.debug)
            _log_what_veza_has(config, progress.upload_started)
            if progress.upload_started:
                summary.outcome = "unknown"
        signals.finished = True
        summary.seconds = time.monotonic() - started
        summary.log(logging.INFO if status == ExitStatus.OK else logging.ERROR)
    return int(status)


if __name__ == "__main__":
    try:
        exit_status = main()
    except KeyboardInterrupt:  # Ctrl-C outside the run's own handlers (before they are set, after they are restored)
        exit_status = ExitStatus.INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run is over: a late Ctrl-C must not print a traceback at exit
    sys.exit(exit_status)
