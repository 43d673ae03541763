"""What operators who run the connector unattended reach for: a ready report, secrets from files, JSON logs."""

from __future__ import annotations

import json
import re

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, application

import veza_openai as vo

# --- the Veza report -------------------------------------------------------------------------------


def test_create_report_makes_the_access_review_report_once(run_connector, veza):
    first = run_connector(*NO_ROLE_READS, "--create-report")
    assert first.returncode == 0, first.output
    assert [r["name"] for r in veza.reports] == ["OpenAI access review"]
    names = [q["name"] for q in vo.REPORT_QUERIES]
    assert veza.report_queries("OpenAI access review") == names
    assert "OpenAI organization owners" in names and "OpenAI pending invites" in names
    assert re.search(r"summary: outcome=pushed .* report=created version=", first.stderr.splitlines()[-1])

    queries_before, requests_before = list(veza.queries), len(veza.requests)
    second = run_connector(*NO_ROLE_READS, env={"VEZA_CREATE_REPORT": "true"})
    assert second.returncode == 0
    assert veza.queries == queries_before and len(veza.reports) == 1  # nothing new
    writes = [(method, path) for method, path in veza.requests[requests_before:]
              if method != "GET" and "assessments" in path]
    assert writes == []
    assert "report=unchanged" in second.stderr.splitlines()[-1]


def test_create_report_restores_a_query_removed_from_the_report(run_connector, veza):
    assert run_connector(*NO_ROLE_READS, "--create-report").returncode == 0
    report = veza.reports[0]
    report["queries"] = report["queries"][1:]
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert "report=updated" in result.stderr.splitlines()[-1]
    assert veza.report_queries("OpenAI access review")[-1] == vo.REPORT_QUERIES[0]["name"]


def test_report_queries_name_the_node_types_and_properties_the_payload_has(run_connector, veza):
    assert run_connector("--create-report").returncode == 0
    payload = veza.payloads[0]
    app = application(payload)
    user_properties = set(payload["custom_property_definition"]["applications"][0]["local_user_properties"])
    roles = {role["name"] for role in app["local_roles"]}
    for query in vo.REPORT_QUERIES:
        for node in query["source_node_types"]["nodes"]:
            assert node["node_type"].startswith("OAA.OpenAI.")
            for spec in node.get("condition_expression", {}).get("specs", []):
                name = spec["property"].removeprefix("customprop_")
                if spec["property"].startswith("customprop_") and node["node_type"] == "OAA.OpenAI.User":
                    assert name in user_properties, name
    assert "Admin API Key" in roles


def test_a_report_veza_refuses_is_an_error_line_but_the_push_stands(run_connector, veza, monkeypatch):
    def refuse(client):
        raise vo.OAAResponseError("InvalidArgument", "bad query", status_code=400)
    monkeypatch.setattr(vo, "create_or_update_report", refuse)
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert result.returncode == 0 and len(veza.pushes) == 1
    assert "Veza report 'OpenAI access review' not created or updated: HTTP 400: InvalidArgument: bad query" in \
        result.stderr
    assert "report=failed" in result.stderr.splitlines()[-1]


# --- secrets from files, and which OpenAI key wins -------------------------------------------------------

def test_keys_are_read_from_mounted_files_with_their_trailing_newline_dropped(run_connector, veza, tmp_path):
    (tmp_path / "openai").write_text(OPENAI_SECRET + "\n")
    (tmp_path / "veza").write_text(VEZA_SECRET + "\r\n")
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY_FILE": str(tmp_path / "openai"),
                                                "VEZA_API_KEY_FILE": str(tmp_path / "veza")},
                           drop=("OPENAI_API_KEY", "VEZA_API_KEY"))
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1
    assert "OpenAI key from OPENAI_API_KEY_FILE (sk-admin-...i-77)" in result.stderr
    assert OPENAI_SECRET not in result.output and VEZA_SECRET not in result.output


