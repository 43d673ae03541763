"""What the tests of resumable runs share: cutting a run short, the state directory's files, read times.

A run is cut by answering some families 429 for ever (they cannot be read this run) and a short --max-run-time:
the run stops starting reads when what is left falls below the push estimate (60 s scaled, 0.06 s in the tests, or
twice the last push) plus one --timeout, so CUT leaves about a second to read the rest (the demo organization takes
under 0.1 s) and a second to map and push (0.02 s; under heavy load, up to 0.4 s was seen).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from conftest import application
from fake_openai import Fault

CUT = ("--max-run-time", "2", "--timeout", "1")
# Throttle whole families (every entity's list of one endpoint), never one entity's list: a 429 holds its whole
# endpoint's lane, so the other entities' lists of that family would wait behind it.
PROJECT_LISTS = r"/projects/[^/]+/"  # every per-project list of the demo organization
MEMBERS_AND_KEYS = r"^/organization/projects/[^/]+/(users|api_keys)$"  # every project's members and keys
OTHER_PROJECT_LISTS = r"/projects/[^/]+/(?!(users|api_keys)$)"  # every other per-project list
USERS_LIST = r"^/organization/users$"  # a family of one list
IN_USERS_LIST = "user-0119"  # only the organization's user list (its second page) names this user: finds its file
BETA_USERS = r"^/organization/projects/proj_beta/users$"
READ_TIMES = ("oldest_read_at", "lists_read_at")
SUMMARY_TAIL = re.compile(r" version=(?P<version>\S+) oldest_read=(?P<oldest>\S*) lists_read=(?P<read>\d+) "
                          r"lists_kept=(?P<kept>\d+)$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def throttle(openai_fake, *patterns: str) -> None:
    """From now on (and instead of any fault set before) every request to these paths answers 429 with no hint."""
    openai_fake.faults[:] = [Fault(pattern, status=429, times=None) for pattern in patterns]


def list_files(state: Path) -> list[Path]:
    """The saved lists: DIR/lists/<family>/<hash>.json."""
    return sorted(path for path in (state / "lists").rglob("*.json") if path.is_file())


def list_file_holding(state: Path, text: str) -> Path | None:
    for path in list_files(state):
        try:
            if text in path.read_text():
                return path
        except OSError:  # renamed away meanwhile
            continue
    return None


def rewrite_lists(state: Path, change: Callable[[dict], None]) -> None:
    """Edit every saved list's JSON in place (its mode stays)."""
    for path in list_files(state):
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))


def age_lists(state: Path, seconds: float) -> None:
    """Make every saved list look read `seconds` earlier than it was."""

    def older(record: dict) -> None:
        record["read_at"] -= seconds

    rewrite_lists(state, older)


def without_read_times(value: Any) -> Any:
    """The payload without the read-time properties (values and definitions): what a resumed run must match."""
    if isinstance(value, dict):
        return {key: without_read_times(item) for key, item in value.items() if key not in READ_TIMES}
    if isinstance(value, list):
        return [without_read_times(item) for item in value]
    return value


def read_counts(stderr: str) -> dict[str, str]:
    """version, oldest, read, kept: the keys the summary line ends with."""
    last = stderr.splitlines()[-1]
    match = SUMMARY_TAIL.search(last)
    assert match, f"the summary line does not end with version=, oldest_read=, lists_read=, lists_kept=: {last}"
    return match.groupdict()


def unix(timestamp: str) -> float:
    """An RFC 3339 time (a payload TIMESTAMP or the report's `since`) as Unix seconds."""
    assert RFC3339.match(timestamp), timestamp
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def project(payload: dict, project_id: str) -> dict:
    [found] = [r for r in application(payload)["resources"] if r["id"] == project_id]
    return found


def lines_with(stderr: str, text: str) -> list[str]:
    return [line for line in stderr.splitlines() if text in line]
