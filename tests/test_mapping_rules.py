"""The mapping spec's rules for roles, keys, assignments, scopes and deactivation (pure: Snapshot in, payload out).

Each rule is stated in shared/spec/oaa-mapping.md; an unknown or missing value never shows less access than
the floor of its scope, and nothing is dropped without a log line.
"""

from __future__ import annotations

import logging

import pytest

import veza_openai as vo

BASE = 1_700_000_000
FUTURE = 4_102_444_800  # 2100; fixed, so test ids do not depend on the clock
READER_PERMISSIONS = ["Standard API Requests", "Read Organization"]


def user(uid: str, role: str = "reader", **extra) -> dict:
    return {"object": "organization.user", "id": uid, "name": f"N {uid}", "email": f"{uid}@x.io", "role": role,
            "added_at": BASE, **extra}


def project(pid: str, **extra) -> dict:
    return {"object": "organization.project", "id": pid, "name": pid.upper(), "created_at": BASE,
            "archived_at": None, "status": "active", **extra}


def project_key(kid: str, owner_id: str = "u1", **extra) -> dict:
    record = {"object": "organization.project.api_key", "id": kid, "name": kid, "redacted_value": f"sk-proj-...{kid}",
              "created_at": BASE, "last_used_at": None, "owner_project_access": "active",
              "owner": {"type": "user", "user": {"id": owner_id, "role": "member", "created_at": BASE}}}
    record.update(extra)
    return {k: v for k, v in record.items() if v is not Ellipsis}


def admin_key(kid: str, owner_id: str = "u1", **extra) -> dict:
    return {"object": "organization.admin_api_key", "id": kid, "name": kid, "redacted_value": "sk-admin...wxyz",
            "created_at": BASE, "expires_at": None, "owner": {"type": "user", "id": owner_id}, **extra}


def role(role_id: str, permissions: list[str], resource_type: str = "api.organization") -> dict:
    return {"object": "role", "id": role_id, "name": role_id.title(), "permissions": permissions,
            "predefined_role": False, "resource_type": resource_type}


def assignment(role_id: str, *sources: tuple[str, str], resource_type: str = "api.organization") -> dict:
    record = role(role_id, ["api.x.read"], resource_type)
    record["assignment_sources"] = [{"principal_type": kind, "principal_id": pid} for kind, pid in sources]
    return record


def build(**families) -> vo.MappingResult:
    families.setdefault("users", [user("u1")])
    return vo.build_application(vo.Snapshot(org_id="org-rules", **families))


def roles_of(result: vo.MappingResult, identity: str) -> dict:
    app = result.application
    holder = app.local_users.get(identity) or app.local_groups.get(identity) or app.access_creds.get(identity)
    return holder.role_assignments


def local_role(result: vo.MappingResult, role_id: str) -> dict:
    return result.application.local_roles[role_id].to_dict()


# --- organization and project role values --------------------------------------------------------

def test_org_role_member_is_reader_without_a_warning():
    result = build(users=[user("u1", "member")])
    assert list(roles_of(result, "u1")) == ["reader"]
    assert "member" not in result.application.local_roles
    assert not [w for w in result.warnings if "member" in w]


def test_a_generated_org_role_id_never_takes_a_fixed_or_roles_api_role_id():
    """An org role value never takes an id already used: 'auditor' and 'organization_auditor' are Roles API ids,
    'admin_api_key' is a fixed one."""
    api_roles = [role("auditor", ["api.audit.read"]), role("organization_auditor", ["api.audit.write"])]
    result = build(users=[user("u1", "auditor"), user("u2", "admin_api_key"), user("u3", "auditor")],
                   roles=api_roles, groups=[{"id": "g1", "name": "G"}], group_users={"g1": []},
                   group_roles={"g1": [role("auditor", ["api.audit.read"])]})
    assert local_role(result, "auditor")["permissions"] == ["api.audit.read"]  # the API role, not emptied
    assert local_role(result, "organization_auditor")["permissions"] == ["api.audit.write"]
    generated = local_role(result, "organization_auditor_2")
    assert generated == {"name": "Auditor", "permissions": READER_PERMISSIONS, "id": "organization_auditor_2"}
    assert list(roles_of(result, "u1")) == list(roles_of(result, "u3")) == ["organization_auditor_2"]
    assert list(roles_of(result, "g1")) == ["auditor"]  # the group's grant still points at the API role
    assert local_role(result, "organization_admin_api_key")["permissions"] == READER_PERMISSIONS
    assert sorted(local_role(result, "admin_api_key")["permissions"]) == sorted(
        ["Read Organization", "Modify Billing", "Manage Members", "Read Project", "Manage Project Members",
         "Manage Project API Keys"])
    auditor_warnings = [w for w in result.warnings if "'auditor'" in w]
    assert auditor_warnings == ["unknown organization role 'auditor': mapped to 'organization_auditor_2' "
                                "('auditor' is the id of another role) with Reader's permissions"]


