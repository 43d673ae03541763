"""A bad day: injected faults, hostile input and leaked-secret checks. Waits are scaled down, never slept."""

from __future__ import annotations

import dataclasses
import re

import pytest
from conftest import NO_ROLE_READS, OPENAI_SECRET, VEZA_SECRET, application, by_id, load
from fake_openai import Fault


def fresh(fault: Fault) -> Fault:
    """A copy with its own hit counter, so parametrized cases do not share state."""
    return dataclasses.replace(fault, seen=0)


def role_reads_for(fault: Fault) -> tuple[str, ...]:
    """No per-user role assignment reads (most of a run's requests), unless the fault is on them."""
    return () if re.search(r"users.*roles", fault.path) else NO_ROLE_READS


# --- faults the connector rides out --------------------------------------------------------------

RECOVERABLE = {
    "429 with retry-after on users": Fault(r"^/organization/users$", status=429, headers={"retry-after": "2"},
                                           times=3),
    "429 with retry-after-ms on project keys": Fault(r"/api_keys$", status=429,
                                                     headers={"retry-after-ms": "1500"}, times=4),
    "429 with no header on group users": Fault(r"/groups/[^/]+/users$", status=429, times=3),
    "500 burst on projects": Fault(r"^/organization/projects$", status=500, times=2),
    "502 burst on user roles": Fault(r"^/organization/users/[^/]+/roles$", status=502, times=3),
    "503 burst on the second users page": Fault(r"^/organization/users$", status=503, times=2, skip=1),
    "connection reset on roles": Fault(r"^/organization/roles$", kind="reset", times=2),
    "slow answer on invites": Fault(r"^/organization/invites$", kind="delay-only", delay=1.0, times=1),
    "overlapping pages of users": Fault(r"^/organization/users$", kind="overlap", times=None),
}


@pytest.mark.parametrize("name", RECOVERABLE)
def test_recoverable_faults_complete_with_the_fault_free_payload(run_connector, veza, openai_fake,
                                                                fault_free_payload, name):
    flags = role_reads_for(RECOVERABLE[name])
    openai_fake.faults.append(fresh(RECOVERABLE[name]))
    result = run_connector(*flags, "--timeout", "0.3")
    assert result.returncode == 0, result.output
    assert veza.payloads == [fault_free_payload(*flags)]
    if name != "overlapping pages of users":  # the fault was met: a retry, or a 429 waited out
        assert not re.search(r"throttled=0 .*retries=0 ", result.stderr.splitlines()[-1])


def test_the_servers_requested_wait_is_honoured_and_capped(run_connector, openai_fake):
    openai_fake.faults += [Fault(r"^/organization/invites$", status=429, headers={"retry-after-ms": "1500"}),
                           Fault(r"^/organization/groups$", status=429, headers={"retry-after": "3600"})]
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0
    assert "/organization/invites: HTTP 429, pausing /organization/invites for 1.5s (the server's retry-after)" \
        in result.stderr
    assert "/organization/groups: HTTP 429, pausing /organization/groups for 60.0s (the server's retry-after)" \
        in result.stderr


# --- faults that must stop the run before anything is pushed ----------------------------------------

FATAL = {
    "500 longer than the retry budget": (Fault(r"^/organization/projects$", status=500, times=None),
                                         r"/organization/projects: HTTP 500, gave up after 6 retries"),
    "429 past the throttle deadline": (Fault(r"/service_accounts$", status=429, times=None),
                                       r"/organization/projects/proj_\w+/service_accounts: still HTTP 429 \(rate "
                                       r"limited\) after waiting [\d.]+s \(--max-throttle-wait 0.3s\)"),
    "reset every time": (Fault(r"^/organization/invites$", kind="reset", times=None),
                         r"/organization/invites: ConnectionError \(connection failed\), gave up"),
    "slow every time": (Fault(r"^/organization/groups$", kind="delay-only", delay=1.0, times=None),
                        r"/organization/groups: \w*Timeout \(timed out\), gave up"),
    "truncated body": (Fault(r"^/organization/users$", kind="truncate", skip=1),
                       r"/organization/users: answer is not JSON"),
    "non-JSON body": (Fault(r"^/organization/roles$", kind="nonjson"), r"/organization/roles: answer is not JSON"),
    "wrong object type": (Fault(r"^/organization/projects$", kind="wrong_object"),
                          r"/organization/projects: expected organization.project items"),
    "data not a list": (Fault(r"^/organization/admin_api_keys$", kind="data_not_list"),
                        r"/organization/admin_api_keys: 'data' is not a list"),
    "has_more without a cursor": (Fault(r"^/organization/users$", kind="no_cursor"),
                                  r"/organization/users: has_more is true but the page has no cursor"),
    "a cursor that repeats": (Fault(r"^/organization/groups$", kind="repeat_cursor", times=None),
                              r"/organization/groups: the cursor .* repeats"),
    "HTTP 400": (Fault(r"^/organization/invites$", status=400), r"/organization/invites: HTTP 400: injected 400"),
}


