"""A push answered 429, or 502/503/504 without a Veza push result, is sent again (at most OAA_API_RETRIES times,
each wait bounded); a refusal is never retried."""

from __future__ import annotations

import time

import pytest
from conftest import NO_ROLE_READS, summary_line
from fake_veza import GATEWAY_PAGE, PushAnswer

RETRY_TWICE = {"OAA_API_RETRIES": "2"}


def push_requests(veza) -> int:
    return sum(1 for method, path in veza.requests if method == "POST" and path.endswith(":push"))


@pytest.mark.parametrize("first", [
    PushAnswer(503, headers={"Retry-After": "1"}),
    PushAnswer(429, headers={"Retry-After": "1"}, body={"code": "ResourceExhausted", "message": "slow down"}),
    PushAnswer(502, headers={"Content-Type": "text/html"}, body=GATEWAY_PAGE),
], ids=["503", "429", "502 gateway page"])
def test_a_push_answered_busy_once_is_sent_again_and_pushed(run_connector, veza, small_openai, first):
    """A push replaces the data source whole, so sending it again is safe: one busy answer costs one retry."""
    veza.push_answers.append(first)
    result = run_connector(*NO_ROLE_READS, env=RETRY_TWICE)
    assert result.returncode == 0, result.output
    assert "outcome=pushed" in summary_line(result.stderr)
    assert len(veza.pushes) == 1
    assert push_requests(veza) == 2


def test_a_push_is_not_retried_when_oaa_api_retries_is_0(run_connector, veza, small_openai):
    veza.push_answers.append(PushAnswer(503, headers={"Retry-After": "1"}))
    result = run_connector(*NO_ROLE_READS)  # the fixture's OAA_API_RETRIES=0
    assert result.returncode == 1, result.output
    assert push_requests(veza) == 1
    assert "outcome=unknown" in summary_line(result.stderr)


def test_a_push_refused_with_400_is_never_retried(run_connector, veza, small_openai):
    veza.push_answers.append(PushAnswer(400, body={"code": "InvalidArgument", "message": "payload rejected"}))
    result = run_connector(*NO_ROLE_READS, env=RETRY_TWICE)
    assert result.returncode == 1, result.output
    assert push_requests(veza) == 1
    assert veza.pushes == []
    assert "outcome=failed" in summary_line(result.stderr)


@pytest.mark.slow
def test_a_push_told_to_retry_in_an_hour_never_waits_past_max_run_time(run_connector, veza, small_openai):
    """Unscaled waits: the hour asked for meets the 60 s cap, then the 2 s --max-run-time."""
    veza.push_answers.extend(PushAnswer(503, headers={"Retry-After": "3600"}) for _ in range(5))
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--max-run-time", "2",
                           env={"OAA_API_RETRIES": "5", "VEZA_OPENAI_TIME_SCALE": "1"}, timeout=40)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert elapsed < 15, elapsed
    assert veza.pushes == []
    assert "outcome=pushed" not in summary_line(result.stderr)


def test_a_push_told_to_retry_in_an_hour_waits_at_most_a_minute(run_connector, veza, small_openai):
    """README: each Veza retry waits what Retry-After says, at most 60 s (the log shows unscaled seconds)."""
    veza.push_answers.append(PushAnswer(429, headers={"Retry-After": "3600"}))
    result = run_connector(*NO_ROLE_READS, env=RETRY_TWICE)
    assert result.returncode == 0, result.output
    assert "retry 1/2 in 60.0s" in result.stderr, result.stderr
    assert push_requests(veza) == 2
