"""Access review (issue #12): audit-log logins and key scopes, deactivation, workload identity federation rules,
certificates and hosted tools, end to end against the fake OpenAI (tests/fake_openai.py's demo organization)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest
from conftest import NO_ROLE_READS, SESSION_NOW, application, assignments, by_id, load
from fake_openai import (
    BASE_TIME,
    DAY,
    Fault,
    _audit_logs,
    _certificate,
    _event,
    _federation_rule,
    _session,
)

import veza_openai

HOSTED_TOOL_PROPERTIES = ("code_interpreter_enabled", "file_search_enabled", "image_generation_enabled",
                          "mcp_enabled", "web_search_enabled")


def stamp(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pushed(run_connector, veza, *args: str, **kwargs) -> tuple[dict, str]:
    result = run_connector(*NO_ROLE_READS, *args, **kwargs)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    return payload, result.stderr


def users_of(payload: dict) -> dict[str, dict]:
    return by_id(application(payload)["local_users"])


def creds_of(payload: dict) -> dict[str, dict]:
    return by_id(application(payload).get("local_access_creds", []))


def resources_of(payload: dict) -> dict[str, dict]:
    return by_id(application(payload).get("resources", []))


def audit_requests(fake) -> list[dict]:
    return [query for path, query in fake.requests if path == "/organization/audit_logs"]


# --- activity from the audit log ---------------------------------------------------------------------------


def test_last_login_is_each_users_latest_successful_login_in_the_window(run_connector, veza, openai_fake):
    payload, stderr = pushed(run_connector, veza)
    users = users_of(payload)
    assert users["user-0010"]["last_login_at"] == stamp(SESSION_NOW - 2 * DAY)  # not now-10d, not now-200d
    assert users["user-0011"]["last_login_at"] == stamp(SESSION_NOW - 5 * DAY)  # the newer login.failed is not one
    assert users["user-0000"]["last_login_at"] == stamp(SESSION_NOW - 1 * DAY)
    assert "last_login_at" not in users["user-0012"]  # only a login 200 days ago, outside the 90-day window
    assert "last_login_at" not in users["user-0013"]  # never logged in
    assert "user-9999" not in users  # a login by someone not in the user list adds no one
    assert application(payload)["custom_properties"]["activity_window_days"] == 90
    assert "logins=3 key_scopes=2 federation_rules=3 certificates=2 warnings=" in stderr.splitlines()[-1]
    assert re.search(r"read 8 audit log events \(logins and API key changes of the last 90 days\) in 1 call\b", stderr)


def test_the_audit_log_is_read_once_for_all_three_event_types_from_the_window_start(run_connector, veza, openai_fake):
    pushed(run_connector, veza)
    [query] = audit_requests(openai_fake)
    assert query["event_types[]"] == ["login.succeeded", "api_key.created", "api_key.updated"]
    assert query["limit"] == "100"
    since = int(query["effective_at[gte]"])
    assert SESSION_NOW - 90 * DAY <= since <= SESSION_NOW - 90 * DAY + 3600


def test_key_scopes_come_from_the_newest_event_naming_the_key(run_connector, veza):
    payload, _ = pushed(run_connector, veza)
    creds = creds_of(payload)
    # created with one scope 30 days ago, updated 4 days ago by an admin key: the update wins
    assert creds["key_user1"]["custom_properties"]["scopes"] == ["api.model.request", "api.files.write"]
    assert creds["key_svc1"]["custom_properties"]["scopes"] == ["api.model.request", "api.responses.write"]
    assert "scopes" not in creds["key_gone"]["custom_properties"]  # its only event is 120 days old
    assert "scopes" not in creds["key_admin1"]["custom_properties"]  # admin keys: never from the audit log


def test_a_key_update_without_scopes_does_not_hide_the_scopes_it_was_created_with(run_connector, veza, openai_fake):
    openai_fake.org.audit_logs.append(_event("audit_log-rename", "api_key.updated", SESSION_NOW - DAY,
                                             _session("user-0011", None),
                                             {"id": "key_svc1", "changes_requested": {"name": "renamed"}}))
    payload, _ = pushed(run_connector, veza)
    assert creds_of(payload)["key_svc1"]["custom_properties"]["scopes"] == ["api.model.request",
                                                                            "api.responses.write"]


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


@pytest.mark.parametrize("value", ["-1", "3651", "ninety", "1.5"])
def test_activity_days_out_of_range_is_a_configuration_error(run_connector, openai_fake, value):
    result = run_connector("--dry-run", "--activity-days", value)
    assert result.returncode == 2
    assert "--activity-days (env OPENAI_ACTIVITY_DAYS) must be" in result.stderr
    assert openai_fake.requests == []


def test_the_audit_log_is_read_page_by_page(run_connector, veza, openai_fake):
    # 150 more logins (users 100..249, one an hour): with the demo's 8 events, 158 events are 2 pages of 100
    openai_fake.org.audit_logs += [_event(f"audit_log-page{i:04d}", "login.succeeded", SESSION_NOW - 3600 * (i + 1),
                                          _session(f"user-{100 + i:04d}", None)) for i in range(150)]
    payload, stderr = pushed(run_connector, veza)
    queries = audit_requests(openai_fake)
    assert len(queries) == 2
    assert "after" not in queries[0] and queries[1]["after"]
    assert queries[1]["event_types[]"] == queries[0]["event_types[]"]  # the filters go with every page
    assert queries[1]["effective_at[gte]"] == queries[0]["effective_at[gte]"]
    users = users_of(payload)
    assert users["user-0249"]["last_login_at"] == stamp(SESSION_NOW - 3600 * 150)
    assert "in 2 calls" in stderr


def test_the_audit_log_stops_at_its_page_cap_with_a_warning_and_still_pushes(run_connector, veza, openai_fake,
                                                                              monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_AUDIT_LOG_PAGES", 2)
    # 250 logins, one an hour, newest first: the cap stops after 200, the last read 200 hours (8.3 days) ago
    openai_fake.org.audit_logs = [_event(f"audit_log-cap{i:04d}", "login.succeeded", SESSION_NOW - 3600 * (i + 1),
                                         _session(f"user-{i:04d}", None)) for i in range(250)]
    payload, stderr = pushed(run_connector, veza)
    assert len(audit_requests(openai_fake)) == 2
    assert re.search(r"WARNING audit log: stopped after 2 pages \(200 events\); logins and API key scope changes "
                     rf"older than {stamp(SESSION_NOW - 3600 * 200)} are missing, so activity_window_days is 8 "
                     r"instead of 90; use a shorter --activity-days", stderr)
    users = users_of(payload)
    assert users["user-0199"]["last_login_at"] == stamp(SESSION_NOW - 3600 * 200)
    assert "last_login_at" not in users["user-0200"]  # older than the cut: unknown, so unset
    assert application(payload)["custom_properties"]["activity_window_days"] == 8


def test_hostile_audit_events_are_skipped(run_connector, veza, openai_fake):
    # served as they are (the fake's own filters would trip over them), after the demo's events
    window = {"event_types[]": list(veza_openai.AUDIT_EVENT_TYPES), "effective_at[gte]": str(SESSION_NOW - 90 * DAY)}
    events = _audit_logs(openai_fake.org.audit_logs, window) + [
        _event("audit_log-h1", "api_key.created", SESSION_NOW - DAY, _session("user-0010", None)),
        {"id": "audit_log-h2", "type": "api_key.updated", "effective_at": SESSION_NOW - DAY, "actor": None,
         "api_key.updated": "not an object"},
        {"id": "audit_log-h3", "type": "api_key.updated", "effective_at": SESSION_NOW - DAY,
         "api_key.updated": {"id": "key_svc1", "changes_requested": {"scopes": "api.everything"}}},
        {"id": "audit_log-h4", "type": "login.succeeded", "effective_at": SESSION_NOW - DAY, "actor": "user-0013"},
        {"id": "audit_log-h5", "type": "login.succeeded", "effective_at": SESSION_NOW - DAY,
         "actor": {"type": "session", "session": {"user": {"id": 13}}}},
        {"id": "audit_log-h6", "type": "api_key.created", "effective_at": SESSION_NOW - DAY,
         "api_key.created": {"id": "key_gone", "data": {"scopes": ["api.ok", 7, None]}}},
        {"id": "audit_log-h7", "type": None, "effective_at": SESSION_NOW - DAY},
        {"id": "audit_log-h8", "type": "login.succeeded", "effective_at": "yesterday",
         "actor": _session("user-0014", None)},
        {"id": "audit_log-h9", "type": "login.succeeded", "effective_at": True, "actor": _session("user-0015", None)},
    ]
    openai_fake.faults.append(Fault(r"^/organization/audit_logs$", status=200, body={
        "object": "list", "data": events, "has_more": False, "first_id": "x", "last_id": "y"}))
    payload, _ = pushed(run_connector, veza)
    creds = creds_of(payload)
    assert creds["key_svc1"]["custom_properties"]["scopes"] == ["api.model.request", "api.responses.write"]
    assert creds["key_gone"]["custom_properties"]["scopes"] == ["api.ok"]
    users = users_of(payload)
    assert not any("last_login_at" in users[uid] for uid in ("user-0013", "user-0014", "user-0015"))
    assert users["user-0010"]["last_login_at"] == stamp(SESSION_NOW - 2 * DAY)


def test_deactivated_at_is_the_nested_users_banned_at(run_connector, veza, openai_fake):
    openai_fake.org.users[5]["user"]["banned_at"] = BASE_TIME + 500
    payload, _ = pushed(run_connector, veza)
    users = users_of(payload)
    assert users["user-0005"]["deactivated_at"] == "2023-11-14T22:21:40Z"
    assert users["user-0005"]["is_active"] is False
    assert "deactivated_at" not in users["user-0006"]


# --- workload identity federation ------------------------------------------------------------------------


def test_federation_rules_are_credentials_of_their_service_account(run_connector, veza):
    payload, stderr = pushed(run_connector, veza)
    creds, users = creds_of(payload), users_of(payload)
    main = creds["wifr_deploy_main"]
    assert main["name"] == "deploy from main" and main["is_active"] is True
    assert main["created_at"] == stamp(BASE_TIME + 110)
    assert main["custom_properties"] == {
        "issuer": "https://token.actions.githubusercontent.com", "audience": "api://openai",
        "workload_identity_provider_id": "wip_github", "project_id": "proj_alpha",
        "attribute_matchers": ["ref=refs/heads/main", "repository=acme/app"], "permission_type": "restricted",
        "scopes": ["api.model.request", "api.files.read"]}
    assert {"wifr_deploy_main", "wifr_legacy_deploy"} <= set(users["svc_deploy"]["access_creds"])
    # the service account's role on the rule's project (svc_deploy owns proj_alpha)
    assert assignments(payload, "wifr_deploy_main")["project_owner"]["resources"] == ["proj_alpha"]
    # the rule is enabled, its provider is not
    legacy = creds["wifr_legacy_deploy"]
    assert legacy["is_active"] is False and legacy["custom_properties"]["permission_type"] == "service_account_default"
    assert "scopes" not in legacy["custom_properties"]
    # an unknown service account: kept, without a holder or role, with a warning
    unknown = creds["wifr_unknown_sa"]
    assert unknown["name"] == "wifr_unknown_sa"
    assert unknown["custom_properties"]["attribute_matchers"] == ["pull_request=false", "repository_owner=acme",
                                                                  "run_attempt=1"]
    assert assignments(payload, "wifr_unknown_sa") == {}
    assert "svc_unknown" not in users
    assert "federation rule wifr_unknown_sa names service account svc_unknown which is not listed" in stderr


def test_federation_rules_naming_an_unlisted_project_or_a_roleless_account(run_connector, veza, openai_fake):
    openai_fake.org.federation_rules["wip_github"] += [
        _federation_rule("wifr_nowhere", "wip_github", "proj_nowhere", "svc_deploy", {"a": "b"},
                         {"type": "service_account_default"}, BASE_TIME + 130),
        _federation_rule("wifr_idle", "wip_github", "proj_alpha", "svc_idle", {"a": "b"},
                         {"type": "service_account_default"}, BASE_TIME + 140, enabled=False),
    ]
    payload, stderr = pushed(run_connector, veza)
    creds, users = creds_of(payload), users_of(payload)
    assert "wifr_nowhere" in users["svc_deploy"]["access_creds"] and assignments(payload, "wifr_nowhere") == {}
    assert "federation rule wifr_nowhere names project proj_nowhere which is not listed" in stderr
    assert creds["wifr_idle"]["is_active"] is False
    assert "wifr_idle" in users["svc_idle"]["access_creds"] and assignments(payload, "wifr_idle") == {}  # role none


def test_federation_rules_are_read_page_by_page(run_connector, veza, openai_fake):
    openai_fake.org.federation_rules["wip_github"] += [
        _federation_rule(f"wifr_many{i:03d}", "wip_github", "proj_alpha", "svc_deploy", {"n": i},
                         {"type": "service_account_default"}, BASE_TIME + 1000 + i) for i in range(120)]
    payload, _ = pushed(run_connector, veza)
    pages = [query for path, query in openai_fake.requests
             if path == "/organization/workload_identity_providers/wip_github/federation_rules"]
    assert len(pages) == 2 and pages[0]["limit"] == "100" and pages[1]["after"]
    assert sum(cred_id.startswith("wifr_many") for cred_id in creds_of(payload)) == 120


def test_hostile_federation_records_are_kept_as_far_as_they_make_sense(run_connector, veza, openai_fake):
    odd = _federation_rule("wifr_odd", "wip_github", "proj_alpha", "svc_deploy", ["repository", "acme/app"],
                           None, BASE_TIME + 150)
    del odd["enabled"]
    odd["name"] = ""
    openai_fake.org.federation_rules["wip_github"].append(odd)
    openai_fake.org.federation_rules["wip_github"].append({**odd, "id": None})
    payload, stderr = pushed(run_connector, veza)
    cred = creds_of(payload)["wifr_odd"]
    assert cred["name"] == "wifr_odd" and cred["is_active"] is True  # no `enabled`: not known to be off
    assert "attribute_matchers" not in cred["custom_properties"] and "permission_type" not in cred["custom_properties"]
    assert "federation rule wifr_odd has attribute_matchers of type list, not an object; left unset" in stderr
    assert "has no usable id" in stderr


def test_a_provider_deleted_during_the_run_loses_its_rules(run_connector, veza, openai_fake):
    def delete_wip_legacy(fake) -> None:
        fake.org.workload_identity_providers[:] = [p for p in fake.org.workload_identity_providers
                                                   if p["id"] != "wip_legacy"]
    openai_fake.faults.append(Fault(r"/workload_identity_providers/wip_legacy/federation_rules$", kind="hook",
                                    body=delete_wip_legacy))
    payload, stderr = pushed(run_connector, veza)
    assert "wifr_legacy_deploy" not in creds_of(payload) and "wifr_deploy_main" in creds_of(payload)
    assert "provider wip_legacy was deleted during the run" in stderr


# --- certificates and hosted tools -------------------------------------------------------------------------


def test_certificates_are_resources_of_the_application_and_of_their_project(run_connector, veza):
    payload, _ = pushed(run_connector, veza)
    resources = resources_of(payload)
    assert resources["cert_org_root"] == {
        "id": "cert_org_root", "name": "Corporate root CA", "resource_type": "certificate",
        "custom_properties": {"active": True, "valid_at": stamp(BASE_TIME),
                              "expires_at": stamp(BASE_TIME + 3 * 365 * DAY)}}
    [alpha_cert] = resources["proj_alpha"]["sub_resources"]
    assert alpha_cert == {
        "id": "cert_alpha_mtls", "name": "alpha mTLS client", "resource_type": "certificate",
        "custom_properties": {"active": False, "valid_at": stamp(BASE_TIME + 400),
                              "expires_at": stamp(BASE_TIME + 400 + 90 * DAY)}}
    assert "sub_resources" not in resources["proj_beta"]


def test_a_certificates_pem_never_reaches_the_payload(run_connector, veza, openai_fake, tmp_path):
    openai_fake.org.certificate_content_in_lists = True
    out = tmp_path / "payload.json"
    payload, _ = pushed(run_connector, veza, "--save_json", str(out))
    text = json.dumps(payload) + out.read_text()
    assert "BEGIN CERTIFICATE" not in text and "FAKEPEM" not in text
    assert resources_of(payload)["cert_org_root"]["custom_properties"]["active"] is True


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


def test_hostile_certificates_do_not_stop_the_run(run_connector, veza, openai_fake):
    openai_fake.org.certificates += [
        {"object": "organization.certificate", "id": "cert_bare", "created_at": BASE_TIME + 1},
        {"object": "organization.certificate", "id": "cert_odd", "active": "yes", "created_at": BASE_TIME + 2,
         "certificate_details": "PEM?"},
        {"object": "organization.certificate", "id": "proj_alpha", "created_at": BASE_TIME + 3, "active": True},
    ]
    payload, stderr = pushed(run_connector, veza)
    resources = resources_of(payload)
    assert resources["cert_bare"] == {"id": "cert_bare", "name": "cert_bare", "resource_type": "certificate"}
    assert "custom_properties" not in resources["cert_odd"]
    assert resources["proj_alpha"]["resource_type"] == "project"
    assert "certificate proj_alpha has the id of a project; left out" in stderr


def test_hosted_tools_are_project_properties_when_read(run_connector, veza, openai_fake):
    del openai_fake.org.hosted_tool_permissions["proj_beta"]  # 404: the project has no settings
    openai_fake.org.hosted_tool_permissions["proj_alpha"]["file_search"] = True  # not an object: unset, warned
    payload, stderr = pushed(run_connector, veza)
    resources = resources_of(payload)
    alpha = resources["proj_alpha"]["custom_properties"]
    assert {name: alpha.get(name) for name in HOSTED_TOOL_PROPERTIES} == {
        "code_interpreter_enabled": False, "file_search_enabled": None, "image_generation_enabled": False,
        "mcp_enabled": True, "web_search_enabled": True}
    assert not set(HOSTED_TOOL_PROPERTIES) & set(resources["proj_beta"]["custom_properties"])
    [warned] = [line for line in stderr.splitlines() if "hosted tool" in line]
    assert warned.endswith('WARNING project proj_alpha hosted tool file_search is true, not {"enabled": true or '
                           'false}; file_search_enabled left unset')


# --- the family rule: refused (403) or missing (404) families are left out whole ----------------------------

REFUSALS = {  # fake family: (status, the warning's label, its grant)
    "audit logs": (403, "audit logs", "Audit logs: Read"),
    "audit logs 404": (404, "audit logs", "Audit logs: Read"),
    "workload identity providers": (403, "workload identity providers", "Workload identity: Read"),
    "workload identity providers 404": (404, "workload identity providers", "Workload identity: Read"),
    "federation rules": (403, "federation rules", "Workload identity: Read"),
    "federation rules 404": (404, "federation rules", "Workload identity: Read"),
    "certificates": (403, "certificates", "Certificates: Read"),
    "project certificates": (403, "project certificates", "Certificates: Read"),
    "project certificates 404": (404, "project certificates", "Certificates: Read"),
    "hosted tool permissions": (403, "hosted tool permissions", "Projects: Read"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_access_review_family_is_left_out_whole_and_the_run_pushes(run_connector, veza, openai_fake,
                                                                            case):
    status, label, grant = REFUSALS[case]
    openai_fake.refused[case.removesuffix(" 404")] = status
    payload, stderr = pushed(run_connector, veza)
    assert len(re.findall(rf"WARNING left out {label} \(HTTP {status} on .*\): grant the admin key '{grant}'",
                          stderr)) == 1
    app, creds, resources = application(payload), creds_of(payload), resources_of(payload)
    rules = {cred_id for cred_id in creds if cred_id.startswith("wifr_")}
    if label == "audit logs":
        assert "activity_window_days" not in app["custom_properties"]
        assert not any("last_login_at" in user for user in users_of(payload).values())
        assert "scopes" not in creds["key_user1"]["custom_properties"]
    else:
        assert "last_login_at" in users_of(payload)["user-0010"]
    if label in ("workload identity providers", "federation rules"):
        assert rules == set()
        if label == "workload identity providers":
            assert openai_fake.calls("/federation_rules$") == 0
    else:
        assert rules == {"wifr_deploy_main", "wifr_unknown_sa", "wifr_legacy_deploy"}
    assert ("cert_org_root" in resources) == (label != "certificates")
    assert ("sub_resources" in resources["proj_alpha"]) == (label != "project certificates")
    assert ("mcp_enabled" in resources["proj_alpha"]["custom_properties"]) == (label != "hosted tool permissions")


# --- the whole picture ----------------------------------------------------------------------------------


def test_a_dry_run_of_the_demo_shows_every_access_review_field(run_connector, openai_fake):
    result = run_connector("--dry-run", *NO_ROLE_READS)
    assert result.returncode == 0, result.output
    [saved] = result.saved_json()
    app = application(load(saved))
    users = by_id(app["local_users"])
    creds = by_id(app["local_access_creds"])
    resources = by_id(app["resources"])
    assert users["user-0010"]["last_login_at"] == stamp(SESSION_NOW - 2 * DAY)
    assert creds["wifr_deploy_main"]["custom_properties"]["issuer"] == "https://token.actions.githubusercontent.com"
    assert resources["cert_org_root"]["resource_type"] == "certificate"
    assert resources["proj_alpha"]["sub_resources"][0]["id"] == "cert_alpha_mtls"
    assert resources["proj_alpha"]["custom_properties"]["mcp_enabled"] is True
    assert app["custom_properties"]["activity_window_days"] == 90


def test_a_project_role_named_like_the_implicit_owner_role_gets_only_read_project(run_connector, veza,
                                                                                  openai_fake):
    openai_fake.org.project_users["proj_alpha"][1]["role"] = "owner_via_organization"
    payload, _ = pushed(run_connector, veza)
    assert "project_owner_via_organization" not in assignments(payload, "user-0011")
    roles = by_id(application(payload)["local_roles"])
    assert roles["project_role_owner_via_organization"]["permissions"] == ["Read Project"]
    assert assignments(payload, "user-0011")["project_role_owner_via_organization"]["resources"] == ["proj_alpha"]
