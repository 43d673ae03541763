"""Users, invites, service accounts, groups and roles: what each record becomes in the OAA payload."""

from __future__ import annotations

import json
import re

import pytest
from conftest import NO_ROLE_READS, application, assignments, by_id, pushed

import veza_openai as vo


def local_user_ids(payload: dict) -> list[str]:
    return [user["id"] for user in application(payload)["local_users"]]


def test_user_fields_roles_and_identities_follow_the_mapping(run_connector, veza):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    payload = veza.payloads[0]
    users = by_id(application(payload)["local_users"])
    owner = users["user-0000"]
    assert owner["name"] == "Demo User 0" and owner["email"] == "demo0@example.com"
    assert owner["identities"] == ["demo0@example.com"]
    assert owner["created_at"] == "2023-11-14T22:11:40Z"  # `created` wins over added_at
    assert owner["custom_properties"] == {"added_at": "2023-11-14T22:13:20Z",
                                          "api_key_last_used_at": "2023-11-14T22:13:20Z",
                                          "is_scim_managed": True}
    assert owner["is_active"] is True and owner["user_type"] == "human"
    assert assignments(payload, "user-0000")["owner"]["apply_to_application"] is True
    assert "reader" in assignments(payload, "user-0007")

    nested = users["user-0001"]  # email and name only inside the nested user, padded with spaces
    assert nested["name"] == "Nested Only" and nested["identities"] == ["nested@example.com"]
    assert nested["is_active"] is False  # enabled == false
    assert users["user-0005"]["is_active"] is False  # banned
    assert users["user-0003"]["name"] == "user-0003" and "identities" not in users["user-0003"]
    assert users["user-0004"]["user_type"] == "service_account"


def test_product_page_roles_and_permissions_are_exact(run_connector, veza):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    payload = veza.payloads[0]
    permissions = {p["name"]: p["permission_type"] for p in payload["permissions"]}
    assert permissions["Standard API Requests"] == ["DataRead"]
    assert permissions["Read Organization"] == ["MetadataRead"]
    assert permissions["Modify Billing"] == ["MetadataWrite"]
    assert permissions["Manage Members"] == ["MetadataWrite"]
    roles = by_id(application(payload)["local_roles"])
    assert roles["owner"]["name"] == "Owner"
    assert roles["owner"]["permissions"] == ["Standard API Requests", "Read Organization", "Modify Billing",
                                             "Manage Members"]
    assert roles["reader"]["name"] == "Reader"
    assert roles["reader"]["permissions"] == ["Standard API Requests", "Read Organization"]


def test_unknown_org_role_keeps_the_user_with_readers_permissions_and_one_warning(run_connector, veza):
    result = run_connector()
    assert result.returncode == 0
    payload = veza.payloads[0]
    roles = by_id(application(payload)["local_roles"])
    assert roles["auditor"]["name"] == "Auditor"
    assert roles["auditor"]["permissions"] == ["Standard API Requests", "Read Organization"]
    assert "auditor" in assignments(payload, "user-0002")
    assert len(re.findall(r"unknown organization role 'auditor'", result.stderr)) == 1


