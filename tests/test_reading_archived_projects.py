"""Reading: OpenAI documents a 400 "when project is archived" on a project's users and service accounts lists.

For an archived project that answer is an empty list, never a failed run; any other 400 still fails the run.
"""

from __future__ import annotations

from conftest import NO_ROLE_READS, application, assignments, by_id
from fake_openai import Fault

ARCHIVED_ANSWER = {"error": {"message": "Project is archived", "type": "invalid_request_error", "param": None,
                             "code": None}}


def test_a_400_on_an_archived_projects_member_lists_is_an_empty_list(run_connector, openai_fake, veza):
    openai_fake.org.service_accounts["proj_beta"] = [
        {"object": "organization.project.service_account", "id": "svc_beta", "name": "beta-bot", "role": "member",
         "created_at": 1_700_000_000}]
    openai_fake.faults += [Fault(r"^/organization/projects/proj_beta/(users|service_accounts)$", status=400,
                                 body={"error": {"message": "Bad request", "type": "invalid_request_error"}},
                                 times=None)]
    result = run_connector(*NO_ROLE_READS)  # proj_beta is archived in the demo organization's project list
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    assert "proj_beta" in by_id(application(payload)["resources"])
    assert "project_viewer" not in assignments(payload, "user-0012")  # its only project was proj_beta
    assert "svc_beta" not in by_id(application(payload)["local_users"])
    assert "HTTP 400 for archived project proj_beta; read as an empty list" in result.stderr


def test_a_400_that_says_archived_is_an_empty_list_even_when_the_project_list_said_active(
        run_connector, openai_fake, veza):
    openai_fake.faults += [Fault(r"^/organization/projects/proj_alpha/users$", status=400, body=ARCHIVED_ANSWER,
                                 times=None)]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert "project_member" not in assignments(veza.payloads[0], "user-0011")


def test_any_other_400_on_a_project_list_still_fails_the_run(run_connector, openai_fake, veza):
    openai_fake.faults += [Fault(r"^/organization/projects/proj_alpha/users$", status=400,
                                 body={"error": {"message": "Bad request", "type": "invalid_request_error"}},
                                 times=None)]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1
    assert veza.payloads == []
