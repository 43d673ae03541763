#!/usr/bin/env python3
"""Veza OAA connector for OpenAI: pushes who can do what in an organization to Veza."""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import difflib
import email.utils
import enum
import fcntl
import gc
import glob
import gzip
import hashlib
import heapq
import ipaddress
import itertools
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
import zlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

try:
    import requests
    from oaaclient.templates import CustomApplication, OAAPermission, OAAPropertyType
    from requests.packages import urllib3
except ImportError as missing:
    sys.stderr.write(f"veza_openai.py: Python package {missing.name!r} missing: python3 -m venv .venv && "
                     ".venv/bin/pip install -r requirements.txt, then run .venv/bin/python veza_openai.py\n")
    sys.exit(2)

__version__ = "1.4.0"
USER_AGENT = f"veza-openai-connector/{__version__}"
PROVIDER_NAME = "OpenAI"
APPLICATION_TYPE = "OpenAI"

log = logging.getLogger("veza_openai")


class ExitStatus(enum.IntEnum):
    """README: Exit status."""

    OK = 0  # pushed; with --dry-run: saved
    FAILED = 1  # nothing pushed, or the outcome unknown
    CONFIG = 2  # configuration error, nothing sent (argparse's too)
    INTERRUPTED = 130  # 128 + SIGINT (Ctrl-C)
    INCOMPLETE = 3  # --state-dir: lists left; the next run goes on
    TERMINATED = 143  # 128 + SIGTERM (docker stop)


class ConfigError(Exception):
    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = problems


class DiscoveryError(Exception):
    """OpenAI was not read completely: nothing may be pushed."""


class Incomplete(Exception):
    """--state-dir: lists missing or too old."""


class PushError(Exception):
    """Veza refused or could not take the payload; `reached_veza`: it may have arrived anyway."""

    def __init__(self, message, *, reached_veza=False):
        super().__init__(message)
        self.reached_veza = reached_veza


class Stopped(BaseException):
    """SIGTERM or Ctrl-C, like KeyboardInterrupt."""

    def __init__(self, signal_name, status):
        super().__init__(signal_name)
        self.signal_name, self.status = signal_name, status


# ------------------------
# Options: one table makes the parser, the bounds, --help and Config
# ------------------------

@dataclass(frozen=True)
class Option:
    """One setting; messages name its first flag."""

    flags: tuple  # () for a variable only
    env: str  # None: command line only
    help: str
    kind: Any = None  # int, float: a number in low..high; bool: a switch; a tuple: one of its words; None: text
    default: Any = None
    low: float = 0
    high: float = 0
    dest: str = ""  # by default from the first flag

    def __post_init__(self):
        object.__setattr__(self, "dest", self.dest or self.flags[0][2:].replace("-", "_"))

    @property
    def label(self):  # every option checked has a variable
        return f"{self.flags[0]} (env {self.env})" if self.flags else self.env


OPTIONS = (
    Option(("--veza-url", "--veza_url"), "VEZA_URL", "Veza instance URL"),
    Option(("--openai-org", "--openai_org"), "OPENAI_ORG_ID", "OpenAI organization ID, org-...", dest="org_id"),
    Option(("--openai-base-url",), "OPENAI_BASE_URL", "base URL", None, "https://api.openai.com/v1"),
    Option(("--save-json", "--save_json"), None, "also save the payload JSON in PATH: a directory "
           "(default .) or .json file"),
    Option(("--dry-run",), None, "save the payload JSON, push nothing; needs no Veza settings", bool),
    Option(("--create-report",), "VEZA_CREATE_REPORT", "then create or update the Veza report 'OpenAI access review'",
           bool),
    Option(("--debug",), None, "debug logging", bool),
    Option(("--log-format",), "LOG_FORMAT", "text or JSON lines", ("text", "json"), "text"),
    Option(("--max-run-time",), "OPENAI_MAX_RUN_TIME", "seconds the whole run may take; no limit by default", float,
           None, 1, 7 * 86_400),
    Option(("--role-assignments",), "OPENAI_ROLE_ASSIGNMENTS", "per-user role assignment reads: auto, all or none",
           ("auto", "all", "none"), "auto"),
    Option(("--activity-days",), "OPENAI_ACTIVITY_DAYS", "days of audit log read for last logins and key "
           "scopes; 0: none", int, 90, 0, 3650),
    Option(("--max-workers",), "OPENAI_MAX_WORKERS", "concurrent OpenAI requests", int, 8, 1, 64),
    Option(("--max-requests-per-second",), "OPENAI_MAX_REQUESTS_PER_SECOND", "cap on all OpenAI requests per second; "
           "none by default", float, None, 0.01, 10_000),
    Option(("--max-requests-per-minute-per-endpoint",), "OPENAI_MAX_RPM_PER_ENDPOINT", "cap on each endpoint's "
           "requests per minute", int, None, 1, 100_000),
    Option(("--timeout",), "OPENAI_TIMEOUT", "seconds for one whole OpenAI answer", float, 30.0, 0.05, 600),
    Option(("--max-retries",), "OPENAI_MAX_RETRIES", "retries on 5xx and network errors", int, 6, 0, 20),
    Option(("--max-throttle-wait",), "OPENAI_MAX_THROTTLE_WAIT", "seconds one request may get 429s "
           "before the run fails", float, 900.0, 0.1, 86_400),
    Option(("--state-dir",), "OPENAI_STATE_DIR", "keep the lists read here: a cut run goes on (emails)"),
    Option(("--max-age",), "OPENAI_MAX_AGE", "seconds a kept list may be old and be pushed", int, 86_400, 60,
           30 * 86_400),
    Option(("--changes-json",), None, "write the changes since the last push to this file"),
    Option(("--previous",), None, "a payload saved by --save-json to compare with"),
    # oaaclient's variables and defaults.
    Option((), "OAA_API_RETRIES", "retries of a Veza call", int, 10, 0, 100, dest="veza_retries"),
    Option((), "OAA_API_TIMEOUT", "seconds for one whole Veza answer", float, 300.0, 1, 3600, dest="veza_timeout"),
    Option((), "VEZA_OPENAI_TIME_SCALE", "time scale", float, 1.0, 0.001, 1.0, dest="time_scale"),
)
OPTION = {option.dest: option for option in OPTIONS}
SECRET_VARIABLES = ("OPENAI_ADMIN_KEY", "OPENAI_API_KEY", "VEZA_API_KEY")
SECRETS_FROM = ("secrets are read from the environment only: OPENAI_ADMIN_KEY (wins) or OPENAI_API_KEY, VEZA_API_KEY, "
                "or their _FILE variants")
KNOWN_VARIABLES = {*(option.env for option in OPTIONS if option.env), "VEZA_UNSAFE_HTTPS", *SECRET_VARIABLES,
                   *(f"{name}_FILE" for name in SECRET_VARIABLES)}
SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")
MAX_SECRET_LENGTH = 4096  # keys are ~200 characters; more is a pasted file


class Config:
    DERIVED = {"openai_api_key": None, "veza_api_key": None, "save_json_path": None,
               "openai_key_source": "OPENAI_API_KEY", "veza_unverified": False, "notes": ()}

    def __init__(self, **values):
        assert values.keys() <= OPTION.keys() | self.DERIVED.keys(), values
        self.__dict__.update({**{option.dest: option.default for option in OPTIONS}, **self.DERIVED, **values})

    @property
    def data_source_name(self):
        return f"{PROVIDER_NAME} - {self.org_id}"


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        raise ConfigError([f"{message} (see --help)"])


def build_arg_parser(options=OPTIONS, add_help=True):
    """Values stay text: ConfigReader checks them."""
    parser = ArgumentParser(prog="veza_openai.py", add_help=add_help,
                            description=f"Push an OpenAI organization's access to Veza (OAA); {SECRETS_FROM}.")
    if add_help:
        parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for option in [option for option in options if option.flags]:
        how = {"action": "store_true", "default": None} if option.kind is bool else {}
        if option.dest == "save_json":
            how = {"nargs": "?", "const": ".", "metavar": "PATH"}
        shown = f"{option.default:g}" if isinstance(option.default, float) else option.default
        env = f"env: {option.env or 'none'}" + ("" if shown is None else f", default: {shown}")
        parser.add_argument(*option.flags, dest=option.dest, help=f"{option.help} ({env})", **how)
    return parser


def is_loopback(host):
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mask_key(key):
    kind = next((prefix for prefix in ("sk-admin-", "sk-proj-", "sk-svcacct-", "sk-") if key.startswith(prefix)), "")
    return f"{kind}...{key[-4:]}" if len(key) - len(kind) >= 16 else f"{kind}..."


def mine(found):
    return found.st_uid == os.geteuid()


def unknown_arguments_problem(extras):
    """Names unknown flags, never the values beside them (a pasted key)."""
    flags = [arg.partition("=")[0][:60] for arg in extras if arg.startswith("-")]
    values = len(extras) - len(flags)
    if flags:
        known = [flag for option in OPTIONS for flag in option.flags] + ["--help", "--version"]
        guesses = [match for flag in flags[:5] for match in difflib.get_close_matches(flag, known, 1, 0.75)]
        message = f"unrecognized arguments: {', '.join(flags[:5])}" + (
            f" and {values} value(s), not shown" if values else "") + (
            f" (did you mean {', '.join(guesses)}?)" if guesses else "")
    else:
        message = f"{values} unexpected argument(s), not shown; every setting is a flag"
    if any(arg.startswith("sk-") or re.search("key|token", arg.lower()) for arg in extras):
        message += f"; {SECRETS_FROM}"
    return message + " (see --help)"


class ConfigReader:
    """Flags and environment into a Config, or a ConfigError naming every problem."""

    def __init__(self, env):
        self.env, self.problems, self.notes = env, [], []  # notes: warnings logged as the run starts

    def problem(self, message):
        self.problems.append(message)

    def read(self, argv):
        args, extras = build_arg_parser().parse_known_args(argv)
        if extras:
            self.problem(unknown_arguments_problem(extras))
        settings = {option.dest: self.checked_value(option, getattr(args, option.dest, None)) for option in OPTIONS}
        dry_run = bool(settings["dry_run"])
        named = "OPENAI_ORG_ID (or --openai-org)"
        if not settings["org_id"]:
            self.not_set(named)
        elif not re.fullmatch(r"org-[A-Za-z0-9_-]{1,128}", settings["org_id"]):
            settings["org_id"] = self.problem(f"{named} must look like org-XXXX (letters, digits, - or _)")
        settings["openai_api_key"], settings["openai_key_source"] = self.openai_key()
        settings["openai_base_url"] = self.checked_url(
            settings["openai_base_url"], "OPENAI_BASE_URL (or --openai-base-url)", openai=True)
        if not dry_run:
            self.veza_settings(settings)
        save_json = settings.pop("save_json") or ("." if dry_run else None)
        settings["save_json_path"] = save_json and self.save_path(save_json, settings["org_id"])
        settings["state_dir"] = settings["state_dir"] and self.state_directory(settings["state_dir"])
        if (previous := settings["previous"]) and not os.path.isfile(previous):
            self.problem(f"--previous {previous!r} is not a file")
        files = [*map(os.path.realpath, filter(None, (settings["save_json_path"], previous, settings["changes_json"])))]
        if len(set(files)) < len(files):  # else a push is compared with itself
            self.problem("--save-json, --previous and --changes-json must name different files")
        if (changes := settings["changes_json"]) and not os.path.isdir(os.path.dirname(os.path.abspath(changes))):
            self.problem(f"--changes-json directory {os.path.dirname(changes)!r} does not exist")
        if self.problems:
            raise ConfigError(self.problems)
        settings.update(dry_run=dry_run, debug=bool(settings["debug"]), notes=tuple(self.notes),
                        create_report=bool(settings["create_report"]) and not dry_run)
        return Config(**settings)

    def unquoted(self, value, name):
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            self.notes.append(f"{name} is wrapped in quotes (docker --env-file keeps them), removed: write it unquoted")
            return value[1:-1]
        return value

    def checked_value(self, option, raw):
        if raw is None and option.env and self.env.get(option.env):
            raw = self.unquoted(self.env[option.env], option.env)
        if not raw:
            return option.default
        word = str(raw).strip().lower()  # a switch given on the command line is True
        if option.kind is bool:
            if word in ("true", "false", "1", "0", "yes", "no"):
                return word in ("true", "1", "yes")
            self.problem(f"{option.env} must be true or false")
        elif option.kind in (int, float):
            try:
                if option.low <= (value := option.kind(raw)) <= option.high:
                    return value
                self.problem(f"{option.label} must be between {option.low:g} and {option.high:g}")
            except ValueError:
                self.problem(f"{option.label} must be a number, got {raw[:20]!r}")
        elif option.kind is None:
            return raw
        elif word in option.kind:
            return word
        else:
            self.problem(f"{option.label} must be {', '.join(option.kind[:-1])} or {option.kind[-1]}")
        return option.default

    def checked_url(self, value, name, *, openai):
        try:
            parts = urllib.parse.urlsplit(value if "://" in value else f"https://{value}")
            parts.port  # noqa: B018 (raises ValueError on a bad port)
        except ValueError:
            return self.problem(f"{name} is not a valid URL")
        if SPACE_OR_CONTROL.search(value):
            problem = "contains whitespace or control characters"
        elif not parts.hostname:
            problem = "is not a valid URL"
        elif parts.username or parts.password:
            problem = "must not contain credentials (user:password@)"
        elif parts.query or parts.fragment:
            problem = "must not contain a query string or fragment"
        elif not openai and parts.path.strip("/"):
            problem = f"must be the instance's address only, not {parts.path[:40]!r}"
        elif parts.scheme != "https" and not (openai and parts.scheme == "http" and is_loopback(parts.hostname)):
            problem = "must use https" + (" (http only to loopback)" if openai else "")
        else:
            return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")
        return self.problem(f"{name} {problem}")

    def read_secret_file(self, path, variable):
        """A regular file only: a FIFO would block the run."""
        if path.startswith("sk-"):
            return self.problem(f"{variable} holds what looks like an API key, not a file path: put the key in "
                                f"{variable.removesuffix('_FILE')}")
        shown = repr(path) if path.startswith("/") and not SPACE_OR_CONTROL.search(path) else "the file it names"
        where = f"{variable}: {shown}"  # an absolute path only: never a pasted key
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except (OSError, ValueError) as exc:
            return self.problem(f"{where} cannot be read ({getattr(exc, 'strerror', None) or type(exc).__name__})")
        if not stat.S_ISREG(mode := os.fstat(descriptor).st_mode):
            os.close(descriptor)
            return self.problem(f"{where} is not a regular file")
        if mode & stat.S_IROTH and not os.fstatvfs(descriptor).f_flag & os.ST_RDONLY:
            self.notes.append(f"{where} is readable by other users (mode {stat.S_IMODE(mode):04o}): chmod 600 it")
        with open(descriptor, "rb") as handle:  # not UTF-8: non-ASCII, which secret() refuses
            value = handle.read(MAX_SECRET_LENGTH + 2).decode("utf-8", "replace").rstrip("\r\n")
        return value or self.problem(f"{where} is empty")

    def secret(self, name):
        """(checked value, its variable): `name`, or the file `name`_FILE names."""
        file_name = f"{name}_FILE"
        direct, path = self.env.get(name), self.env.get(file_name)
        if direct and path:
            return self.problem(f"{name} and {file_name} are both set; set only one"), name
        source = name if direct else file_name if path else None
        value = direct or path and self.read_secret_file(path, file_name)
        if not value:  # unset, or unreadable (a problem says so)
            return None, source
        value = self.unquoted(value, source)
        if not value:  # '""' unquoted
            problem = "is not set"
        elif len(value) > MAX_SECRET_LENGTH:
            problem = f"is {len(value):,} characters long; a key is a few hundred"
        elif SPACE_OR_CONTROL.search(value):
            where = "a trailing newline" if value[-1] in "\r\n" else "whitespace, a newline or control characters"
            problem = f"contains {where}: remove it, or use {file_name} (a file's trailing newlines are dropped)"
        elif not value.isascii():
            problem = "contains non-ASCII characters"
        else:
            return value, source
        return self.problem(f"{source} {problem}"), source

    def save_path(self, value, org_id):
        path = value
        if os.path.isdir(value) or not value.lower().endswith(".json"):
            path = os.path.join(value, f"openai-{org_id or 'org'}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json")
        if not os.path.isdir(directory := os.path.dirname(path) or "."):
            return self.problem(f"--save-json directory {directory!r} does not exist")
        name_max = 255
        with contextlib.suppress(OSError, ValueError):
            name_max = os.pathconf(directory, "PC_NAME_MAX")
        if len(os.path.basename(path).encode()) > name_max:
            return self.problem(f"--save-json file name is longer than the file system's {name_max} bytes")
        try:  # os.access says yes to root even on a read-only mount
            tempfile.TemporaryFile(dir=directory).close()
        except OSError:
            return self.problem(f"--save-json directory {directory!r} is not writable by uid {os.getuid()}")
        return path

    def state_directory(self, path):
        """Made 0700; refused when others may write it (they could plant lists to push)."""
        name = f"{OPTION['state_dir'].label} {path!r}"
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            if stat.S_ISDIR((found := os.stat(path)).st_mode) and not found.st_mode & 0o022 and mine(found):
                with tempfile.TemporaryFile(dir=path):
                    return path
        except OSError as exc:
            return self.problem(f"{name} cannot be used: {exc.strerror or exc}")
        return self.problem(f"{name} is not a directory" if not stat.S_ISDIR(found.st_mode) else
                            f"{name} can be written by others: chmod 700 {path}" if mine(found) else
                            f"{name} belongs to uid {found.st_uid}, not {os.geteuid()}: others could plant lists")

    def not_set(self, named):
        """`named`: "VARIABLE (or ...)"; unknown variables of its prefix are likely misspellings."""
        variable = named.split()[0]
        prefix = variable.split("_")[0] + "_"
        unknown = sorted(name for name in self.env if name.startswith(prefix) and name not in KNOWN_VARIABLES)
        hint = f" ({', '.join(unknown[:3])} set: did you mean {variable}?)" if unknown else ""
        self.problem(f"{named} is not set{hint}")

    def openai_key(self):
        """(key, its variable); OPENAI_ADMIN_KEY wins: OPENAI_API_KEY may serve other tools."""
        for name in ("OPENAI_ADMIN_KEY", "OPENAI_API_KEY"):
            key, source = self.secret(name)
            if key and key.startswith(("sk-proj-", "sk-svcacct-")):
                kind = "a project key" if key.startswith("sk-proj-") else "a service account key"
                return self.problem(f"{source} holds {kind} ({mask_key(key)}), which the Admin API refuses: use an "
                                    "admin key (sk-admin-...)"), source
            if source:
                return key, source
        return self.not_set("OPENAI_API_KEY (or OPENAI_ADMIN_KEY, or either's _FILE variant)"), None

    def veza_settings(self, settings):
        url, named = settings["veza_url"], "VEZA_URL (or --veza-url)"
        settings["veza_url"] = self.checked_url(url, named, openai=False) if url else self.not_set(named)
        settings["veza_api_key"], source = self.secret("VEZA_API_KEY")
        if not source:
            self.not_set("VEZA_API_KEY")
        settings["veza_unverified"] = self.env.get("VEZA_UNSAFE_HTTPS", "").strip().lower() == "true"
        if settings["veza_unverified"]:
            self.notes.append("VEZA_UNSAFE_HTTPS=true: Veza's TLS certificate is not verified (test instances only)")