def test_viewer_is_the_fixed_project_viewer_role_with_read_project():
    result = build(projects=[project("p1")], project_users={"p1": [{"id": "u1", "role": "viewer"}]})
    assert local_role(result, "project_viewer") == {"name": "Project Viewer", "permissions": ["Read Project"],
                                                    "id": "project_viewer"}
    assert roles_of(result, "u1")["project_viewer"]["resources"] == ["p1"]
    assert not [w for w in result.warnings if "viewer" in w]


def test_an_unknown_project_role_reads_the_project_and_is_warned_once():
    result = build(users=[user("u1"), user("u2")], projects=[project("p1"), project("p2")],
                   project_users={"p1": [{"id": "u1", "role": "Billing"}, {"id": "u2", "role": "billing"}],
                                  "p2": [{"id": "u1", "role": "billing"}]})
    assert local_role(result, "project_billing") == {"name": "Project Billing", "permissions": ["Read Project"],
                                                     "id": "project_billing"}
    assert roles_of(result, "u1")["project_billing"]["resources"] == ["p1", "p2"]
    assert roles_of(result, "u2")["project_billing"]["resources"] == ["p1"]
    assert [w for w in result.warnings if "billing" in w] == [
        "unknown project role 'billing': mapped to 'project_billing' with Project Viewer's permissions"]


# --- key is_active --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, active", [
    ({"owner_project_access": ...}, True),             # older API versions: no field, active
    ({"owner_project_access": None}, True),
    ({"owner_project_access": "inactive"}, False),
    ({"expires_at": BASE}, False),                     # expired before the read
    ({"expires_at": FUTURE}, True),
    ({"expires_at": None}, True),
])
def test_a_project_keys_is_active_follows_owner_access_and_expiry(change, active):
    result = build(projects=[project("p1")], project_api_keys={"p1": [project_key("k1", **change)]})
    assert result.application.access_creds["k1"].is_active is active


def test_keys_of_an_archived_project_are_inactive():
    result = build(projects=[project("p1", status="archived", archived_at=BASE)],
                   project_api_keys={"p1": [project_key("k1")]})
    assert result.application.access_creds["k1"].is_active is False


@pytest.mark.parametrize("expires_at, active", [(None, True), (BASE, False), (FUTURE, True)])
def test_an_admin_keys_is_active_is_not_expired(expires_at, active):
    result = build(admin_api_keys=[admin_key("ka", expires_at=expires_at)])
    assert result.application.access_creds["ka"].is_active is active


def test_an_admin_entry_with_a_project_keys_id_and_an_admin_value_is_kept_under_its_own_id():
    """OpenAI's documented examples use `key_abc` in both lists."""
    result = build(projects=[project("p1")], project_api_keys={"p1": [project_key("key_abc")]},
                   admin_api_keys=[admin_key("key_abc")])
    creds = result.application.access_creds
    assert set(creds) == {"key_abc", "admin_api_key:key_abc"}
    assert list(creds["admin_api_key:key_abc"].role_assignments) == ["admin_api_key"]
    assert "admin_api_key" not in creds["key_abc"].role_assignments
    assert result.application.local_users["u1"].access_creds == ["key_abc", "admin_api_key:key_abc"]
    assert ["admin API key key_abc (sk-admin...wxyz) has the id of project API key key_abc (sk-proj-...key_abc); "
            "both are kept, the admin key as admin_api_key:key_abc"] == [w for w in result.warnings if "key_abc" in w]


def test_an_admin_entry_that_is_a_project_key_stays_one_project_key_and_is_logged():
    result = build(projects=[project("p1")], project_api_keys={"p1": [project_key("k1")]},
                   admin_api_keys=[admin_key("k1", redacted_value="sk-proj-...k1")])
    assert list(result.application.access_creds) == ["k1"]
    assert "admin_api_key" not in result.application.access_creds["k1"].role_assignments
    assert any(level == logging.INFO and "admin API key list: 1 project API key(s) already read (k1)" in message
               for level, message in result.notes)


# --- role assignments through groups -------------------------------------------------------------

def test_a_role_named_as_held_through_a_left_out_group_stays_on_the_user_with_one_warning():
    result = build(users=[user("u1"), user("u2")], groups=None, roles=[role("r1", ["api.x.read"])],
                   user_roles={"u1": [assignment("r1", ("group", "g1"))], "u2": [assignment("r1", ("group", "g2"))]})
    assert roles_of(result, "u1")["r1"]["apply_to_application"] is True
    assert roles_of(result, "u2")["r1"]["apply_to_application"] is True
    [warning] = [w for w in result.warnings if "groups not in the payload" in w]
    assert warning.startswith("2 role assignments name groups not in the payload (groups were left out: "
                              "g1, g2)")


