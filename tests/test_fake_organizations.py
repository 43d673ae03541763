"""The organizations the fake serves: the benchmark's generated one keeps its shape unless asked for more."""

from __future__ import annotations

from fake_openai import generate_organization


def test_generated_organizations_have_no_admin_keys_or_organization_role_holders_unless_asked():
    org = generate_organization(users=1000, projects=3)
    assert org.admin_api_keys == [] and org.user_roles == {}
    assert [role["id"] for role in org.roles] == ["role-api-organization-owner__api-organization__org-bench0001"]
    assert "group_org_analysts" not in {group["id"] for group in org.groups}


def test_generated_admin_keys_belong_to_owners_and_role_holders_hold_the_role_through_one_group():
    org = generate_organization(users=1000, projects=3, groups=2, admin_keys=3, org_role_holders=10)
    owners = {user["id"] for user in org.users if user["role"] == "owner"}
    assert [key["id"] for key in org.admin_api_keys] == ["key_admin_000", "key_admin_001", "key_admin_002"]
    assert {key["owner"]["id"] for key in org.admin_api_keys} == owners == {"user-000000", "user-000500"}
    assert all(key["redacted_value"].startswith("sk-admin") for key in org.admin_api_keys)
    [custom] = [role for role in org.roles if role["predefined_role"] is False]
    assert custom["id"] == "role-custom-org-analyst" and custom["resource_type"] == "api.organization"
    holders = [member["id"] for member in org.group_users["group_org_analysts"]]
    assert len(holders) == len(set(holders)) == 10 and holders[:2] == ["user-000000", "user-000100"]
    assert [role["id"] for role in org.group_roles["group_org_analysts"]] == ["role-custom-org-analyst"]
    assert sorted(org.user_roles) == sorted(holders)
    assert {source["principal_id"] for roles in org.user_roles.values() for role in roles
            for source in role["assignment_sources"]} == {"group_org_analysts"}
    assert len(org.groups) == 3