def marked_slow(names, slow: str) -> list:
    """Parameters with the one that waits out every timeout (~2 s) marked slow."""
    return [pytest.param(name, marks=pytest.mark.slow) if name.endswith(slow) else name for name in names]


@pytest.mark.parametrize("name", marked_slow(FATAL, "slow every time"))
def test_unrecoverable_faults_exit_1_naming_the_endpoint_and_push_nothing(run_connector, veza, openai_fake, name):
    fault, message = FATAL[name]
    openai_fake.faults.append(fresh(fault))
    result = run_connector(*role_reads_for(fault), "--timeout", "0.3", "--max-throttle-wait", "0.3", "--save_json")
    assert result.returncode == 1, result.output
    assert re.search(message, result.stderr), result.stderr
    assert veza.pushes == [] and result.saved_json() == []
    assert "nothing was pushed; Veza keeps the previous snapshot" in result.stderr
    assert re.match(r".*summary: outcome=failed .*retries=\d+ seconds=", result.stderr.splitlines()[-1])
    assert "Traceback" not in result.output


def test_a_refused_connection_to_openai_is_retried_then_fails(run_connector, veza):
    result = run_connector(env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_MAX_RETRIES": "2"})
    assert result.returncode == 1
    assert re.search(r"ERROR /organization/\S+: ConnectionError \(connection failed\), gave up after 2 retries",
                     result.stderr)
    assert veza.pushes == []


# --- Veza faults -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "body", "message", "outcome"), [
    (500, {"code": "Internal", "message": "database unavailable"}, "HTTP 500: Internal: database unavailable",
     "unknown"),  # a 5xx after the upload: Veza may have stored it
    (400, {"code": "InvalidArgument", "message": "payload rejected",
           "details": [{"reason": "identity user-9 has an invalid role"}]}, "HTTP 400: InvalidArgument", "failed"),
    (401, {"code": "Unauthenticated", "message": "token expired"}, "Veza refused the API key (HTTP 401)", "failed"),
])
def test_a_failed_push_exits_1_and_keeps_the_payload_on_disk(run_connector, veza, tmp_path, status, body, message,
                                                             outcome):
    veza.push_error = (status, body)
    result = run_connector(*NO_ROLE_READS, "--save_json", str(tmp_path / "payload.json"))
    assert result.returncode == 1
    assert message in result.stderr
    if body.get("details"):
        assert "identity user-9 has an invalid role" in result.stderr
    assert len(application(load(tmp_path / "payload.json"))["local_users"]) > 250
    assert f"outcome={outcome}" in result.stderr.splitlines()[-1]
    if outcome == "unknown":
        assert "outcome unknown: Veza may have received the payload; check data source 'OpenAI - org-demo0001'" \
            in result.stderr
    else:
        assert "nothing was pushed; Veza keeps the previous snapshot" in result.stderr


def test_unreachable_veza_fails_fast_before_any_openai_call(run_connector, openai_fake):
    result = run_connector(env={"VEZA_URL": "https://127.0.0.1:9"})
    assert result.returncode == 1
    assert "cannot use Veza at https://127.0.0.1:9" in result.stderr
    assert openai_fake.calls() == 0


