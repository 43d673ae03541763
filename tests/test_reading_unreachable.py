"""An OpenAI that cannot be reached (refused, DNS, TLS, proxy): a few seconds and one line that says what to check.

Until OpenAI has answered once (any HTTP status), connection failures are retried for at most 10 s in all, scaled
by VEZA_OPENAI_TIME_SCALE like every wait; then the run exits 1 naming the host, with DNS, proxy and CA hints.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from conftest import NO_ROLE_READS, summary_line

# Lines mentioning "retry" a run may log before it gives up on an OpenAI it never reached. Today's per-request
# retries log one line per request per retry: 9 first reads x 6 retries = 54.
MAX_RETRY_LINES = 8


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that refuses connections: bound (so no one else takes it) but not listening."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "push"])
def test_an_unreachable_openai_fails_with_one_line_naming_the_host_and_what_to_check(run_connector, veza,
                                                                                    closed_port, dry_run):
    """Connections refused before OpenAI ever answered: exit 1 with one error line naming the host and port,
    hints naming DNS, HTTPS_PROXY and REQUESTS_CA_BUNDLE, a handful of retry lines at most, and, in a dry run,
    nothing about Veza keeping a snapshot (a dry run pushes nothing)."""
    args = (*NO_ROLE_READS, "--dry-run") if dry_run else NO_ROLE_READS
    result = run_connector(*args, env={"OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port}/v1"})
    assert result.returncode == 1, result.output
    lines = result.stderr.splitlines()
    assert "summary: outcome=failed" in summary_line(result.stderr)
    naming = [line for line in lines[:-1] if " ERROR " in line and f"127.0.0.1:{closed_port}" in line]
    assert len(naming) == 1, result.stderr
    for hint in ("DNS", "HTTPS_PROXY", "REQUESTS_CA_BUNDLE"):
        assert hint in result.stderr, hint
    retry_lines = [line for line in lines if "retry" in line.lower()]
    assert len(retry_lines) <= MAX_RETRY_LINES, "\n".join(retry_lines)
    assert veza.pushes == []
    if dry_run:
        assert "Veza keeps" not in result.stderr
        assert veza.requests == []


def test_an_unreachable_openai_is_given_up_after_10_seconds_whatever_max_retries(run_connector, closed_port):
    """The 10 s bound holds with --max-retries 20, whose backoff alone would be ~15 min. At the time scale 0.01
    the bound is 0.1 s and the backoff ~7-9 s; the run must be over in well under 3 s."""
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--dry-run", "--max-retries", "20", timeout=60,
                           env={"OPENAI_BASE_URL": f"http://127.0.0.1:{closed_port}/v1",
                                "VEZA_OPENAI_TIME_SCALE": "0.01"})
    elapsed = time.monotonic() - started
    assert elapsed < 3, f"{elapsed:.1f}s"
    assert result.returncode == 1, result.output
    assert re.search(rf"ERROR .*127\.0\.0\.1:{closed_port}", result.stderr), result.stderr
