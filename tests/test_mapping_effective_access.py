"""Effective access (mapping spec): every path OpenAI grants access along shows in Veza, for principals and keys.

Most tests run against `effective_access_organization()` (tests/fake_openai.py), where each path has a principal
of its own; tests/access_paths.py follows the payload's edges as Veza would. Permissions that must reach every
project when held on the application are defined with `apply_to_sub_resources` and `resource_types: ["project"]`:
the fake Veza does not evaluate that, so these tests check the definitions and access_paths follows them.
"""

from __future__ import annotations

import pytest
from access_paths import everyone, reaching
from conftest import application, assignments, by_id, pushed
from fake_openai import effective_access_organization

import veza_openai as vo

ROLE_READS = ("--role-assignments", "all")
PROJECTS = ["proj_main", "proj_side"]
# The four organization permissions and the three project management permissions (product page).
ORGANIZATION_PERMISSIONS = ["Standard API Requests", "Read Organization", "Modify Billing", "Manage Members"]
PROJECT_MANAGEMENT = ["Read Project", "Manage Project Members", "Manage Project API Keys"]
FIXED_ROLE_PERMISSIONS = {  # the fixed roles' permissions do not change
    "owner": ORGANIZATION_PERMISSIONS,
    "reader": ["Standard API Requests", "Read Organization"],
    "project_owner": ["Standard API Requests", *PROJECT_MANAGEMENT],
    "project_member": ["Standard API Requests", "Read Project"],
    "project_viewer": ["Read Project"],
}


@pytest.fixture
def effective_org(openai_fake):
    openai_fake.org = effective_access_organization()
    return openai_fake.org


def run_with_role_reads(run_connector, veza) -> tuple[dict, str]:
    result = run_connector(*ROLE_READS)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    return payload, result.stderr


def held(payload: dict, identity: str) -> dict[str, object]:
    """role -> "application" or the sorted resource ids, for one identity."""
    return {role: "application" if grant.get("apply_to_application") else sorted(grant.get("resources") or [])
            for role, grant in assignments(payload, identity).items()}


def permission_definitions(payload: dict) -> dict[str, dict]:
    return {p["name"]: p for p in payload["permissions"]}


def spreads(definition: dict) -> bool:
    return definition.get("apply_to_sub_resources") is True and definition.get("resource_types") == ["project"]


def canonicals(definition: dict) -> set[str]:
    return {getattr(kind, "value", kind) for kind in definition["permission_type"]}


# --- keys act with every project role their owner holds -------------------------------------------------

def test_a_key_of_a_service_account_without_a_project_role_holds_the_custom_role_its_group_holds_there(
        run_connector, veza, effective_org):
    """OpenAI's recommended pattern: a service account with project role `none` gets a custom project role
    through a group. Its key and its federation rule act with that role in the project."""
    payload, _ = pushed(run_connector, veza)  # group and project group roles are read whatever the flag says
    assert held(payload, "group_deployers") == {"role-custom-deployer": ["proj_main"]}
    assert held(payload, "key_svc_none") == {"role-custom-deployer": ["proj_main"]}
    assert held(payload, "wifr_svc_none") == {"role-custom-deployer": ["proj_main"]}


def test_a_key_holds_every_project_role_its_owner_holds_there_from_every_source(run_connector, veza,
                                                                                effective_org):
    """The project users list, the project groups the owner is in, the owner's own project role assignments,
    the key record, the implicit ownership of an organization owner, and the owner's custom organization roles
    (direct or through a group) held on the key's project: the key holds them all, on its project only."""
    payload, _ = run_with_role_reads(run_connector, veza)
    assert held(payload, "key_lead") == {"project_owner": ["proj_main"], "role-custom-deployer": ["proj_main"]}
    assert held(payload, "key_dev") == {"project_member": ["proj_main"], "project_viewer": ["proj_main"]}
    assert held(payload, "key_owner") == {"project_owner_via_organization": ["proj_main"]}
    assert held(payload, "key_auditor") == {"project_member": ["proj_main"], "role-org-auditor": ["proj_main"]}
    assert held(payload, "key_finance") == {"project_member": ["proj_side"], "role-org-auditor": ["proj_side"]}
    assert held(payload, "key_svc_none") == {"role-custom-deployer": ["proj_main"]}
    assert held(payload, "wifr_svc_none") == {"role-custom-deployer": ["proj_main"]}