def test_project_members_get_project_roles_and_org_owners_own_every_project(run_connector, veza, openai_fake):
    # the org owner user-0000 is also listed as owner of proj_beta: that listing must survive the implicit grant
    openai_fake.org.project_users["proj_beta"].append(
        {"object": "organization.project.user", "id": "user-0000", "name": "Demo User 0",
         "email": "demo0@example.com", "role": "owner", "added_at": 1_700_000_000})
    result = run_connector()
    payload = veza.payloads[0]
    assert assignments(payload, "user-0010")["project_owner"]["resources"] == ["proj_alpha"]
    assert assignments(payload, "user-0011")["project_member"]["resources"] == ["proj_alpha"]
    owner = assignments(payload, "user-0000")
    assert owner["project_owner_via_organization"]["resources"] == ["proj_alpha", "proj_beta"]
    assert owner["project_owner"]["resources"] == ["proj_beta"]  # listed: exactly the projects that list it
    assert "project_owner_via_organization" not in assignments(payload, "user-0010")  # an org reader
    assert all("custom_properties" not in a for a in owner.values())
    assert "custom_properties" not in assignments(payload, "user-0010")["project_owner"]
    definitions = payload["custom_property_definition"]["applications"][0]
    assert "granted_by" not in json.dumps(definitions)
    roles = by_id(application(payload)["local_roles"])
    assert roles["project_owner"]["permissions"] == ["Standard API Requests", "Read Project",
                                                     "Manage Project Members", "Manage Project API Keys"]
    assert roles["project_owner_via_organization"]["name"] == "Project Owner (organization owner)"
    assert roles["project_owner_via_organization"]["permissions"] == roles["project_owner"]["permissions"]
    assert roles["project_member"]["permissions"] == ["Standard API Requests", "Read Project"]
    assert roles["project_viewer"]["name"] == "Project Viewer"
    assert assignments(payload, "user-0012")["project_viewer"]["resources"] == ["proj_beta"]
    assert roles["project_viewer"]["permissions"] == ["Read Project"]
    assert "unknown project role 'viewer'" not in result.stderr  # a fixed role since OpenAI's RBAC guide
    permissions = {p["name"]: p["permission_type"] for p in payload["permissions"]}
    assert permissions["Read Project"] == ["MetadataRead"]
    assert permissions["Manage Project Members"] == ["MetadataWrite"]
    assert permissions["Manage Project API Keys"] == ["MetadataWrite"]


def test_a_project_member_missing_from_the_org_list_is_kept_with_a_warning(run_connector, veza):
    result = run_connector(*NO_ROLE_READS)
    ghost = by_id(application(veza.payloads[0])["local_users"])["user-ghost"]
    assert ghost["name"] == "Ghost Member" and ghost["identities"] == ["ghost@example.com"]
    assert ghost["is_active"] is True and ghost["user_type"] == "human"
    assert assignments(veza.payloads[0], "user-ghost")["project_member"]["resources"] == ["proj_alpha"]
    assert "user-ghost, not in the organization user list" in result.stderr


def test_service_accounts_are_users_with_their_project_role(run_connector, veza):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    payload = veza.payloads[0]
    users = by_id(application(payload)["local_users"])
    deploy = users["svc_deploy"]
    assert deploy["user_type"] == "service_account" and deploy["custom_properties"] == {"project_id": "proj_alpha"}
    assert deploy["created_at"] == "2023-11-14T22:13:20Z"
    assert assignments(payload, "svc_deploy")["project_owner"]["resources"] == ["proj_alpha"]
    assert users["svc_idle"]["user_type"] == "service_account"
    assert assignments(payload, "svc_idle") == {}  # role `none`


def test_only_pending_invites_become_inactive_users_with_their_roles(run_connector, veza):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    payload = veza.payloads[0]
    users = by_id(application(payload)["local_users"])
    invite = users["invite-pending"]
    assert invite["name"] == "new@example.com" and invite["identities"] == ["new@example.com"]
    assert invite["is_active"] is False
    assert invite["custom_properties"] == {"invite_status": "pending", "invite_expires_at": "2023-11-15T22:13:20Z"}
    assert assignments(payload, "invite-pending")["reader"]["apply_to_application"] is True
    assert assignments(payload, "invite-pending")["project_member"]["resources"] == ["proj_alpha"]
    assert "invite-accepted" not in users and "invite-expired" not in users


def test_groups_carry_their_properties_and_members(run_connector, veza):
    result = run_connector(*NO_ROLE_READS)  # groups and their members are read whatever --role-assignments says
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
    names = [p["name"] for p in payload["permissions"]]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []  # each string defined once
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
    assert "per-user role assignments reading them: custom roles exist" in result.stderr


def test_a_project_role_named_like_the_implicit_owner_role_gets_only_read_project(run_connector, veza,
                                                                                  openai_fake):
    openai_fake.org.project_users["proj_alpha"][1]["role"] = "owner_via_organization"
    payload, _ = pushed(run_connector, veza)
    assert "project_owner_via_organization" not in assignments(payload, "user-0011")
    roles = by_id(application(payload)["local_roles"])
    assert roles["project_role_owner_via_organization"]["permissions"] == ["Read Project"]
    assert assignments(payload, "user-0011")["project_role_owner_via_organization"]["resources"] == ["proj_alpha"]


