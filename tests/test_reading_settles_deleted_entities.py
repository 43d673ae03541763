"""Only an entity's own 404 says it was deleted: anything else on its object leaves the question open."""

from __future__ import annotations

import re

import pytest
from conftest import NO_ROLE_READS, application, by_id
from fake_openai import Fault


def summary_line(stderr: str) -> str:
    return stderr.splitlines()[-1]


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
    assert re.search(r"WARNING left out project users \(HTTP 404 on /organization/projects/proj_alpha/users, and "
                     r"whether project proj_alpha still exists is unknown \(HTTP 403 on "
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
    assert "left out group users (HTTP 404 on /organization/groups/group_eng/users, and whether group group_eng " \
           "still exists is unknown (HTTP 403 on /organization/groups/group_eng))" in result.stderr
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
