"""How lists are read: page sizes, cursors and page caps, the audit-log window, and when role assignments are read."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest
from conftest import NO_ROLE_READS, SESSION_NOW, application, by_id, creds_of, pushed, resources_of, users_of
from fake_openai import (
    BASE_TIME,
    DAY,
    _certificate,
    _event,
    _federation_rule,
    _session,
)

import veza_openai


def audit_requests(fake) -> list[dict]:
    return [query for path, query in fake.requests if path == "/organization/audit_logs"]


def stamp(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_pushes_every_user_of_a_multi_page_organization(run_connector, veza, openai_fake):
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert len(veza.payloads) == 1
    app = application(veza.payloads[0])
    users = by_id(app["local_users"])
    org_user_ids = {u["id"] for u in openai_fake.org.users}
    assert org_user_ids <= set(users)
    assert openai_fake.calls(r"^/organization/users$") == 2  # 120 users at limit=100
    assert app["name"] == "org-demo0001" and app["application_type"] == "OpenAI"
    # activity_window_days: the audit log was read (--activity-days defaults to 90)
    assert app["custom_properties"] == {"organization_id": "org-demo0001", "is_personal": False,
                                        "activity_window_days": 90}
    assert veza.data_source_names() == ["OpenAI - org-demo0001"]
    assert [p["name"] for p in veza.providers] == ["OpenAI"]
    assert veza.providers[0]["custom_template"] == "application"
    assert veza.icons, "the provider is created with an icon"


def test_every_list_is_read_at_its_largest_page_size_with_visibility_parameters(run_connector, openai_fake):
    assert run_connector().returncode == 0
    expected = {"/organization/users": "100", "/organization/invites": "100", "/organization/projects": "100",
                "/organization/admin_api_keys": "100", "/organization/groups": "1000", "/organization/roles": "1000"}
    for path, query in openai_fake.requests:
        if path in expected:
            assert query["limit"] == expected[path], path
        if re.fullmatch(r"/organization/projects/[^/]+/(users|service_accounts|api_keys)", path):
            assert query["limit"] == "100"
        if path == "/organization/projects":
            assert query["include_archived"] == "true"
        if path.endswith("/api_keys"):
            assert query["owner_project_access"] == "any"


def test_group_members_follow_an_opaque_next_cursor_across_pages(run_connector, veza, openai_fake):
    members = [{"id": f"user-{i:04d}", "name": f"Demo User {i}", "email": None} for i in range(250)] * 5
    openai_fake.org.group_users["group_eng"] = [dict(m, id=f"{m['id']}-{n}") for n, m in enumerate(members)]
    result = run_connector()
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/groups/group_eng/users$") == 2  # 1250 members, limit 1000
    in_group = [u for u in application(veza.payloads[0])["local_users"] if "group_eng" in u.get("groups", [])]
    assert len(in_group) == 1250


def test_auto_reads_per_user_roles_when_a_custom_role_exists(run_connector, openai_fake):
    assert run_connector().returncode == 0
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == 120
    assert openai_fake.calls(r"^/projects/[^/]+/users/[^/]+/roles$") == 4  # one per project member


def test_auto_skips_per_user_roles_when_every_role_is_predefined(run_connector, veza, openai_fake):
    openai_fake.org.roles = [r for r in openai_fake.org.roles if r["predefined_role"]]
    openai_fake.org.project_roles = {pid: [] for pid in openai_fake.org.project_roles}
    result = run_connector()
    assert result.returncode == 0
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == 0
    assert openai_fake.calls(r"^/projects/[^/]+/users/[^/]+/roles$") == 0
    assert "per-user role assignments skipped: no custom role exists" in result.stderr
    assert openai_fake.calls(r"^/organization/groups/[^/]+/roles$") == 2  # group role reads always happen


@pytest.mark.parametrize(("mode", "expected_calls"), [("none", 0), ("all", 120)])
def test_role_assignments_flag_forces_per_user_reads(run_connector, openai_fake, mode, expected_calls):
    openai_fake.org.roles = [r for r in openai_fake.org.roles if r["predefined_role"]]
    openai_fake.org.project_roles = {}
    result = run_connector("--role-assignments", mode)
    assert result.returncode == 0
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == expected_calls
    assert re.search(f"--role-assignments {mode}", result.stderr)


def test_the_audit_log_is_read_once_for_all_three_event_types_from_the_window_start(run_connector, veza, openai_fake):
    pushed(run_connector, veza)
    [query] = audit_requests(openai_fake)
    assert query["event_types[]"] == ["login.succeeded", "api_key.created", "api_key.updated"]
    assert query["limit"] == "100"
    since = int(query["effective_at[gte]"])
    assert SESSION_NOW - 90 * DAY <= since <= SESSION_NOW - 90 * DAY + 3600


def test_activity_days_sets_the_window(run_connector, veza, openai_fake):
    payload, _ = pushed(run_connector, veza, env={"OPENAI_ACTIVITY_DAYS": "3"})
    users, creds = users_of(payload), creds_of(payload)
    assert users["user-0010"]["last_login_at"] == stamp(SESSION_NOW - 2 * DAY)
    assert "last_login_at" not in users["user-0011"]  # 5 days ago
    assert "scopes" not in creds["key_user1"]["custom_properties"]  # updated 4 days ago
    assert application(payload)["custom_properties"]["activity_window_days"] == 3
    [query] = audit_requests(openai_fake)
    assert abs(int(query["effective_at[gte]"]) - (SESSION_NOW - 3 * DAY)) < 3600


def test_activity_days_0_reads_no_audit_log_and_sets_nothing_from_it(run_connector, veza, openai_fake):
    payload, stderr = pushed(run_connector, veza, "--activity-days", "0")
    assert audit_requests(openai_fake) == []
    assert "activity_window_days" not in application(payload)["custom_properties"]
    assert not any("last_login_at" in user for user in users_of(payload).values())
    assert not any("scopes" in cred.get("custom_properties", {}) for cred in creds_of(payload).values()
                   if cred["id"].startswith("key_"))
    assert "logins=" not in stderr.splitlines()[-1]


def test_the_audit_log_is_read_page_by_page(run_connector, veza, openai_fake):
    # 120 more logins (users 0..119, one an hour): with the demo's 8 events, 128 events are 2 pages of 100
    openai_fake.org.audit_logs += [_event(f"audit_log-page{i:04d}", "login.succeeded", SESSION_NOW - 3600 * (i + 1),
                                          _session(f"user-{i:04d}", None)) for i in range(120)]
    payload, stderr = pushed(run_connector, veza)
    queries = audit_requests(openai_fake)
    assert len(queries) == 2
    assert "after" not in queries[0] and queries[1]["after"]
    assert queries[1]["event_types[]"] == queries[0]["event_types[]"]  # the filters go with every page
    assert queries[1]["effective_at[gte]"] == queries[0]["effective_at[gte]"]
    users = users_of(payload)
    assert users["user-0119"]["last_login_at"] == stamp(SESSION_NOW - 3600 * 120)
    assert "in 2 calls" in stderr


def test_the_audit_log_stops_at_its_page_cap_with_a_warning_and_still_pushes(run_connector, veza, openai_fake,
                                                                              monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_AUDIT_LOG_PAGES", 2)
    # 250 logins, one an hour, newest first: the cap stops after 200, the last read 200 hours (8.3 days) ago.
    # Users 0..99 log in twice (the newer within the cut), users 100..119 only after the 200th event.
    def user(i: int) -> str:
        return f"user-{i % 100 if i < 200 else 100 + (i - 200) % 20:04d}"
    openai_fake.org.audit_logs = [_event(f"audit_log-cap{i:04d}", "login.succeeded", SESSION_NOW - 3600 * (i + 1),
                                         _session(user(i), None)) for i in range(250)]
    payload, stderr = pushed(run_connector, veza)
    assert len(audit_requests(openai_fake)) == 2
    assert re.search(r"WARNING audit log: stopped after 2 pages \(200 events\); events older than "
                     rf"{stamp(SESSION_NOW - 3600 * 200)} are missing, so activity_window_days is 8, not 90; use a "
                     r"shorter --activity-days", stderr)
    users = users_of(payload)
    assert users["user-0099"]["last_login_at"] == stamp(SESSION_NOW - 3600 * 100)
    assert "last_login_at" not in users["user-0100"]  # older than the cut: unknown, so unset
    assert application(payload)["custom_properties"]["activity_window_days"] == 8


def test_federation_rules_are_read_page_by_page(run_connector, veza, openai_fake):
    openai_fake.org.federation_rules["wip_github"] += [
        _federation_rule(f"wifr_many{i:03d}", "wip_github", "proj_alpha", "svc_deploy", {"n": i},
                         {"type": "service_account_default"}, BASE_TIME + 1000 + i) for i in range(120)]
    payload, _ = pushed(run_connector, veza)
    pages = [query for path, query in openai_fake.requests
             if path == "/organization/workload_identity_providers/wip_github/federation_rules"]
    assert len(pages) == 2 and pages[0]["limit"] == "100" and pages[1]["after"]
    assert sum(cred_id.startswith("wifr_many") for cred_id in creds_of(payload)) == 120


def test_certificates_are_read_page_by_page(run_connector, veza, openai_fake):
    openai_fake.org.certificates += [_certificate(f"cert_many{i:03d}", "organization.certificate", f"c{i}", True,
                                                  BASE_TIME + i, BASE_TIME, BASE_TIME + DAY) for i in range(110)]
    openai_fake.org.project_certificates["proj_beta"] = [
        _certificate(f"cert_beta{i:03d}", "organization.project.certificate", None, False, BASE_TIME + i, BASE_TIME,
                     BASE_TIME + DAY) for i in range(105)]
    payload, stderr = pushed(run_connector, veza)
    assert openai_fake.calls(r"^/organization/certificates$") == 2
    assert openai_fake.calls(r"^/organization/projects/proj_beta/certificates$") == 2
    resources = resources_of(payload)
    assert sum(rid.startswith("cert_many") for rid in resources) == 110
    beta = by_id(resources["proj_beta"]["sub_resources"])
    assert len(beta) == 105 and beta["cert_beta000"]["name"] == "cert_beta000"
    assert "certificates=217 " in stderr.splitlines()[-1]