def test_a_project_member_whose_id_differs_from_an_org_user_only_in_case_is_that_user(
        run_connector, veza, openai_fake):
    """README: 'Ids are case-insensitive, as in Veza: two ids that differ only in case are one entity', across
    lists as well as within one: a project member USER-0011 is the organization's user-0011, never a second
    local user."""
    member = next(m for m in openai_fake.org.project_users["proj_alpha"] if m["id"] == "user-0011")
    member["id"] = "USER-0011"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = [u["id"] for u in application(veza.payloads[0])["local_users"]]
    folded = [i.casefold() for i in ids]
    assert len(folded) == len(set(folded)), [i for i in ids if i.casefold() == "user-0011"]


def test_a_project_role_value_never_empties_a_roles_api_role_with_the_same_id(openai_fake, run_connector, veza):
    """Spec: an unknown project role value gets `project_<value>`, but every generated id is checked against
    every id in the payload: with a Roles API role `project_auditor`, the value 'auditor' gets
    `project_role_auditor` (Read Project) and the API role keeps its own permissions."""
    openai_fake.org.roles.append({"object": "role", "id": "project_auditor", "name": "Auditor (API)",
                                  "permissions": ["api.project.read"], "predefined_role": False,
                                  "resource_type": "api.project", "description": None})
    [member] = [m for m in openai_fake.org.project_users["proj_beta"] if m["id"] == "user-0012"]
    member["role"] = "auditor"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    roles = by_id(application(payload)["local_roles"])
    assert roles["project_auditor"].get("permissions") == ["api.project.read"], roles["project_auditor"]
    assert roles["project_role_auditor"] == {"name": "Project Auditor", "permissions": ["Read Project"],
                                             "id": "project_role_auditor"}
    assert "project_auditor" not in assignments(payload, "user-0012")
    assert assignments(payload, "user-0012")["project_role_auditor"]["resources"] == ["proj_beta"]


def test_an_invite_with_the_id_of_a_user_is_left_out_with_a_warning(run_connector, veza, openai_fake):
    openai_fake.org.invites.append({"object": "organization.invite", "id": "user-0042", "email": "dup@example.com",
                                    "role": "reader", "status": "pending", "created_at": 1, "expires_at": 2,
                                    "accepted_at": None, "projects": []})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = local_user_ids(veza.payloads[0])
    assert ids.count("user-0042") == 1
    assert by_id(application(veza.payloads[0])["local_users"])["user-0042"]["name"] == "Demo User 42"
    assert "invite user-0042 has the id of an existing user; left out" in result.stderr


def test_user_ids_that_differ_only_in_case_become_one_entity_with_a_warning(run_connector, veza, openai_fake):
    for uid in ("user-AAA", "user-aaa"):
        openai_fake.org.users.append({"object": "organization.user", "id": uid, "name": uid,
                                      "email": f"{uid}@example.com", "role": "reader", "added_at": 1})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = local_user_ids(veza.payloads[0])
    assert [i for i in ids if i.casefold() == "user-aaa"] == ["user-AAA"]
    assert len(ids) == len({i.casefold() for i in ids})
    assert "organization user record ids 'user-AAA' and 'user-aaa' differ only in case" in result.stderr


def test_a_role_whose_permissions_is_a_string_becomes_one_permission(run_connector, veza, openai_fake):
    openai_fake.org.roles.append({"object": "role", "id": "role-stringy", "name": "Stringy",
                                  "permissions": "api.organization.read", "predefined_role": False,
                                  "resource_type": "api.organization", "description": None})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert by_id(application(payload)["local_roles"])["role-stringy"]["permissions"] == ["api.organization.read"]
    names = [p["name"] for p in payload["permissions"]]
    assert not [name for name in names if len(name) == 1]
    assert "role role-stringy has its permissions as one string; read as one permission" in result.stderr


def test_an_org_role_value_admin_api_key_never_grants_the_admin_key_roles_permissions(run_connector, veza,
                                                                                     openai_fake):
    openai_fake.org.users[6]["role"] = "admin_api_key"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert set(assignments(payload, "user-0006")) == {"organization_admin_api_key"}
    roles = by_id(application(payload)["local_roles"])
    # an unknown org role value: Reader's permissions, never the admin key role's
    assert roles["organization_admin_api_key"]["permissions"] == ["Standard API Requests", "Read Organization"]
    assert sorted(roles["admin_api_key"]["permissions"]) == sorted(
        ["Read Organization", "Modify Billing", "Manage Members", "Read Project", "Manage Project Members",
         "Manage Project API Keys"])
    assert "unknown organization role 'admin_api_key'" in result.stderr


