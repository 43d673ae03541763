"""One odd record never stops every run: it is skipped with a warning, and a bad required page is a clear failure."""

from __future__ import annotations

import time

import pytest
from conftest import NO_ROLE_READS, application, assignments, by_id, summary_line
from fake_openai import Fault, Organization, _role_record

import veza_openai

DAY = 86_400


def login(event_id: str, user_id: str, at) -> dict:
    return {"id": event_id, "type": "login.succeeded", "effective_at": at,
            "actor": {"type": "session", "session": {"user": {"id": user_id}}}}


def test_a_nan_time_on_the_last_event_before_the_audit_log_cut_does_not_stop_the_run(run_connector, veza,
                                                                                      openai_fake, monkeypatch):
    monkeypatch.setattr(veza_openai, "MAX_AUDIT_LOG_PAGES", 1)
    five_days_ago = int(time.time()) - 5 * DAY
    page = {"object": "list", "data": [login("e1", "user-0010", five_days_ago), login("e2", "user-0011", float("nan"))],
            "has_more": True, "first_id": "e1", "last_id": "e2"}  # the fake sends NaN as JSON's NaN literal
    openai_fake.faults.append(Fault(r"^/organization/audit_logs$", status=200, body=page, times=None))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "unexpected error" not in result.stderr
    app = application(veza.payloads[0])
    assert app["custom_properties"]["activity_window_days"] == 5  # from the last event with a usable time
    users = by_id(app["local_users"])
    assert "last_login_at" in users["user-0010"] and "last_login_at" not in users["user-0011"]
    assert "audit log: stopped after 1 pages (2 events)" in result.stderr


def test_a_lone_surrogate_in_an_id_skips_that_record_with_a_warning(run_connector, veza, openai_fake):
    odd_project = {**openai_fake.org.projects[0], "id": "proj_\ud800"}
    odd_user = {**openai_fake.org.users[3], "id": "user-\udfff"}
    openai_fake.org.projects.append(odd_project)
    openai_fake.org.users.append(odd_user)
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "unexpected error" not in result.stderr
    assert openai_fake.calls(r"proj_\\ud800|proj_%ED") == 0  # nothing was asked for it
    app = application(veza.payloads[0])
    assert {r["id"] for r in app["resources"] if r["resource_type"] == "project"} == {"proj_alpha", "proj_beta"}
    assert len(app["local_users"]) == len(by_id(app["local_users"]))
    assert not any(not u["id"].isascii() for u in app["local_users"])
    assert r"WARNING project record has no usable id ('proj_\ud800'); skipped" in result.stderr
    assert r"WARNING organization user record has no usable id ('user-\udfff'); skipped" in result.stderr


def test_a_required_familys_bad_page_fails_with_a_clear_message(run_connector, veza, openai_fake):
    openai_fake.faults.append(Fault(r"^/organization/users$", kind="data_not_list"))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert "ERROR /organization/users: 'data' is not a list of objects" in result.stderr
    assert "unexpected error" not in result.stderr and veza.pushes == []
    assert "outcome=failed" in summary_line(result.stderr)


def dot_organization() -> Organization:
    """A small organization (one page of each list) with a custom role the Roles API lists."""
    org = Organization(org_id="org-dots0001")
    org.users = [{"object": "organization.user", "id": uid, "name": f"User {uid}", "email": f"u{n}@example.com",
                  "role": role, "added_at": 1} for n, (uid, role) in enumerate([("user-owner", "owner"),
                                                                                 ("user-plain", "reader")])]
    owner = _role_record("role-api-organization-owner__api-organization__org-dots0001", "owner",
                         ["api.organization.read", "api.organization.update"], True, "api.organization")
    custom = _role_record("role-custom-billing", "Billing", ["api.organization.billing.read"], False,
                          "api.organization")
    org.roles = [owner, custom]
    org.groups = [{"id": "group-plain", "name": "Plain", "created_at": 1}]
    org.group_users = {"group-plain": [{"id": "user-plain", "name": "User user-plain", "email": "u1@example.com"}]}
    return org


def skipped_warnings(stderr: str, entity_id: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "WARNING" in line and f"'{entity_id}'" in line and "skipped" in line]


@pytest.mark.parametrize("user_id", ["..", "."])
def test_a_user_whose_id_is_a_dot_segment_is_kept_and_never_reads_another_endpoint(run_connector, veza, openai_fake,
                                                                                  user_id):
    """`..` in /organization/users/{id}/roles would read /organization/roles (every role as the user's own):
    the user is kept with its organization role, its per-user reads are skipped with a warning naming it."""
    openai_fake.org = dot_organization()
    openai_fake.org.users.append({"object": "organization.user", "id": user_id, "name": "Dots",
                                  "email": "dots@example.com", "role": "reader", "added_at": 1})
    result = run_connector("--role-assignments", "all")
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/roles$") == 1  # the roles list itself, once
    assert openai_fake.calls(r"^/organization/users$") == 1  # the user list itself, once
    assert openai_fake.calls(r"^/organization/users/roles$") == 0  # `.`: /organization/users/./roles
    assert openai_fake.calls(r"^/organization/?$") == 0  # `..`: /organization/users/.. (its own object)
    [payload] = veza.payloads
    assert user_id in by_id(application(payload)["local_users"])
    assert set(assignments(payload, user_id)) == {"reader"}  # its org role only: no Owner, no custom role
    assert skipped_warnings(result.stderr, user_id), result.stderr


def test_a_group_whose_id_is_a_dot_segment_is_kept_without_the_organizations_users_as_members(
        run_connector, veza, openai_fake):
    """`..` in /organization/groups/{id}/users would read /organization/users: every user a member. The group
    is kept, its reads are skipped with a warning naming it."""
    openai_fake.org = dot_organization()
    openai_fake.org.groups.append({"id": "..", "name": "Dots", "created_at": 1})
    result = run_connector("--role-assignments", "all")
    assert result.returncode == 0, result.output
    assert openai_fake.calls(r"^/organization/users$") == 1
    assert openai_fake.calls(r"^/organization/roles$") == 1
    [payload] = veza.payloads
    app = application(payload)
    assert ".." in by_id(app["local_groups"])
    assert not [user["id"] for user in app["local_users"] if ".." in (user.get("groups") or [])]
    assert assignments(payload, "..") == {}  # no role from /organization/roles either
    assert skipped_warnings(result.stderr, ".."), result.stderr