def load_config(argv=None, environ=None):
    return ConfigReader(os.environ if environ is None else environ).read(argv)


def log_format_asked(argv, env):
    """Read even from a wrong configuration: its errors ship as JSON too."""
    value = None
    with contextlib.suppress(ConfigError):  # a flag's value missing
        value = build_arg_parser([OPTION["log_format"]], add_help=False).parse_known_args(argv)[0].log_format
    value = (value or env.get("LOG_FORMAT") or "").strip().strip("\"'").lower()
    return "json" if value == "json" else "text"


# ------------------------
# Logging: one line per record, server text escaped, secrets masked
# ------------------------

UNSAFE_IN_LOGS = re.compile(  # could forge lines, or hide or reorder text
    "[\x00-\x1f\x7f-\x9f\xad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\U000e0000-\U000e007f]")
KEY_LIKE = re.compile(r"sk-[A-Za-z0-9_-]{12,}")


def escape_for_log(text):
    return UNSAFE_IN_LOGS.sub(lambda match: repr(match.group())[1:-1], text)


class RedactingFormatter(logging.Formatter):
    def __init__(self, secrets, fmt=None):
        super().__init__(fmt)
        self.secrets = [s for s in secrets if s and len(s.strip()) >= 8]  # masking a shorter one would shred every line

    def formatMessage(self, record):
        record.message = escape_for_log(record.message)
        return super().formatMessage(record)

    def formatException(self, ei):
        # Indented, so no traceback line passes for a record.
        return "\n".join(f"  | {escape_for_log(line)}" for line in super().formatException(ei).splitlines())

    def redact(self, text):
        for secret in self.secrets:
            text = text.replace(secret, "[REDACTED]")
        return KEY_LIKE.sub(lambda match: f"[REDACTED {mask_key(match.group())}]", text)

    def format(self, record):
        return self.redact(super().format(record))


class JsonFormatter(RedactingFormatter):
    def format(self, record):
        entry = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
                 .replace("+00:00", "Z"), "level": record.levelname, "message": record.getMessage(),
                 **getattr(record, "fields", {})}
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        # Masked before json.dumps escapes a secret's quotes; ensure_ascii escapes control characters.
        return json.dumps({name: self.redact(value) if isinstance(value, str) else value
                           for name, value in entry.items()}, default=str)


class LogHandler(logging.StreamHandler):
    warnings = 0

    def emit(self, record):
        self.warnings += record.levelno == logging.WARNING
        super().emit(record)


def log_with_fields(level, fields, message, *args):
    log.log(level, message, *args, extra={"fields": fields})


def configure_logging(debug, secrets, log_format):
    handler = LogHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if log_format == "json" else
                         RedactingFormatter(secrets, "%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    logging.captureWarnings(True)
    # VEZA_UNSAFE_HTTPS is warned of once, not per request.
    warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
    return handler


# ------------------------
# HTTP: one request to either API, its whole answer within a deadline
# ------------------------

CONNECT_TIMEOUT_CAP = 10.0  # a slower connect is a dead host, whatever --timeout says
ANSWER_BYTES_IN_FLIGHT = 256 * 2 ** 20  # decompressed, all answers at once: each gets this / --max-workers
VEZA_ANSWER_BYTES = 32 * 2 ** 20  # one Veza answer, decompressed
MAX_WAIT = 60.0  # the longest retry wait after a 5xx or from Veza


class Clock:
    """The --max-run-time deadline (reading, push, report) and the tests' time scale."""

    def __init__(self, scale=1.0, max_run_time=None):
        self.scale, self.max_run_time, self.started = scale, max_run_time, time.monotonic()
        self.deadline = self.started + max_run_time if max_run_time else math.inf

    def left(self):
        return self.deadline - time.monotonic()

    def passed(self):
        return self.left() <= 0


def retry_hint(headers):
    """(seconds, whether whole) from retry-after-ms or retry-after, as the SDK reads them."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = (headers.get(name) or "").strip()
        seconds = math.nan
        with contextlib.suppress(ValueError):
            seconds = float(raw) * scale
        if name == "retry-after" and math.isnan(seconds):
            with contextlib.suppress(TypeError, ValueError, OverflowError):
                seconds = (email.utils.parsedate_to_datetime(raw) - datetime.now(timezone.utc)).total_seconds()
        if 0 < seconds < math.inf:
            return seconds, name == "retry-after"


def backoff(attempt, hint):
    return min(hint, MAX_WAIT) if hint else min(MAX_WAIT, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)


@dataclass
class Answer:
    status: int  # 0: no HTTP answer
    body: Any = None
    problem: str = ""  # "HTTP 503", "Timeout (...)"
    detail: str = ""  # the server's message
    hint: float = None  # retry-after(-ms), unscaled seconds
    whole_seconds: bool = False
    should_retry: bool = None  # x-should-retry
    fatal: bool = False  # retrying cannot help
    size: int = 0
    ssl: bool = False  # TLS failed

    def transient(self):
        """Worth retrying, as the SDK decides."""
        if self.fatal or self.should_retry is not None:
            return not self.fatal and self.should_retry
        return self.status in (0, 408, 409, 429) or self.status >= 500


class SharedStrings:
    """A json.loads hook: equal strings of all pages become one object (ids and emails repeat)."""

    def __init__(self):
        self.strings = {}

    def __call__(self, pairs):
        share = self.share
        return {share(key): [share(item) for item in value] if isinstance(value, list) else share(value)
                for key, value in pairs}

    def share(self, value):
        return self.strings.setdefault(value, value) if isinstance(value, str) else value


class Http:
    """One API: no redirects, loopback never proxied, each answer whole within time and size."""

    def __init__(self, base_url, key, *, timeout, max_bytes, pool=10, verify=True, headers=None, shared_strings=False):
        self.base_url, self.timeout, self.max_bytes, self.verify = base_url, timeout, max_bytes, verify
        self.session = requests.Session()
        def bearer(request):
            request.headers["Authorization"] = f"Bearer {key}"
            return request
        self.session.auth = bearer  # as requests' auth, no ~/.netrc entry replaces the key
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})})
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=max(10, pool), max_retries=0)
        for scheme in ("https://", "http://"):
            self.session.mount(scheme, adapter)
        parts = urllib.parse.urlsplit(base_url)
        self.host = parts.netloc
        # A proxy would get the key in clear text for a loopback server.
        self.proxies = {"http": None, "https": None, "all": None} if is_loopback(parts.hostname) else None
        self.hook = SharedStrings() if shared_strings else None

    def call(self, method, path, params=None, body=None, timeout=None):
        """Network and server faults are in the Answer, never raised."""
        limit = timeout or self.timeout
        whole_by = time.monotonic() + limit
        headers = {"Content-Type": "application/json"} if body else None
        try:
            with self.session.request(
                    method, self.base_url + path, params=params, data=body, headers=headers, stream=True,
                    allow_redirects=False, proxies=self.proxies, verify=self.verify,
                    timeout=(min(CONNECT_TIMEOUT_CAP, limit), limit)) as response:
                raw = read_whole(response, whole_by, self.max_bytes)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            ssl = isinstance(exc, requests.exceptions.SSLError)
            timed_out = isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError))
            what = ("its TLS certificate could not be verified" if "CERTIFICATE_VERIFY_FAILED" in str(exc) else
                    "the TLS handshake failed") if ssl else "timed out" if timed_out else "connection failed"
            return Answer(0, problem=f"{type(exc).__name__} ({what})", ssl=ssl)
        if raw is None:
            return Answer(0, problem=f"answer over {self.max_bytes / 2 ** 20:g} MB decompressed; cut off", fatal=True)
        return self.answer(response, raw)

    def answer(self, response, raw):
        if 300 <= (status := response.status_code) < 400:
            target = urllib.parse.urljoin(response.url, response.headers.get("location", ""))
            host = urllib.parse.urlsplit(target).netloc or "nowhere"
            return Answer(status, fatal=True, problem=f"HTTP {status} redirect to {host} (not followed)")
        try:
            body = json.loads(raw, object_pairs_hook=self.hook) if raw else None
        except (ValueError, RecursionError):
            body = None
            if 200 <= status < 300:
                return Answer(status, problem=f"answer is not JSON (HTTP {status}, {len(raw)} bytes)", fatal=True)
        # OpenAI's {"error": {"message"}}, Veza's {"message"}, else the reason.
        fields = dict_of(body)
        error = fields.get("error")
        detail = error.get("message") if isinstance(error, dict) else error
        detail = fields.get("message") if detail is None else detail
        hint, whole_seconds = retry_hint(response.headers) or (None, False)
        retry = response.headers.get("x-should-retry", "").strip().lower()
        return Answer(status, body, problem=f"HTTP {status}", hint=hint, whole_seconds=whole_seconds, size=len(raw),
                      detail=str(detail or response.reason or "no message")[:300],
                      should_retry={"true": True, "false": False}.get(retry))


def read_whole(response, whole_by, limit):
    """The decompressed body, None past `limit` bytes; a body dripped past `whole_by` times out."""
    body = bytearray()
    while len(body) <= limit:
        left = whole_by - time.monotonic()
        try:
            if left <= 0:
                raise urllib3.exceptions.TimeoutError
            if sock := getattr(response.raw.connection, "sock", None):
                sock.settimeout(left)
            chunk = response.raw.read1(64 * 1024, decode_content=True)
        except urllib3.exceptions.TimeoutError:
            raise requests.Timeout("the whole answer took longer than the timeout") from None
        if not chunk:
            return body
        body += chunk


# ------------------------
# The catalogue: every family the connector reads, declared once
# ------------------------

MAX_PAGES_PER_LIST = 10_000  # 1,000,000 users; more is a server that never stops
MAX_AUDIT_LOG_PAGES = 500  # 50,000 events: not worth hours of one sequential chain
MAX_LIST_BYTES = 64 * 2 ** 20  # one list's answers (~170,000 users in full)


class Kind(enum.Enum):
    """An entity that families are read per; `when_deleted` ends the warning of its deletion."""

    PROJECT = ("project", "projects", "project_object", "left out with its members, service accounts, keys and roles")
    GROUP = ("group", "groups", "group_object", "left out with its memberships and role grants")
    USER = ("user", "users", "user_object", "left out with its memberships, keys and role assignments")
    PROVIDER = ("provider", "workload_identity_providers", "provider_object", "its federation rules are left out")
    PROJECT_GROUP = ("project group", "project_groups", None, "its role grants on the project are left out")
    PROJECT_MEMBER = ("project member", "project_users", None, "its role assignments on the project are left out")

    def __init__(self, *value):
        self.label, self.listed_by, self.object_family, self.when_deleted = value


class On404(enum.Enum):
    """What a 404 on a family's read means (for a required family, the run fails)."""

    LEAVE_OUT = "the organization lacks it: left out, warned"
    ENTITY = "its entity may be deleted: ask"
    NO_SETTINGS = "none: left unset"
    EXISTENCE = "deleted"


@dataclass(frozen=True)
class Family:
    name: str  # also its Snapshot attribute
    path: str  # placeholders: the key's ids in order, or the organization id
    grant: str  # the admin key's permission "<grant>: Read", named when refused
    label: str = ""
    cursor: str = None  # "last_id", "next": that answer field; "item_id": the last item's id
    page_size: int = 100  # the largest the endpoint serves
    item_object: str = None
    params: tuple = ()  # (name, value) pairs; a tuple value is sent as repeated keys
    parent: str = None  # read once per item of this family
    id_field: str = "id"
    next_falls_back_to_item_id: bool = False  # the SDK documents `after` as an item id here
    required: bool = False
    optional: str = None  # what is left unset when it is unreadable
    settings: bool = False  # a 404 is none
    empty_when_archived: bool = False  # a documented 400 "when project is archived" is an empty list
    role_list: bool = False  # `--role-assignments auto` decides on these
    after_role_decision: bool = False
    activity_window: bool = False  # newest first, back to the window's start; cut at the cap, not failed
    per: Kind = field(init=False)  # the entity its parent lists

    def __post_init__(self):
        object.__setattr__(self, "label", self.label or self.name.replace("_", " "))
        object.__setattr__(self, "per", next((kind for kind in Kind if kind.listed_by == self.parent), None))

    @property
    def not_found(self):
        if any(kind.object_family == self.name for kind in Kind):
            return On404.EXISTENCE
        return On404.NO_SETTINGS if self.settings else On404.ENTITY if self.per else On404.LEAVE_OUT

    def path_for(self, key, org_id):
        """One read's path, ids quoted; None for an id "." or "..", which quoting leaves a path step."""
        names = re.findall(r"{(\w+)}", self.path)
        values = [org_id] if names == ["org_id"] else [key] if isinstance(key, str) else list(key or ())
        if any(value in (".", "..") for value in values):
            return None
        return self.path.format(**{name: urllib.parse.quote(value, safe="") for name, value in zip(names, values)})


# logins for last_login_at, key creations and updates for scopes
AUDIT_EVENT_TYPES = ("login.succeeded", "api_key.created", "api_key.updated")
NEXT = {"cursor": "next", "page_size": 1000}  # the roles and groups endpoints
PROJECT_PATH, GROUP_PATH = "/organization/projects/{project_id}", "/organization/groups/{group_id}"
USER_PATH, PROVIDER_PATH = "/organization/users/{user_id}", "/organization/workload_identity_providers/{provider_id}"

# In dispatch order; undocumented page maxima are 100, as for siblings.
FAMILY_LIST = [
    Family("organization", "/organizations/{org_id}", "(dashboard-style keys only)", "organization object",
           optional="is_personal"),
    Family("users", "/organization/users", "Users", cursor="last_id", item_object="organization.user", required=True),
    # One sequential chain: listed early, its next page goes first.
    Family("audit_logs", "/organization/audit_logs", "Audit logs", cursor="last_id",
           params=(("event_types[]", AUDIT_EVENT_TYPES),), activity_window=True),
    Family("invites", "/organization/invites", "Invites", cursor="last_id", item_object="organization.invite"),
    Family("admin_api_keys", "/organization/admin_api_keys", "Admin keys", "admin API keys", cursor="item_id",
           item_object="organization.admin_api_key"),
    Family("groups", "/organization/groups", "Groups", **NEXT, next_falls_back_to_item_id=True),
    Family("roles", "/organization/roles", "Roles", **NEXT, item_object="role", role_list=True),
    Family("projects", "/organization/projects", "Projects", cursor="last_id",
           item_object="organization.project", params=(("include_archived", "true"),)),
    Family("workload_identity_providers", "/organization/workload_identity_providers", "Workload identity",
           cursor="item_id", item_object="organization.workload_identity_provider"),
    Family("certificates", "/organization/certificates", "Certificates", cursor="last_id",
           item_object="organization.certificate"),
    Family("project_users", f"{PROJECT_PATH}/users", "Projects", cursor="last_id",
           item_object="organization.project.user", parent="projects", empty_when_archived=True),
    Family("project_service_accounts", f"{PROJECT_PATH}/service_accounts", "Projects", cursor="last_id",
           item_object="organization.project.service_account", parent="projects", empty_when_archived=True),
    Family("project_api_keys", f"{PROJECT_PATH}/api_keys", "API keys", "project API keys", cursor="last_id",
           item_object="organization.project.api_key", params=(("owner_project_access", "any"),), parent="projects"),
    Family("project_roles", "/projects/{project_id}/roles", "Roles", **NEXT, item_object="role",
           parent="projects", role_list=True),
    Family("project_groups", f"{PROJECT_PATH}/groups", "Groups", cursor="next",
           item_object="project.group", parent="projects", id_field="group_id", next_falls_back_to_item_id=True),
    Family("model_permissions", f"{PROJECT_PATH}/model_permissions", "Projects", parent="projects", settings=True),
    Family("project_certificates", f"{PROJECT_PATH}/certificates", "Certificates", cursor="last_id",
           item_object="organization.project.certificate", parent="projects"),
    Family("hosted_tool_permissions", f"{PROJECT_PATH}/hosted_tool_permissions", "Projects", parent="projects",
           settings=True),
    Family("group_users", f"{GROUP_PATH}/users", "Groups", **NEXT, parent="groups", next_falls_back_to_item_id=True),
    Family("group_roles", f"{GROUP_PATH}/roles", "Roles", **NEXT, parent="groups"),
    Family("project_group_roles", "/projects/{project_id}/groups/{group_id}/roles", "Roles", **NEXT,
           parent="project_groups"),
    Family("federation_rules", f"{PROVIDER_PATH}/federation_rules", "Workload identity", cursor="item_id",
           item_object="organization.workload_identity_federation_rule", parent="workload_identity_providers"),
    Family("user_roles", f"{USER_PATH}/roles", "Roles", **NEXT, parent="users", after_role_decision=True),
    Family("project_user_roles", "/projects/{project_id}/users/{user_id}/roles", "Roles", **NEXT,
           parent="project_users", after_role_decision=True),
    # Read by id only: a deleted entity, or a list the organization lacks?
    Family("project_object", PROJECT_PATH, "Projects", "project"),
    Family("group_object", GROUP_PATH, "Groups", "group"),
    Family("user_object", USER_PATH, "Users", "user"),
    Family("provider_object", PROVIDER_PATH, "Workload identity", "workload identity provider"),
]
FAMILIES = {family.name: family for family in FAMILY_LIST}
CHILDREN = {name: [family for family in FAMILY_LIST if family.parent == name] for name in FAMILIES}
STARTING_FAMILIES = [family for family in FAMILY_LIST if family.parent is None and family.not_found != On404.EXISTENCE]


# ------------------------
# Records: what the fields of a record from OpenAI mean (ids, times, text)
# ------------------------

GO_ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)  # Go's "never set"; as a date, a key would look expired


