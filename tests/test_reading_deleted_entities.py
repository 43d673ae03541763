"""Entities deleted while the run reads them: a 404 is settled by the entity's own object, never blamed on
permissions."""

from __future__ import annotations

import re
import time

import pytest
from conftest import NO_ROLE_READS, application, assignments, by_id, summary_line
from fake_openai import Fault


def project_ids(payload: dict) -> set[str]:
    return {r["id"] for r in application(payload)["resources"] if r["resource_type"] == "project"}


def keep_only_project_alpha(org) -> None:
    org.projects[:] = [p for p in org.projects if p["id"] == "proj_alpha"]
    for grants in (org.project_users, org.service_accounts, org.api_keys, org.project_roles, org.project_groups,
                   org.project_certificates, org.hosted_tool_permissions, org.model_permissions):
        for pid in [pid for pid in grants if pid != "proj_alpha"]:
            del grants[pid]
    for invite in org.invites:
        if isinstance(invite.get("projects"), list):
            invite["projects"] = [g for g in invite["projects"] if g.get("id") == "proj_alpha"]


def remove_where(items: list[dict], **match: str) -> None:
    items[:] = [item for item in items if any(item.get(k) != v for k, v in match.items())]


def delete_group_eng(fake) -> None:
    remove_where(fake.org.groups, id="group_eng")


def delete_project_alpha(fake) -> None:
    keys = {key["id"] for key in fake.org.api_keys.get("proj_alpha", [])}
    remove_where(fake.org.projects, id="proj_alpha")
    fake.org.admin_api_keys[:] = [k for k in fake.org.admin_api_keys if k["id"] not in keys]  # they go with it


def delete_user_0013(fake) -> None:
    remove_where(fake.org.users, id="user-0013")


@pytest.mark.parametrize("status", [403, 401])
def test_a_project_whose_list_404s_but_whose_object_is_refused_is_kept_never_called_deleted(
        run_connector, veza, openai_fake, status):
    openai_fake.faults += [Fault(r"^/organization/projects/proj_alpha/users$", status=404, times=None),
                           Fault(r"^/organization/projects/proj_alpha$", status=status, times=None)]
    result = run_connector(*NO_ROLE_READS)
    assert "deleted during the run" not in result.stderr
    if status == 401:  # the key itself was refused: the run fails, nothing is pushed
        assert result.returncode == 1 and veza.pushes == []
        return
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    assert {r["id"] for r in app["resources"] if r["resource_type"] == "project"} == {"proj_alpha", "proj_beta"}
    users = by_id(app["local_users"])
    assert "svc_deploy" in users  # its service accounts and keys stay
    assert "key_svc1" in by_id(app["local_access_creds"])
    assert re.search(r"WARNING left out project users \(HTTP 404 on /organization/projects/proj_alpha/users; project "
                     r"proj_alpha may still exist \(HTTP 403 on "
                     r"/organization/projects/proj_alpha\)\): grant the admin key 'Projects: Read'", result.stderr), \
        result.stderr


def test_a_group_whose_members_404_but_whose_object_is_refused_is_kept_never_called_deleted(
        run_connector, veza, openai_fake):
    openai_fake.faults += [Fault(r"^/organization/groups/group_eng/users$", status=404, times=None),
                           Fault(r"^/organization/groups/group_eng$", status=403, times=None)]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "deleted during the run" not in result.stderr
    app = application(veza.payloads[0])
    assert set(by_id(app["local_groups"])) == {"group_eng", "group_fin"}
    assert "left out group users (HTTP 404 on /organization/groups/group_eng/users; group group_eng may still " \
           "exist (HTTP 403 on /organization/groups/group_eng))" in result.stderr
    assert "outcome=pushed" in summary_line(result.stderr)


def test_a_server_error_on_the_object_read_fails_the_run_and_never_drops_the_project(run_connector, veza,
                                                                                     openai_fake):
    openai_fake.faults += [Fault(r"^/organization/projects/proj_alpha/users$", status=404, times=None),
                           Fault(r"^/organization/projects/proj_alpha$", status=503, times=None)]
    result = run_connector(*NO_ROLE_READS, "--max-retries", "1")
    assert result.returncode == 1, result.output
    assert veza.pushes == []
    assert "ERROR /organization/projects/proj_alpha: HTTP 503, gave up after 1 retries" in result.stderr
    assert "deleted during the run" not in result.stderr and "unexpected error" not in result.stderr


