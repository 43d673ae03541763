"""Groups, custom roles and role assignments, end to end against the fakes."""

from __future__ import annotations

import re

import pytest
from conftest import application, assignments, by_id


def test_groups_carry_their_properties_and_members(run_connector, veza):
    result = run_connector()
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    groups = by_id(app["local_groups"])
    assert groups["group_eng"]["name"] == "Engineering"
    assert groups["group_eng"]["created_at"] == "2023-11-14T22:13:20Z"
    assert groups["group_eng"]["custom_properties"] == {"group_type": "group", "is_scim_managed": True}
    assert groups["group_fin"]["custom_properties"] == {"group_type": "tenant_group", "is_scim_managed": False}
    users = by_id(app["local_users"])
    assert users["user-0010"]["groups"] == ["group_eng"]
    assert users["user-0012"]["groups"] == ["group_fin"]
    scim_only = users["user-scim-only"]  # a member missing from the org list is kept
    assert scim_only["groups"] == ["group_eng"] and scim_only["identities"] == ["scim@example.com"]
    assert "group group_eng names user user-scim-only" in result.stderr


def test_group_members_follow_an_opaque_next_cursor_across_pages(run_connector, veza, openai_fake):
    members = [{"id": f"user-{i:04d}", "name": f"Demo User {i}", "email": None} for i in range(250)] * 5
    openai_fake.org.group_users["group_eng"] = [dict(m, id=f"{m['id']}-{n}") for n, m in enumerate(members)]
    result = run_connector()
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/groups/group_eng/users$") == 2  # 1250 members, limit 1000
    in_group = [u for u in application(veza.payloads[0])["local_users"] if "group_eng" in u.get("groups", [])]
    assert len(in_group) == 1250


def test_custom_roles_define_permissions_named_as_the_strings_with_canonical_mapping(run_connector, veza):
    assert run_connector().returncode == 0
    payload = veza.payloads[0]
    permissions = {p["name"]: p["permission_type"] for p in payload["permissions"]}
    assert permissions["api.organization.billing.read"] == ["MetadataRead"]
    assert permissions["api.organization.projects.create"] == ["MetadataCreate"]
    assert permissions["api.organization.keys.delete"] == ["MetadataDelete"]
    assert permissions["api.organization.members.manage"] == ["MetadataWrite"]
    assert permissions["api.model.request"] == ["DataRead"]
    assert permissions["api.organization.frobnicate"] == ["Uncategorized"]
    assert [p["name"] for p in payload["permissions"]].count("api.organization.read") == 1
    roles = by_id(application(payload)["local_roles"])
    billing = roles["role-custom-billing"]
    assert billing["name"] == "Billing Auditor"
    assert billing["custom_properties"] == {"predefined_role": False, "resource_type": "api.organization",
                                            "description": "Reads billing"}
    assert roles["role-custom-proj-deployer"]["permissions"] == ["api.project.deployments.write"]
    assert roles["owner"]["name"] == "Owner"  # fixed roles are never replaced


def test_role_assignments_of_groups_and_users_at_org_and_project_level(run_connector, veza):
    result = run_connector()
    payload = veza.payloads[0]
    assert assignments(payload, "group_fin")["role-custom-billing"]["apply_to_application"] is True
    # user-0012 holds the role through group_fin: not repeated on the user
    assert "role-custom-billing" not in assignments(payload, "user-0012")
    assert assignments(payload, "user-0013")["role-custom-billing"]["apply_to_application"] is True
    assert assignments(payload, "group_eng")["role-custom-proj-deployer"]["resources"] == ["proj_alpha"]
    assert assignments(payload, "user-0011")["role-custom-proj-deployer"]["resources"] == ["proj_alpha"]
    assert "per-user role assignments reading them: the Roles API lists custom roles" in result.stderr


def test_auto_reads_per_user_roles_when_a_custom_role_exists(run_connector, openai_fake):
    assert run_connector().returncode == 0
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == 250
    assert openai_fake.calls(r"^/projects/[^/]+/users/[^/]+/roles$") == 4  # one per project member


def test_auto_skips_per_user_roles_when_every_role_is_predefined(run_connector, veza, openai_fake):
    openai_fake.org.roles = [r for r in openai_fake.org.roles if r["predefined_role"]]
    openai_fake.org.project_roles = {pid: [] for pid in openai_fake.org.project_roles}
    result = run_connector()
    assert result.returncode == 0
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == 0
    assert openai_fake.calls(r"^/projects/[^/]+/users/[^/]+/roles$") == 0
    assert "every role the Roles API lists is predefined" in result.stderr
    assert openai_fake.calls(r"^/organization/groups/[^/]+/roles$") == 2  # group role reads always happen


@pytest.mark.parametrize(("mode", "expected_calls"), [("none", 0), ("all", 250)])
def test_role_assignments_flag_forces_per_user_reads(run_connector, openai_fake, mode, expected_calls):
    openai_fake.org.roles = [r for r in openai_fake.org.roles if r["predefined_role"]]
    openai_fake.org.project_roles = {}
    result = run_connector("--role-assignments", mode)
    assert result.returncode == 0
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == expected_calls
    assert re.search(f"--role-assignments {mode}", result.stderr)


def test_without_the_roles_api_there_are_no_custom_roles_or_assignments(run_connector, veza, openai_fake):
    openai_fake.refused["roles"] = 403
    result = run_connector()
    assert result.returncode == 0
    payload = veza.payloads[0]
    roles = by_id(application(payload)["local_roles"])
    assert not any(role_id.startswith("role-") for role_id in roles)
    assert assignments(payload, "group_fin") == {}
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == 0
    assert "left out roles (HTTP 403" in result.stderr


def test_without_groups_there_are_no_memberships_or_group_grants(run_connector, veza, openai_fake):
    openai_fake.refused["groups"] = 404
    result = run_connector()
    assert result.returncode == 0
    app = application(veza.payloads[0])
    assert app.get("local_groups", []) == []
    assert not any(u.get("groups") for u in app["local_users"])
    assert "left out groups (HTTP 404" in result.stderr
