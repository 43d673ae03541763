"""Refused (403) or missing (404) families: what is left out whole with a warning and what fails the run."""

from __future__ import annotations

import re

import pytest
from conftest import NO_ROLE_READS, application, assignments, by_id, creds_of, pushed, resources_of, users_of
from fake_limits import AlwaysThrottled
from fake_openai import (
    Fault,
)

REFUSALS = {  # fake family: (status, the warning's label, its grant)
    "audit logs": (403, "audit logs", "Audit logs: Read"),
    "audit logs 404": (404, "audit logs", "Audit logs: Read"),
    "workload identity providers": (403, "workload identity providers", "Workload identity: Read"),
    "workload identity providers 404": (404, "workload identity providers", "Workload identity: Read"),
    "federation rules": (403, "federation rules", "Workload identity: Read"),
    "federation rules 404": (404, "federation rules", "Workload identity: Read"),
    "certificates": (403, "certificates", "Certificates: Read"),
    "project certificates": (403, "project certificates", "Certificates: Read"),
    "project certificates 404": (404, "project certificates", "Certificates: Read"),
    "hosted tool permissions": (403, "hosted tool permissions", "Projects: Read"),
}


def test_a_refused_openai_key_says_an_admin_key_is_needed(run_connector, veza):
    result = run_connector(env={"OPENAI_API_KEY": "sk-not-an-admin-key-0000"})
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if "Admin API key" in line]
    assert "sk-admin-" in line and "org-demo0001" in line and "401" in line
    assert "Traceback" not in result.output
    assert veza.pushes == []


def test_is_personal_is_left_unset_when_the_organization_object_is_refused(run_connector, veza, openai_fake):
    openai_fake.org.legacy_organization = None
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    assert application(veza.payloads[0])["custom_properties"] == {"organization_id": "org-demo0001",
                                                                  "activity_window_days": 90}
    assert "is_personal left unset" in result.stderr


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


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_access_review_family_is_left_out_whole_and_the_run_pushes(run_connector, veza, openai_fake,
                                                                            case):
    status, label, grant = REFUSALS[case]
    openai_fake.refused[case.removesuffix(" 404")] = status
    payload, stderr = pushed(run_connector, veza)
    assert len(re.findall(rf"WARNING left out {label} \(HTTP {status} on .*\): grant the admin key '{grant}'",
                          stderr)) == 1
    app, creds, resources = application(payload), creds_of(payload), resources_of(payload)
    rules = {cred_id for cred_id in creds if cred_id.startswith("wifr_")}
    if label == "audit logs":
        assert "activity_window_days" not in app["custom_properties"]
        assert not any("last_login_at" in user for user in users_of(payload).values())
        assert "scopes" not in creds["key_user1"]["custom_properties"]
    else:
        assert "last_login_at" in users_of(payload)["user-0010"]
    if label in ("workload identity providers", "federation rules"):
        assert rules == set()
        if label == "workload identity providers":
            assert openai_fake.calls("/federation_rules$") == 0
    else:
        assert rules == {"wifr_deploy_main", "wifr_unknown_sa", "wifr_legacy_deploy"}
    assert ("cert_org_root" in resources) == (label != "certificates")
    assert ("sub_resources" in resources["proj_alpha"]) == (label != "project certificates")
    assert ("mcp_enabled" in resources["proj_alpha"]["custom_properties"]) == (label != "hosted tool permissions")


def test_a_throttled_organization_object_leaves_is_personal_unset_and_never_fails_the_run(
        openai_fake, run_connector, veza):
    """README: is_personal is 'asked once (retried on 5xx); when refused it is left unset ... (never guessed,
    never fatal)', and 'a transient fault on the organization object ... never a failed run'. A 429 on
    /organizations/{id} that outlasts --max-throttle-wait is such a fault: is_personal stays unset and the
    rest is pushed."""
    openai_fake.limiter = AlwaysThrottled({"organization"})
    result = run_connector(*NO_ROLE_READS, "--max-throttle-wait", "0.3", env={"VEZA_OPENAI_TIME_SCALE": "0.05"},
                           timeout=30)
    assert result.returncode == 0, result.output
    assert "is_personal" not in application(veza.payloads[0])["custom_properties"]