def test_an_org_role_value_equal_to_a_custom_role_id_never_empties_that_custom_role(run_connector, veza,
                                                                                   openai_fake):
    openai_fake.org.users[6]["role"] = "role-custom-billing"
    result = run_connector()
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    billing = by_id(application(payload)["local_roles"])["role-custom-billing"]
    assert billing["name"] == "Billing Auditor"
    assert len(billing.get("permissions", [])) == 6
    assert "role-custom-billing" in assignments(payload, "group_fin")


def test_a_user_record_with_a_numeric_id_is_skipped_with_a_warning(run_connector, veza, openai_fake):
    openai_fake.org.users.insert(50, {"object": "organization.user", "id": 12345, "name": "Numeric",
                                      "email": "numeric@example.com", "role": "reader", "added_at": 1})
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = local_user_ids(veza.payloads[0])
    assert "12345" not in ids and 12345 not in ids and "user-0050" in ids
    assert re.search(r"WARNING organization user record has no usable id \(int\); skipped", result.stderr)


def fixed_roles() -> dict[str, list[str]]:
    """The fixed roles (id -> permissions) every payload defines: those of an organization with nothing in it."""
    roles = vo.build_application(vo.Snapshot(org_id="org-empty0001")).application.local_roles
    return {role_id: sorted(role.permissions) for role_id, role in roles.items()}


@pytest.mark.parametrize("clash", ["Owner", "owner", "admin_api_key"])
def test_a_custom_role_whose_id_is_a_fixed_role_id_keeps_its_assignments_under_a_free_id(run_connector, veza,
                                                                                          openai_fake, clash):
    """A Roles API role (not predefined) with the id of a fixed role keeps its definition and a group's grant of
    it, under an id of its own; the fixed role keeps its permissions; a warning says where it went."""
    permissions = ["api.organization.billing.read", "api.organization.members.manage"]
    clashing = {"object": "role", "id": clash, "name": "Clashing Custom", "permissions": permissions,
                "predefined_role": False, "resource_type": "api.organization", "description": None}
    control = {**clashing, "id": "role-control", "name": "Control Custom"}  # the same role, with an id of its own
    openai_fake.org.roles += [clashing, control]
    openai_fake.org.group_roles["group_eng"] = [{k: v for k, v in clashing.items() if k != "object"}]
    payload, stderr = pushed(run_connector, veza)
    roles = application(payload)["local_roles"]
    fixed = fixed_roles()
    [kept] = [role for role in roles if role["name"] == "Clashing Custom"]
    assert kept["id"].lower() not in {role_id.lower() for role_id in fixed}
    assert sorted(kept["permissions"]) == sorted(by_id(roles)["role-control"]["permissions"])
    assert assignments(payload, "group_eng")[kept["id"]]["apply_to_application"] is True
    for role_id, fixed_permissions in fixed.items():  # owner and admin_api_key among them
        assert sorted(by_id(roles)[role_id]["permissions"]) == fixed_permissions, role_id
    assert [line for line in stderr.splitlines()
            if "WARNING" in line and f"'{clash}'" in line and "kept" in line and kept["id"] in line], stderr


def test_ids_that_differ_only_as_casefold_differs_from_lower_are_two_users(run_connector, veza, openai_fake):
    """Ids compare as oaaclient compares them (str.lower()): user-straße and user-strasse are two users; ids that
    differ only in case are still one (the first kept, warned)."""
    for uid in ("user-straße", "user-strasse", "user-ABC", "user-abc"):
        openai_fake.org.users.append({"object": "organization.user", "id": uid, "name": uid, "email": None,
                                      "role": "reader", "added_at": 1})
    payload, stderr = pushed(run_connector, veza)
    ids = local_user_ids(payload)
    assert "user-straße" in ids and "user-strasse" in ids
    assert [i for i in ids if i.lower() == "user-abc"] == ["user-ABC"]
    warned = [line for line in stderr.splitlines() if "differ only in case" in line]
    assert len(warned) == 1 and "'user-ABC'" in warned[0] and "'user-abc'" in warned[0], warned
