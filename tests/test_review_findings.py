"""Hostile review of the 1.1.0 change: README promises checked against the code.

Each test is named after the behaviour that should hold. A test marked xfail(strict=True) is a finding:
the behaviour does not hold today (the reason says what is wrong). The others pin behaviour that was
verified and that no other test covered.
"""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, application, assignments, by_id
from fake_limits import AlwaysThrottled, FixedWindows
from fake_openai import Fault, generate_organization

import veza_openai as vo


def summary_line(stderr: str) -> str:
    return stderr.splitlines()[-1]


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


# --- deleted entities and the 404 family rule ------------------------------------------------------

def test_the_only_project_is_kept_when_one_of_its_families_answers_404_while_its_other_reads_succeed(
        run_connector, veza, openai_fake):
    """README: 'A 404 on every entity of a family (while other reads show them alive) is the family rule'.

    With one project, a family the organization does not have (404 on every project, here the project
    certificates) must leave that family out, not delete the project: its members, service accounts and
    keys were all read, concurrently, with 200s.
    """
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
    """Both projects deleted after the project list was read: every per-project read 404s. README: such an
    entity is 'left out, with a warning that it was deleted during the run'; the family rule applies only
    'while other reads show them alive', and no read does. The code applies the family rule whenever more
    than one entity 404s, so two deleted projects are pushed as live projects with no members, and the log
    tells the operator to grant 'Projects: Read'."""
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


# --- case-insensitive ids -------------------------------------------------------------------------

def test_a_project_member_whose_id_differs_from_an_org_user_only_in_case_is_that_user(
        run_connector, veza, openai_fake):
    """README: 'Ids are case-insensitive, as in Veza: two ids that differ only in case are one entity'.
    Verified across lists (not only within one): oaaclient's CaseInsensitiveDict makes the member lookup in
    `_get_or_add_principal` find user-0011 for USER-0011, so no second local user is made."""
    member = next(m for m in openai_fake.org.project_users["proj_alpha"] if m["id"] == "user-0011")
    member["id"] = "USER-0011"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    ids = [u["id"] for u in application(veza.payloads[0])["local_users"]]
    folded = [i.casefold() for i in ids]
    assert len(folded) == len(set(folded)), [i for i in ids if i.casefold() == "user-0011"]


# --- logs and secrets -----------------------------------------------------------------------------

def test_configuration_errors_are_json_lines_when_log_format_json_is_asked(run_connector, veza, openai_fake):
    """README (Logs): '--log-format json (or LOG_FORMAT=json) writes one JSON object per line ... the summary
    line carries summary: true'. On a configuration error main() configures text logging whatever LOG_FORMAT
    says, so a log shipper (the README's own Kubernetes CronJob sets LOG_FORMAT=json) gets unparsable lines
    exactly when the run is misconfigured."""
    result = run_connector(*NO_ROLE_READS, env={"LOG_FORMAT": "json", "OPENAI_ORG_ID": "not-an-org"})
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
    assert entries[-1].get("summary") is True and entries[-1].get("outcome") == "config-error"


def test_a_config_error_with_the_openai_key_from_a_file_masks_its_content_in_the_log(run_connector, tmp_path):
    """The content of OPENAI_API_KEY_FILE never reaches a configuration error line (checked: only its path)."""
    key_file = tmp_path / "openai-key"
    key_file.write_text(OPENAI_SECRET + " trailing-space\n")
    result = run_connector(*NO_ROLE_READS, env={"OPENAI_API_KEY_FILE": str(key_file)}, drop=("OPENAI_API_KEY",))
    assert result.returncode == 2, result.output
    assert "OPENAI_API_KEY_FILE contains whitespace" in result.stderr
    assert OPENAI_SECRET not in result.output and "trailing-space" not in result.output


