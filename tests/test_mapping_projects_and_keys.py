"""Projects and API keys: what each becomes in the OAA payload and who holds it."""

from __future__ import annotations

from conftest import NO_ROLE_READS, application, assignments, by_id


def test_projects_include_archived_ones_with_their_properties(run_connector, veza, openai_fake):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    resources = by_id(application(veza.payloads[0])["resources"])
    projects = {rid: r for rid, r in resources.items() if r["resource_type"] == "project"}
    assert set(projects) == {"proj_alpha", "proj_beta"}
    assert set(resources) - set(projects) == {"cert_org_root"}  # the organization's certificate
    # the hosted tool settings were read for every project (tests/test_mapping_access_review.py)
    hosted_tools = {f"{tool}_enabled": False for tool in ("code_interpreter", "file_search", "image_generation", "mcp",
                                                          "web_search")}
    assert projects["proj_beta"]["custom_properties"] == {"status": "archived", "created_at": "2023-11-14T22:13:20Z",
                                                          "archived_at": "2023-11-14T22:14:10Z", **hosted_tools}
    assert projects["proj_alpha"]["custom_properties"]["model_permission_mode"] == "allow_list"
    assert projects["proj_alpha"]["custom_properties"]["model_ids"] == ["gpt-4o", "gpt-4o-mini"]
    assert "model_ids" not in projects["proj_beta"].get("custom_properties", {})


def test_project_api_keys_are_credentials_of_their_owner_with_the_owners_role(run_connector, veza):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    payload = veza.payloads[0]
    app = application(payload)
    creds = by_id(app["local_access_creds"])
    users = by_id(app["local_users"])
    assert creds["key_user1"]["is_active"] is True
    assert creds["key_user1"]["custom_properties"] == {"redacted_value": "sk-...ser1", "project_id": "proj_alpha",
                                                       "owner_type": "user",  # scopes: from the audit log
                                                       "scopes": ["api.model.request", "api.files.write"],
                                                       "scopes_restricted": True}
    assert "key_user1" in users["user-0011"]["access_creds"]
    assert assignments(payload, "key_user1")["project_member"]["resources"] == ["proj_alpha"]
    assert creds["key_svc1"]["name"] == "sk-...svc1"  # no name: the redacted value
    assert "key_svc1" in users["svc_deploy"]["access_creds"]
    assert assignments(payload, "key_svc1")["project_owner"]["resources"] == ["proj_alpha"]
    # the owner lost project access: the key is still there, inactive, with its owner's role
    assert creds["key_gone"]["is_active"] is False
    assert "key_gone" in users["user-0020"]["access_creds"]
    assert assignments(payload, "key_gone")["project_member"]["resources"] == ["proj_alpha"]
    assert creds["key_gone"]["last_used_at"] == "2023-11-14T22:13:30Z"


def test_admin_keys_manage_the_organization_and_project_keys_stay_project_keys(run_connector, veza):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    payload = veza.payloads[0]
    app = application(payload)
    creds = by_id(app["local_access_creds"])
    assert creds["key_admin1"]["name"] == "Veza read-only" and creds["key_admin1"]["is_active"] is True
    assert creds["key_admin1"]["custom_properties"] == {"redacted_value": "sk-admin...abcd"}
    assert "key_admin1" in by_id(app["local_users"])["user-0000"]["access_creds"]
    assert assignments(payload, "key_admin1")["admin_api_key"]["apply_to_application"] is True
    role = by_id(app["local_roles"])["admin_api_key"]
    assert role["name"] == "Admin API Key"
    # the organization's and, applying to every project (tests/test_mapping_effective_access.py), its projects'
    assert sorted(role["permissions"]) == sorted(["Read Organization", "Modify Billing", "Manage Members",
                                                  "Read Project", "Manage Project Members", "Manage Project API Keys"])
    assert "admin_api_key" not in assignments(payload, "key_user1")
    assert [c["id"] for c in app["local_access_creds"]].count("key_user1") == 1
