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


def test_invisible_characters_from_a_server_are_shown_escaped():
    """An id ending in a zero-width space (or a direction mark, a BOM, a tag) must not read as another id."""
    for hidden in "\u200b\u200e\u061c\ufeff\xad\u2060\U000e0041\u202e\u2066":
        escaped = vo.escape_for_log(f"user-0000{hidden}")
        assert escaped == "user-0000" + repr(hidden)[1:-1] and hidden not in escaped, escaped
    assert vo.escape_for_log("Zoë, 東京 🙂") == "Zoë, 東京 🙂"  # what people write stays as it is


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
    assert veza.user_agents and set(veza.user_agents) == {agent}  # every Veza call, the check included


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


HUMAN_SUMMARY = ("In Veza:", "Left out:", "Payload:")
# The summary line's keys as of 1.2.1, in order, for a run without --create-report: kept, new keys only appended.
SUMMARY_KEYS = ["outcome", "users", "groups", "group_memberships", "projects", "project_memberships",
                "service_accounts", "project_api_keys_active", "project_api_keys_inactive", "admin_api_keys",
                "invites_pending", "roles", "role_assignments", "logins", "key_scopes", "federation_rules",
                "certificates", "warnings", "left_out", "veza_warnings", "throttled", "calls", "retries", "seconds",
                "version"]


def message_of(line: str) -> str:
    return TIMESTAMP.sub("", line)


def human_summary(stderr: str) -> dict[str, tuple[int, str]]:
    """{"In Veza:": (line index, message), ...}: each human summary line, found once, by how its message starts."""
    found: dict[str, tuple[int, str]] = {}
    for index, line in enumerate(stderr.splitlines()):
        for start in HUMAN_SUMMARY:
            if message_of(line).startswith(start):
                assert start not in found, f"{start} twice"
                found[start] = (index, message_of(line))
    return found


def summary_fields(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split("summary: ", 1)[1].split())


def test_a_text_mode_run_ends_with_a_human_summary_just_before_the_summary_line(run_connector, veza):
    """Above the key=value line, a few lines a person reads: what is now in Veza (people, service accounts,
    owners by any path, admin keys, active project keys, projects), what was left out, where the payload went.
    The summary line stays the last line."""
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    lines = result.stderr.splitlines()
    fields = summary_fields(summary_line(result.stderr))
    assert message_of(lines[-1]).startswith("summary: outcome=pushed")
    human = human_summary(result.stderr)
    assert set(human) == set(HUMAN_SUMMARY), result.stderr
    assert all(len(lines) - 8 <= index < len(lines) - 1 for index, _ in human.values()), result.stderr
    in_veza = human["In Veza:"][1]
    assert re.search(r"\d+ owners?\b", in_veza) and "owners" in in_veza, in_veza
    assert re.search(rf"\b{fields['admin_api_keys']} admin key", in_veza), in_veza
    assert re.search(rf"\b{fields['projects']} projects?\b", in_veza), in_veza
    assert re.search(rf"\b{fields['service_accounts']} service accounts?\b", in_veza), in_veza
    assert "none" in human["Left out:"][1], human["Left out:"]
    assert "pushed to data source 'OpenAI - org-demo0001'" in human["Payload:"][1], human["Payload:"]


def test_the_human_summary_says_what_was_left_out_and_that_a_dry_run_pushed_nothing(run_connector, openai_fake):
    """A refused family is named with the grant it needs; a dry run's payload was saved, not pushed."""
    openai_fake.refused["groups"] = 403
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 0, result.output
    [saved] = result.saved_json()
    human = human_summary(result.stderr)
    assert set(human) == set(HUMAN_SUMMARY), result.stderr
    left_out = human["Left out:"][1]
    assert "groups" in left_out and "Groups: Read" in left_out, left_out
    payload = human["Payload:"][1]
    assert "not pushed (dry run)" in payload and "saved to" in payload and saved.name in payload, payload
    assert message_of(result.stderr.splitlines()[-1]).startswith("summary: outcome=dry-run")


def test_json_logs_have_no_human_summary_lines_the_summary_object_carries_the_facts(run_connector):
    """With --log-format json the summary object is the summary: no "In Veza:" prose lines for a shipper."""
    result = run_connector(*NO_ROLE_READS, "--log-format", "json")
    assert result.returncode == 0, result.output
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert not [entry["message"] for entry in entries if entry["message"].startswith(HUMAN_SUMMARY)]
    assert entries[-1]["summary"] is True and entries[-1]["outcome"] == "pushed"


def test_the_summary_line_keeps_its_keys_in_order_and_only_appends_new_ones(run_connector):
    """Log pipelines parse the key=value line: every key of 1.2.1 keeps its place; new keys come after them."""
    result = run_connector(*NO_ROLE_READS, "--dry-run")
    assert result.returncode == 0, result.output
    keys = list(summary_fields(summary_line(result.stderr)))
    assert keys[:len(SUMMARY_KEYS)] == SUMMARY_KEYS


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


def test_a_pending_invite_without_a_status_is_not_counted_as_a_person(run_connector, openai_fake):
    """An invite whose status is missing is kept as a pending invite (it may still be accepted), never counted
    among the people the human summary says Veza holds."""
    def people() -> int:
        result = run_connector(*NO_ROLE_READS, "--dry-run")
        assert result.returncode == 0, result.output
        return int(re.search(r"In Veza: (\d+) people", human_summary(result.stderr)["In Veza:"][1]).group(1))

    with_status = people()
    for invite in openai_fake.org.invites:
        invite.pop("status", None)
    assert people() == with_status