@pytest.mark.parametrize(("env", "message"), [
    ({"VEZA_API_KEY_FILE": "{tmp}/veza"}, "VEZA_API_KEY and VEZA_API_KEY_FILE are both set; set only one"),
    ({"OPENAI_API_KEY_FILE": "{tmp}/missing"}, "OPENAI_API_KEY_FILE: cannot read '{tmp}/missing' "
                                               "(No such file or directory)"),
    ({"OPENAI_ADMIN_KEY_FILE": "{tmp}/empty"}, "OPENAI_ADMIN_KEY_FILE: '{tmp}/empty' is empty"),
    ({"OPENAI_ADMIN_KEY_FILE": "{tmp}/two-lines"}, "OPENAI_ADMIN_KEY_FILE contains whitespace, a newline"),
])
def test_a_bad_secret_file_is_a_configuration_error_naming_the_path_never_the_content(run_connector, veza,
                                                                                      openai_fake, tmp_path, env,
                                                                                      message):
    (tmp_path / "veza").write_text(VEZA_SECRET)
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "two-lines").write_text("sk-admin-first-line-1234\nsk-admin-second-line-5678\n")
    drop = tuple(name.removesuffix("_FILE") for name in env if name.startswith("OPENAI_API_KEY"))
    result = run_connector(env={k: v.format(tmp=tmp_path) for k, v in env.items()}, drop=drop)
    assert result.returncode == 2, result.output
    assert f"configuration error: {message.format(tmp=tmp_path)}" in result.stderr
    assert "first-line" not in result.output and "second-line" not in result.output
    assert openai_fake.calls() == 0 and veza.requests == []


def test_the_admin_key_wins_over_a_project_key_in_openai_api_key(run_connector, veza):
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY": "sk-proj-FAKE-for-other-tools-9",
                                                "OPENAI_ADMIN_KEY": OPENAI_SECRET})
    assert result.returncode == 0, result.output
    assert "OpenAI key from OPENAI_ADMIN_KEY (sk-admin-...i-77)" in result.stderr
    assert "for-other-tools" not in result.output


# --- logs, version, user agent ---------------------------------------------------------------------

def test_json_logs_parse_line_by_line_even_on_a_faulty_run(run_connector, openai_fake, veza):
    from fake_openai import Fault
    openai_fake.faults += [Fault(r"^/organization/invites$", status=503, times=1),
                           Fault(r"^/organization/groups$", status=429, headers={"retry-after-ms": "10"}, times=1)]
    openai_fake.org.users[7]["name"] = "line\nbreak \x1b[2J and \u202e"
    openai_fake.refused["admin API keys"] = 403
    result = run_connector(*NO_ROLE_READS, "--log-format", "json", "--debug")
    assert result.returncode == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert all({"time", "level", "message"} <= set(entry) for entry in entries)
    assert entries[-1]["summary"] is True and entries[-1]["outcome"] == "pushed"
    assert entries[-1]["users"] == 250 and entries[-1]["retries"] == 1 and entries[-1]["throttled"] == 1
    assert entries[-1]["version"] == vo.__version__
    read = next(entry for entry in entries if entry.get("stage") == "read")
    assert read["users"] == 250 and read["calls"] > 0
    assert any(entry["level"] == "WARNING" and "left out admin API keys" in entry["message"] for entry in entries)
    assert OPENAI_SECRET not in result.stderr and VEZA_SECRET not in result.stderr


def test_json_log_format_can_come_from_the_environment_and_masks_secrets(run_connector):
    result = run_connector(*NO_ROLE_READS, env={"LOG_FORMAT": "json", "OPENAI_API_KEY": "sk-admin-bad-key-0000"})
    assert result.returncode == 1
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[-1]["outcome"] == "failed"
    assert "sk-admin-bad-key-0000" not in result.stderr


def test_version_is_printed_and_sent_as_the_user_agent_to_openai_and_veza(run_connector, openai_fake, veza):
    shown = run_connector("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"veza_openai.py {vo.__version__}"
    assert run_connector(*NO_ROLE_READS).returncode == 0
    agent = f"veza-openai-connector/{vo.__version__}"
    assert openai_fake.user_agents and set(openai_fake.user_agents) == {agent}
    assert veza.user_agents[0] == agent  # the quick connection check
    # then oaaclient's own connection check, made before its agent can be changed; every call after it
    # carries oaaclient's agent with ours appended
    assert veza.user_agents[2:] and all(ua.endswith(f"; {agent}") for ua in veza.user_agents[2:])


# --- a Veza key that may push but not create -----------------------------------------------------------

def test_a_team_key_that_may_not_create_the_provider_says_what_to_do(run_connector, veza):
    veza.team_key = True
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1
    assert "Veza refused to create the provider 'OpenAI' (template application) (HTTP 403): this API key may not " \
           "create providers or data sources" in result.stderr
    assert "nothing was pushed" in result.stderr and veza.pushes == []


def test_a_team_key_pushes_once_the_provider_and_data_source_exist(run_connector, veza):
    veza.team_key = True
    veza.precreate("OpenAI", "OpenAI - org-demo0001")
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert len(veza.pushes) == 1
