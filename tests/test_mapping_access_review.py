"""Access-review families: activity from the audit log, key scopes, federation, certificates and hosted tools."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

from conftest import (
    NO_ROLE_READS,
    SESSION_NOW,
    application,
    assignments,
    by_id,
    creds_of,
    load,
    pushed,
    resources_of,
    users_of,
)
from fake_openai import (
    BASE_TIME,
    DAY,
    Fault,
    _audit_logs,
    _event,
    _federation_rule,
    _session,
)

import veza_openai


def stamp(unix: int) -> str:
    return datetime.fromtimestamp(unix, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


HOSTED_TOOL_PROPERTIES = ("code_interpreter_enabled", "file_search_enabled", "image_generation_enabled",
                          "mcp_enabled", "web_search_enabled")


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
    assert re.search(r"read 8 audit log events \(last 90 days\) in 1 call\b", stderr)


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