@pytest.mark.parametrize("key", ["sk-admin-wxyz", "sk-proj-abcd", "sk-admin-ab12"])
def test_mask_key_never_shows_the_whole_secret_part_of_a_short_key(key):
    """`mask_key` shows the kind and the last four characters from 12 characters on. For a 12-16 character
    key that is every character after the public prefix: the 'masked' log line prints the whole key.
    (Real keys are long; the config accepts any length from 1, so a test or mistyped key leaks whole.)"""
    masked = vo.mask_key(key)
    kind = next(p for p in ("sk-admin-", "sk-proj-", "sk-") if key.startswith(p))
    secret_part = key[len(kind):]
    assert secret_part not in masked, masked


def test_a_secret_with_a_quote_or_backslash_is_masked_in_json_logs(capsys):
    """JsonFormatter masks secrets in the JSON *text*, where '"' and '\\' are already escaped: a key holding
    either (the config accepts any printable ASCII) is never found, so it is logged in full."""
    secret = 'veza-key"with\\quote-1234'
    handler = logging.StreamHandler()
    handler.setFormatter(vo.JsonFormatter([secret]))
    record = logging.LogRecord("veza_openai", logging.ERROR, __file__, 1, "Veza said: bad token %s", (secret,), None)
    text = handler.format(record)
    assert secret not in json.loads(text)["message"], text


def test_a_secret_is_masked_in_the_json_traceback_field():
    """The JSON format's `traceback` field (--debug) is masked like the message (checked)."""
    secret = "veza-secret-value-12345"
    formatter = vo.JsonFormatter([secret])
    try:
        raise RuntimeError(f"token {secret} refused")
    except RuntimeError:
        import sys
        record = logging.LogRecord("veza_openai", logging.ERROR, __file__, 1, "failed %s", (secret,), sys.exc_info())
    text = formatter.format(record)
    entry = json.loads(text)
    assert "traceback" in entry and "RuntimeError" in entry["traceback"]
    assert secret not in text and "[REDACTED]" in entry["traceback"]


def test_debug_tracebacks_of_a_failed_run_never_show_either_key(run_connector, veza, openai_fake):
    """--debug with a failure whose message carries the key text (the server echoes the Authorization value)."""
    openai_fake.faults.append(Fault(r"^/organization/users$", status=400,
                                    body={"error": {"message": f"bad header Bearer {OPENAI_SECRET} / {VEZA_SECRET}"}},
                                    times=None))
    result = run_connector(*NO_ROLE_READS, "--debug", "--log-format", "json")
    assert result.returncode == 1, result.output
    assert OPENAI_SECRET not in result.output and VEZA_SECRET not in result.output
    assert "[REDACTED]" in result.output


# --- reader scheduling ----------------------------------------------------------------------------

@pytest.fixture
def small_org(openai_fake):
    openai_fake.org = generate_organization(users=40, projects=6, members=2, service_accounts=1, keys=1, groups=2,
                                            group_members=3, org_id="org-demo0001")
    return openai_fake


def test_max_run_time_ends_a_run_whose_only_open_read_is_throttled_forever(small_org, run_connector, veza):
    """Every read done except one endpoint that answers 429 forever, with a long --max-throttle-wait: the
    reader waits on that endpoint's probes and must still notice --max-run-time within about a second."""
    small_org.limiter = AlwaysThrottled({"project roles"})
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--max-run-time", "2", "--max-throttle-wait", "3600",
                           env={"VEZA_OPENAI_TIME_SCALE": "1"}, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert "reading took longer than --max-run-time 2s" in result.stderr
    assert elapsed < 8, elapsed
    assert veza.pushes == []