def test_a_project_whose_own_object_answers_404_is_still_dropped_as_deleted(run_connector, veza, openai_fake):
    openai_fake.faults += [Fault(r"^/organization/projects/proj_alpha/users$", status=404, times=None),
                           Fault(r"^/organization/projects/proj_alpha$", status=404, times=None)]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    assert {r["id"] for r in app["resources"] if r["resource_type"] == "project"} == {"proj_beta"}
    assert "project proj_alpha was deleted during the run (HTTP 404 on /organization/projects/proj_alpha/users)" \
        in result.stderr


def test_the_only_project_is_kept_when_one_of_its_families_answers_404_while_its_other_reads_succeed(
        run_connector, veza, openai_fake):
    """README: 'A 404 on every entity of a family (while other reads show them alive) is the family rule'.

    With one project, a family the organization does not have (404 on every project, here the project
    certificates) leaves that family out and keeps the project: its members, service accounts and keys were
    all read, concurrently, with 200s."""
    keep_only_project_alpha(openai_fake.org)
    openai_fake.refused["project certificates"] = 404
    # 64 workers: every read of the project goes out in one dispatch, so the outcome does not depend on timing.
    # (With the default 8 it does: a read of the project sent after the 404 arrived saves it, so the same
    # organization can give two different payloads.)
    result = run_connector(*NO_ROLE_READS, "--max-workers", "64")
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert project_ids(payload) == {"proj_alpha"}, result.stderr
    assert "svc_deploy" in by_id(application(payload)["local_users"])
    assert "project proj_alpha was deleted during the run" not in result.stderr


def test_two_projects_deleted_mid_run_are_dropped_not_kept_empty_and_blamed_on_permissions(
        run_connector, veza, openai_fake):
    """Both projects deleted after the project list was read, so every per-project read 404s: each is 'left out,
    with a warning that it was deleted during the run'. The family rule applies only 'while other reads show
    them alive'; applying it here would push two deleted projects as live ones with no members and tell the
    operator to grant 'Projects: Read'."""
    def delete_every_project(fake) -> None:
        fake.org.projects[:] = []
        fake.org.admin_api_keys[:] = [k for k in fake.org.admin_api_keys if k["id"] == "key_admin1"]

    # The hook runs on the first per-project read, after the project list was answered.
    openai_fake.faults.append(Fault(r"^/organization/projects/[^/]+/", kind="hook", body=delete_every_project))
    result = run_connector(*NO_ROLE_READS, "--max-workers", "1")
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert project_ids(payload) == set(), result.stderr
    assert "grant the admin key 'Projects: Read'" not in result.stderr


def test_a_group_deleted_mid_run_is_not_brought_back_by_its_project_group_link(run_connector, veza, openai_fake):
    """The group's project link and project role grant were read before it was deleted (404 on its members):
    the link must not re-create the deleted group ('left out with its memberships and role grants')."""
    def delete_group_eng(fake) -> None:
        fake.org.groups[:] = [g for g in fake.org.groups if g["id"] != "group_eng"]

    linked = [(pid, link["group_id"]) for pid, links in openai_fake.org.project_groups.items() for link in links]
    assert ("proj_alpha", "group_eng") in linked or any(g == "group_eng" for _, g in linked), linked
    openai_fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="hook", body=delete_group_eng))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert "group_eng" not in by_id(application(payload).get("local_groups", []))
    assert "group_eng" not in {entry["identity"] for entry in payload["identity_to_permissions"]}
    assert "names group group_eng which is not in the group list" not in result.stderr


def test_a_group_deleted_mid_run_drops_only_that_group_and_its_memberships(run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="hook", body=delete_group_eng))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    app = application(payload)
    assert set(by_id(app.get("local_groups", []))) == {"group_fin"}
    users = by_id(app["local_users"])
    assert users["user-0012"]["groups"] == ["group_fin"]  # the other group's memberships stay
    assert not any("group_eng" in u.get("groups", []) for u in app["local_users"])
    assert "user-scim-only" not in users  # known only as a member of the deleted group
    assert "group_eng" not in {entry["identity"] for entry in payload["identity_to_permissions"]}
    assert "group group_eng was deleted during the run (HTTP 404 on /organization/groups/group_eng/" \
        in result.stderr
    assert "Groups: Read" not in result.stderr and "left out group" not in result.stderr
    assert "outcome=pushed" in summary_line(result.stderr)