# --- a key record without its owner's role ------------------------------------------------------------

def test_a_key_whose_record_omits_the_owners_role_takes_it_from_the_project_members_list(run_connector, veza,
                                                                                        effective_org):
    """Public fixtures trim a key's owner to `{"id": ...}` (or a nested user without `role`); the project's user
    list still gives the role, so the key keeps it and no warning says the owner has none."""
    payload, stderr = pushed(run_connector, veza)
    assert assignments(payload, "key_dev")["project_member"]["resources"] == ["proj_main"]  # owner {"id": ...}
    assert assignments(payload, "key_lead")["project_owner"]["resources"] == ["proj_main"]  # user without role
    assert "key_dev" in by_id(application(payload)["local_users"])["user-dev"]["access_creds"]
    assert [line for line in stderr.splitlines() if "no project role" in line] == []


# --- admin keys reach every project -------------------------------------------------------------------

def test_admin_keys_hold_project_management_on_every_project_through_permissions_that_spread(run_connector, veza):
    """An admin key lists, adds and removes members, service accounts and keys in every project: its
    application role carries the three project management permissions, defined to apply to every project."""
    payload, _ = pushed(run_connector, veza)  # the demo organization
    assert assignments(payload, "key_admin1")["admin_api_key"]["apply_to_application"] is True
    role = by_id(application(payload)["local_roles"])["admin_api_key"]
    assert sorted(role["permissions"]) == sorted(["Read Organization", "Modify Billing", "Manage Members",
                                                  *PROJECT_MANAGEMENT])
    definitions = permission_definitions(payload)
    assert {name: spreads(definitions[name]) for name in ORGANIZATION_PERMISSIONS + PROJECT_MANAGEMENT} == {
        **dict.fromkeys(ORGANIZATION_PERMISSIONS, False), **dict.fromkeys(PROJECT_MANAGEMENT, True)}
    assert not any(definitions[name].get("apply_to_sub_resources") for name in ORGANIZATION_PERMISSIONS)
    for project in ("proj_alpha", "proj_beta"):
        assert reaching(payload, project)["admin keys"] == {"key_admin1"}, project


# --- custom organization roles apply in every project --------------------------------------------------

def test_a_custom_organization_role_reaches_every_project_and_the_fixed_org_roles_do_not(run_connector, veza,
                                                                                         effective_org):
    """OpenAI: organization roles grant access across all projects. A custom organization role, held by a user
    or a group, stays one assignment on the application whose permissions apply to every project; Owner and
    Reader do not spread (a reader sees only its own projects; owners hold the implicit ownership instead)."""
    payload, _ = run_with_role_reads(run_connector, veza)
    assert held(payload, "user-auditor")["role-org-auditor"] == "application"  # user roles, assigned directly
    assert held(payload, "group_fin")["role-org-auditor"] == "application"  # group roles
    definitions = permission_definitions(payload)
    roles = by_id(application(payload)["local_roles"])
    custom_strings = roles["role-org-auditor"]["permissions"] + roles["role-custom-deployer"]["permissions"]
    assert len(custom_strings) == 9
    assert {name: spreads(definitions[name]) for name in custom_strings} == dict.fromkeys(custom_strings, True)
    assert {name: spreads(definitions[name]) for name in ORGANIZATION_PERMISSIONS} == dict.fromkeys(
        ORGANIZATION_PERMISSIONS, False)  # Owner and Reader do not spread
    for project in PROJECTS:
        assert reaching(payload, project)["organization roles"] == {"user-auditor", "group_fin", "user-finance"}


# --- owners through the Roles API or a group own every project -----------------------------------------

def test_holders_of_the_predefined_owner_role_own_every_project_also_through_a_group(run_connector, veza,
                                                                                     effective_org):
    """Whoever holds the organization's owner role owns every project, also when the Roles API assigns it (to
    a group, or to a user the user list calls `reader`)."""
    payload, _ = run_with_role_reads(run_connector, veza)
    group = held(payload, "group_owners")
    assert group == {"owner": "application", "project_owner_via_organization": PROJECTS}
    direct = held(payload, "user-rolesowner")  # `reader` in the user list, the owner role in its user roles
    assert direct["owner"] == "application" and direct["project_owner_via_organization"] == PROJECTS
    for project in PROJECTS:
        assert {"user-owner", "user-rolesowner", "group_owners", "user-grpowner"} <= reaching(payload, project)[
            "owners"], project