# --- bad input -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "args", "message"), [
    ({"OPENAI_ORG_ID": "org-abc def"}, (), "OPENAI_ORG_ID (or --openai-org) must look like org-"),
    ({"OPENAI_ORG_ID": "org-../../admin"}, (), "OPENAI_ORG_ID (or --openai-org) must look like org-"),
    ({"OPENAI_ORG_ID": ""}, (), "OPENAI_ORG_ID (or --openai-org) is not set"),
    ({"VEZA_URL": "https://admin:hunter2@veza.example.com"}, (),
     "VEZA_URL (or --veza_url) must not contain credentials"),
    ({"VEZA_URL": "http://veza.example.com"}, (), "VEZA_URL (or --veza_url) must use https"),
    ({"VEZA_URL": "https://veza.example.com:99999"}, (), "VEZA_URL (or --veza_url) is not a valid URL"),
    ({"OPENAI_BASE_URL": "http://api.example.com/v1"}, (), "OPENAI_BASE_URL (or --openai-base-url) must use https"),
    ({"OPENAI_API_KEY": "sk-admin-abc\nINJECTED"}, (), "OPENAI_API_KEY contains whitespace, a newline"),
    ({"VEZA_API_KEY": " "}, (), "VEZA_API_KEY contains whitespace"),
    ({}, ("--save_json", "/proc/veza-out"), "--save_json directory '/proc/veza-out' does not exist"),
    ({}, ("--save_json", "/proc/sys"), "--save_json directory '/proc/sys' is not writable"),
    ({}, ("--max-workers", "0"), "--max-workers (env OPENAI_MAX_WORKERS) must be between 1 and 64"),
    ({}, ("--role-assignments", "some"), "--role-assignments (env OPENAI_ROLE_ASSIGNMENTS) must be auto, all or none"),
])
def test_bad_settings_are_configuration_errors_and_send_nothing(run_connector, veza, openai_fake, env, args, message):
    result = run_connector(*args, env=env)
    assert result.returncode == 2, result.output
    assert f"configuration error: {message}" in result.stderr
    assert veza.requests == [] and openai_fake.calls() == 0
    assert "INJECTED" not in result.output and "hunter2" not in result.output


def test_hostile_text_in_records_passes_into_the_payload_intact(run_connector, veza, openai_fake):
    hostile = {"user-0020": "x" * 5000, "user-0021": "tab\tbell\x07nul\x00 end", "user-0022": "Zoë 李雷 🚀🔑",
               "user-0023": '"; DROP TABLE users; --', "user-0024": "<script>alert(1)</script>"}
    for user in openai_fake.org.users:
        if user["id"] in hostile:
            user["name"] = hostile[user["id"]]
    openai_fake.org.projects[0]["name"] = "Ünïcode 📦 \u202e project"
    result = run_connector(*NO_ROLE_READS)
    assert result.returncode == 0, result.output
    app = application(veza.payloads[0])
    users = by_id(app["local_users"])
    for user_id, name in hostile.items():
        assert users[user_id]["name"] == name
    assert by_id(app["resources"])["proj_alpha"]["name"] == "Ünïcode 📦 \u202e project"


# --- secrets ---------------------------------------------------------------------------------------

SECRET_SCENARIOS = {**{f"recoverable: {k}": v for k, v in RECOVERABLE.items()},
                    **{f"fatal: {k}": v[0] for k, v in FATAL.items()}}


# Only with --debug: it logs every record a plain run logs, the same way, plus debug records and tracebacks.
@pytest.mark.parametrize("name", marked_slow([*SECRET_SCENARIOS, "veza push 500", "veza refuses key",
                                              "openai refuses key"], "slow every time"))
def test_no_secret_reaches_output_or_files_whatever_goes_wrong(run_connector, veza, openai_fake, tmp_path, name):
    flags = NO_ROLE_READS
    if name in SECRET_SCENARIOS:
        fault = SECRET_SCENARIOS[name]
        openai_fake.faults.append(fresh(fault))
        flags = role_reads_for(fault)
    elif name == "veza push 500":
        veza.push_error = (500, {"code": "Internal", "message": f"echo {VEZA_SECRET}"})
    elif name == "veza refuses key":
        veza.api_key = "something-else"
    else:
        openai_fake.admin_key = "sk-admin-something-else"
    result = run_connector(*flags, "--timeout", "0.3", "--max-throttle-wait", "0.3", "--save_json", str(tmp_path),
                           "--debug")
    for secret in (OPENAI_SECRET, VEZA_SECRET):
        assert secret not in result.output
        for saved in result.saved_json():
            assert secret not in saved.read_text()
    assert result.returncode in (0, 1)
