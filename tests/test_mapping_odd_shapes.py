"""Records of odd shapes (non-booleans, odd times, lists where objects belong, hostile text) map without losing
what is known."""

from __future__ import annotations

import json

import pytest
from conftest import NO_ROLE_READS, application, by_id
from fake_openai import Fault

import veza_openai as vo

BASE = 1_700_000_000


DAY = 86_400


def user(uid: str, **nested) -> dict:
    return {"object": "organization.user", "id": uid, "name": uid, "email": f"{uid}@x.io", "role": "reader",
            "added_at": BASE, **({"user": {"id": uid, **nested}} if nested else {})}


def login(event_id: str, user_id: str, at) -> dict:
    return {"id": event_id, "type": "login.succeeded", "effective_at": at,
            "actor": {"type": "session", "session": {"user": {"id": user_id}}}}


def mapped(snapshot: vo.Snapshot) -> tuple[dict, list[str]]:
    result = vo.build_application(snapshot)
    return result.application.get_payload(), result.warnings


def federation_snapshot(provider_enabled, rule_enabled, service_account_id: str = "svc_1") -> vo.Snapshot:
    provider = {"id": "wip_1", "issuer": "https://issuer", "audience": "aud", "enabled": provider_enabled}
    rule = {"id": "rule_1", "enabled": rule_enabled, "project_id": "proj_1", "service_account_id": service_account_id,
            "permissions": {"type": "service_account_default"}}
    return vo.Snapshot(org_id="org-x", users=[user("user-human")],
                       projects=[{"id": "proj_1", "name": "P", "status": "active"}],
                       project_service_accounts={"proj_1": [{"id": "svc_1", "name": "bot", "role": "member"}]},
                       workload_identity_providers=[provider], federation_rules={"wip_1": [rule]})


def project_snapshot(tools=None, policy=None) -> vo.Snapshot:
    return vo.Snapshot(org_id="org-x", projects=[{"id": "proj_1", "name": "P", "status": "active"}],
                       hosted_tool_permissions={"proj_1": tools} if tools is not None else {},
                       model_permissions={"proj_1": policy} if policy is not None else {})


def project_properties(payload: dict) -> dict:
    [project] = [r for r in application(payload)["resources"] if r["id"] == "proj_1"]
    return project.get("custom_properties", {})


def test_hostile_text_in_records_passes_into_the_payload_intact(run_connector, veza, openai_fake):
    hostile = {"user-0020": "x" * 5000, "user-0021": "tab\tbell\x07nul\x00 end", "user-0022": "Zoë 李雷 🚀🔑",
               "user-0023": '"; DROP TABLE users; --', "user-0024": "<script>alert(1)</script>"}
    for user in openai_fake.org.users:
        if user["id"] in hostile:
            user["name"] = hostile[user["id"]]
    openai_fake.org.projects[0]["name"] = "Ünïcode 📦 \u202e project"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    users = by_id(app["local_users"])
    for user_id, name in hostile.items():
        assert users[user_id]["name"] == name
    assert by_id(app["resources"])["proj_alpha"]["name"] == "Ünïcode 📦 \u202e project"


@pytest.mark.parametrize(("value", "expected"), [
    (-34_000_000_000, "0892-07-31T11:33:20Z"),          # before year 1000: four digits, as RFC3339 requires
    ("0892-07-31T11:33:20Z", "0892-07-31T11:33:20Z"),
    (-62_135_596_799, "0001-01-01T00:00:01Z"),
    (253_402_300_799, "9999-12-31T23:59:59Z"),
    (BASE, "2023-11-14T22:13:20Z"),
])
def test_rfc3339_always_has_a_four_digit_year(value, expected):
    assert vo.rfc3339(value) == expected


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000000Z", -62_135_596_800,
                                   float("nan"), float("inf"), "892-07-31T11:33:20Z", 253_402_300_800])
def test_go_zero_time_and_unusable_times_are_unset(value):
    assert vo.rfc3339(value) is None and vo.epoch_seconds(value) is None