# --- predefined roles are the fixed roles --------------------------------------------------------------

def test_predefined_roles_land_on_the_fixed_roles_which_show_their_permission_strings(run_connector, veza,
                                                                                      effective_org):
    """By flag or by id pattern (both id formats), a predefined role is one of the fixed roles: no `role-api-...`
    role is pushed, no two roles differ only in case, and the fixed role shows the predefined role's permission
    strings (sorted; the union where several predefined ids are one fixed role) as `openai_permissions`."""
    payload, _ = run_with_role_reads(run_connector, veza)
    roles = by_id(application(payload)["local_roles"])
    assert [rid for rid in roles if rid.casefold().startswith("role-api-")] == []
    names = [role["name"].casefold() for role in roles.values()]
    assert sorted(name for name in set(names) if names.count(name) > 1) == []
    shown = {rid: (roles[rid].get("custom_properties") or {}).get("openai_permissions")
             for rid in FIXED_ROLE_PERMISSIONS}
    assert shown == {
        "owner": ["api.organization.read", "api.organization.update"],
        "reader": ["api.organization.read"],  # no predefined_role flag: known by its id
        "project_owner": ["api.model.request", "api.project.admin", "api.project.read", "api.project.write"],
        "project_member": ["api.files.read", "api.model.request", "api.project.read"],  # both id formats
        "project_viewer": ["api.project.read"],
    }
    assert {rid: roles[rid]["permissions"] for rid in FIXED_ROLE_PERMISSIONS} == FIXED_ROLE_PERMISSIONS
    definitions = payload["custom_property_definition"]["applications"][0]
    assert definitions["local_role_properties"]["openai_permissions"] == "STRING_LIST"
    assert {"role-org-auditor", "role-custom-deployer"} <= set(roles)  # custom roles keep their ids
    assert held(payload, "group_owners")["owner"] == "application"
    assert held(payload, "user-rolesowner")["owner"] == "application"
    assert held(payload, "group_viewers") == {"project_viewer": ["proj_main"]}
    assert held(payload, "user-dev")["project_member"] == ["proj_main"]


def test_the_demo_pushes_one_owner_role_not_a_second_one_named_like_it(run_connector, veza):
    """The demo's Roles API lists the predefined organization owner role as `owner`: one role `Owner` is pushed."""
    payload, _ = pushed(run_connector, veza)
    roles = by_id(application(payload)["local_roles"])
    assert [role["name"] for role in roles.values() if role["name"].casefold() == "owner"] == ["Owner"]
    assert not [rid for rid in roles if rid.casefold().startswith("role-api-")]
    assert roles["owner"]["custom_properties"]["openai_permissions"] == ["api.organization.read",
                                                                         "api.organization.update"]


NOT_A_BOOLEAN = {"missing": ..., "null": None, "the string false": "false"}


@pytest.mark.parametrize("flag", NOT_A_BOOLEAN.values(), ids=NOT_A_BOOLEAN.keys())
def test_a_role_without_a_true_predefined_flag_or_pattern_is_custom_and_auto_reads_who_holds_it(
        run_connector, veza, openai_fake, effective_org, flag):
    """`auto` reads per-user roles when any listed role is custom; a role is custom unless `predefined_role` is
    true or its id has the predefined pattern, so a missing, null or "false" flag never skips those reads (and a
    user's direct custom role never vanishes)."""
    org = effective_org
    records = [*org.roles, *(r for rs in org.project_roles.values() for r in rs),
               *(r for rs in org.group_roles.values() for r in rs), *(r for rs in org.user_roles.values() for r in rs),
               *(r for rs in org.project_group_roles.values() for r in rs),
               *(r for rs in org.project_user_roles.values() for r in rs)]
    custom = [r for r in records if not r["id"].startswith("role-api-")]
    assert {r["id"] for r in custom} == {"role-org-auditor", "role-custom-deployer"}
    for record in custom:
        record.pop("predefined_role")
        if flag is not ...:
            record["predefined_role"] = flag
    result = run_connector("--role-assignments", "auto")
    assert result.returncode == 0, result.output
    assert "per-user role assignments skipped: no custom role exists" not in result.stderr
    assert openai_fake.calls(r"^/organization/users/[^/]+/roles$") == len(org.users)
    assert held(veza.payloads[0], "user-auditor")["role-org-auditor"] == "application"