def test_a_project_deleted_mid_run_drops_only_that_project_with_its_members_accounts_and_keys(
        run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/projects/proj_alpha/users$", kind="hook",
                                    body=delete_project_alpha))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    app = application(payload)
    assert {r["id"] for r in app["resources"] if r["resource_type"] == "project"} == {"proj_beta"}
    users = by_id(app["local_users"])
    for gone in ("svc_deploy", "svc_idle", "user-ghost"):
        assert gone not in users
    creds = set(by_id(app["local_access_creds"]))
    assert "key_admin1" in creds and not creds & {"key_svc1", "key_gone"}
    assert assignments(payload, "user-0000")["project_owner_via_organization"]["resources"] == ["proj_beta"]
    assert assignments(payload, "user-0012")["project_viewer"]["resources"] == ["proj_beta"]  # the other stays
    assert not any("proj_alpha" in a.get("resources", []) for a in assignments(payload, "user-0010").values())
    assert "project proj_alpha was deleted during the run (HTTP 404 on /organization/projects/proj_alpha/" \
        in result.stderr
    assert "Projects: Read" not in result.stderr and "API keys: Read" not in result.stderr


def test_a_project_key_of_a_project_deleted_mid_run_never_becomes_an_admin_key(run_connector, veza, openai_fake):
    # The admin key list (which also returns project keys) was read before the project went: it keeps key_user1.
    openai_fake.faults.append(Fault(r"^/organization/projects/proj_alpha/users$", kind="hook",
                                    body=lambda fake: remove_where(fake.org.projects, id="proj_alpha")))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert "admin_api_key" not in assignments(payload, "key_user1")
    assert "key_user1" not in by_id(application(payload)["local_access_creds"])


def test_a_user_deleted_mid_run_drops_only_that_user_and_its_role_assignments(run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/users/user-0013/roles$", kind="hook", body=delete_user_0013))
    result = run_connector("--role-assignments", "all")
    assert result.returncode == 0, result.output
    [payload] = veza.payloads
    users = by_id(application(payload)["local_users"])
    assert "user-0013" not in users and "user-0014" in users
    assert assignments(payload, "user-0013") == {}
    assert "role-custom-billing" in assignments(payload, "group_fin")  # every other grant stays
    assert "role-custom-proj-deployer" in assignments(payload, "user-0011")
    assert "user user-0013 was deleted during the run (HTTP 404 on /organization/users/user-0013/roles)" \
        in result.stderr
    assert "Roles: Read" not in result.stderr


@pytest.mark.parametrize("status", [404, 403])
def test_a_refusal_on_every_groups_members_still_leaves_the_family_out_naming_the_grant(
        run_connector, veza, openai_fake, status):
    openai_fake.refused["group users"] = status
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    assert set(by_id(app["local_groups"])) == {"group_eng", "group_fin"}
    assert not any(u.get("groups") for u in app["local_users"])
    assert re.search(rf"WARNING left out group users \(HTTP {status} .*\): grant the admin key 'Groups: Read'",
                     result.stderr), result.stderr
    assert "deleted during the run" not in result.stderr


def test_the_only_group_deleted_mid_run_is_dropped_not_blamed_on_permissions(run_connector, veza, openai_fake):
    remove_where(openai_fake.org.groups, id="group_fin")

    def delete_after_its_roles_were_read(fake) -> None:
        time.sleep(0.3)  # the concurrent /organization/groups/group_eng/roles read answers 200 meanwhile
        delete_group_eng(fake)

    openai_fake.faults.append(Fault(r"^/organization/groups/group_eng/users$", kind="hook",
                                    body=delete_after_its_roles_were_read))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/groups/group_eng/roles$") == 1
    assert "Groups: Read" not in result.stderr
    assert "group group_eng was deleted during the run" in result.stderr
    assert by_id(application(veza.payloads[0]).get("local_groups", [])) == {}


def test_a_list_every_project_answers_404_for_costs_one_object_read_and_leaves_the_family_out(
        run_connector, veza, openai_fake):
    openai_fake.refused["project certificates"] = 404
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/projects/proj_[a-z]+$") == 1  # one project asked, not each
    assert re.search(r"left out project certificates \(HTTP 404 on /organization/projects/proj_\w+/certificates, "
                     r"while project proj_\w+ exists\): grant the admin key 'Certificates: Read'", result.stderr)
    assert {r["id"] for r in application(veza.payloads[0])["resources"] if r["resource_type"] == "project"} == \
        {"proj_alpha", "proj_beta"}
    assert "was deleted during the run" not in result.stderr