def test_a_family_left_out_whole_is_not_failed_by_its_other_reads_still_in_5xx_backoff(
        small_org, run_connector, veza):
    """README: a 403 on another family leaves 'that family ... out whole'. `_leave_out` purges the family's
    queue but not its requests in the 5xx backoff heap (`delayed`) or in flight: those are still sent, and
    when one runs out of retries (or of --max-throttle-wait on a 429) the whole run fails with nothing
    pushed, for a family the run had already given up on."""
    pids = [p["id"] for p in small_org.org.projects]
    small_org.faults.append(Fault(rf"^/organization/projects/{pids[0]}/api_keys$", status=503, times=None))
    small_org.faults.append(Fault(rf"^/organization/projects/{pids[1]}/api_keys$", status=403, times=None))
    result = run_connector(*NO_ROLE_READS, "--max-retries", "3", "--max-throttle-wait", "0.3",
                           env={"VEZA_OPENAI_TIME_SCALE": "0.05"}, timeout=30)
    assert result.returncode == 0, result.output
    assert "left out project API keys (HTTP 403" in result.stderr
    assert len(veza.payloads) == 1


@pytest.mark.parametrize("hint", [{"retry-after": "0"}, {"retry-after": "Thu, 01 Jan 2015 00:00:00 GMT"},
                                  {"retry-after-ms": "nan"}], ids=["zero", "a date already past", "nan ms"])
def test_a_zero_retry_after_is_not_followed_by_an_immediate_resend_loop(openai_fake, run_connector, veza, hint):
    """A 429 with `retry-after: 0` (or an HTTP date already past, or a negative value, all clamped to 0)
    blocks the endpoint for 0 s and spaces it by 0 s: the request is re-sent at once, again and again, for
    up to --max-throttle-wait (900 s by default), hammering a rate-limited API. The official SDK ignores a
    retry-after outside (0, 60] and backs off instead; the hintless probe (0.5 s, 1 s, ...) would too."""
    openai_fake.faults.append(Fault(r"^/organization/invites$", status=429, headers=hint, times=None))
    result = run_connector(*NO_ROLE_READS, "--max-throttle-wait", "1", env={"VEZA_OPENAI_TIME_SCALE": "1"},
                           timeout=30)
    assert result.returncode == 1, result.output
    calls = openai_fake.calls(r"^/organization/invites$")
    # Backing off from 0.5 s doubling to 5 s: 2-3 calls in one second. Allow ten.
    assert calls <= 10, f"{calls} requests to one throttled endpoint in 1 s"


def test_a_throttled_organization_object_leaves_is_personal_unset_and_never_fails_the_run(
        openai_fake, run_connector, veza):
    """README: is_personal is 'asked once (retried on 5xx); when refused it is left unset ... (never guessed,
    never fatal)', and 'a transient fault on the organization object ... never a failed run'. A 429 past
    --max-throttle-wait on /organizations/{id} raises DiscoveryError straight from `_answered` (not through
    `_failed`, which spares the organization object), so the whole run fails with nothing pushed."""
    openai_fake.limiter = AlwaysThrottled({"organization"})
    result = run_connector(*NO_ROLE_READS, "--max-throttle-wait", "0.3", env={"VEZA_OPENAI_TIME_SCALE": "0.05"},
                           timeout=30)
    assert result.returncode == 0, result.output
    assert "is_personal" not in application(veza.payloads[0])["custom_properties"]


def test_a_project_role_value_never_empties_a_roles_api_role_with_the_same_id(openai_fake, run_connector, veza):
    """Spec: an unknown project role value gets `project_<value>`, but every generated id is checked against
    every id in the payload: with a Roles API role `project_auditor`, the value 'auditor' gets
    `project_role_auditor` (Read Project) and the API role keeps its own permissions."""
    openai_fake.org.roles.append({"object": "role", "id": "project_auditor", "name": "Auditor (API)",
                                  "permissions": ["api.project.read"], "predefined_role": False,
                                  "resource_type": "api.project", "description": None})
    [member] = [m for m in openai_fake.org.project_users["proj_beta"] if m["id"] == "user-0012"]
    member["role"] = "auditor"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    payload = veza.payloads[0]
    roles = by_id(application(payload)["local_roles"])
    assert roles["project_auditor"].get("permissions") == ["api.project.read"], roles["project_auditor"]
    assert roles["project_role_auditor"] == {"name": "Project Auditor", "permissions": ["Read Project"],
                                             "id": "project_role_auditor"}
    assert "project_auditor" not in assignments(payload, "user-0012")
    assert assignments(payload, "user-0012")["project_role_auditor"]["resources"] == ["proj_beta"]