@pytest.mark.parametrize("sources, members, group_roles, direct", [
    ([("group", "g1")], ["u1"], ["r1"], False),   # the group is there, holds r1 and lists u1: through the group
    ([("group", "g1")], [], ["r1"], True),        # the group does not list the user
    ([("group", "g1")], ["u1"], [], True),        # the group does not hold the role
    ([("group", "g1"), ("user", "u1")], ["u1"], ["r1"], True),  # also a direct source
    ([], ["u1"], ["r1"], True),                   # no sources
    ([("Team", "g1")], ["u1"], ["r1"], True),     # an unknown principal type
])
def test_an_org_role_is_through_a_group_only_when_every_source_is_a_group_that_holds_it_and_lists_the_user(
        sources, members, group_roles, direct):
    result = build(groups=[{"id": "g1", "name": "G"}], group_users={"g1": [{"id": m} for m in members]},
                   group_roles={"g1": [role(r, ["api.x.read"]) for r in group_roles]},
                   roles=[role("r1", ["api.x.read"])], user_roles={"u1": [assignment("r1", *sources)]})
    assert ("r1" in roles_of(result, "u1")) is direct


def test_a_project_role_held_through_a_left_out_project_group_stays_on_the_member():
    result = build(groups=None, projects=[project("p1")], project_users={"p1": [{"id": "u1", "role": "member"}]},
                   roles=[], project_roles={"p1": [role("rp", ["api.p.read"], "api.project")]},
                   project_groups=None, project_group_roles=None, user_roles={},
                   project_user_roles={("p1", "u1"): [assignment("rp", ("group", "g9"), resource_type="api.project")]})
    assert roles_of(result, "u1")["rp"]["resources"] == ["p1"]
    assert any("groups not in the payload" in w for w in result.warnings)


def test_a_project_role_held_through_a_project_group_that_lists_the_member_is_left_to_the_group():
    result = build(groups=[{"id": "g1", "name": "G"}], group_users={"g1": [{"id": "u1"}]},
                   projects=[project("p1")], project_users={"p1": [{"id": "u1", "role": "member"}]},
                   roles=[], project_roles={"p1": []}, project_groups={"p1": [{"group_id": "g1"}]},
                   project_group_roles={("p1", "g1"): [role("rp", ["api.p.read"], "api.project")]}, user_roles={},
                   project_user_roles={("p1", "u1"): [assignment("rp", ("group", "g1"), resource_type="api.project")]})
    assert "rp" not in roles_of(result, "u1")
    assert roles_of(result, "g1")["rp"]["resources"] == ["p1"]


# --- scopes and deactivation -----------------------------------------------------------------------

def event(event_id: str, kind: str, at: int, details: dict) -> dict:
    return {"id": event_id, "type": kind, "effective_at": at, kind: details}


def scopes_of(events: list[dict]) -> dict:
    result = build(projects=[project("p1")], project_api_keys={"p1": [project_key("k1")]}, audit_logs=events,
                   activity_since=BASE - 1, activity_window_days=30)
    return result.application.access_creds["k1"].properties


def test_an_update_with_scopes_in_data_sets_them_as_openais_example_does():
    events = [event("e1", "api_key.created", BASE, {"id": "k1", "data": {"scopes": ["a.read"]}}),
              event("e2", "api_key.updated", BASE + 5, {"id": "k1", "data": {"scopes": ["b.write"]}})]
    assert scopes_of(events) == {"redacted_value": "sk-proj-...k1", "project_id": "p1", "owner_type": "user",
                                 "scopes_restricted": True, "scopes": ["b.write"]}


def test_the_newest_event_that_carries_scopes_wins_over_a_newer_one_without():
    events = [event("e1", "api_key.created", BASE, {"id": "k1", "data": {"scopes": ["a.read"]}}),
              event("e2", "api_key.updated", BASE + 9, {"id": "k1", "changes_requested": {"expires_in_seconds": 60}})]
    assert scopes_of(events)["scopes"] == ["a.read"]


def test_an_empty_scope_list_means_all_permissions():
    events = [event("e1", "api_key.created", BASE, {"id": "k1", "data": {"scopes": ["a.read"]}}),
              event("e2", "api_key.updated", BASE + 5, {"id": "k1", "changes_requested": {"scopes": []}})]
    properties = scopes_of(events)
    assert properties["scopes_restricted"] is False and "scopes" not in properties


@pytest.mark.parametrize("nested, deactivated", [
    ({"banned": True, "banned_at": BASE}, "2023-11-14T22:13:20Z"),
    ({"banned": False, "banned_at": BASE}, None),  # unbanned, with an old banned_at
    ({"banned_at": BASE}, None),
])
def test_deactivated_at_is_set_only_for_a_banned_user(nested, deactivated):
    result = build(users=[user("u1", user={"object": "user", "id": "u1", **nested})])
    assert result.application.local_users["u1"].deactivated_at == deactivated