def test_a_login_before_year_1000_never_wins_over_a_real_login():
    now = BASE + 100 * DAY
    snapshot = vo.Snapshot(org_id="org-x", users=[user("u1"), user("u2")], activity_since=now - 90 * DAY,
                           activity_window_days=90, audit_logs=[
                               login("e1", "u1", now - DAY),
                               login("e2", "u1", -34_000_000_000),      # year 892: as text it sorted after 2023
                               login("e3", "u2", "0892-07-31T11:33:20Z"),
                           ])
    payload, _ = mapped(snapshot)
    users = by_id(application(payload)["local_users"])
    assert users["u1"]["last_login_at"] == vo.rfc3339(now - DAY)
    assert users["u2"].get("last_login_at") in (None, "")  # outside the window: no login known


def test_the_newest_scope_event_is_chosen_by_time_not_by_text():
    now = BASE + 100 * DAY
    created = {"id": "e1", "type": "api_key.created", "effective_at": now - 2 * DAY,
               "api_key.created": {"id": "key_1", "data": {"scopes": ["api.model.request"]}}}
    updated = {"id": "e2", "type": "api_key.updated", "effective_at": now - DAY,
               "api_key.updated": {"id": "key_1", "changes_requested": {"scopes": ["api.files.read"]}}}
    logins, scopes = vo.audit_activity([updated, created], now - 90 * DAY)
    assert scopes == {"key_1": ["api.files.read"]} and logins == {}


def test_a_user_whose_enabled_is_the_string_false_is_warned_and_kept_active():
    payload, warnings = mapped(vo.Snapshot(org_id="org-x", users=[user("u1", enabled="false"),
                                                                  user("u2", enabled=False),
                                                                  user("u3", banned="true")]))
    users = by_id(application(payload)["local_users"])
    assert users["u1"]["is_active"] is True and users["u2"]["is_active"] is False and users["u3"]["is_active"]
    assert 'user u1 has non-boolean enabled "false"; treated as unknown' in warnings
    assert 'user u3 has non-boolean banned "true"; treated as unknown' in warnings
    assert not any("u2" in w for w in warnings)


@pytest.mark.parametrize(("provider_enabled", "rule_enabled", "active", "warned"), [
    (True, "false", True, 'federation rule rule_1 has non-boolean enabled "false"; treated as unknown'),
    ("false", True, True, 'workload identity provider wip_1 has non-boolean enabled "false"; treated as unknown'),
    ("false", False, False, None),  # one side certainly disabled: inactive, whatever the other says
    (1, True, True, "workload identity provider wip_1 has non-boolean enabled 1; treated as unknown"),
])
def test_a_federation_rule_with_a_non_boolean_enabled_is_warned_and_never_understated(
        provider_enabled, rule_enabled, active, warned):
    payload, warnings = mapped(federation_snapshot(provider_enabled, rule_enabled))
    assert by_id(application(payload)["local_access_creds"])["rule_1"]["is_active"] is active
    if warned:
        assert warned in warnings


def test_a_federation_rule_naming_a_human_user_as_its_service_account_has_no_holder():
    payload, warnings = mapped(federation_snapshot(True, True, service_account_id="user-human"))
    users = by_id(application(payload)["local_users"])
    assert "rule_1" not in (users["user-human"].get("access_creds") or [])
    assert "rule_1" in by_id(application(payload)["local_access_creds"])  # the rule is kept
    assert ("federation rule rule_1 names user-human, a human user, as its service account; kept without a holder "
            "or project role") in warnings
    assert not any("service account user-human" in w for w in warnings)


def test_hosted_tool_settings_of_an_unknown_shape_are_warned_and_left_unset():
    payload, warnings = mapped(project_snapshot({"mcp": True, "web_search": {"enabled": 1},
                                                 "file_search": {"enabled": False}}))
    properties = project_properties(payload)
    assert properties.get("file_search_enabled") is False
    assert "mcp_enabled" not in properties and "web_search_enabled" not in properties
    assert 'project proj_1 hosted tool mcp is true, not {"enabled": true or false}; mcp_enabled left unset' in warnings
    assert ('project proj_1 hosted tool web_search is {"enabled": 1}, not {"enabled": true or false}; '
            'web_search_enabled left unset') in warnings


def test_hosted_tool_permissions_naming_no_tool_are_warned_and_left_unset():
    payload, warnings = mapped(project_snapshot({"enabled": 1}))
    assert not any(name.endswith("_enabled") for name in project_properties(payload))
    assert ('project proj_1 hosted tool permissions {"enabled": 1} name none of the tools code_interpreter, '
            'file_search, image_generation, mcp, web_search; *_enabled left unset') in warnings


