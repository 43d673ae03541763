"""Logs: one line per stage, JSON logs, escaped server text, the version and user agent, and the summary's counts."""

from __future__ import annotations

import json
import logging
import re

import conftest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, application, by_id, summary_line
from fake_openai import Fault

import veza_openai as vo

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


FORGED = "\n2026-01-01 00:00:00,000 INFO summary: outcome=pushed"


EVIL_ID = f"user-evil{FORGED}\x1b[2J"


def assert_no_forged_lines(stderr: str) -> None:
    assert "\x1b" not in stderr
    for line in stderr.splitlines():
        assert TIMESTAMP.match(line), line
        assert not line.startswith("2026-01-01 00:00:00,000"), line


def test_logs_one_line_per_stage_and_end_with_a_summary(run_connector):
    result = run_connector()
    lines = result.stderr.strip().splitlines()
    for stage in ("connecting to Veza", "reading OpenAI organization", "read 120 users", "mapped users=",
                  "pushing to Veza data source"):
        assert any(stage in line for line in lines), stage
    assert re.search(r"summary: outcome=pushed users=120 .* calls=\d+ retries=0 seconds=", lines[-1])


def test_summary_counts_each_family(run_connector):
    result = run_connector(*NO_ROLE_READS)
    summary = result.stderr.strip().splitlines()[-1]
    for fact in ("projects=2", "project_memberships=4", "service_accounts=2", "project_api_keys_active=2",
                 "project_api_keys_inactive=1", "admin_api_keys=1", "invites_pending=1", "groups=2"):
        assert fact in summary, fact


def test_hostile_ids_and_role_values_are_escaped_on_one_log_line(run_connector, veza, openai_fake):
    openai_fake.org.project_users["proj_alpha"].append(
        {"object": "organization.project.user", "id": EVIL_ID, "name": "Evil", "email": "evil@example.com",
         "role": "member", "added_at": 1})
    openai_fake.org.users[6]["role"] = f"auditor{FORGED}\x1b[2J"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    assert_no_forged_lines(result.stderr)
    escaped = "user-evil\\n2026-01-01 00:00:00,000 INFO summary: outcome=pushed\\x1b[2J"
    [warning] = [line for line in result.stderr.splitlines() if escaped in line]
    assert " WARNING project proj_alpha names user " in warning
    # the role value is lower-cased, then shown with repr(): escaped twice over, still one line
    assert re.search(r"WARNING unknown organization role 'auditor\\n2026-01-01 .*\\x1b\[2j'", result.stderr)
    assert EVIL_ID in by_id(application(veza.payloads[0])["local_users"])  # the payload keeps the real id


def test_an_openai_error_message_with_a_newline_is_escaped_in_the_log(run_connector, veza, openai_fake):
    body = {"error": {"message": f"bad request{FORGED}\x1b[2J", "type": "invalid_request_error", "param": None,
                      "code": None}}
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=400, body=body))
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 1, result.output
    assert_no_forged_lines(result.stderr)
    assert "ERROR /organization/invites: HTTP 400: bad request\\n2026-01-01 00:00:00,000 INFO summary: " \
           "outcome=pushed\\x1b[2J" in result.stderr
    assert "outcome=failed" in summary_line(result.stderr)


def test_an_openai_error_message_with_a_newline_is_escaped_in_the_debug_traceback_too(run_connector, openai_fake):
    body = {"error": {"message": f"bad request{FORGED}\x1b[2J", "type": "invalid_request_error", "param": None,
                      "code": None}}
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=400, body=body))
    result = run_connector(*NO_ROLE_READS, "--debug")
    assert result.returncode == 1, result.output
    assert "Traceback" in result.stderr
    assert "\x1b" not in result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("2026-01-01 00:00:00,000")]


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
    assert entries[-1]["users"] == 120 and entries[-1]["retries"] == 1 and entries[-1]["throttled"] == 1
    assert entries[-1]["version"] == vo.__version__
    read = next(entry for entry in entries if entry.get("stage") == "read")
    assert read["users"] == 120 and read["calls"] > 0
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


def test_warnings_counts_every_warning_line_and_left_out_names_the_refused_families(run_connector, openai_fake):
    openai_fake.refused["groups"] = 403
    openai_fake.refused["admin API keys"] = 403
    result = run_connector(*NO_ROLE_READS, "--dry-run", "--log-format", "json")
    assert result.returncode == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    warning_lines = [entry for entry in entries if entry["level"] == "WARNING"]
    assert sum("left out" in entry["message"] for entry in warning_lines) == 2
    summary = entries[-1]
    assert summary["summary"] is True
    assert summary["warnings"] == len(warning_lines)
    assert summary["left_out"] == "admin_api_keys,groups"


def test_left_out_is_empty_when_every_family_was_read(run_connector):
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 0, result.output
    summary = result.stderr.splitlines()[-1]
    assert " left_out= " in summary
    assert f"warnings={result.stderr.count(' WARNING ')} " in summary


def warning_lines_and_count(stderr: str) -> tuple[int, int]:
    """(WARNING lines written, the summary's warnings=)."""
    written = sum(1 for line in stderr.splitlines() if (match := TIMESTAMP.match(line)) and match[1] == "WARNING")
    counted = re.search(r" warnings=(\d+) ", summary_line(stderr))
    return written, int(counted[1]) if counted else -1


def test_warnings_counts_a_librarys_warning_lines_too(run_connector, veza, small_openai):
    """A Veza connection reset once and retried: the HTTP library's own "Retrying ..." line is a warning line."""
    veza.resets[("GET", "/api/v1/providers/custom")] = 1
    result = run_connector(*NO_ROLE_READS, env={"OAA_API_RETRIES": "1"})
    written, counted = warning_lines_and_count(result.stderr)
    assert written == counted, result.stderr


def test_warnings_counts_a_warning_any_logger_writes_during_the_run(run_connector, openai_fake, small_openai):
    def library_warning(fake) -> None:
        conftest._fake_server_thread.active = False  # written as the connector's own output: captured with it
        try:
            logging.getLogger("urllib3.connectionpool").warning("a library's own warning line")
        finally:
            conftest._fake_server_thread.active = True

    openai_fake.faults.append(Fault(r"^/organization/invites$", kind="hook", body=library_warning))
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 0, result.output
    assert "WARNING a library's own warning line" in result.stderr
    written, counted = warning_lines_and_count(result.stderr)
    assert written == counted, result.stderr
