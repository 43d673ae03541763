"""--max-run-time bounds the whole run, push and report included; no Veza answer makes the connector wait for hours."""

from __future__ import annotations

import time

import pytest
from conftest import NO_ROLE_READS, summary_line

import veza_openai

PROVIDERS = ("GET", "/api/v1/providers/custom")
QUERIES = ("GET", "/api/v1/assessments/queries")
UNAVAILABLE_FOR_AN_HOUR = (503, {"Retry-After": "3600"})


@pytest.mark.slow
def test_a_veza_asking_to_retry_in_an_hour_is_given_up_at_max_run_time(run_connector, veza):
    veza.answer_with[PROVIDERS] = UNAVAILABLE_FOR_AN_HOUR
    started = time.monotonic()
    # Unscaled waits, so the one-hour hint meets the 60 s cap and then the 2 s run deadline.
    result = run_connector(*NO_ROLE_READS, "--max-run-time", "2", env={"OAA_API_RETRIES": "5",
                                                                       "VEZA_OPENAI_TIME_SCALE": "1"}, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert elapsed < 15, elapsed  # not the 60 s cap, let alone the hour asked for
    assert "ERROR push to Veza did not finish within --max-run-time 2s" in result.stderr
    assert "nothing was pushed" in result.stderr and veza.pushes == []
    assert "outcome=failed" in summary_line(result.stderr)


def test_a_retry_after_of_an_hour_is_capped_without_max_run_time(run_connector, veza):
    veza.answer_with[PROVIDERS] = UNAVAILABLE_FOR_AN_HOUR
    result = run_connector(*NO_ROLE_READS, env={"OAA_API_RETRIES": "3"}, timeout=20)
    assert result.returncode == 1, result.output
    assert veza.requests.count(PROVIDERS) == 4  # the first call and oaaclient's 3 retries, each wait capped
    assert "ERROR push to Veza failed:" in result.stderr and veza.pushes == []


def test_an_endless_saved_query_list_stops_at_its_page_cap_and_the_push_stands(run_connector, veza, monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_VEZA_PAGES", 20)
    veza.endless_queries = True
    result = run_connector(*NO_ROLE_READS, "--create-report", timeout=30)
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1
    assert veza.requests.count(QUERIES) == 20
    assert "/api/v1/assessments/queries: still has_more after 20 pages; stopped instead of looping" in result.stderr
    assert "outcome=pushed" in summary_line(result.stderr) and "report=failed" in summary_line(result.stderr)


@pytest.mark.slow
def test_max_run_time_ends_a_slow_report_after_a_completed_push(run_connector, veza):
    veza.delays[QUERIES] = 30.0
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--create-report", "--max-run-time", "2", timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert elapsed < 15, elapsed  # not the 30 s the answer takes
    assert len(veza.pushes) == 1 and veza.reports == []
    assert "ERROR Veza report 'OpenAI access review' not created or updated: --max-run-time 2s reached" in \
        result.stderr
    assert "outcome=pushed" in summary_line(result.stderr) and "report=failed" in summary_line(result.stderr)