def test_hosted_tools_or_model_permissions_answered_as_a_list_are_warned_and_left_unset():
    payload, warnings = mapped(project_snapshot(tools=[{"mcp": {"enabled": True}}], policy=["gpt-4o"]))
    properties = project_properties(payload)
    assert not any(name.endswith("_enabled") or name.startswith("model_") for name in properties)
    assert any(w.startswith("project proj_1 hosted tool permissions are [") for w in warnings)
    assert 'project proj_1 model permissions are ["gpt-4o"], not an object; model_permission_mode and model_ids ' \
           'left unset' in warnings


def test_a_list_answer_for_a_projects_settings_does_not_fail_the_run(run_connector, veza, openai_fake):
    openai_fake.org.hosted_tool_permissions["proj_alpha"] = [{"mcp": {"enabled": True}}]
    openai_fake.faults.append(Fault(r"^/organization/projects/proj_beta/model_permissions$", status=200,
                                    body=["gpt-4o"], times=None))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    resources = by_id(application(veza.payloads[0])["resources"])
    assert "mcp_enabled" not in resources["proj_alpha"].get("custom_properties", {})
    assert "WARNING project proj_alpha hosted tool permissions are [" in result.stderr
    assert "WARNING project proj_beta model permissions are [\"gpt-4o\"], not an object" in result.stderr


DEEP = "deep-value-here"


def deeply_nested(answer, depth: int) -> bytes:
    """`answer` as JSON with the string DEEP replaced by a list nested `depth` deep (too deep for json.dumps to
    write on a thread of ordinary depth, so the fake sends it as these bytes)."""
    return json.dumps(answer).replace(f'"{DEEP}"', "[" * depth + "]" * depth).encode()


def deep_hosted_tool(openai_fake) -> tuple[str, bytes]:
    tools = {"code_interpreter": {"enabled": False}, "mcp": {"enabled": DEEP}}
    return r"^/organization/projects/proj_alpha/hosted_tool_permissions$", deeply_nested(tools, 986)


def deep_model_permissions(openai_fake) -> tuple[str, bytes]:
    return r"^/organization/projects/proj_alpha/model_permissions$", deeply_nested(DEEP, 988)


def deep_attribute_matcher(openai_fake) -> tuple[str, bytes]:
    rules = [dict(rule) for rule in openai_fake.org.federation_rules["wip_github"]]
    rules[0]["attribute_matchers"] = {"repository": DEEP, "ref": "refs/heads/main"}  # rule wifr_deploy_main
    page = {"object": "list", "data": rules, "has_more": False}
    return r"^/organization/workload_identity_providers/wip_github/federation_rules$", deeply_nested(page, 985)


# (the answer, the words a warning about that field has); each answer is nested ~990 deep in all
DEEP_VALUES = {
    "hosted tool setting": (deep_hosted_tool, ("proj_alpha", "mcp")),
    "model permissions": (deep_model_permissions, ("proj_alpha", "model permissions")),
    "attribute matcher": (deep_attribute_matcher, ("wifr_deploy_main", "repository")),
}


@pytest.mark.parametrize("field", DEEP_VALUES)
def test_a_value_nested_about_990_deep_is_warned_and_treated_as_unknown(run_connector, veza, openai_fake, field):
    """A value that parses but is nested too deep to render in a warning is an odd value like any other: warned,
    treated as unknown, and the run pushes (never "unexpected error: RecursionError")."""
    answer, words = DEEP_VALUES[field]
    path, body = answer(openai_fake)
    openai_fake.faults.append(Fault(path, kind="raw", status=200, body=body, times=None))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "unexpected error" not in result.stderr and "RecursionError" not in result.stderr
    assert len(veza.pushes) == 1
    assert [line for line in result.stderr.splitlines() if "WARNING" in line and all(w in line for w in words)], \
        result.stderr
    properties = by_id(application(veza.payloads[0])["resources"])["proj_alpha"].get("custom_properties", {})
    if field == "hosted tool setting":
        assert "mcp_enabled" not in properties
    if field == "model permissions":
        assert "model_permission_mode" not in properties and "model_ids" not in properties