def test_dry_run_with_create_report_makes_no_veza_call_and_exits_0(openai_fake, run_connector, veza):
    """--create-report with --dry-run: nothing is pushed, so no report either, and Veza is never contacted
    (verified; no test covered the combination)."""
    result = run_connector(*NO_ROLE_READS, "--dry-run", "--create-report", drop=("VEZA_URL", "VEZA_API_KEY"))
    assert result.returncode == 0, result.output
    assert veza.requests == []
    assert "outcome=dry-run" in summary_line(result.stderr) and "report=" not in summary_line(result.stderr)
    assert len(result.saved_json()) == 1


def test_a_report_that_fails_unexpectedly_after_a_confirmed_push_keeps_exit_0_and_outcome_pushed(
        openai_fake, run_connector, veza, monkeypatch):
    """README (The Veza report): 'A report Veza refuses is logged as an error (report=failed) and does not undo
    the push: the exit status stays 0.' Only OAAClientError and RequestException are caught around the report;
    any other exception from an unexpected Veza answer (a query without an `id`, a non-list `queries`) reaches
    main()'s catch-all: exit 1 and 'outcome unknown: Veza may have received the payload', for a push Veza
    had already confirmed."""
    def odd_answer(client):
        raise KeyError("id")  # what `query["id"]` raises on a saved query Veza returns without an id

    monkeypatch.setattr(vo, "create_or_update_report", odd_answer)
    result = run_connector(*NO_ROLE_READS, "--create-report")
    assert len(veza.payloads) == 1
    assert result.returncode == 0, result.output
    assert "outcome=pushed" in summary_line(result.stderr) and "report=failed" in summary_line(result.stderr)


def test_the_per_endpoint_cap_holds_over_every_sliding_minute(small_org, run_connector, veza):
    """--max-requests-per-minute-per-endpoint 2 (a 0.6 s 'minute' at this scale): no endpoint is sent more
    than 2 requests in any sliding window, and the run completes (verified; the cap had no test)."""
    scale = 0.01
    result = run_connector(*NO_ROLE_READS, "--max-requests-per-minute-per-endpoint", "2",
                           env={"VEZA_OPENAI_TIME_SCALE": str(scale)}, timeout=60)
    assert result.returncode == 0, result.output
    window = 60 * scale
    by_endpoint: dict[str, list[float]] = {}
    for at, path, _ in small_org.timeline:
        template = re.sub(r"proj_\d+", "{p}", re.sub(r"group_\d+|grp_\w+", "{g}", path))
        by_endpoint.setdefault(template, []).append(at)
    for template, times in by_endpoint.items():
        times.sort()
        for i in range(2, len(times)):
            # 30 ms slack: the fake stamps arrival, the connector stamps sending (a worker may start late)
            assert times[i] - times[i - 2] >= window - 0.03, (template, times)
    assert any(len(times) >= 6 for times in by_endpoint.values())  # the cap was exercised


def test_max_run_time_ends_a_run_whose_workers_are_all_stuck_on_dripping_answers(openai_fake, run_connector, veza):
    """Every worker busy on an answer that drips for longer than --timeout: --max-run-time still ends the run
    within about a second of the limit (the wait on answers is capped at 1 s) (verified)."""
    openai_fake.faults.append(Fault(r"^/organization/", kind="drip", delay=0.5, times=None))
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, "--max-run-time", "1", "--timeout", "60", "--max-workers", "2",
                           env={"VEZA_OPENAI_TIME_SCALE": "1"}, timeout=30)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.output
    assert "reading took longer than --max-run-time 1s" in result.stderr
    assert elapsed < 5, elapsed
    assert veza.pushes == []