def moment(value):
    """Unix seconds or ISO text as a UTC datetime; None when absent or unusable."""
    text = value.strip() if isinstance(value, str) else ""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool) or re.fullmatch(r"\d+(\.\d+)?", text):
            result = datetime.fromtimestamp(float(value), tz=timezone.utc)
        elif not text:
            return None
        else:
            result = datetime.fromisoformat(text.replace("Z", "+00:00"))
            result = result.astimezone(timezone.utc) if result.tzinfo else result.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):  # nan, inf, out of range, not a date
        return None
    return None if result == GO_ZERO_TIME else result


def rfc3339(value):
    """RFC3339 UTC with a Z; the year padded to four digits, as strftime does not."""
    return (when := moment(value)) and f"{when.year:04d}-{when:%m-%dT%H:%M:%S}Z"


def epoch_seconds(value):
    """Unix seconds: as text, "892-..." would sort after "2026-..."."""
    return (when := moment(value)) and when.timestamp()


def text_of(value):
    return (value.strip() or None) if isinstance(value, str) else None


def dict_of(value):
    return value if isinstance(value, dict) else {}


def shape(value):
    """Short JSON of a server's value, for a warning."""
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def usable_id(value):
    """Non-blank, without lone surrogates ("\\ud800" in JSON), which fit no URL or payload."""
    return isinstance(value, str) and value.strip() and (value.isascii() or not re.search("[\ud800-\udfff]", value))


def unique_by_id(items, key="id", problem=None):
    """The first item of each usable id, lower-cased as oaaclient compares; `problem` hears of the others."""
    seen = {}
    for item in items or ():
        item_id = item.get(key) if isinstance(item, dict) else None
        if not usable_id(item_id):
            if problem:
                shown = ascii(item_id) if isinstance(item_id, str) and item_id.strip() else type(item_id).__name__
                problem(f"has no usable {key} ({shown}); skipped")
            continue
        first = seen.setdefault(item_id.lower(), item)[key]
        if first != item_id and problem:  # an exact repeat is silent: pages overlap
            problem(f"ids {first!r} and {item_id!r} differ only in case, as Veza compares ids; only the first is kept")
    return list(seen.values())


def ids_of(items, key="id"):
    return [item[key] for item in unique_by_id(items, key)]


PREDEFINED_ROLE_ID = re.compile(r"role-api-(organization|project)-([a-z_]+?)(?:__api-(?:organization|project)__.+)?")


def is_predefined_role(record):
    return record.get("predefined_role") is True or bool(PREDEFINED_ROLE_ID.fullmatch(str(record.get("id"))))


def project_is_archived(record):
    return (text_of(record.get("status")) or "").lower() == "archived" or moment(record.get("archived_at")) is not None


# ------------------------
# Pacing: when each endpoint's next request may go (docs/rate-limits.md)
# ------------------------

FLOOR = 0.05        # seconds: the least wait after a 429, whatever the hint
MARGIN = 7 / 8      # after a 429, pace under what got through, so the limit refills
GROW_BELOW = 1 / 2  # growth per success below MARGIN of the last measure: a lost share comes back
GROW_NEAR = 1 / 64  # growth per success otherwise: a raised limit is found, at a 429 now and then
PROBES = 8          # retries per measured cycle at most: a refilled window is found within an eighth


class Lanes:
    """What all lanes share: one retry out at a time, the longest cycle, wake-ups."""

    def __init__(self, names, scale, per_minute):
        self.lanes = {name: Lane(self, scale, per_minute, index) for index, name in enumerate(names)}
        self.scale = scale
        self.retry_out = None
        self.cycle = 0.0  # the longest measured: a guess for lanes yet without one

    def __getitem__(self, name):
        return self.lanes[name]

    def wake(self, now):
        """After 429s one got through: wake lanes refused with no hint nor cycle (may share its limit)."""
        at = now + max(self.cycle / PROBES, FLOOR * self.scale)
        woken = {name: at for name, lane in self.lanes.items() if lane.refused_since is not None
                 and not lane.hinted and not lane.cycle and lane.next_at > at}
        for name in woken:
            self.lanes[name].next_at, self.lanes[name].woken = at, True
        return woken

    def finished(self, name, still_open):
        lane = self.lanes[name]
        paced = [self.lanes[other] for other in still_open if self.lanes[other].rate]
        total = sum(other.rate for other in paced)
        for other in paced if lane.rate else ():
            other.rate += lane.rate * other.rate / total
        lane.rate = None


class Lane:
    """One endpoint's pace (rules: docs/rate-limits.md)."""

    def __init__(self, lanes, scale=1.0, per_minute=None, index=0):
        self.lanes, self.scale, self.per_minute = lanes, scale, per_minute
        # Golden-ratio phases spread the lanes on the doubling grid: together they probe often.
        self.phase = index * 0.618 % 1
        self.hinted = self.woken = False  # the last 429 had a hint; a wake-up sent this retry early
        self.rate = None  # requests a second; None: not paced
        self.measured = None  # the rate that got through over the last cycle
        self.next_at = self.retry_wait = 0.0
        self.in_flight = self.streak = self.delivered = 0  # streak: successes since the last 429
        self.cycle_start = None
        self.cycle = 0.0  # seconds the last measured cycle took
        self.refused_since = None  # the first 429 of the current run
        self.sends = deque()  # for --max-requests-per-minute-per-endpoint

    def ready_at(self, now):
        if self.in_flight > self.streak or self.refused_since is not None and self.lanes.retry_out not in (None, self):
            return math.inf
        at = max(now, self.next_at)
        if self.per_minute:
            window = 60 * self.scale
            while self.sends and self.sends[0] <= now - window:
                self.sends.popleft()
            if len(self.sends) >= self.per_minute:
                at = max(at, self.sends[-self.per_minute] + window)
        return at

    def on_send(self, now):
        self.cycle_start = now if self.cycle_start is None else self.cycle_start
        self.in_flight += 1
        if self.refused_since is not None:
            self.lanes.retry_out = self
        if self.per_minute:
            self.sends.append(now)
        if self.rate:  # a late send leaves credit for one more, never more
            self.next_at = max(self.next_at, now - 1 / self.rate) + 1 / self.rate

    def answered(self):
        self.in_flight -= 1
        if self.lanes.retry_out is self:
            self.lanes.retry_out = None

    def on_success(self, now, sent_at):
        """Any answer but a 429 or a fault passed the limit. True: the first after unhinted 429s."""
        self.answered()
        if self.refused_since is not None and sent_at < self.refused_since:
            self.delivered += 1  # sent before the 429: counted in the cycle, but no news of now
            return False
        recovered = self.refused_since is not None and not self.hinted
        self.streak, self.woken = self.streak + 1, False
        if self.refused_since is not None:
            if self.delivered and sent_at > self.cycle_start:
                self.cycle = sent_at - self.cycle_start
                self.lanes.cycle = max(self.lanes.cycle, self.cycle)
                self.measured = self.delivered / self.cycle
                self.rate = max(self.measured * MARGIN, (self.rate or 0) / 2)
            self.cycle_start, self.delivered, self.refused_since = sent_at, 0, None
        elif self.rate:
            self.rate *= 1 + (GROW_BELOW if self.rate < self.measured * MARGIN else GROW_NEAR)
        self.delivered += 1
        return recovered

    def on_throttled(self, now, sent_at, hint, whole_seconds):
        """A 429: when the refused request may go again (not before its hint nor FLOOR)."""
        self.answered()
        self.streak = 0
        floor = FLOOR * self.scale
        cycle = self.cycle or self.lanes.cycle
        most = max(cycle / PROBES, floor) if cycle else math.inf
        if hint is None and not cycle:  # nothing known: its own doubling grid, out of step with others
            self.retry_wait = self.on_grid(now + floor) - now
        elif self.refused_since is None:
            self.retry_wait = min(max(floor, 1 / self.rate if self.rate else 0.0, most / 2 if cycle else 0.0), most)
        elif sent_at >= self.refused_since and not self.woken:
            self.retry_wait = min(self.retry_wait * 2, most)
        if self.refused_since is None:
            self.refused_since = now
        self.hinted, self.woken = hint is not None, False
        hint = hint and hint * self.scale
        # A whole-second hint may be rounded up: hold only for the certain part.
        hold = 0.0 if hint is None else max(0.0, hint - self.scale) if whole_seconds else hint
        self.next_at = max(self.next_at, now + max(hold, self.retry_wait))
        return max(self.next_at, now + (hint or 0.0))

    def on_grid(self, at):
        unit = FLOOR * self.scale
        n = math.floor(math.log2(max(at - self.cycle_start, unit) / unit) - self.phase)
        while self.cycle_start + unit * 2 ** (n + self.phase) < at:
            n += 1
        return self.cycle_start + unit * 2 ** (n + self.phase)

    def requests_per_second(self):
        """Its last cycle's measured rate, or its cap; None if neither is known."""
        rates = (self.measured and min(self.measured, self.rate or self.measured),
                 self.per_minute and self.per_minute / (60 * self.scale))
        return min(filter(None, rates), default=None)


# ------------------------
# The scheduler: every GET when its endpoint allows it (knows no OpenAI family by name)
# ------------------------

UNREACHABLE_AFTER = 10.0  # seconds of connection faults before any answer that end the run
PROGRESS_INTERVAL = 30.0


@dataclass
class ListRead:
    family: Family
    key: Any  # None, an id, or (id, id)
    path: str
    on_done: Callable
    params: dict
    items: list = field(default_factory=list)
    pages: int = 0
    size: int = 0  # decompressed bytes
    cursors: set = field(default_factory=set)
    attempt: int = 0
    throttled_since: float = None
    sent_at: float = 0.0
    queued_at: float = field(default_factory=time.time)  # its read time
    rank: tuple = ()  # its order among its endpoint's waiting reads


Verdict = enum.Enum("Verdict", "PAGE THROTTLED REFUSED RETRY FAILED")


def classify(answer):
    if answer.status == 200 and not answer.fatal:
        return Verdict.PAGE
    if answer.status == 429 and answer.should_retry is not False:
        return Verdict.THROTTLED
    if answer.status in (401, 403, 404) or (answer.status == 400 and answer.should_retry is not True):
        return Verdict.REFUSED
    return Verdict.RETRY if answer.transient() else Verdict.FAILED


def check_page(family, body, path, limit):
    if body.get("object", "list") != "list":
        raise DiscoveryError(f"{path}: expected a list, got object {str(body.get('object'))[:40]!r}")
    if not isinstance(data := body.get("data"), list) or not all(isinstance(item, dict) for item in data):
        raise DiscoveryError(f"{path}: 'data' is not a list of objects")
    odd = [item.get("object") for item in data if item.get("object", family.item_object) != family.item_object]
    if family.item_object and odd:
        raise DiscoveryError(f"{path}: expected {family.item_object} items, got {str(odd[0])[:40]!r}")
    if len(data) > limit:
        raise DiscoveryError(f"{path}: a page of {len(data):,} items for limit={limit}: the server ignores the limit")
    return data


def next_cursor(family, body, data, path):
    cursor = (data[-1].get("id") if data else None) if family.cursor == "item_id" else body.get(family.cursor)
    if not cursor and family.next_falls_back_to_item_id and data:
        cursor = data[-1].get(family.id_field)
        log.debug("%s: has_more without next; continuing after the last item's id", path)
    if not (cursor and isinstance(cursor, str)):
        raise DiscoveryError(f"{path}: has_more is true but the page has no cursor")
    return cursor


def format_duration(seconds):
    s = max(0, round(seconds))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


class Scheduler:
    """A waiting read holds no worker."""

    def __init__(self, http, config, clock, families):
        self.http, self.config, self.clock = http, config, clock
        self.families = {family.name: family for family in families}
        self.lanes = Lanes(self.families, clock.scale, config.max_requests_per_minute_per_endpoint)
        self.queues = {name: [] for name in self.families}  # heaps of ((first?, rank, order), read)
        self.delayed = []  # heap of (due, order, read)
        self.order = itertools.count(1)
        self.work = queue.SimpleQueue()  # reads to send; None stops a worker
        self.done = queue.SimpleQueue()
        self.open_reads, self.finished_reads = dict.fromkeys(self.families, 0), dict.fromkeys(self.families, 0)
        self.in_flight = self.calls = self.retries = self.throttled = self.succeeded = 0
        self.next_global_send = self.next_progress = 0.0
        self.progress_every = max(1.0, PROGRESS_INTERVAL * clock.scale)
        self.unreachable_since = self.plan = None
        self.answered, self.throttled_families = False, set()
        self.stop_sending_at = math.inf  # then the reads not sent go back to the plan

    def add(self, read):
        self.open_reads[read.family.name] += 1
        self.wait(read)

    def finish(self, read, result):
        name = read.family.name
        self.open_reads[name] -= 1
        self.finished_reads[name] += 1
        if not self.open_reads[name]:
            self.lanes.finished(name, [other for other, count in self.open_reads.items() if count])
        read.on_done(read, result)

    def drop_waiting(self, family):
        while self.queues[family.name]:
            self.finish(heapq.heappop(self.queues[family.name])[1], None)

    def wait(self, read, going_on=False):
        """Going on (next page, retry) first, the last first; others by rank, in turn."""
        key = (0, (), -next(self.order)) if going_on else (1, read.rank, next(self.order))
        heapq.heappush(self.queues[read.family.name], (key, read))

    def start(self, plan):
        """Daemon workers: never joined, at exit or on a signal."""
        self.plan = plan
        for number in range(self.config.max_workers):
            threading.Thread(target=self.work_loop, name=f"openai-read-{number + 1}", daemon=True).start()
        self.next_progress = time.monotonic() + self.progress_every

    def work_loop(self):
        while read := self.work.get():
            try:
                answer = self.http.call("GET", read.path, read.params)
            except Exception as exc:  # a bug must not leave the reader waiting
                answer = Answer(0, problem=f"{type(exc).__name__}: {exc}", fatal=True)
            self.done.put((read, answer))

    def close(self):
        for _ in range(self.config.max_workers):
            self.work.put(None)

    def run_until_read(self):
        while any(self.open_reads.values()):
            if self.clock.passed():
                raise DiscoveryError(f"reading took longer than --max-run-time {self.clock.max_run_time:g}s with "
                                     f"{sum(self.open_reads.values())} reads open{self.slowest_endpoint()}")
            self.dispatch(time.monotonic())
            with contextlib.suppress(queue.Empty):
                read, answer = self.done.get(timeout=self.seconds_to_next_event(time.monotonic()))
                self.in_flight -= 1
                self.take_answer(read, answer, time.monotonic())
            if time.monotonic() >= self.next_progress:
                self.log_progress()

    def hand_back(self):
        waiting = [read for reads in self.queues.values() for _, read in reads] + [read for *_, read in self.delayed]
        self.delayed, self.queues = [], {name: [] for name in self.queues}
        for read in waiting:
            self.plan.unread(read)

    def dispatch(self, now):
        if now >= self.stop_sending_at:
            if not self.in_flight:
                self.hand_back()
            return
        while self.delayed and self.delayed[0][0] <= now:
            read = heapq.heappop(self.delayed)[2]
            self.finish(read, None) if self.plan.is_left_out(read.family) else self.wait(read, going_on=True)
        while self.in_flight < self.config.max_workers and self.next_global_send <= now:
            name = next((name for name, waiting in self.queues.items()  # catalogue order: reproducible
                         if waiting and self.lanes[name].ready_at(now) <= now), None)
            if not name:
                return
            read = heapq.heappop(self.queues[name])[1]
            if rate := self.config.max_requests_per_second:
                self.next_global_send = max(now, self.next_global_send) + self.clock.scale / rate
            read.sent_at = now
            self.lanes[name].on_send(now)
            self.in_flight += 1
            self.calls += 1
            self.work.put(read)

    def seconds_to_next_event(self, now):
        if now >= self.stop_sending_at:  # only answers in flight matter
            return min(1.0, max(0.0, self.next_progress - now)) if self.in_flight else 0.0
        wake = [self.next_progress, self.stop_sending_at] + [due for due, _, _ in self.delayed[:1]]
        if self.in_flight < self.config.max_workers:  # else only an answer can free a worker
            wake += [max(self.lanes[name].ready_at(now), self.next_global_send)
                     for name, waiting in self.queues.items() if waiting]
        return min(1.0, max(0.0, min(wake) - now))  # a signal or --max-run-time is seen within 1 s

    def take_answer(self, read, answer, now):
        lane = self.lanes[read.family.name]
        self.answered |= answer.status != 0
        if self.plan.is_left_out(read.family):
            lane.answered()
            return self.finish(read, None)
        verdict = classify(answer)
        if verdict in (Verdict.PAGE, Verdict.REFUSED) and lane.on_success(now, read.sent_at):
            self.wake(now)
        if verdict is Verdict.PAGE:
            self.succeeded += 1
            read.throttled_since = None
            self.take_page(read, answer)
        elif verdict is Verdict.THROTTLED:
            self.take_throttle(read, answer, now)
        elif verdict is Verdict.REFUSED:
            self.plan.refused(read, answer)
        else:
            lane.answered()
            if verdict is Verdict.RETRY:
                self.retry(read, answer, now)
            else:
                self.plan.failed(read, f"{read.path}: {answer.problem}{': ' if answer.detail else ''}{answer.detail}")

    def wake(self, now):
        """Bring forward the woken lanes' 429-refused reads (not 5xx backoffs)."""
        if woken := self.lanes.wake(now):
            self.delayed = [(min(due, woken.get(waiting.family.name, due)) if waiting.throttled_since
                             else due, order, waiting) for due, order, waiting in self.delayed]
            heapq.heapify(self.delayed)

    def take_throttle(self, read, answer, now):
        """A 429: resend when the lane allows, until --max-throttle-wait (a hint past it fails now)."""
        self.throttled += 1
        read.throttled_since = read.throttled_since or now
        until = read.throttled_since + self.config.max_throttle_wait
        due = self.lanes[read.family.name].on_throttled(now, read.sent_at, answer.hint, answer.whole_seconds)
        hint = f" with retry-after {answer.hint:g}s" if answer.hint else ""
        if due > until and (hint or now >= until):
            why = f"HTTP 429{hint}, which ends" if hint else "still HTTP 429"
            return self.plan.failed(read, f"{read.path}: {why} past --max-throttle-wait "
                                    f"{self.config.max_throttle_wait:g}s{'' if hint else self.slowest_endpoint()}")
        first = read.family.name not in self.throttled_families
        self.throttled_families.add(read.family.name)
        log.log(logging.INFO if first else logging.DEBUG, "%s: HTTP 429, waiting %.1fs%s", read.path,
                (min(due, until) - now) / self.clock.scale, hint or " (no retry-after: probing)")
        heapq.heappush(self.delayed, (min(due, until), next(self.order), read))

    def retry(self, read, answer, now):
        if answer.status == 0 and not self.answered:
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since >= UNREACHABLE_AFTER * self.clock.scale:
                raise DiscoveryError(f"cannot reach OpenAI at {self.http.host} for {UNREACHABLE_AFTER:g}s: "
                                     f"{answer.problem}. Check DNS, HTTPS_PROXY, NO_PROXY and, for a TLS-inspecting "
                                     "proxy or private CA, REQUESTS_CA_BUNDLE (a PEM file)")
        elif read.attempt >= self.config.max_retries:
            return self.plan.failed(read, f"{read.path}: {answer.problem}, gave up after {read.attempt} retries")
        read.attempt += 1
        self.retries += 1
        wait = backoff(read.attempt, answer.hint)
        log.log(logging.INFO if self.answered else logging.DEBUG, "%s: %s, retry %d/%d in %.1fs", read.path,
                answer.problem, read.attempt, self.config.max_retries, wait)
        heapq.heappush(self.delayed, (now + wait * self.clock.scale, next(self.order), read))

    def take_page(self, read, answer):
        family, path, body = read.family, read.path, answer.body
        if not isinstance(body, dict) and not family.settings:  # the mapping warns of settings of another shape
            return self.plan.failed(read, f"{path}: answer is JSON but not an object")
        if not family.cursor:
            return self.finish(read, body)
        data = check_page(family, body, path, family.page_size)
        read.items += data
        read.pages += 1
        read.size += answer.size
        if not body.get("has_more"):
            return self.finish(read, read.items)
        max_pages = MAX_AUDIT_LOG_PAGES if family.activity_window else MAX_PAGES_PER_LIST
        if read.pages >= max_pages or read.size > MAX_LIST_BYTES:
            if family.activity_window:
                return self.plan.cut(read)
            raise DiscoveryError(f"{path}: still has_more after {read.pages:,} pages ({read.size / 2 ** 20:.3g} MB): "
                                 "the server is looping")
        cursor = next_cursor(family, body, data, path)
        if cursor in read.cursors:
            raise DiscoveryError(f"{path}: the cursor {cursor[:40]!r} repeats: the server is looping")
        read.cursors.add(cursor)
        read.params, read.attempt = {**read.params, "after": cursor}, 0
        self.wait(read, going_on=True)

    def slowest_endpoint(self):
        paced = [(rate, self.families[name].path) for name, lane in self.lanes.lanes.items()
                 if (rate := lane.requests_per_second()) and (self.open_reads[name] or lane.rate)]
        rate, path = min(paced, default=(0, ""))
        return path and f"; slowest endpoint {path} at about {rate * 60 * self.clock.scale:.1f} requests a minute"

    def slowest_rate_for(self, names):
        rates = [*filter(None, (self.lanes[name].requests_per_second() for name in names))]
        elapsed = time.monotonic() - self.clock.started
        if self.succeeded >= 20 and elapsed > 0:
            rates.append(self.succeeded / elapsed)
        return min(rates, default=None)

    def estimate_seconds_left(self):
        if overall := self.slowest_rate_for([]):
            return max([sum(self.open_reads.values()) / overall] + [self.open_reads[name] / rate for name, lane
                        in self.lanes.lanes.items() if (rate := lane.requests_per_second())])

    def log_progress(self):
        self.next_progress = time.monotonic() + self.progress_every
        pending = ", ".join(f"{self.families[n].label} {self.finished_reads[n]}/{self.finished_reads[n] + c}"
                            for n, c in self.open_reads.items() if c)
        left = self.estimate_seconds_left()
        eta = "no estimate yet" if left is None else f"about {format_duration(left)} left for the reads known so far"
        done, still_open = sum(self.finished_reads.values()), sum(self.open_reads.values())
        fields = {"stage": "progress", "reads_done": done, "reads_open": still_open, "calls": self.calls,
                  "throttled": self.throttled, "seconds_left_estimate": None if left is None else round(left)}
        log_with_fields(logging.INFO, fields, "progress: %d reads done, %d open (%s); %d calls, %d answered 429%s; %s",
                        done, still_open, pending, self.calls, self.throttled, self.slowest_endpoint(), eta)