# --- data permissions are data -------------------------------------------------------------------------

EXPECTED_CANONICALS = {
    "api.files.read": {"DataRead"},
    "api.responses.read": {"DataRead"},
    "api.fine_tuning.jobs.read": {"DataRead"},
    "api.files.write": {"DataWrite"},
    "api.responses.write": {"DataWrite"},
    "api.all.read": {"DataRead", "MetadataRead"},
    "api.groups.read": {"MetadataRead"},
    "api.organization.projects.api_keys.write": {"MetadataWrite"},
    "api.model.request": {"DataRead"},
    "api.widgets.read": {"DataRead", "MetadataRead"},  # an area in neither list: both, never understated
}


def test_permission_strings_map_by_area_and_verb():
    """Content areas map to Data canonicals, management areas to Metadata ones; `api.all.read` and unknown
    areas to both (the area is the second dotted segment, the verb the last)."""
    role = {"object": "role", "id": "role-everything", "name": "Everything", "permissions": list(EXPECTED_CANONICALS),
            "predefined_role": False, "resource_type": "api.organization", "description": None}
    result = vo.build_application(vo.Snapshot(org_id="org-areas", users=[
        {"object": "organization.user", "id": "u1", "name": "U", "email": "u@x.io", "role": "reader", "added_at": 1}],
        roles=[role]))
    definitions = {p["name"]: p for p in result.application.get_payload()["permissions"]}
    assert {name: canonicals(definitions[name]) for name in EXPECTED_CANONICALS} == EXPECTED_CANONICALS


def test_data_permissions_of_roles_api_roles_are_pushed_as_data(run_connector, veza, effective_org):
    """End to end: the custom roles' file, response, fine-tuning and model strings arrive as Data permissions."""
    payload, _ = pushed(run_connector, veza)
    definitions = permission_definitions(payload)
    seen = {name: canonicals(definitions[name]) for name in EXPECTED_CANONICALS if name in definitions}
    assert seen == {name: EXPECTED_CANONICALS[name] for name in (
        "api.files.read", "api.fine_tuning.jobs.read", "api.files.write", "api.responses.write", "api.all.read",
        "api.groups.read", "api.organization.projects.api_keys.write", "api.model.request", "api.widgets.read")}


# --- every path to one project ----------------------------------------------------------------------------

def test_every_principal_and_key_that_reaches_a_project_by_any_path(run_connector, veza, effective_org):
    """From what Veza received: for each project, who reaches it along each path, and nobody else."""
    payload, _ = run_with_role_reads(run_connector, veza)
    owners = {"user-owner", "user-rolesowner", "group_owners", "user-grpowner"}
    organization_roles = {"user-auditor", "group_fin", "user-finance"}
    main = reaching(payload, "proj_main")
    assert main == {
        "direct": {"user-lead", "user-dev", "user-auditor"},
        "groups": {"group_deployers", "group_viewers", "group_owners"},
        "through groups": {"svc_none", "user-dev", "user-plain", "user-grpowner"},
        "owners": owners,
        "organization roles": organization_roles,
        "admin keys": {"key_admin"},
        "project keys": {"key_svc_none", "key_dev", "key_lead", "key_auditor", "key_owner"},
        "federation rules": {"wifr_svc_none"},
    }
    side = reaching(payload, "proj_side")
    assert side == {
        "direct": {"user-finance"}, "groups": {"group_owners"}, "through groups": {"user-grpowner"},
        "owners": owners, "organization roles": organization_roles, "admin keys": {"key_admin"},
        "project keys": {"key_finance"}, "federation rules": set(),
    }
    assert "user-outsider" not in everyone(main) | everyone(side)
    assert "key_finance" not in everyone(main) and "key_lead" not in everyone(side)