@pytest.mark.parametrize("args", [("--log-format", "xml"), ("--max-workerz", "4")], ids=["bad choice", "unknown flag"])
def test_a_flag_argparse_rejects_still_ends_with_the_config_error_summary_line(run_connector, veza, openai_fake,
                                                                               args):
    """README: 'Every run ends with one summary line, success or not ... outcome is ... config-error'. A flag
    argparse itself rejects (an unknown flag, a value outside --log-format's choices) exits 2 from inside
    parse_args with argparse's usage text and no summary line, so a log pipeline keyed on the summary sees
    nothing for that run."""
    result = run_connector(*args)
    assert result.returncode == 2, result.output
    assert openai_fake.calls() == 0
    assert "summary: outcome=config-error" in summary_line(result.stderr), result.stderr


class HintedFixedWindows(FixedWindows):
    """FixedWindows whose 429 says exactly when the window refills (`retry-after-ms`, scaled as the models do)."""

    def __init__(self, *args, time_scale: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.time_scale = time_scale

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        refused = super()._admit(family, now)
        if refused is None:
            return None
        start, _ = self._windows[family]
        _, window = self.limits(family)
        return {"retry-after-ms": str(max(1, round((start + window - now) * 1000 / self.time_scale)))}


def test_a_minute_window_that_sends_retry_after_is_met_near_its_bound(openai_fake, run_connector, veza):
    """README (Rate limits): 'A hint is followed exactly ... No extra slow-down on top', and every measured
    model stays within 1.2x its bound. A fixed window that *does* send retry-after (when it refills) is not in
    the table: the connector then spaces every later request by the whole window, relaxing only 5% per
    success, so an endpoint allowed 4 a window gets about one a window instead."""
    scale = 0.01
    openai_fake.org = generate_organization(users=20, projects=24, members=1, service_accounts=0, keys=0, groups=0,
                                            group_members=0, org_id="org-demo0001")
    limiter = HintedFixedWindows((1000, 0.6), {"project users": (4, 0.6)}, time_scale=scale)
    openai_fake.limiter = limiter
    started = time.monotonic()
    result = run_connector(*NO_ROLE_READS, env={"VEZA_OPENAI_TIME_SCALE": str(scale)}, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.output
    assert limiter.throttled["project users"] > 0
    bound = limiter.bound({"project users": 24})  # 6 windows of 4: 3.0 s
    assert elapsed <= 1.5 * bound + 1.0, f"{elapsed:.1f}s against a bound of {bound:.1f}s"


def test_progress_estimates_time_left_for_an_endpoint_paced_by_retry_after_hints(openai_fake, run_connector, veza):
    """README (Rate limits): a progress line gives 'the slowest endpoint's learned rate, an estimate of the time
    left for the reads known so far'. For an endpoint the server paces with retry-after, every progress line
    says 'about 0s left' while the open reads still need seconds (here ~0.5 s each)."""
    scale = 0.01
    openai_fake.org = generate_organization(users=20, projects=24, members=1, service_accounts=0, keys=0, groups=0,
                                            group_members=0, org_id="org-demo0001")
    openai_fake.limiter = HintedFixedWindows((1000, 0.6), {"project users": (4, 0.6)}, time_scale=scale)
    result = run_connector(*NO_ROLE_READS, "--log-format", "json", env={"VEZA_OPENAI_TIME_SCALE": str(scale)},
                           timeout=60)
    assert result.returncode == 0, result.output
    progress = [entry for entry in map(json.loads, result.stderr.splitlines()) if entry.get("stage") == "progress"]
    busy = [entry for entry in progress if entry["reads_open"] >= 8]
    assert busy, progress
    assert any(entry["seconds_left_estimate"] >= 1 for entry in busy), busy
