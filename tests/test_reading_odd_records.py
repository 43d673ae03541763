"""One odd record never stops every run: it is skipped with a warning, and a bad required page is a clear failure."""

from __future__ import annotations

import time

from conftest import NO_ROLE_READS, application, by_id, summary_line
from fake_openai import Fault

import veza_openai

DAY = 86_400


def login(event_id: str, user_id: str, at) -> dict:
    return {"id": event_id, "type": "login.succeeded", "effective_at": at,
            "actor": {"type": "session", "session": {"user": {"id": user_id}}}}


def test_a_nan_time_on_the_last_event_before_the_audit_log_cut_does_not_stop_the_run(run_connector, veza,
                                                                                      openai_fake, monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_AUDIT_LOG_PAGES", 1)
    five_days_ago = int(time.time()) - 5 * DAY
    page = {"object": "list", "data": [login("e1", "user-0010", five_days_ago), login("e2", "user-0011", float("nan"))],
            "has_more": True, "first_id": "e1", "last_id": "e2"}  # the fake sends NaN as JSON's NaN literal
    openai_fake.faults.append(Fault(r"^/organization/audit_logs$", status=200, body=page, times=None))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "unexpected error" not in result.stderr
    app = application(veza.payloads[0])
    assert app["custom_properties"]["activity_window_days"] == 5  # from the last event with a usable time
    users = by_id(app["local_users"])
    assert "last_login_at" in users["user-0010"] and "last_login_at" not in users["user-0011"]
    assert "audit log: stopped after 1 pages (2 events)" in result.stderr


def test_a_lone_surrogate_in_an_id_skips_that_record_with_a_warning(run_connector, veza, openai_fake):
    odd_project = {**openai_fake.org.projects[0], "id": "proj_\ud800"}
    odd_user = {**openai_fake.org.users[3], "id": "user-\udfff"}
    openai_fake.org.projects.append(odd_project)
    openai_fake.org.users.append(odd_user)
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "unexpected error" not in result.stderr
    assert openai_fake.calls(r"proj_\\ud800|proj_%ED") == 0  # nothing was asked for it
    app = application(veza.payloads[0])
    assert {r["id"] for r in app["resources"] if r["resource_type"] == "project"} == {"proj_alpha", "proj_beta"}
    assert len(app["local_users"]) == len(by_id(app["local_users"]))
    assert not any(not u["id"].isascii() for u in app["local_users"])
    assert r"WARNING a project record has no usable id ('proj_\ud800'); skipped" in result.stderr
    assert r"WARNING a organization user record has no usable id ('user-\udfff'); skipped" in result.stderr


def test_a_required_familys_bad_page_fails_with_a_clear_message(run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/users$", kind="data_not_list"))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert "ERROR /organization/users: 'data' is not a list of objects" in result.stderr
    assert "unexpected error" not in result.stderr and veza.pushes == []
    assert "outcome=failed" in summary_line(result.stderr)