# ------------------------
# The read plan: what to read, in what order, and what each answer means
# ------------------------

NOT_FOUND = object()  # an entity's own object answered 404
TOP_ROLE_LISTS = [family for family in FAMILY_LIST if family.role_list and not family.per]
AFTER_ROLE_DECISION = [family for family in FAMILY_LIST if family.after_role_decision]


class ReadPlan:
    """The catalogue into a Snapshot, answers in any order."""

    def __init__(self, config, scheduler, state=None):
        self.config, self.scheduler, self.state = config, scheduler, state
        self.snapshot = Snapshot(config.org_id, read_times={} if state else None)
        self.kept, self.missing = {}, 0  # (family, key) -> read time of each kept list used; lists missing
        self.audit_from = None  # how far back the audit log read now goes
        self.changed = {}  # family -> newest audit event
        self.not_found, self.archived = {}, set()
        self.asked = {}  # (kind, key) -> its object, NOT_FOUND, or why it is unknown
        self.role_decision, self.held, self.custom_roles_seen = None, [], False

    def read(self):
        self.scheduler.start(self)
        s, days, state = self.snapshot, self.config.activity_days, self.state
        if state:  # stop reading in time to push
            clock = self.scheduler.clock  # the push's estimate: twice the last, or 60 s; half the run for reading
            push = 2 * state.push_seconds or 60 * clock.scale
            self.scheduler.stop_sending_at = clock.deadline - min(
                push + self.config.timeout, (clock.deadline - clock.started) / 2)
        try:
            for family in STARTING_FAMILIES:
                if not family.activity_window:
                    self.queue(family, None)
                elif days:
                    s.activity_since, s.activity_window_days = int(time.time()) - days * 86_400, days
                    self.queue(family, None, {"effective_at[gte]": str(s.activity_since),  # with a state, all events
                                              **({"event_types[]": None} if state else {})})
            self.scheduler.run_until_read()
            self.settle_not_found()
            if state:
                self.check_complete()
            return s
        finally:
            self.scheduler.close()

    def queue(self, family, key, params=None, on_done=None):
        if self.is_left_out(family):
            return
        if not (path := family.path_for(key, self.config.org_id)):
            log.warning("%s %s kept, its %s skipped: an id '.' or '..' would read another endpoint", family.per.label,
                        " in ".join(map(repr, [key] if isinstance(key, str) else reversed(key))), family.label)
            return
        query = {**dict(family.params), **(params or {}), **({"limit": family.page_size} if family.cursor else {})}
        rank = self.state.rank(family.name, key, self.changed) if self.state else ()
        self.scheduler.add(ListRead(family, key, path, on_done or self.list_done, query, rank=rank))

    def list_done(self, read, result):
        family, key, s = read.family, read.key, self.snapshot
        if family.not_found is not On404.EXISTENCE and (result is not None or family.settings):
            self.note_read(read, result)
        if not family.per:
            setattr(s, family.name, result)
        elif result is not None and getattr(s, family.name) is not None:  # None: left out, or no role reads
            getattr(s, family.name)[key] = result
        if result is not None:
            if family.activity_window:
                log.info("read %d audit log events (last %d days) in %d call%s", len(result), s.activity_window_days,
                         read.pages, "s" * (read.pages != 1))
            self.read_children(family, key, result)
            if family.role_list and any(usable_id(role.get("id")) and not is_predefined_role(role) for role in result):
                self.custom_roles_seen = True
        self.decide_role_reads()

    def read_children(self, family, key, items):
        if any(child.empty_when_archived for child in CHILDREN[family.name]):
            self.archived |= {record["id"] for record in unique_by_id(items) if project_is_archived(record)}
        for child in CHILDREN[family.name]:
            if child.after_role_decision and self.role_decision is None:
                self.held.append((child, key, items))
            elif not child.after_role_decision or self.role_decision:
                self.read_each(child, key, items)

    def read_each(self, child, parent_key, items):
        ids = ids_of(items, FAMILIES[child.parent].id_field)
        if child.name == "user_roles":
            members = sum(len(ids_of(listed)) for listed in (self.snapshot.project_users or {}).values())
            rate = self.scheduler.slowest_rate_for([family.name for family in AFTER_ROLE_DECISION])
            log.info("role assignment reads: %d users and %d project members so far, one call each%s", len(ids),
                     members, f"; at least {format_duration((len(ids) + members) / rate)} at the rate so far"
                     if rate else "")
        for item_id in ids:
            self.queue(child, item_id if parent_key is None else (parent_key, item_id))

    def cut(self, read):
        """The audit log's cap: keep the events read, shrink the window to the oldest."""
        s, days = self.snapshot, self.config.activity_days
        oldest = next((at for at in (epoch_seconds(event.get("effective_at")) for event in reversed(read.items))
                       if at is not None), None)
        s.activity_window_days = 0 if oldest is None else \
            max(0, min(days, int((s.activity_since + days * 86_400 - oldest) // 86_400)))
        self.audit_from = math.inf if oldest is None else oldest
        log.warning("audit log: stopped after %d pages (%d events); events older than %s are missing, so "
                    "activity_window_days is %d, not %d; use a shorter --activity-days", read.pages, len(read.items),
                    rfc3339(oldest) or "the last event read", s.activity_window_days, days)
        self.scheduler.finish(read, read.items)

    def note_read(self, read, result):
        name, key, s = read.family.name, read.key, self.snapshot
        kept = (name, key) in self.kept
        read_at = self.kept.get((name, key), read.queued_at)
        s.oldest_read, s.lists_read = min(s.oldest_read or read_at, read_at), s.lists_read + (not kept)
        if self.state:
            s.read_times[name, key] = read_at
        if self.state and not kept:
            self.state.save(name, key, read_at, result)
            if read.family.activity_window:  # read now: it names the kept lists that may have changed
                self.audit_from = s.activity_since if self.audit_from is None else self.audit_from
                for event in map(dict_of, result):
                    at = epoch_seconds(event.get("effective_at"))
                    for changed in families_changed_by(str(event.get("type"))) if at is not None else ():
                        self.changed[changed] = max(at, self.changed.get(changed, at))

    def unread(self, read):
        out, entry = self.is_left_out(read.family), (read.family.name, read.key)
        if kept := not out and self.state.kept(*entry):
            self.kept[entry] = kept[0]
        else:
            self.missing += not out
        self.scheduler.finish(read, kept[1] if kept else None)

    def check_complete(self):
        """Missing lists, or kept ones older than --max-age the audit log does not vouch for."""
        now, max_age = time.time(), self.config.max_age
        old = [(name, at) for (name, _), at in self.kept.items() if now - at > max_age]
        too_old = [name for name, at in old if not (  # events are in whole seconds
            (self.audit_from or math.inf) <= at and self.changed.get(name, -math.inf) < at - 1)]
        if self.missing or too_old:
            raise Incomplete(f"incomplete: {self.missing} lists unread and not kept, {len(too_old)} kept lists older "
                             f"than --max-age {max_age}s; nothing pushed, the next run goes on")
        if old:
            log.info("%d kept lists older than --max-age %ds pushed: the audit log names no change since they were "
                     "read", len(old), max_age)
        self.state.prune(self.snapshot.read_times)

    def decide_role_reads(self):
        """Once the Roles API answers; for `auto`, once a role list shows a custom role or all are read."""
        mode, open_reads = self.config.role_assignments, self.scheduler.open_reads
        if self.role_decision is not None or any(open_reads[family.name] for family in TOP_ROLE_LISTS):
            return
        if any(self.is_left_out(family) for family in TOP_ROLE_LISTS):
            decision, why = False, "the Roles API is not available to this key"
        elif mode != "auto":
            decision, why = mode == "all", f"--role-assignments {mode}"
        elif self.custom_roles_seen:
            decision, why = True, "custom roles exist (--role-assignments auto)"
        elif any(open_reads[name] for f in FAMILY_LIST if f.role_list for name in (f.name, f.parent) if name):
            return
        else:
            decision, why = False, "no custom role exists (--role-assignments auto; use 'all' to read them)"
        self.role_decision = decision
        log.info("per-user role assignments %s: %s", "reading them" if decision else "skipped", why)
        if decision:
            for family in AFTER_ROLE_DECISION:
                setattr(self.snapshot, family.name, {})
            for child, key, items in self.held:
                self.read_each(child, key, items)

    def is_left_out(self, family):
        return family.name in self.snapshot.unavailable

    def refused(self, read, answer):
        """400/401/403/404: the key may not read this, the organization lacks it, or the entity is gone."""
        family, status, endpoint, result = read.family, answer.status, read.path, None
        if status == 400:
            if not (family.empty_when_archived and (read.key in self.archived or "archived" in answer.detail.lower())):
                return self.failed(read, f"{endpoint}: HTTP 400: {answer.detail}")
            log.info("%s: HTTP 400 for archived %s %s; read as an empty list", endpoint, family.per.label, read.key)
            result = []
        elif family.not_found is On404.EXISTENCE and status != 401:
            result = NOT_FOUND if status == 404 else f"HTTP {status} on {endpoint}"  # only a 404 says it is gone
        elif family.optional:
            log.debug("%s not available: %s: HTTP %d: %s", family.label, endpoint, status, answer.detail)
        elif status == 404 and family.not_found is not On404.LEAVE_OUT:
            if family.not_found is On404.ENTITY:
                self.not_found.setdefault(family.name, []).append((read.key, endpoint))
        elif status == 401 or family.required:
            raise DiscoveryError(
                f"OpenAI answered HTTP 404 on {endpoint}: check OPENAI_ORG_ID and --openai-base-url" if status == 404
                else f"OpenAI refused the key from {self.config.openai_key_source} (HTTP {status} on {endpoint}): "
                f"it must be an Admin API key (sk-admin-...) of organization {self.config.org_id}")
        else:
            self.leave_out(family, f"HTTP {status} on {endpoint}")
        self.scheduler.finish(read, result)

    def failed(self, read, message):
        if not read.family.optional:
            raise DiscoveryError(message)
        log.warning("%s left unset: the %s could not be read (%s)", read.family.optional, read.family.label, message)
        self.scheduler.finish(read, None)

    def leave_out(self, family, reason):
        if not self.is_left_out(family):
            self.snapshot.unavailable[family.name] = reason
            setattr(self.snapshot, family.name, None)
            self.scheduler.drop_waiting(family)

    def misses(self):
        """404s sorted: a stable log."""
        return [(family, family.per, sorted(self.not_found[family.name], key=lambda miss: str(miss[0])))
                for family in FAMILY_LIST if family.name in self.not_found and not self.is_left_out(family)]

    def settle_not_found(self):
        """A list's 404: ask its entity's object (one per family first); a 404 there: deleted, else family out."""
        for at_most in (1, None):
            wanted = {}  # an ordered set: one read per entity
            for _, kind, misses in self.misses():
                unasked = [(kind, key) for key, _ in misses if kind.object_family and (kind, key) not in self.asked]
                wanted.update(dict.fromkeys(unasked[:at_most]))
            for kind, key in wanted:
                self.queue(FAMILIES[kind.object_family], key,
                           on_done=lambda _, result, asked=(kind, key): self.asked.update({asked: result}))
            self.scheduler.run_until_read()
            for family, kind, misses in self.misses():
                if there := [key for key, _ in misses if isinstance(self.asked.get((kind, key)), dict)]:
                    self.leave_out(family, f"HTTP 404 on {misses[0][1]}, while {kind.label} {there[0]} exists")
        for family, kind, misses in self.misses():
            # no object to ask: 404s on all of several reads leave the family out
            if not kind.object_family and 1 < len(misses) == self.scheduler.finished_reads[family.name]:
                self.leave_out(family, f"HTTP 404 on every {kind.label} ({misses[0][1]}, ...)")
                continue
            for key, endpoint in misses:
                if (answer := self.asked.get((kind, key), NOT_FOUND)) is NOT_FOUND:
                    self.snapshot.deleted.append((kind, key, endpoint))
                else:
                    self.leave_out(family, f"HTTP 404 on {endpoint}; {kind.label} {key} may still exist ({answer})")


# ------------------------
# The snapshot: everything read, the boundary between reading and mapping
# ------------------------

class Snapshot:
    """Per family: its records, {entity key: records}, or None (left out; role assignments: not read)."""

    def __init__(self, org_id, *, activity_since=None, activity_window_days=None, read_times=None, **results):
        if unknown := results.keys() - FAMILIES.keys():
            raise TypeError(f"Snapshot has no family {', '.join(sorted(unknown))}")
        self.org_id = org_id
        self.activity_since = activity_since  # Unix seconds the audit log was read from
        self.activity_window_days = activity_window_days
        self.unavailable = {}  # family name -> why it was left out
        self.read_at = time.time()  # "expired" is judged at this time
        self.deleted = []  # (entity kind, key, endpoint)
        self.read_times = read_times  # --state-dir: (family, key) -> read time
        self.lists_read, self.oldest_read = 0, None  # not kept
        for family in FAMILY_LIST:
            if family.not_found is not On404.EXISTENCE:
                empty = [] if family.required else {} if family.per and not family.after_role_decision else None
                setattr(self, family.name, results.get(family.name, empty))


# ------------------------
# The state directory (--state-dir): the lists read, the last push
# ------------------------

STATE_FORMAT = 1
# audit event words not naming all families they change (a service account comes with a key)
EVENT_WORDS = {"login": (), "logout": (), "invite": ("invite", "user"),
               "service_account": ("service_account", "api_key")}


def families_changed_by(event_type):
    """Named by its first word, with those read for their items; else all."""
    word = event_type.removeprefix("tenant.").split(".")[0]
    named = {name for name in FAMILIES for part in EVENT_WORDS.get(word, (word,)) if part in name}
    named |= {child.name for name in named for child in CHILDREN[name]}
    return named or (set() if word in EVENT_WORDS else set(FAMILIES))


class State:
    """DIR/lists/<family>/<hash>.json per list, DIR/pushed.json, DIR/lock: 0600, written whole."""

    def __init__(self, directory, org_id):
        self.directory, self.org_id, self.saving = directory, org_id, True
        self.lock = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:  # the kernel releases a killed run's lock
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.lock)
            raise DiscoveryError(f"another run is using the state directory {directory}") from None
        self.index, ignored = {}, 0  # (family, key) -> (read time, file)
        for path in self.files():
            if record := self.load(path):
                self.index[record["family"], record["key"]] = record["read_at"], path
            ignored += not record
        self.families = {family for family, _ in self.index}
        self.pushed_path = os.path.join(directory, "pushed.json")
        self.pushed = self.load(self.pushed_path, any_version=True)
        if self.pushed:
            self.pushed["facts"] = None  # reread after the push
        seconds = dict_of(self.load(os.path.join(directory, "push.json"), any_version=True)).get("push_seconds")
        self.push_seconds = seconds if isinstance(seconds, (int, float)) and 0 < seconds < math.inf else 0  # 0: none
        self.push_started = None
        if ignored or os.path.exists(self.pushed_path) and not self.pushed:
            log.warning("state directory %s: files ignored (unreadable, or of another organization, format or "
                        "version); read again", directory)

    def close(self, pushed=False):
        """Keeps the time from mapping to the push's end (an unfinished push never lowers it)."""
        if self.push_started is not None:
            seconds = time.monotonic() - self.push_started
            self.write(os.path.join(self.directory, "push.json"),
                       {"push_seconds": seconds if pushed else max(seconds, self.push_seconds)})
        os.close(self.lock)

    def load(self, path, any_version=False):
        """Of this organization and format; a list also of this version and shape, read in the past."""
        with contextlib.suppress(OSError, ValueError, LookupError, TypeError, RecursionError), open(path, "rb") as f:
            record = dict_of(json.load(f))
            if record.get("format") != STATE_FORMAT or record.get("organization") != self.org_id:
                return None
            if any_version:
                return record
            family, key = FAMILIES[record["family"]], record["key"]
            record["key"] = key = tuple(key) if isinstance(key, list) else key
            hash(key)
            if record["connector"] == __version__ and 0 < record["read_at"] <= time.time() and (
                    family.settings or isinstance(record["result"], list if family.cursor else dict)):
                return record

    def kept(self, family, key):
        record = (found := self.index.get((family, key))) and self.load(found[1])
        return record and (record["read_at"], record["result"])

    def rank(self, family, key, changed):
        """Never read (it or a list for its items) first, then changed since, then the oldest."""
        times = [self.index.get((family, key), (None,))[0]]
        children = [child for child in CHILDREN[family] if child.name in self.families]
        kept = times[0] and children and self.kept(family, key)
        times += [self.index.get((child.name, item_id if key is None else (key, item_id)), (None,))[0]
                  for child in children if kept for item_id in ids_of(kept[1], FAMILIES[family].id_field)]
        return (0, 0) if None in times else (1 if changed.get(family, -math.inf) >= times[0] else 2, min(times))

    def write(self, path, record):
        """A full disk costs the saving only."""
        try:
            if self.saving:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                save_payload({"format": STATE_FORMAT, "organization": self.org_id, "connector": __version__, **record},
                             path)
        except OSError as exc:
            self.saving = False
            log.warning("state directory %s: cannot save (%s); later lists are not kept", self.directory,
                        exc.strerror or exc)

    def files(self):
        return glob.glob(os.path.join(glob.escape(self.directory), "lists", "*", "*.json"))

    def path(self, family, key):
        name = hashlib.sha256(json.dumps([family, key]).encode()).hexdigest()[:32]
        return os.path.join(self.directory, "lists", family, f"{name}.json")

    def save(self, family, key, read_at, result):  # not indexed: small objects kept would pin the records' memory
        self.write(self.path(family, key), {"family": family, "key": key, "read_at": read_at, "result": result})

    def prune(self, used):
        """What a whole snapshot did not use is of entities gone, or not trusted."""
        used = {self.path(*entry) for entry in used}
        for path in self.files():
            if path not in used:
                with contextlib.suppress(OSError):
                    os.unlink(path)


# ------------------------
# Mapping (pure: a snapshot in, OAA objects out): a context, then steps in payload order
# ------------------------

ORG_PERMISSIONS = {"Standard API Requests": "DataRead", "Read Organization": "MetadataRead",
                   "Modify Billing": "MetadataWrite", "Manage Members": "MetadataWrite"}
PROJECT_PERMISSIONS = {"Read Project": "MetadataRead", "Manage Project Members": "MetadataWrite",
                       "Manage Project API Keys": "MetadataWrite"}
PROJECT_OWNER_PERMISSIONS = ["Standard API Requests", *PROJECT_PERMISSIONS]
FIXED_ROLES = {
    "owner": ("Owner", [*ORG_PERMISSIONS]),
    "reader": ("Reader", ["Standard API Requests", "Read Organization"]),
    "project_owner": ("Project Owner", PROJECT_OWNER_PERMISSIONS),
    "project_owner_via_organization": ("Project Owner (organization owner)", PROJECT_OWNER_PERMISSIONS),
    "project_member": ("Project Member", ["Standard API Requests", "Read Project"]),
    "project_viewer": ("Project Viewer", ["Read Project"]),  # per OpenAI's RBAC guide
    "admin_api_key": ("Admin API Key", ["Read Organization", "Modify Billing", "Manage Members", *PROJECT_PERMISSIONS]),
}
ORG_ROLE_VALUES = {"owner": "owner", "reader": "reader", "member": "reader"}  # invite docs say "owner or member"
PROJECT_ROLE_VALUES = {"owner": "project_owner", "member": "project_member", "viewer": "project_viewer", "none": ""}
KEY_OWNER_TYPES = ("user", "service_account")
HOSTED_TOOLS = ("code_interpreter", "file_search", "image_generation", "mcp", "web_search")
CONTENT_AREAS = set("model models files assistants threads vector_stores batches fine_tuning evals responses chat "
                    "completions audio images videos realtime embeddings uploads containers".split())
MANAGEMENT_AREAS = set("organization projects project users groups roles api_keys keys service_accounts invites "
                       "usage audit_logs billing rate_limits ip_allowlist mtls oidc management".split())
VERBS = {**dict.fromkeys(("read", "list", "view", "get"), "Read"), **dict.fromkeys(("delete", "remove"), "Delete"),
         **dict.fromkeys(("write", "update", "manage", "admin"), "Write"), "create": "Create"}


def canonical_permissions(permission):
    """`api.<area>[.<sub>].<verb>` by verb and area (OpenAI's RBAC guide); an unknown area: Data and Metadata."""
    parts = permission.strip().lower().split(".")
    verb, area = parts[-1], parts[1] if len(parts) > 2 and parts[0] == "api" else ""
    if verb in ("request", "use", "invoke"):
        return [OAAPermission.DataRead]
    if verb not in VERBS:
        return [OAAPermission.Uncategorized]
    kinds = ["Data"] if area in CONTENT_AREAS else ["Metadata"] if area in MANAGEMENT_AREAS else ["Data", "Metadata"]
    return [OAAPermission[kind + VERBS[verb]] for kind in kinds]


S, N, B, T, L = (OAAPropertyType[name] for name in ("STRING", "NUMBER", "BOOLEAN", "TIMESTAMP", "STRING_LIST"))
STEPS = []


def copy_fields(entity, record, **kinds):
    as_kind = {S: text_of, T: rfc3339, B: lambda value: value if isinstance(value, bool) else None}
    for name, kind in kinds.items():
        entity.set_property(name, as_kind[kind](record.get(name)), ignore_none=True)


def step(**properties):
    def register(function):
        function.properties = properties
        STEPS.append(function)
        return function
    return register


@dataclass
class MappingResult:
    application: CustomApplication
    warnings: list
    counts: dict
    notes: list  # (log level, message)
    people: dict


class ApplicationBuilder:
    def __init__(self, snapshot):
        self.snapshot = s = snapshot
        self.app = CustomApplication(name=s.org_id, application_type=APPLICATION_TYPE)
        self.warnings, self.warned, self.counts, self.notes = [], set(), {}, []
        self.invitees = set()  # id() of pending invites' local users
        self.deleted = {kind: set() for kind in (*Kind, None)}
        for kind, key, endpoint in s.deleted:
            self.deleted[kind].add(key)
            self.warn(f"{kind.label} {key if isinstance(key, str) else ' in '.join(reversed(key))} was deleted "
                      f"during the run (HTTP 404 on {endpoint}): {kind.when_deleted}", f"deleted:{kind.label}:{key}")
        self.role_values = {False: dict(ORG_ROLE_VALUES), True: dict(PROJECT_ROLE_VALUES)}  # unknown ones added
        self.api_roles = {}  # Roles API role id -> pushed role id
        self.custom_roles = set()
        self.key_holders = []  # (credential, holder, project, the role in the key record)
        self.groups_not_in_payload = {}  # group id -> assignments given directly
        self.user_records = self.records("organization user", s.users, Kind.USER)
        self.group_records = self.records("group", s.groups, Kind.GROUP)
        self.project_records = self.records("project", s.projects, Kind.PROJECT)
        self.projects, self.project_keys = {}, set()
        families = (s.project_roles, s.group_roles, s.user_roles, s.project_group_roles, s.project_user_roles)
        lists = [s.roles, *(records for family in families for records in (family or {}).values())]
        self.api_role_ids = {role_id.lower() for records in lists for role_id in ids_of(records)}

    def warn(self, message, once_key=None):
        if once_key is None or once_key not in self.warned:
            self.warned.add(once_key)
            self.warnings.append(message)

    def warn_value(self, field_name, value, what_then):
        shown = value[:60] if isinstance(value, str) else shape(value)
        problem = f"missing {field_name}" if value is None else f"unknown {field_name} {shown!r}"
        self.warn(f"{problem}: {what_then}", f"value:{field_name}:{shown}")

    def flag(self, record, name, subject):
        if (value := record.get(name)) is None or isinstance(value, bool):
            return value
        self.warn(f"{subject} has non-boolean {name} {shape(value)}; treated as unknown", f"flag:{subject}:{name}")

    def records(self, what, items, kind=None, key="id"):
        def warn(problem):
            self.warn(message := f"{what} record {problem}", message)
        return [item for item in unique_by_id(items, key, warn) if item[key] not in self.deleted[kind]]

    def project_list(self, family, pid, kind=None):
        return self.records(f"project {pid} {FAMILIES[family].label}",
                            (getattr(self.snapshot, family) or {}).get(pid), kind)

    def new_local_user(self, unique_id, name, identity=None, *, email=None, is_active=True, user_type=None):
        user = self.app.add_local_user(name, [identity] if identity else None, unique_id=unique_id)
        user.email, user.is_active, user.user_type = email, is_active, user_type
        return user

    def principal(self, principal_id, record, where, *, service_account=False):
        if user := self.app.local_users.get(principal_id):
            return user
        email = text_of(record.get("email"))
        user = self.new_local_user(
            principal_id, text_of(record.get("name")) or email or principal_id, email, email=email,
            user_type="service_account" if service_account else "human")
        self.warn(f"{where} names {'service account' if service_account else 'user'} {principal_id}, not in the "
                  "organization user list; built from that record")
        return user

    def key_credential(self, record, *, active=True, unique_id=None):
        name = text_of(record.get("name")) or text_of(record.get("redacted_value")) or record["id"]
        cred = self.app.add_access_cred(unique_id or record["id"], name)
        expires = epoch_seconds(record.get("expires_at"))
        cred.is_active = active and (expires is None or expires >= self.snapshot.read_at)
        for name in ("created_at", "last_used_at", "expires_at"):
            setattr(cred, name, rfc3339(record.get(name)) or "")
        copy_fields(cred, record, redacted_value=S)
        return cred

    def role_for_value(self, value, subject, *, project):
        """The role id for a role value ("" for none); an unknown value gets a role of its own."""
        scope = "project" if project else "organization"
        if not (role := text_of(value)):
            self.warn(f"{subject} has no {scope} role; kept without one")
            return ""
        role, values = role.lower(), self.role_values[project]
        if role not in values:  # read access, as every role there has
            wanted = f"project_{role}" if project else role
            role_id = values[role] = self.free_role_id(wanted, f"project_role_{role}" if project else f"{scope}_{role}")
            floor, permissions = FIXED_ROLES["project_viewer" if project else "reader"]
            self.app.add_local_role("Project " * project + role.capitalize(), list(permissions), unique_id=role_id)
            taken = "" if role_id == wanted else f" ({wanted!r} is the id of another role)"
            self.warn(f"unknown {scope} role {role!r}: mapped to {role_id!r}{taken} with {floor}'s permissions")
        return values[role]

    def free_role_id(self, wanted, fallback):
        taken = {role_id.lower() for role_id in self.app.local_roles} | self.api_role_ids
        candidates = itertools.chain((wanted, fallback), (f"{fallback}_{number}" for number in itertools.count(2)))
        return next(candidate for candidate in candidates if candidate.lower() not in taken)

    def role_record(self, record, project):
        role_id = record["id"].strip()
        if not is_predefined_role(record):
            return self.api_roles.get(role_id) or self.custom_role(record, role_id)
        scope, word = text_of(record.get("resource_type")), text_of(record.get("name")) or role_id
        if match := PREDEFINED_ROLE_ID.fullmatch(role_id):
            scope, word = match.groups()
        project = scope.endswith("project") if scope else project
        fixed = self.role_for_value(word, f"predefined role {role_id}", project=project)
        if fixed and isinstance(record.get("permissions"), list):
            role = self.app.local_roles[fixed]
            shown = {p for p in record["permissions"] if isinstance(p, str)}
            role.set_property("openai_permissions", sorted(shown.union(role.properties.get("openai_permissions", ()))))
        return fixed

    def custom_role(self, record, role_id):
        pushed = role_id
        if role_id in self.app.local_roles:  # case-insensitive, as Veza compares ids
            pushed = self.free_role_id(f"roles_api_{role_id}", f"roles_api_{role_id}")
            self.warn(f"Roles API role {role_id!r} has a fixed role's id; kept, with its assignments, as {pushed!r}")
        if isinstance(raw := record.get("permissions"), str):
            self.warn(f"role {role_id} has its permissions as one string; read as one permission")
            raw = [raw]
        elif raw is not None and not isinstance(raw, list):
            self.warn(f"role {role_id} has permissions of type {type(raw).__name__}; read as none")
            raw = []
        permissions = list(dict.fromkeys(p for p in raw or [] if isinstance(p, str) and p))
        for permission in permissions:  # on the application: they reach every project
            if permission not in self.app.custom_permissions:
                self.app.add_custom_permission(permission, canonical_permissions(permission),
                                               apply_to_sub_resources=True, resource_types=["project"])
        role = self.app.add_local_role(text_of(record.get("name")) or role_id, permissions, unique_id=pushed)
        copy_fields(role, record, predefined_role=B, resource_type=S, description=S)
        self.custom_roles.add(pushed)
        self.api_roles[role_id] = pushed
        return pushed

    def assign(self, identity, assignments, project=None, member=None):
        """Give `identity` its assignment records' roles, except a member's role its groups give it."""
        count = 0
        for record in self.records("role assignment", assignments):
            role_id = self.role_record(record, project is not None)
            if not role_id or (member and self.through_groups(record, role_id, member, project)):
                continue
            if project:
                identity.add_role(role_id, resources=[project])
            else:
                identity.add_role(role_id, apply_to_application=True)
                if role_id == "owner":
                    identity.add_role("project_owner_via_organization", resources=list(self.projects.values()))
            count += 1
        return count

    def roles_on(self, holder, project):
        """Every role `holder` and its groups have on `project` (custom roles on the application reach it)."""
        holders = [holder, *filter(None, map(self.app.local_groups.get, holder.groups or ()))]
        return list(dict.fromkeys(role for who in holders for role, held in who.role_assignments.items() if (
            project.resource_key in held["resources"] or held["apply_to_application"] and role in self.custom_roles)))

    def through_groups(self, record, role_id, member, project):
        """Whether every source is a payload group holding this role and listing this member (else: direct)."""
        sources = record.get("assignment_sources")
        through = isinstance(sources, list) and bool(sources)
        for source in map(dict_of, sources if through else ()):
            principal_type = text_of(source.get("principal_type"))
            if (kind := (principal_type or "").lower()) not in ("user", "group", ""):
                self.warn_value("assignment source principal_type", principal_type, "read as a direct assignment")
            group_id = text_of(source.get("principal_id")) or ""
            group = self.app.local_groups.get(group_id) if kind == "group" else None
            if kind == "group" and not group:
                self.groups_not_in_payload[group_id] = self.groups_not_in_payload.get(group_id, 0) + 1
            held = group and group.role_assignments.get(role_id)
            through = through and bool(held) and group_id in (member.groups or ()) and (
                project.resource_key in held["resources"] if project else held["apply_to_application"])
        return through


@step()
def map_permissions_and_fixed_roles(m):
    for name, canonical in ORG_PERMISSIONS.items():
        m.app.add_custom_permission(name, [OAAPermission[canonical]])
    for name, canonical in PROJECT_PERMISSIONS.items():  # on the application (an admin key's): every project
        m.app.add_custom_permission(
            name, [OAAPermission[canonical]], apply_to_sub_resources=True, resource_types=["project"])
    for role_id, (name, permissions) in FIXED_ROLES.items():
        m.app.add_local_role(name, list(permissions), unique_id=role_id)


@step(application={"organization_id": S, "is_personal": B})
def map_organization(m):
    m.app.set_property("organization_id", m.snapshot.org_id)
    copy_fields(m.app, {"is_personal": dict_of(m.snapshot.organization).get("personal")}, is_personal=B)


@step(local_user={"added_at": T, "api_key_last_used_at": T, "is_scim_managed": B})
def map_users(m):
    for record in m.user_records:
        nested, subject = dict_of(record.get("user")), f"user {record['id']}"
        email, name = (text_of(record.get(key)) or text_of(nested.get(key)) for key in ("email", "name"))
        banned = m.flag(nested, "banned", subject)  # unknown (warned) counts as active
        user = m.new_local_user(
            record["id"], name or email or record["id"], email, email=email,
            is_active=not (banned is True or m.flag(nested, "enabled", subject) is False),
            user_type="service_account" if record.get("is_service_account") is True else "human")
        user.created_at = rfc3339(record.get("created")) or rfc3339(record.get("added_at"))
        # an unbanned user may keep an old banned_at
        user.deactivated_at = rfc3339(nested.get("banned_at")) if banned is True else None
        copy_fields(user, record, added_at=T, api_key_last_used_at=T, is_scim_managed=B)
        if role := m.role_for_value(record.get("role"), subject, project=False):
            user.add_role(role, apply_to_application=True)
    m.counts["users"] = len(m.app.local_users)


def name_of(record):
    return text_of(record.get("name")) or record["id"]


@step(local_group={"group_type": S, "is_scim_managed": B})
def map_groups(m):
    if m.snapshot.groups is None:
        return
    memberships = 0
    for record in m.group_records:
        gid = record["id"]
        group = m.app.add_local_group(name_of(record), unique_id=gid)
        group.created_at = rfc3339(record.get("created_at"))
        copy_fields(group, record, group_type=S, is_scim_managed=B)
        for member in m.records(f"group {gid} member", (m.snapshot.group_users or {}).get(gid), Kind.USER):
            m.principal(member["id"], member, f"group {gid}").add_group(gid)
            memberships += 1
    m.counts.update(groups=len(m.app.local_groups), group_memberships=memberships)


@step(project={"status": S, "created_at": T, "archived_at": T, "model_permission_mode": S, "model_ids": L,
               **{f"{tool}_enabled": B for tool in HOSTED_TOOLS}})
def map_projects(m):
    s = m.snapshot
    if s.projects is None:
        return
    for record in m.project_records:
        pid = record["id"]
        project = m.projects[pid] = m.app.add_resource(name_of(record), resource_type="project", unique_id=pid)
        if (status := text_of(record.get("status"))) and status.lower() not in ("active", "archived"):
            m.warn_value("project status", status, "read as not archived (its keys stay active)")
        copy_fields(project, record, status=S, created_at=T, archived_at=T)
        map_model_permissions(m, project, (s.model_permissions or {}).get(pid))
        map_hosted_tools(m, project, (s.hosted_tool_permissions or {}).get(pid))
    for user in m.app.local_users.values():  # OpenAI's rule: organization owners own every project
        if "owner" in user.role_assignments:
            user.add_role("project_owner_via_organization", resources=list(m.projects.values()))
    m.counts["projects"] = len(m.projects)


def map_model_permissions(m, project, policy):
    if isinstance(policy, dict):
        project.set_property("model_permission_mode", text_of(policy.get("mode")), ignore_none=True)
        try:
            if isinstance(policy.get("model_ids"), list):
                project.set_property("model_ids", [str(i) for i in policy["model_ids"]])
        except RecursionError:
            m.warn(f"project {project.unique_id} model_ids are nested too deep to read; left unset")
    elif policy is not None:
        m.warn(f"project {project.unique_id} model permissions are {shape(policy)}, not an object; "
               "model_permission_mode and model_ids left unset")


def map_hosted_tools(m, project, tools):
    where = f"project {project.unique_id} hosted tool"
    if tools is not None and not (isinstance(tools, dict) and any(tool in tools for tool in HOSTED_TOOLS)):
        problem = f"{shape(tools)} name none of the tools {', '.join(HOSTED_TOOLS)}" if isinstance(tools, dict) \
            else f"are {shape(tools)}, not an object"
        m.warn(f"{where} permissions {problem}; *_enabled left unset")
    for tool in HOSTED_TOOLS if isinstance(tools, dict) else ():
        setting = tools.get(tool)
        if isinstance(enabled := dict_of(setting).get("enabled"), bool):
            project.set_property(f"{tool}_enabled", enabled)
        elif setting is not None:
            m.warn(f'{where} {tool} is {shape(setting)}, not {{"enabled": true or false}}; {tool}_enabled left unset')


@step()
def map_project_members(m):
    memberships = 0
    for pid, project in m.projects.items():
        for member in m.project_list("project_users", pid, Kind.USER):
            user = m.principal(member["id"], member, f"project {pid}")
            if role := m.role_for_value(member.get("role"), f"project {pid} member {member['id']}", project=True):
                user.add_role(role, resources=[project])
            memberships += 1
    m.counts["project_memberships"] = memberships


@step(local_user={"project_id": S})
def map_service_accounts(m):
    count = 0
    for pid, project in m.projects.items():
        for record in m.project_list("project_service_accounts", pid):
            account = m.app.local_users.get(record["id"]) or m.new_local_user(record["id"], name_of(record))
            account.user_type = "service_account"
            account.created_at = account.created_at or rfc3339(record.get("created_at"))
            account.set_property("project_id", pid)
            if role := m.role_for_value(record.get("role"), f"service account {record['id']}", project=True):
                account.add_role(role, resources=[project])
            count += 1
    m.counts["service_accounts"] = count


def key_owner(m, record):
    """(owner id, owner record, whether a service account): nested or flat, on either kind of key."""
    owner = dict_of(record.get("owner"))
    if (owner_type := text_of(owner.get("type"))) not in (None, *KEY_OWNER_TYPES):
        m.warn_value("API key owner type", owner_type, "the owner is read from the record's shape")
    for kind in dict.fromkeys([owner_type, *KEY_OWNER_TYPES]):
        if kind in KEY_OWNER_TYPES and isinstance(owner.get(kind), dict):
            return text_of(owner[kind].get("id")), owner[kind], kind == "service_account"
    if any(kind in owner for kind in KEY_OWNER_TYPES):
        return None, {}, False
    return text_of(owner.get("id")), owner, owner_type == "service_account"


@step(access_cred={"redacted_value": S, "project_id": S, "owner_type": S})
def map_project_api_keys(m):
    for project_record in m.project_records:
        pid = project_record["id"]
        for record in m.project_list("project_api_keys", pid):
            key = f"project API key {record['id']}"
            if record["id"] in m.app.access_creds:
                m.warn(f"{key} is also listed in project {pid}; kept once, under the first", f"key twice:{key}")
                continue
            owner_id, owner, service_account = key_owner(m, record)
            if owner_id in m.deleted[Kind.USER]:
                continue
            if (access := record.get("owner_project_access")) not in (None, "active", "inactive"):
                m.warn_value("owner_project_access", access, "read as active unless expired or archived")
            cred = m.key_credential(record, active=access != "inactive" and not project_is_archived(project_record))
            m.project_keys.add(record["id"])
            cred.set_property("project_id", pid)
            cred.set_property("owner_type", text_of(dict_of(record.get("owner")).get("type")), ignore_none=True)
            if not owner_id:
                m.warn(f"{key} has no owner in its record")
                continue
            holder = m.principal(owner_id, owner, key, service_account=service_account)
            holder.add_access_cred(record["id"])
            in_record = text_of(owner.get("role")) and m.role_for_value(owner["role"], f"owner of {key}", project=True)
            m.key_holders.append((cred, holder, m.projects[pid], in_record or ""))
    active = sum(m.app.access_creds[key_id].is_active for key_id in m.project_keys)
    m.counts.update(project_api_keys_active=active, project_api_keys_inactive=len(m.project_keys) - active)


def admin_key_id(m, record, redacted):
    """The id an admin-list entry is pushed under; None if it is a project key or no admin key."""
    key_id = record["id"]
    project_key = key_id in m.app.access_creds
    if redacted and not redacted.startswith("sk-admin"):
        if not project_key:  # of a project not read: as an admin key it would overstate access
            m.warn(f"admin API key list entry {key_id} ({redacted}) is neither an admin key nor a key of a read "
                   "project; left out")
        return None
    if not project_key:
        return key_id
    unique_id, number = f"admin_api_key:{key_id}", 1
    while unique_id in m.app.access_creds:
        number += 1
        unique_id = f"admin_api_key:{key_id}:{number}"
    other = text_of(m.app.access_creds[key_id].properties.get("redacted_value")) or "no value"
    m.warn(f"admin API key {key_id} ({redacted or 'no value'}) has the id of project API key {key_id} "
           f"({other}); both are kept, the admin key as {unique_id}")
    return unique_id


@step()
def map_admin_api_keys(m):
    count = 0
    listed = []  # project keys the admin list returned too
    for record in m.records("admin API key", m.snapshot.admin_api_keys):
        if not (unique_id := admin_key_id(m, record, text_of(record.get("redacted_value")) or "")):
            listed += [record["id"]] if record["id"] in m.app.access_creds else []
            continue
        owner_id, owner, service_account = key_owner(m, record)
        if owner_id in m.deleted[Kind.USER]:
            continue  # said by the deletion warning
        m.key_credential(record, unique_id=unique_id).add_role("admin_api_key", apply_to_application=True)
        key = f"admin API key {record['id']}"
        if owner_id:
            m.principal(owner_id, owner, key, service_account=service_account).add_access_cred(unique_id)
        else:
            m.warn(f"{key} has no owner in its record")
        count += 1
    if listed:
        shown = ", ".join(listed[:5]) + ", ..." * (len(listed) > 5)
        m.notes.append((logging.INFO, f"admin API key list: {len(listed)} project API key(s) already read ({shown}); "
                                      "kept once, as project keys"))
    m.counts["admin_api_keys"] = count


@step(local_user={"invite_status": S, "invite_expires_at": T})
def map_invites(m):
    pending = 0
    for record in m.records("invite", m.snapshot.invites):
        status, invite = text_of(record.get("status")), f"invite {record['id']}"
        if status in ("accepted", "expired"):
            continue  # accepted ones are users already; expired ones grant nothing
        if status != "pending":
            m.warn_value("invite status", status, "kept as a pending invite (it may still be accepted)")
        if record["id"] in m.app.local_users:
            m.warn(f"{invite} has the id of an existing user; left out")
            continue
        email = text_of(record.get("email"))
        invitee = m.new_local_user(record["id"], email or record["id"], email, is_active=False)
        m.invitees.add(id(invitee))  # not a person yet
        invitee.set_property("invite_status", status, ignore_none=True)
        invitee.set_property("invite_expires_at", rfc3339(record.get("expires_at")), ignore_none=True)
        if role := m.role_for_value(record.get("role"), invite, project=False):
            invitee.add_role(role, apply_to_application=True)
        grants = record.get("projects")
        for grant in [g for g in grants if isinstance(g, dict)] if isinstance(grants, list) else []:
            project = m.projects.get(grant["id"]) if isinstance(grant.get("id"), str) else None
            project_role = m.role_for_value(grant.get("role"), invite, project=True)
            if project and project_role:
                invitee.add_role(project_role, resources=[project])
            elif not project and m.snapshot.projects is not None:
                m.warn(f"{invite} names project {grant.get('id')} which is not listed")
        pending += 1
    m.counts["invites_pending"] = pending


@step(local_role={"predefined_role": B, "resource_type": S, "description": S, "openai_permissions": L})
def map_custom_roles(m):
    if m.snapshot.roles is None:
        return
    before = len(m.app.local_roles)
    for record in m.records("role", m.snapshot.roles):
        m.role_record(record, project=False)
    for pid in m.projects:
        for record in m.project_list("project_roles", pid):
            m.role_record(record, project=True)
    m.counts["roles"] = len(m.app.local_roles) - before


@step()
def map_role_assignments(m):
    s = m.snapshot
    if s.roles is None:
        return
    count = sum(m.assign(m.app.local_groups[r["id"]], (s.group_roles or {}).get(r["id"])) for r in m.group_records)
    user_roles = s.user_roles or {}
    for user in (m.app.local_users[r["id"]] for r in m.user_records if r["id"] in user_roles):
        count += m.assign(user, user_roles[user.unique_id], member=user)
    for pid, project in m.projects.items():
        if None not in (s.groups, s.project_groups, s.project_group_roles):
            count += assign_project_groups(m, pid, project)
        for member in m.project_list("project_users", pid, Kind.USER) if s.project_user_roles is not None else ():
            if (pid, member["id"]) not in m.deleted[Kind.PROJECT_MEMBER]:
                user = m.app.local_users[member["id"]]
                count += m.assign(user, s.project_user_roles.get((pid, member["id"])), project, member=user)
    if missing := sorted(m.groups_not_in_payload):
        why = "groups were left out" if s.groups is None else "not in the group list, or deleted"
        m.warn(f"{sum(m.groups_not_in_payload.values())} role assignments name groups not in the payload ({why}: "
               f"{', '.join(g or '(no id)' for g in missing[:5])}{', ...' * (len(missing) > 5)}); their roles "
               "go to the users directly")
    m.counts["role_assignments"] = count


def assign_project_groups(m, pid, project):
    count = 0
    for link in m.records(f"project {pid} group", m.snapshot.project_groups.get(pid), Kind.GROUP, key="group_id"):
        gid = link["group_id"]
        if (pid, gid) in m.deleted[Kind.PROJECT_GROUP]:
            continue
        if not (group := m.app.local_groups.get(gid)):
            group = m.app.add_local_group(text_of(link.get("group_name")) or gid, unique_id=gid)
            copy_fields(group, link, group_type=S)
            m.warn(f"project {pid} names group {gid} which is not in the group list; kept")
        count += m.assign(group, m.snapshot.project_group_roles.get((pid, gid)), project)
    return count


@step()
def map_key_access(m):
    """A project key acts with every role its owner holds in its project, from every source read."""
    for cred, holder, project, in_record in m.key_holders:
        roles = dict.fromkeys(filter(None, [*m.roles_on(holder, project), in_record]))
        if not roles:
            m.warn(f"owner {holder.unique_id} of project API key {cred.unique_id} has no project role in "
                   f"{project.unique_id}; kept without one")
        for role in roles:
            cred.add_role(role, resources=[project])


@step(access_cred={"issuer": S, "audience": S, "workload_identity_provider_id": S, "permission_type": S, "scopes": L,
                   "attribute_matchers": L})
def map_federation_rules(m):
    s = m.snapshot
    if None in (s.workload_identity_providers, s.federation_rules):
        return
    accounts_read = None not in (s.projects, s.project_service_accounts)
    if not accounts_read:
        m.warn("federation rules kept without holders or project roles: project service accounts were not read")
    count = 0
    for provider in m.records("workload identity provider", s.workload_identity_providers, Kind.PROVIDER):
        for rule in m.records(f"workload identity provider {provider['id']} federation rule",
                              s.federation_rules.get(provider["id"])):
            where = f"federation rule {rule['id']}"
            if rule["id"] in m.app.access_creds:
                m.warn(f"{where} has the id of another credential; left out")
                continue
            cred = federation_rule_credential(m, provider, rule, where)
            if accounts_read:
                hold_federation_rule(m, rule, cred, where)
            count += 1
    m.counts["federation_rules"] = count


def federation_rule_credential(m, provider, rule, where):
    cred = m.app.add_access_cred(rule["id"], name_of(rule))
    cred.created_at = rfc3339(rule.get("created_at")) or ""
    cred.is_active = (m.flag(rule, "enabled", where) is not False and  # unknown (warned) counts as enabled
                      m.flag(provider, "enabled", f"workload identity provider {provider['id']}") is not False)
    copy_fields(cred, provider, issuer=S, audience=S)
    cred.set_property("workload_identity_provider_id", provider["id"])
    copy_fields(cred, rule, project_id=S)
    if isinstance(matchers := rule.get("attribute_matchers"), dict):
        shown = {key: matcher_value(value) for key, value in matchers.items()}
        if deep := [key for key, value in shown.items() if value is None]:
            m.warn(f"{where} has attribute matcher {deep[0]!r} nested too deep to read; attribute_matchers left unset")
        else:
            cred.set_property("attribute_matchers", sorted(f"{key}={value}" for key, value in shown.items()))
    elif matchers is not None:
        m.warn(f"{where} has attribute_matchers of type {type(matchers).__name__}, not an object; left unset")
    permissions = dict_of(rule.get("permissions"))
    cred.set_property("permission_type", permission_type := text_of(permissions.get("type")), ignore_none=True)
    if permission_type == "restricted" and isinstance(permissions.get("scopes"), list):
        cred.set_property("scopes", [scope for scope in permissions["scopes"] if isinstance(scope, str)])
    return cred


def matcher_value(value):
    """Text as is, else JSON (true, 1, null); None when nested too deep."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    except RecursionError:
        return None


def hold_federation_rule(m, rule, cred, where):
    """Its service account holds it, with that account's roles on its project."""
    account_id = text_of(rule.get("service_account_id"))
    if not (holder := m.app.local_users.get(account_id)) or holder.user_type != "service_account":
        problem = f"service account {account_id} which is not listed" if not holder else \
            f"{account_id}, a human user, as its service account"
        m.warn(f"{where} names {problem}; kept without a holder or project role")
        return
    holder.add_access_cred(rule["id"])
    project_id = text_of(rule.get("project_id"))
    if not (project := m.projects.get(project_id)):
        m.warn(f"{where} names project {project_id} which is not listed; kept without a project role")
        return
    roles = m.roles_on(holder, project)
    if not roles and account_id not in ids_of(m.project_list("project_service_accounts", project_id)):
        m.warn(f"{where}: service account {account_id} is not in project {project_id}; kept without a project role")
    for role in roles:
        cred.add_role(role, resources=[project])


@step(application={"activity_window_days": N}, access_cred={"scopes_restricted": B})
def map_activity(m):
    s = m.snapshot
    if s.audit_logs is None:
        return
    m.app.set_property("activity_window_days", s.activity_window_days)
    logins, scopes = audit_activity(s.audit_logs, s.activity_since)
    users = {record["id"] for record in m.user_records}
    for user_id in sorted(logins):
        if user_id in users:
            m.app.local_users[user_id].last_login_at = logins[user_id]
        else:
            m.notes.append((logging.DEBUG, f"audit log: login by {user_id}, not an organization user; ignored"))
    keys = sorted(scopes.keys() & m.project_keys)
    for key_id in keys:  # [] means all permissions (OpenAI's key docs)
        m.app.access_creds[key_id].set_property("scopes_restricted", bool(scopes[key_id]))
        m.app.access_creds[key_id].set_property("scopes", scopes[key_id] or None, ignore_none=True)
    m.counts.update(logins=len(users & logins.keys()), key_scopes=len(keys))


def audit_activity(events, since):
    """({user id: latest login}, {project key id: scopes of its newest scope-setting event})."""
    since = -math.inf if (start := epoch_seconds(since)) is None else start
    logins, newest = {}, {}  # newest: {key id: ((time, event id), scopes)}
    for event in events:
        kind = dict_of(event).get("type")
        at = epoch_seconds(event.get("effective_at")) if kind else None
        if at is None or at < since:  # the server may not filter by type and time
            continue
        if kind == "login.succeeded":
            if user_id := text_of(dict_of(dict_of(dict_of(event.get("actor")).get("session")).get("user")).get("id")):
                logins[user_id] = max(at, logins.get(user_id, at))
        elif kind in ("api_key.created", "api_key.updated"):
            details = dict_of(event.get(kind))  # under a key named like the type
            # an update's scopes: in changes_requested by the schema, in data by OpenAI's example
            holders = ("data",) if kind == "api_key.created" else ("changes_requested", "data")
            found = (dict_of(details.get(holder)).get("scopes") for holder in holders)
            scopes = next((scopes for scopes in found if isinstance(scopes, list)), None)
            key_id = text_of(details.get("id"))
            if None in (key_id, scopes):
                continue  # e.g. a rename
            rank = (at, str(event.get("id") or ""))
            if key_id not in newest or rank > newest[key_id][0]:
                newest[key_id] = (rank, [scope for scope in scopes if isinstance(scope, str)])
    return ({user_id: rfc3339(at) for user_id, at in logins.items()},
            {key_id: scopes for key_id, (_, scopes) in newest.items()})


@step(certificate={"active": B, "valid_at": T, "expires_at": T})
def map_certificates(m):
    """Never the PEM."""
    s = m.snapshot
    if s.certificates is None and None in (s.projects, s.project_certificates):
        return
    found = []
    for record in m.records("certificate", s.certificates):
        if record["id"] in m.app.resources:
            m.warn(f"certificate {record['id']} has the id of a project; left out")
        else:
            found.append((m.app.add_resource, record))
    found += [(project.add_sub_resource, record) for pid, project in m.projects.items()
              for record in m.project_list("project_certificates", pid)]
    for add, record in found:
        certificate = add(name_of(record), resource_type="certificate", unique_id=record["id"])
        copy_fields(certificate, record, active=B)
        copy_fields(certificate, dict_of(record.get("certificate_details")), valid_at=T, expires_at=T)
    m.counts["certificates"] = len(found)


@step()
def map_read_times(m):
    """With --state-dir: when the lists pushed were read, at the oldest."""
    if not (times := m.snapshot.read_times):
        return
    m.app.property_definitions.define_application_property("oldest_read_at", T)
    m.app.property_definitions.define_resource_property("project", "lists_read_at", T)
    m.app.set_property("oldest_read_at", rfc3339(min(times.values())))
    oldest = {}
    for (name, key), at in times.items():
        if FAMILIES[name].per in (Kind.PROJECT, Kind.PROJECT_GROUP, Kind.PROJECT_MEMBER):
            pid = key if isinstance(key, str) else key[0]
            oldest[pid] = min(at, oldest.get(pid, at))
    for pid, project in m.projects.items():
        project.set_property("lists_read_at", rfc3339(oldest.get(pid)), ignore_none=True)


# The summary line's counts, in a fixed order: append new ones.
COUNTS = ("users", "groups", "group_memberships", "projects", "project_memberships", "service_accounts",
          "project_api_keys_active", "project_api_keys_inactive", "admin_api_keys", "invites_pending", "roles",
          "role_assignments", "logins", "key_scopes", "federation_rules", "certificates")


def build_application(snapshot):
    m = ApplicationBuilder(snapshot)
    definitions = m.app.property_definitions
    for entity, properties in (item for mapping_step in STEPS for item in mapping_step.properties.items()):
        for name, kind in properties.items():
            if entity in ("project", "certificate"):
                definitions.define_resource_property(entity, name, kind)
            else:
                getattr(definitions, f"define_{entity}_property")(name, kind)
    for mapping_step in STEPS:
        mapping_step(m)
    owner_groups = {group.unique_id for group in m.app.local_groups.values() if "owner" in group.role_assignments}
    users = [user for user in m.app.local_users.values() if id(user) not in m.invitees]
    people = {"people": sum(user.user_type != "service_account" for user in users), "owners": sum(
        "owner" in user.role_assignments or not owner_groups.isdisjoint(user.groups or ()) for user in users)}
    counts = {name: m.counts[name] for name in COUNTS if name in m.counts}
    return MappingResult(m.app, m.warnings, counts, m.notes, people)


# ------------------------
# The payload: oaaclient's get_payload() as compact JSON, one entity at a time
# ------------------------

# {get_payload()'s list of entities: the application's attribute holding them}
ENTITY_LISTS = {"local_access_creds": "access_creds", **{key: key for key in (
    "local_users", "local_groups", "local_roles", "local_agents", "local_models", "resources")}}
# identity_to_permissions's identities, in order (the mapping adds no idp_identities)
IDENTITIES = ("local_users", "local_groups", "access_creds", "local_agents")
encode = json.JSONEncoder(separators=(",", ":")).encode


def serialize_application(app, facts=None):
    """Spends `app`: each entity is freed once written."""
    marker = f"entities-{os.urandom(16).hex()}-"  # in no string of the payload
    skeleton = copy.copy(app)  # shallow: the entities are neither copied nor changed
    for attribute in ENTITY_LISTS.values():
        setattr(skeleton, attribute, {})
    payload = skeleton.get_payload()
    targets = [(payload["applications"][0], key, attribute) for key, attribute in ENTITY_LISTS.items()]
    for holder, key, attribute in [*targets, (payload, "identity_to_permissions", "")]:
        if holder.get(key) != []:  # another oaaclient's shape: never push a payload missing entities
            raise RuntimeError(f"oaaclient's payload has no empty {key!r} list to fill")
        holder[key] = marker + attribute
    out, permissions = bytearray(), {}  # grown in place, never copied; {attribute: grants' JSON}
    # literal JSON, an attribute ("" for identity_to_permissions), literal JSON, ...
    for index, attribute in enumerate(re.split(f'"{re.escape(marker)}(\\w*)"', encode(payload))):
        if index % 2 == 0:
            out += attribute.encode()
            continue
        out += b"["
        for entry in () if attribute else (entry for kind in IDENTITIES for entry in permissions.pop(kind, ())):
            out += entry + b","
        entities = getattr(app, attribute) if attribute else {}
        for key in list(entities):
            entity = entities.pop(key)
            out += encode(data := entity.to_dict()).encode() + b","
            grants = entity.get_identity_to_permissions(application_name=app.name) if attribute in IDENTITIES else {}
            if facts:
                facts.add(attribute, data, grants)
            if "application_permissions" in grants or "role_assignments" in grants:  # as get_payload() lists them
                permissions.setdefault(attribute, []).append(encode(grants).encode())
        out[len(out) - out.endswith(b","):] = b"]"  # over a last comma
    return out


def save_payload(payload, path):
    """Atomically: a half-written file never looks whole; JSON piece by piece unless bytes."""
    fd, tmp = tempfile.mkstemp(prefix=".veza_openai-", suffix=".json", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w" if isinstance(payload, dict) else "wb") as handle:
            json.dump(payload, handle) if isinstance(payload, dict) else handle.write(payload)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------
# Veza: its documented OAA REST calls, made with requests
# ------------------------

VEZA_CHECK_TIMEOUT = 10.0
MAX_VEZA_PAGES = 100  # of 250 entries; more is a loop
PUSH_IN_PARTS_OVER = 50_000_000  # oaaclient's; gzipped in base64, less stays under Veza's 100 MB body limit
PROVIDERS = "/api/v1/providers/custom"
# A plain glyph: OpenAI's logo is a trademark.
PROVIDER_ICON_SVG = base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><circle cx="16" cy="16" r="14" fill="#101010"/>'
    b'<text x="16" y="21" font-size="14" font-family="sans-serif" fill="#fff" text-anchor="middle">AI</text></svg>'
).decode()
KEY_REFUSED = "Veza refused the API key (HTTP {}): check VEZA_API_KEY and that its user may manage OAA providers"


class VezaError(Exception):
    """A failed Veza call (`status` 0: no answer); `late`: --max-run-time ended it."""

    def __init__(self, message, status=0, details=None, late=False):
        super().__init__(message)
        self.status, self.late = status, late
        self.details = details if isinstance(details, list) else []


class Veza:
    def __init__(self, config, clock):
        self.config, self.clock = config, clock
        self.http = Http(config.veza_url, config.veza_api_key, timeout=config.veza_timeout,
                         max_bytes=VEZA_ANSWER_BYTES, verify=not config.veza_unverified)

    def check(self):
        log.info("connecting to Veza at %s", self.config.veza_url)
        path = f"{PROVIDERS}/templates"
        answer = self.http.call("GET", path, timeout=VEZA_CHECK_TIMEOUT)
        if answer.ssl:
            problem = (f"{answer.problem.split('(', 1)[-1].rstrip(')')}; if a proxy or a private CA signs it, set "
                       "REQUESTS_CA_BUNDLE to that CA's PEM file")
        elif answer.status == 0 and not answer.fatal:
            problem = f"{answer.problem} (not reachable in {VEZA_CHECK_TIMEOUT:g}s; check VEZA_URL, DNS, proxy, TLS)"
        elif answer.status in (401, 403):
            problem = KEY_REFUSED.format(answer.status)
        elif answer.status != 200 or answer.fatal or not isinstance(dict_of(answer.body).get("values"), list):
            problem = f"{answer.problem} from {path}, not a list of templates ('values'): is VEZA_URL your Veza?"
        else:
            return
        raise PushError(f"cannot use Veza at {self.config.veza_url}: {problem}")

    def call(self, method, path, body=None, params=None, retry_when=None):
        """Its JSON unwrapped as oaaclient does; a POST retries only on a 429: it may have created its object."""
        retry_when = retry_when or ((lambda answer: answer.status == 429) if method == "POST" else Answer.transient)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        retries = self.config.veza_retries
        for attempt in range(1, retries + 2):
            if self.clock.passed():
                raise VezaError(f"--max-run-time {self.clock.max_run_time:g}s passed before {method} {path}", late=True)
            answer = self.http.call(method, path, params, data,
                                    timeout=min(self.config.veza_timeout, max(0.001, self.clock.left())))
            if 200 <= answer.status < 300 and not answer.fatal:
                return answer.body.get("value", answer.body) if isinstance(answer.body, dict) else answer.body
            if attempt > retries or not retry_when(answer):
                break
            if (wait := backoff(attempt, answer.hint) * self.clock.scale) >= self.clock.left():
                raise VezaError(f"{answer.problem}; a retry would end past --max-run-time", answer.status, late=True)
            log.info("Veza %s %s: %s, retry %d/%d in %.1fs", method, path, answer.problem, attempt, retries,
                     wait / self.clock.scale)
            time.sleep(wait)
        body = dict_of(answer.body)
        code = f"{body['code']}: " if isinstance(body.get("code"), str) else ""
        message = KEY_REFUSED.format(answer.status) if answer.status in (401, 403) else \
            f"{answer.problem}: {code}{answer.detail}" if answer.status and not answer.fatal else answer.problem
        raise VezaError(message, answer.status, body.get("details"))

    def list(self, path, **params):
        params["page_size"] = 250
        values = []
        for _ in range(MAX_VEZA_PAGES):
            page = dict_of(self.call("GET", path, params=params))
            if not isinstance(page.get("values"), list):
                raise VezaError(f"{path}: Veza's answer has no list of values")
            values += [entry for entry in page["values"] if isinstance(entry, dict)]
            if not page.get("has_more"):
                return values
            token = page.get("next_page_token")
            if not (token and isinstance(token, str)) or token == params.get("page_token"):
                raise VezaError(f"{path}: has_more without a new next_page_token; stopped instead of looping")
            params["page_token"] = token
        raise VezaError(f"{path}: still has_more after {MAX_VEZA_PAGES} pages; stopped instead of looping")

    def find_or_create(self, what, path, body):
        """(id, created now) of the object named body["name"]."""
        if found := self.list(path, filter=f'name eq "{body["name"]}"'):
            return found[0]["id"], False
        log.info("creating Veza %s", what)
        try:
            created = dict_of(self.call("POST", path, body))
        except VezaError as exc:
            if exc.status != 403:
                raise
            raise PushError(f"Veza refused to create the {what} (HTTP 403): run once with an admin's key (later "
                            "runs need only push rights)") from None
        if not isinstance(created.get("id"), str):
            raise VezaError(f"{path}: Veza's answer to creating the {what} has no id")
        return created["id"], True

    def push(self, payload, summary):
        """Replace the snapshot as oaaclient does; returns Veza's warnings."""
        provider, created = self.find_or_create(
            f"provider {PROVIDER_NAME!r} (template application)", PROVIDERS,
            {"name": PROVIDER_NAME, "custom_template": "application"})
        if created:
            self.call("POST", f"{PROVIDERS}/{provider}:icon", {"icon_base64": PROVIDER_ICON_SVG})
        name, path = self.config.data_source_name, f"{PROVIDERS}/{provider}/datasources"
        source, _ = self.find_or_create(f"data source {name!r}", path, {"name": name, "id": provider})
        path += f"/{source}"
        summary.upload_started = True

        def post(path, body):
            return self.call("POST", path, body, retry_when=push_retryable)

        if len(payload) <= PUSH_IN_PARTS_OVER:
            return push_warnings(post(path + ":push", json_with_base64(
                {"id": provider, "data_source_id": source, "json_data": BASE64, "compression_type": "GZIP"},
                gzip.compress(payload, 9))))
        log.info("payload is %d MB: pushing it in parts", len(payload) // 1_000_000)
        path += ":parts"
        upload = dict_of(post(path, {"operation": "start"})).get("upload_id")
        if not (upload and isinstance(upload, str)):
            raise VezaError("Veza's answer to starting a push in parts has no upload_id")
        parts = range(0, len(payload), PUSH_IN_PARTS_OVER)
        for number, start in enumerate(parts, 1):
            post(path, json_with_base64({"operation": "upload", "upload_id": upload, "sequence_number": number,
                                         "data": BASE64}, payload[start:start + PUSH_IN_PARTS_OVER]))
        return push_warnings(post(path, {"operation": "complete", "upload_id": upload, "sequence_count": len(parts)}))


BASE64 = f"base64-{os.urandom(16).hex()}"


def json_with_base64(fields, data):
    """JSON of `fields`, its BASE64 value the base64 of `data`, never decoded to text."""
    return json.dumps(fields).encode().replace(BASE64.encode(), base64.b64encode(data))


def push_retryable(answer):
    """A push replaces the snapshot whole: it may go again after a 429, or a 502/503/504 without a result."""
    result = isinstance(answer.body, dict) and ("warnings" in answer.body or "id" in answer.body)
    return answer.status == 429 or (answer.status in (502, 503, 504) and not result)


def push_warnings(result):
    if isinstance(result, dict) and "code" not in result and isinstance(found := result.get("warnings", []), list):
        return found
    raise PushError(f"Veza answered the push with {shape(result)}, not a push result: whether it stored the "
                    "payload is unknown", reached_veza=True)


# ------------------------
# The Veza report (--create-report)
# ------------------------

REPORT_NAME = "OpenAI access review"
REPORT_DESCRIPTION = ("Who administers the OpenAI organization, its admin keys, inactive users who still hold "
                      "roles, pending invites, projects whose tools reach outside, and federated workloads.")
USER_NODE, CRED_NODE, ROLE_NODE, PROJECT_NODE = (
    f"OAA.{APPLICATION_TYPE}.{kind}" for kind in ("User", "AccessCred", "Role", "project.Resource"))


def nodes(node_type, **equals):
    specs = [{"fn": "EQ", "property": name, "value": value} for name, value in equals.items()]
    return {"nodes": [{"node_type": node_type, **({"condition_expression": {"specs": specs}} if specs else {})}]}


def report_query(name, description, source, role=None):
    return {"name": f"OpenAI {name}", "description": description, "query_type": "SOURCE_TO_DESTINATION",
            "source_node_types": source, **({"relates_to_exp": {"specs": [{"node_types": role}]}} if role else {})}


# Conditions Veza is known to take only (docs/mapping.md); properties are customprop_<name>.
REPORT_QUERIES = [report_query(*query) for query in (
    ("organization owners", "Users holding the organization's Owner role (members and billing)",
     nodes(USER_NODE), nodes(ROLE_NODE, name="Owner")),
    ("admin API keys", "Credentials holding the organization-wide Admin API Key role", nodes(CRED_NODE),
     nodes(ROLE_NODE, name="Admin API Key")),
    ("inactive users holding roles", "Deactivated or banned users, and pending invites, with any role",
     nodes(USER_NODE, is_active=False), nodes(ROLE_NODE)),
    ("pending invites", "Invitations not yet accepted, with the roles they grant",
     nodes(USER_NODE, customprop_invite_status="pending")),
    ("projects with MCP enabled", "Projects whose settings let models call MCP servers",
     nodes(PROJECT_NODE, customprop_mcp_enabled=True)),
    ("projects with web search enabled", "Projects whose settings let models search the web",
     nodes(PROJECT_NODE, customprop_web_search_enabled=True)),
    ("federated workloads with restricted scopes", "Workload identity federation rules (restricted)",
     nodes(CRED_NODE, customprop_permission_type="restricted")),
    ("federated workloads with service account permissions",
     "Workload identity federation rules acting with their service account's full permissions",
     nodes(CRED_NODE, customprop_permission_type="service_account_default")),
)]


def same_as_sent(stored, sent):
    """Veza's stored value says what we sent (proto3 JSON omits defaults, may give enums as numbers)."""
    if isinstance(sent, dict):
        return isinstance(stored, dict) and all(
            same_as_sent(stored[key], value) if key in stored else not value for key, value in sent.items())
    if isinstance(sent, list):
        return isinstance(stored, list) and len(stored) == len(sent) and all(map(same_as_sent, stored, sent))
    if isinstance(sent, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", sent) and type(stored) is int:
        return True
    return type(stored) is type(sent) and stored == sent


def create_or_update_report(veza):
    """Report and queries found by name."""
    queries, reports = "/api/v1/assessments/queries", "/api/preview/assessments/reports"
    existing = {q.get("name"): q for q in veza.list(queries, include_inactive_queries=True)
                if q.get("query_type") != "SYSTEM_CREATED"}
    changed, query_ids = False, []
    for definition in REPORT_QUERIES:
        if not (query := existing.get(definition["name"])):
            query = dict_of(veza.call("POST", queries, definition))
            changed = True
        elif not same_as_sent(query, definition):
            veza.call("PUT", f"{queries}/{query['id']}", {**definition, "id": query["id"]})
            changed = True
        query_ids.append(query["id"])
    report = next((r for r in veza.list(reports, include_inactive_reports=True, include_inactive_queries=True)
                   if r.get("name") == REPORT_NAME), None)
    if not report:
        veza.call("POST", reports, {"name": REPORT_NAME, "description": REPORT_DESCRIPTION,
                                    "queries": [{"query": query_id} for query_id in query_ids]})
        return "created"
    stored = dict_of(veza.call("GET", f"{reports}/{report['id']}", params={"include_inactive_queries": True}))
    present = {entry.get("query") for entry in stored.get("queries") or [] if isinstance(entry, dict)}
    missing = [query_id for query_id in query_ids if query_id not in present]
    for query_id in missing:
        veza.call("PUT", f"{reports}/{report['id']}/queries/{query_id}")
    return "updated" if changed or missing else "unchanged"


# ------------------------
# What changed since the last push
# ------------------------

CHANGES = {"users": ("users_joined", "users_left"), "owners": ("owners_added", "owners_removed"),
           "admin_keys": ("admin_keys_created", "admin_keys_removed"),
           "project_keys": ("project_keys_created", "project_keys_removed"),
           "active_keys": ("keys_activated", "keys_deactivated"), "grants": ("roles_granted", "roles_revoked")}


class Facts:
    """What the change report compares: JSON lines, compressed as each entity is written (memory)."""

    def __init__(self):
        self.compressor, self.chunks = zlib.compressobj(1), []

    def add(self, attribute, entity, permissions):
        """An entity's payload dict and identity_to_permissions entry."""
        properties, found = entity.get("custom_properties", {}), []
        if attribute == "local_users" and "invite_status" not in properties:
            found.append(["users", entity["id"], entity.get("groups", [])])
        if attribute == "access_creds":
            found.append(["creds", entity["id"], entity.get("is_active"),
                          properties.keys() & {"project_id", "workload_identity_provider_id"} == {"project_id"}])
        for grant in permissions.get("role_assignments", []):  # every project of an owner's is said as the owner
            for where in ["application"] * bool(grant.get("apply_to_application")) + grant.get("resources", []) * (
                    grant["role"] != "project_owner_via_organization"):
                found.append(["grants", permissions["identity"], grant["role"], where])
        self.chunks.append(self.compressor.compress(encode(found).encode() + b"\n"))

    def result(self):
        """Users, owners (any path), keys, active keys, grants [identity, role, where]."""
        kinds = {"users": [], "creds": [], "grants": []}
        for line in zlib.decompress(b"".join([*self.chunks, self.compressor.flush()])).splitlines():
            for kind, *fact in json.loads(line):
                kinds[kind].append(fact)
        users, creds, grants = kinds.values()
        holders = {role: {who for who, held, where in grants if held == role and where == "application"}
                   for role in ("owner", "admin_api_key")}
        return {"users": [user for user, _ in users], "admin_keys": sorted(holders["admin_api_key"]),
                "owners": [user for user, groups in users if holders["owner"] & {user, *groups}],
                "project_keys": [key for key, _, project in creds if project and key not in holders["admin_api_key"]],
                "grants": grants, "active_keys": [cred for cred, active, _ in creds if active]}


def compare_facts(before, after):
    """Each change list, sorted; all empty with nothing to compare with."""
    before, changes = before or after, {}
    for fact, (added, removed) in CHANGES.items():
        new, old = ({tuple(x) if isinstance(x, list) else x for x in facts[fact]} for facts in (after, before))
        if fact == "active_keys":  # only keys in both: a new or removed key is said as such
            new, old = ({*facts["admin_keys"], *facts["project_keys"]} & items for facts, items in
                        ((before, new), (after, old)))
        changes[added], changes[removed] = sorted(new - old), sorted(old - new)
    return changes


def log_changes(changes, compared, from_version):
    if from_version not in (None, __version__):
        log.info("changes include the upgrade from %s to %s", from_version, __version__)
    if not any(changes.values()):
        log.info("changes: %s", "none since the last push" if compared else "no earlier push to compare with")
    for name, items in changes.items():
        if items:
            shown = ", ".join(" ".join(item) if isinstance(item, tuple) else item for item in items[:5])
            log.info("changes: %d %s (%s%s)", len(items), name.replace("_", " "), shown, ", ..." * (len(items) > 5))


def payload_facts(path, org_id):
    """The facts of a payload saved by --save-json."""
    with open(path, "rb") as handle:
        payload = json.load(handle)
    app, facts = payload["applications"][0], Facts()
    if (org := app["custom_properties"].get("organization_id")) != org_id:
        raise ValueError(f"--previous holds organization {org}, not {org_id}")
    for key, attribute in ENTITY_LISTS.items():
        for entity in app[key]:
            facts.add(attribute, entity, {})
    for entry in payload["identity_to_permissions"]:
        facts.add("", {}, entry)
    return facts.result()


def report_changes(config, state, facts):
    if not facts:
        return
    try:
        facts = facts.result()
        before = since = from_version = None
        if state and state.pushed:
            before = state.load(state.pushed_path, any_version=True)["facts"]
            since, from_version = state.pushed["pushed_at"], state.pushed["connector"]
        elif config.previous:
            before, since = payload_facts(config.previous, config.org_id), os.path.getmtime(config.previous)
        changes = compare_facts(before, facts)
        log_changes(changes, before is not None, from_version)
        if config.changes_json:
            save_payload({"since": rfc3339(since), "from_version": from_version, "to_version": __version__, **changes},
                         config.changes_json)
    except Exception as exc:  # the push stands
        log.warning("changes since the last push not reported: %s: %s", type(exc).__name__, exc)
    finally:  # the next push compares with this one
        if state and isinstance(facts, dict):
            state.write(state.pushed_path, {"pushed_at": time.time(), "facts": facts})


# ------------------------
# main: read, map, save, push, report; every outcome in one summary line
# ------------------------

@dataclass
class RunSummary:
    outcome: str = "failed"
    counts: dict = field(default_factory=dict)
    warnings: int = 0  # lines logged at WARNING
    veza_warnings: int = 0
    throttled: int = 0
    calls: int = 0
    retries: int = 0
    seconds: float = 0.0
    report: str = ""  # created, updated, unchanged, failed, interrupted
    people: dict = field(default_factory=dict)  # "people", "owners"
    reasons: dict = field(default_factory=dict)  # family left out -> why, what to grant
    upload_started: bool = False  # from then on Veza may have the payload, whatever it answers
    saved_to: str = ""
    oldest_read: str = ""  # the oldest list's read time (RFC3339); lists read now, kept
    lists_read: int = 0
    lists_kept: int = 0

    def log(self, level):
        fields = {"outcome": self.outcome, **self.counts, "warnings": self.warnings,
                  "left_out": ",".join(sorted(self.reasons)), "veza_warnings": self.veza_warnings,
                  "throttled": self.throttled, "calls": self.calls, "retries": self.retries,
                  "seconds": round(self.seconds, 1), **({"report": self.report} if self.report else {}),
                  "version": __version__, "oldest_read": self.oldest_read, "lists_read": self.lists_read,
                  "lists_kept": self.lists_kept}
        line = " ".join(f"{key}={value}" for key, value in fields.items())
        log_with_fields(level, {"summary": True, **fields}, "summary: %s", line)

    def log_for_people(self, config):
        c = dict.fromkeys(COUNTS, 0) | self.counts | self.people
        if self.outcome in ("pushed", "dry-run"):  # then mapping set self.people
            active, admin_keys = c["project_api_keys_active"], c["admin_api_keys"]
            log.info("In Veza: %d people, %d service accounts, %d owners (by any path), %d admin key%s, %d active "
                     "project keys of %d, %d projects, %d pending invites.", c["people"], c["service_accounts"],
                     c["owners"], admin_keys, "s" * (admin_keys != 1), active,
                     active + c["project_api_keys_inactive"], c["projects"], c["invites_pending"])
        log.info("Left out: %s.", "; ".join(self.reasons.values()) or "none")
        outcome = "not pushed (dry run)" if config.dry_run else {
            "pushed": f"pushed to data source {config.data_source_name!r}",
            "unknown": "outcome unknown: check the data source in Veza"}.get(
            self.outcome, "not pushed; Veza keeps the previous snapshot")
        log.info("Payload: %s%s.", outcome, f"; saved to {self.saved_to}" if self.saved_to else "")


def log_memory(stage):
    """To size a pod's memory limit (Linux's /proc)."""
    if log.isEnabledFor(logging.DEBUG):
        with contextlib.suppress(OSError, KeyError, ValueError), open("/proc/self/status", encoding="ascii") as status:
            mib = {line[:5]: round(int(line.split()[1]) / 1024) for line in status if line[:5] in ("VmRSS", "VmHWM")}
            now, peak = mib["VmRSS"], mib["VmHWM"]
            log_with_fields(logging.DEBUG, {"stage": "memory", "after": stage, "resident_mib": now, "peak_mib": peak},
                            "memory after %s: %d MiB resident, peak %d MiB", stage, now, peak)


def read_organization(config, clock, summary, state):
    http = Http(config.openai_base_url, config.openai_api_key, timeout=config.timeout, pool=config.max_workers,
                max_bytes=ANSWER_BYTES_IN_FLIGHT // config.max_workers, shared_strings=True,
                headers={"OpenAI-Organization": config.org_id})
    log.info("reading OpenAI organization %s at %s with %d workers", config.org_id, config.openai_base_url,
             config.max_workers)
    reader = Scheduler(http, config, clock, FAMILY_LIST)
    plan = ReadPlan(config, reader, state)
    try:
        snapshot = plan.read()
    finally:
        summary.calls, summary.retries, summary.throttled = reader.calls, reader.retries, reader.throttled
        summary.lists_read, summary.lists_kept = plan.snapshot.lists_read, len(plan.kept)
        summary.oldest_read = rfc3339(plan.snapshot.oldest_read) or ""
        http.session.close()
    for name, reason in snapshot.unavailable.items():
        family = FAMILIES[name]
        summary.reasons[name] = f"{family.label} ({reason}): grant the admin key '{family.grant}: Read'"
        log.warning("left out %s, or the organization does not have it", summary.reasons[name])
    if snapshot.organization is None:
        log.info("is_personal left unset: the organization object is not readable with this key")
    counts = {name: None if (records := getattr(snapshot, name)) is None else len(records)
              for name in ("users", "projects", "groups")}
    counts.update(calls=reader.calls, retries=reader.retries, throttled=reader.throttled)
    log_with_fields(logging.INFO, {"stage": "read", **counts},
                    "read %s users, %s projects, %s groups in %d calls (%d retries, %d answered 429)",
                    *("-" if count is None else count for count in counts.values()))
    return snapshot


def discover(config, clock, summary, state):
    """Each stage's input is freed once the next has it."""
    snapshot = read_organization(config, clock, summary, state)
    gc.collect()  # the finished reader is in reference cycles and holds every record
    log_memory("reading")
    started = time.monotonic()
    if state:
        state.push_started = started
    gc.disable()  # mapping makes millions of acyclic objects that full collections would rescan
    try:
        result = build_application(snapshot)
        del snapshot
        log_memory("mapping")
        summary.counts, summary.people = result.counts, result.people
        for level, message in [*result.notes, *((logging.WARNING, message) for message in result.warnings)]:
            log.log(level, "%s", message)
        app = result.application
        facts = Facts() if config.state_dir or config.previous or config.changes_json else None
        payload = serialize_application(app, facts)
        del result, app
    finally:
        gc.enable()
    seconds = time.monotonic() - started
    log_memory("serialising")
    log_with_fields(logging.INFO, {"stage": "mapped", **summary.counts, "seconds": round(seconds, 2)},
                    "mapped %s in %.2fs", " ".join(f"{k}={v}" for k, v in summary.counts.items()), seconds)
    return payload, facts


def run(config, clock, summary):
    """Raises DiscoveryError, PushError or Incomplete; holds the state directory throughout."""
    state = config.state_dir and State(config.state_dir, config.org_id)
    try:
        read_and_push(config, clock, summary, state)
    finally:
        if state:
            state.close(summary.outcome == "pushed")


def read_and_push(config, clock, summary, state):
    veza = None if config.dry_run else Veza(config, clock)
    if veza:  # before spending OpenAI quota
        veza.check()
    payload, facts = discover(config, clock, summary, state)
    if path := config.save_json_path:
        try:
            save_payload(payload, path)
        except OSError as exc:
            raise PushError(f"could not write the payload to {path}: {exc.strerror or exc} "
                            "(full disk?); not pushed without its --save-json copy") from None
        log.info("payload saved to %s (%d bytes)", path, len(payload))
        summary.saved_to = path
    if not veza:
        summary.outcome = "dry-run"
        return
    log.info("pushing to Veza data source %r", config.data_source_name)
    try:
        veza_warnings = veza.push(payload, summary)
    except VezaError as exc:
        for detail in exc.details:
            log.error("Veza: %s", detail)
        refused = 300 <= exc.status < 500  # a refusal or a redirect: Veza did not take it
        raise PushError(f"push to Veza did not finish within --max-run-time {config.max_run_time:g}s ({exc})"
                        if clock.passed() or exc.late else f"push to Veza failed: {exc}",
                        reached_veza=summary.upload_started and not refused) from None
    log_memory("pushing")
    del payload  # memory for the change report
    summary.outcome = "pushed"  # settled: a later signal or failure changes only report=
    summary.veza_warnings = len(veza_warnings)
    for warning in veza_warnings:
        log.warning("Veza: %s", warning)
    report_changes(config, state, facts)
    if config.create_report:
        try:
            summary.report = create_or_update_report(veza)
            log.info("Veza report %r %s (%d queries)", REPORT_NAME, summary.report, len(REPORT_QUERIES))
        except Exception as exc:  # the push stands whatever the report does
            summary.report = "failed"
            late = clock.passed() or getattr(exc, "late", False)
            log.error("Veza report %r not created or updated: %s", REPORT_NAME,
                      f"--max-run-time {config.max_run_time:g}s reached" if late else exc)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT raise Stopped, once (as PID 1 in a container, unhandled signals are ignored)."""
    names = {signal.SIGTERM: ("SIGTERM", ExitStatus.TERMINATED),
             signal.SIGINT: ("Ctrl-C (SIGINT)", ExitStatus.INTERRUPTED)}

    def stop(signum, frame):
        if not stop.done:
            stop.done = True
            raise Stopped(*names[signum])

    stop.done = False  # True: later signals change nothing

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there may handlers be set
    previous = {signum: signal.signal(signum, stop) for signum in names} if in_main_thread else {}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def settle_failure(config, summary, exc):
    if getattr(exc, "reached_veza", summary.upload_started):
        summary.outcome = "unknown"
        log.error("outcome unknown: Veza may have received the payload; check data source %r before the next run",
                  config.data_source_name)
    elif not config.dry_run:
        log.error("nothing was pushed; Veza keeps the previous snapshot")


def main(argv=None):
    clock = Clock()
    try:
        config = load_config(argv)
    except ConfigError as exc:
        configure_logging(False, map(os.environ.get, SECRET_VARIABLES), log_format_asked(argv, os.environ))
        for problem in exc.problems:
            log.error("configuration error: %s", problem)
        RunSummary(outcome="config-error", seconds=time.monotonic() - clock.started).log(logging.ERROR)
        return ExitStatus.CONFIG
    clock = Clock(config.time_scale, config.max_run_time)
    handler = configure_logging(config.debug, (config.openai_api_key, config.veza_api_key), config.log_format)
    log.info("veza_openai %s; OpenAI key from %s (%s)", __version__, config.openai_key_source,
             mask_key(config.openai_api_key))
    for note in config.notes:
        log.warning("configuration: %s", note)
    summary, status = RunSummary(), ExitStatus.FAILED
    with stop_on_signals() as signals:
        try:
            run(config, clock, summary)
            signals.done = True  # a late signal must not undo "pushed"
            status = ExitStatus.OK
        except Incomplete as exc:
            summary.outcome, status = "incomplete", ExitStatus.INCOMPLETE
            log.warning("%s", exc)
        except (KeyboardInterrupt, Stopped) as exc:
            name = getattr(exc, "signal_name", "Ctrl-C (SIGINT)")
            status = getattr(exc, "status", ExitStatus.INTERRUPTED)
            if summary.outcome == "pushed":
                summary.report = "interrupted" * config.create_report
                log.error("stopped by %s after the push had completed", name)
            else:
                summary.outcome = "interrupted"
                log.error("stopped by %s", name)
                settle_failure(config, summary, exc)
        except Exception as exc:
            if isinstance(exc, (DiscoveryError, PushError)):
                log.error("%s", exc, exc_info=config.debug)
            else:
                log.error("unexpected error: %s: %s (run with --debug for the traceback)", type(exc).__name__, exc,
                          exc_info=config.debug)
            settle_failure(config, summary, exc)
        signals.done = True
        if config.log_format == "text":
            summary.log_for_people(config)
        summary.seconds, summary.warnings = time.monotonic() - clock.started, handler.warnings
        summary.log(logging.INFO if status == ExitStatus.OK else logging.ERROR)
    return int(status)


if __name__ == "__main__":
    try:
        exit_status = main()
    except KeyboardInterrupt:  # Ctrl-C outside the run's own handlers
        exit_status = ExitStatus.INTERRUPTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at exit must print no traceback
    sys.exit(exit_status)
