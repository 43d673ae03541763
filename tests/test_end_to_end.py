"""The script run as a user runs it, against the fake OpenAI and the fake Veza; assertions on what Veza got."""

from __future__ import annotations

import json
import re

from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, application, assignments, by_id, load

# --- the core connector: users and org roles ---------------------------------------------------


def test_pushes_every_user_of_a_multi_page_organization(run_connector, veza, openai_fake):
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert len(veza.payloads) == 1
    app = application(veza.payloads[0])
    users = by_id(app["local_users"])
    org_user_ids = {u["id"] for u in openai_fake.org.users}
    assert org_user_ids <= set(users)
    assert openai_fake.calls(r"^/organization/users$") == 3  # 250 users at limit=100
    assert app["name"] == "org-demo0001" and app["application_type"] == "OpenAI"
    # activity_window_days: the audit log was read (--activity-days defaults to 90)
    assert app["custom_properties"] == {"organization_id": "org-demo0001", "is_personal": False,
                                        "activity_window_days": 90}
    assert veza.data_source_names() == ["OpenAI - org-demo0001"]
    assert [p["name"] for p in veza.providers] == ["OpenAI"]
    assert veza.providers[0]["custom_template"] == "application"
    assert veza.icons, "the provider is created with an icon"


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


def test_save_json_writes_exactly_the_pushed_payload(run_connector, veza, tmp_path):
    result = run_connector(*NO_ROLE_READS, "--save_json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.output
    assert load(tmp_path / "out.json") == veza.payloads[0]
    assert f"payload saved to {tmp_path / 'out.json'}" in result.stderr


def test_save_json_without_a_path_writes_into_the_working_directory(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, "--save-json")
    assert result.returncode == 0
    [saved] = result.saved_json()
    assert saved.name.startswith("openai-org-demo0001-") and load(saved) == veza.payloads[0]


def test_dry_run_needs_no_veza_settings_and_pushes_nothing(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, "--dry-run", drop=("VEZA_URL", "VEZA_API_KEY"))
    assert result.returncode == 0, result.output
    assert veza.requests == []
    [saved] = result.saved_json()
    assert len(application(load(saved))["local_users"]) > 250
    assert "outcome=dry-run" in result.stderr


def test_flags_win_over_environment_variables(run_connector, veza, openai_fake):
    result = run_connector(*NO_ROLE_READS, "--veza-url", veza.url, "--openai_org", "org-demo0001",
                           env={"VEZA_URL": "https://veza.invalid", "OPENAI_ORG_ID": "org-other"})
    assert result.returncode == 0, result.output
    assert veza.data_source_names() == ["OpenAI - org-demo0001"]


def test_openai_admin_key_is_used_when_openai_api_key_is_unset(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_ADMIN_KEY": OPENAI_SECRET}, drop=("OPENAI_API_KEY",))
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1


def test_help_names_each_flags_environment_variable(run_connector):
    result = run_connector("--help")
    assert result.returncode == 0
    for name in ("VEZA_URL", "OPENAI_ORG_ID", "OPENAI_BASE_URL", "OPENAI_MAX_WORKERS", "OPENAI_ROLE_ASSIGNMENTS",
                 "VEZA_API_KEY", "OPENAI_API_KEY"):
        assert name in result.stdout
    for flag in ("--veza_url", "--veza-url", "--openai-org", "--openai_org", "--save_json", "--save-json",
                 "--debug", "--dry-run"):
        assert flag in result.stdout


def test_all_missing_settings_are_reported_together_with_exit_2(run_connector, veza, openai_fake):
    result = run_connector(drop=("VEZA_URL", "VEZA_API_KEY", "OPENAI_ORG_ID", "OPENAI_API_KEY"))
    assert result.returncode == 2
    for name in ("VEZA_URL", "VEZA_API_KEY", "OPENAI_ORG_ID", "OPENAI_API_KEY"):
        assert re.search(rf"configuration error: {name}\b.*is not set", result.stderr), name
    assert "Traceback" not in result.output
    assert veza.requests == [] and openai_fake.calls() == 0
    assert re.search(r"summary: outcome=config-error warnings=0 .* calls=0 retries=0", result.stderr.splitlines()[-1])


def test_malformed_settings_are_configuration_errors_before_any_request(run_connector, veza, openai_fake):
    result = run_connector(env={"OPENAI_ORG_ID": "acme", "VEZA_URL": "https://user:pw@veza.example.com",
                                "OPENAI_BASE_URL": "http://api.example.com/v1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "configuration error" in line]
    assert len(lines) == 3, result.stderr
    assert "OPENAI_ORG_ID" in lines[0] and "org-" in lines[0]
    assert any("VEZA_URL" in line and "credentials" in line for line in lines)
    assert any("OPENAI_BASE_URL" in line and "https" in line for line in lines)
    assert veza.requests == [] and openai_fake.calls() == 0


def test_a_refused_openai_key_says_an_admin_key_is_needed(run_connector, veza):
    result = run_connector(env={"OPENAI_API_KEY": "sk-not-an-admin-key-0000"})
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if "Admin API key" in line]
    assert "sk-admin-" in line and "org-demo0001" in line and "401" in line
    assert "Traceback" not in result.output
    assert veza.pushes == []


def test_a_refused_veza_key_says_so_in_one_line_before_reading_openai(run_connector, veza, openai_fake):
    result = run_connector(env={"VEZA_API_KEY": "wrong-veza-key"})
    assert result.returncode == 1
    assert "Veza refused the API key (HTTP 401)" in result.stderr
    assert "Traceback" not in result.output
    assert openai_fake.calls() == 0


def test_veza_push_warnings_are_logged_and_not_fatal(run_connector, veza):
    veza.push_warnings = [{"message": "identity demo3@example.com not found"}]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    assert "Veza: {'message': 'identity demo3@example.com not found'}" in result.stderr
    assert "veza_warnings=1" in result.stderr


def test_logs_one_line_per_stage_and_end_with_a_summary(run_connector):
    result = run_connector()
    lines = result.stderr.strip().splitlines()
    for stage in ("connecting to Veza", "reading OpenAI organization", "read 250 users", "mapped users=",
                  "pushing to Veza data source"):
        assert any(stage in line for line in lines), stage
    assert re.search(r"summary: outcome=pushed users=250 .* calls=\d+ retries=0 seconds=", lines[-1])


def test_no_secret_appears_in_output_or_saved_file_even_with_debug(run_connector, tmp_path):
    for args in ((), ("--debug",)):
        result = run_connector("--save_json", str(tmp_path), *args)
        assert result.returncode == 0
        for secret in (OPENAI_SECRET, VEZA_SECRET):
            assert secret not in result.output
            for saved in result.saved_json():
                assert secret not in saved.read_text()
    assert "DEBUG" in result.stderr


def test_is_personal_is_left_unset_when_the_organization_object_is_refused(run_connector, veza, openai_fake):
    openai_fake.org.legacy_organization = None
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    assert application(veza.payloads[0])["custom_properties"] == {"organization_id": "org-demo0001",
                                                                  "activity_window_days": 90}
    assert "is_personal left unset" in result.stderr


# --- projects, credentials and invites ----------------------------------------------------------


def test_projects_include_archived_ones_with_their_properties(run_connector, veza, openai_fake):
    assert run_connector(*NO_ROLE_READS).returncode == 0
    resources = by_id(application(veza.payloads[0])["resources"])
    projects = {rid: r for rid, r in resources.items() if r["resource_type"] == "project"}
    assert set(projects) == {"proj_alpha", "proj_beta"}
    assert set(resources) - set(projects) == {"cert_org_root"}  # the organization's certificate
    # the hosted tool settings were read for every project (tests/test_access_review.py)
    hosted_tools = {f"{tool}_enabled": False for tool in ("code_interpreter", "file_search", "image_generation", "mcp",
                                                          "web_search")}
    assert projects["proj_beta"]["custom_properties"] == {"status": "archived", "created_at": "2023-11-14T22:13:20Z",
                                                          "archived_at": "2023-11-14T22:14:10Z", **hosted_tools}
    assert projects["proj_alpha"]["custom_properties"]["model_permission_mode"] == "allow_list"
    assert projects["proj_alpha"]["custom_properties"]["model_ids"] == ["gpt-4o", "gpt-4o-mini"]
    assert "model_ids" not in projects["proj_beta"].get("custom_properties", {})


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
    assert "user-ghost who is not in the organization user list" in result.stderr


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
    assert role["permissions"] == ["Read Organization", "Modify Billing", "Manage Members"]
    assert "admin_api_key" not in assignments(payload, "key_user1")
    assert [c["id"] for c in app["local_access_creds"]].count("key_user1") == 1


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


def test_summary_counts_each_family(run_connector):
    result = run_connector(*NO_ROLE_READS)
    summary = result.stderr.strip().splitlines()[-1]
    for fact in ("projects=2", "project_memberships=4", "service_accounts=2", "project_api_keys_active=2",
                 "project_api_keys_inactive=1", "admin_api_keys=1", "invites_pending=1", "groups=2"):
        assert fact in summary, fact


def test_a_refused_optional_family_is_left_out_whole_with_one_warning(run_connector, veza, openai_fake):
    openai_fake.refused["invites"] = 403
    openai_fake.refused["admin API keys"] = 404
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    assert not any(u["id"].startswith("invite-") for u in app["local_users"])
    assert "key_admin1" not in by_id(app["local_access_creds"])
    assert len(re.findall(r"left out invites \(HTTP 403.*grant the admin key 'Invites: Read'", result.stderr)) == 1
    assert len(re.findall(r"left out admin API keys \(HTTP 404", result.stderr)) == 1


def test_refused_projects_take_everything_that_hangs_on_them(run_connector, veza, openai_fake):
    openai_fake.refused["projects"] = 403
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    payload = veza.payloads[0]
    app = application(payload)
    assert [r["id"] for r in app.get("resources", [])] == ["cert_org_root"]  # no project; org certificates stay
    # federation rules do not come from the project lists: kept, without holders or project roles
    assert set(by_id(app["local_access_creds"])) == {"key_admin1", "wifr_deploy_main", "wifr_unknown_sa",
                                                     "wifr_legacy_deploy"}
    assert all(assignments(payload, rule) == {} for rule in ("wifr_deploy_main", "wifr_legacy_deploy"))
    assert "project_owner" not in assignments(payload, "user-0000")
    assert "project_owner_via_organization" not in assignments(payload, "user-0000")
    assert openai_fake.calls(r"^/organization/projects/") == 0


def test_a_refused_per_project_family_is_left_out_for_every_project(run_connector, veza, openai_fake):
    openai_fake.refused["project service accounts"] = 403
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    users = by_id(application(veza.payloads[0])["local_users"])
    assert "svc_idle" not in users
    assert len(re.findall("left out project service accounts", result.stderr)) == 1


def test_refused_users_fail_the_run_and_push_nothing(run_connector, veza, openai_fake):
    openai_fake.refused["users"] = 403
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1
    assert "Admin API key (sk-admin-...)" in result.stderr
    assert veza.pushes == []


def test_a_family_failing_part_way_pushes_nothing_and_exits_1(run_connector, veza, openai_fake):
    from fake_openai import Fault
    openai_fake.faults.append(Fault(path=r"/api_keys$", kind="status", status=500, times=None))
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_MAX_RETRIES": "2"})
    assert result.returncode == 1
    assert re.search(r"/organization/projects/proj_\w+/api_keys: HTTP 500, gave up after 2 retries", result.stderr)
    assert "nothing was pushed" in result.stderr
    assert veza.pushes == []
    assert "outcome=failed" in result.stderr.splitlines()[-1]


def test_users_not_found_points_at_the_org_id_and_base_url(run_connector, veza, openai_fake):
    openai_fake.refused["users"] = 404
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1
    assert "OpenAI answered HTTP 404 on /organization/users: check OPENAI_ORG_ID and --openai-base-url" in \
        result.stderr
    assert veza.pushes == []
