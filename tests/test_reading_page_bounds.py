"""A list is bounded in items per page and in bytes, not only in pages: an oversized or endless list stops early."""

from __future__ import annotations

import re
import time

from conftest import NO_ROLE_READS, application
from fake_openai import Fault, _event, _session

import veza_openai


def test_a_page_with_more_items_than_the_limit_asked_for_fails_the_run_at_once(run_connector, veza, openai_fake,
                                                                                  monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_PAGES_PER_LIST", 5)  # without the item check: the page cap's message
    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="endless", body=10_000, times=None))
    result = run_connector(*NO_ROLE_READS, timeout=30)
    assert result.returncode == 1, result.output
    assert openai_fake.calls(r"^/organization/invites$") == 1
    assert "ERROR /organization/invites: a page of 10,000 items for limit=100" in result.stderr
    assert veza.pushes == [] and "outcome=failed" in result.stderr.splitlines()[-1]


def test_an_endless_list_stops_at_the_byte_bound_long_before_the_page_cap(run_connector, veza, openai_fake,
                                                                           monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_PAGES_PER_LIST", 60)
    monkeypatch.setattr(veza_openai, "MAX_LIST_BYTES", 200_000)  # each endless page is ~20 KB
    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="endless", body=100, times=None))
    result = run_connector(*NO_ROLE_READS, timeout=30)
    assert result.returncode == 1, result.output
    assert 5 <= openai_fake.calls(r"^/organization/invites$") <= 20
    stopped = re.search(r"ERROR /organization/invites: still has_more after \d+ pages \(([\d.]+) MB\)", result.stderr)
    assert stopped and float(stopped[1]) >= 0.191, result.stderr  # past MAX_LIST_BYTES (0.191 MB)
    assert veza.pushes == []


def test_the_audit_log_is_cut_at_the_byte_bound_with_a_warning_and_the_run_pushes(run_connector, veza, openai_fake,
                                                                                  monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_LIST_BYTES", 150_000)  # a page of 100 of these logins is ~100 KB
    now = int(time.time())
    openai_fake.org.audit_logs = [_event(f"audit_log-b{i:04d}", "login.succeeded", now - 3600 * (i + 1),
                                         _session(f"user-{i:04d}", None), {"note": "x" * 800}) for i in range(250)]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/audit_logs$") == 2
    assert "WARNING audit log: stopped after 2 pages (200 events)" in result.stderr
    assert application(veza.payloads[0])["custom_properties"]["activity_window_days"] == 8
